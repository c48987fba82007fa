"""`run_episodes`: one turn is `generate` bit for bit; observation tokens land where the
environment put them, with loss mask 0 and log-prob 0; policy log-probs equal a teacher-forced
pass over the interleaved sequence; a raising or hanging environment is a counted error."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.envs.base import StepResult
from jaxrl_llm.rollout import PromptBatch, SamplingParams, generate
from jaxrl_llm.rollout.multiturn import TurnParams, run_episodes, run_parallel

CONFIG = models.ModelConfig.tiny(
    architecture="qwen2", qkv_bias=True, tie_embeddings=True, vocab_size=48
)
BUCKETS = (16, 32)


class CharTokenizer:
    """Characters to ids 3..46 (BOS 1, EOS 2, pad 0); decoding is one character per id."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def encode(self, text, add_special_tokens=False):
        return [3 + (ord(c) % 44) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("0") + int(i)) for i in ids)


class OneTurnEnv:
    name, max_turns, max_observation_tokens = "one_turn", 1, None

    def reset(self, example):
        return example

    def step(self, action):
        return StepResult("", float(len(action)), True, {"turn": 1})


class EchoEnv:
    """Answers every action with OBS; the third action ends the episode (reward = turn)."""

    name, max_turns, max_observation_tokens = "echo", 3, None
    OBS = "xyz"

    def __init__(self):
        self.seen = []

    def reset(self, example):
        self.example = example
        return example

    def step(self, action):
        self.seen.append(action)
        turn = len(self.seen)
        if self.example == "raise" and turn == 2:
            raise RuntimeError("tool crashed")
        if self.example == "hang" and turn == 1:
            time.sleep(3.0)
        info = {"turn": turn, "tool_call": int(turn < 3), "invalid_call": 0}
        return StepResult(self.OBS, float(turn), turn >= 3, info)


@pytest.fixture(scope="module")
def params():
    p = models.init_params(CONFIG, jax.random.key(0))
    return jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, p)


@pytest.mark.parametrize(
    "b,n,knobs", [(3, 2, {}), (5, 2, {"top_p": 0.9}), (2, 2, {"greedy": True})]
)
def test_one_turn_env_equals_generate(params, b, n, knobs):
    """Rows <= 8 (unstacked layers) and > 8 (stacked), plain / top-p / greedy draws."""
    sampling = SamplingParams(max_new_tokens=12, n=n, stop_token_ids=(2,), **knobs)
    examples = ["hello", "a longer prompt", "xy", "qq", "abcabc"][:b]
    ro, stats, _ = run_episodes(
        params,
        CONFIG,
        OneTurnEnv,
        examples,
        jax.random.key(3),
        sampling,
        TurnParams(max_turns=1),
        tokenizer=CharTokenizer(),
        bucket_lengths=BUCKETS,
    )
    prompts = PromptBatch(tokens=ro.prompt_tokens[::n], mask=ro.prompt_mask[::n])
    ref = generate(params, CONFIG, prompts, jax.random.key(3), sampling)
    for f in ("prompt_tokens", "prompt_mask", "tokens", "mask", "sampler_logp", "truncated"):
        np.testing.assert_array_equal(np.asarray(getattr(ro, f)), np.asarray(getattr(ref, f)), f)
    np.testing.assert_array_equal(ro.loss_mask, np.asarray(ref.mask))
    np.testing.assert_array_equal(stats.returns, np.asarray(ref.mask).sum(1))
    assert (stats.turns == 1).all()


def _teacher_forced_logp(params, prompt_tokens, prompt_mask, tokens, mask):
    seq = np.concatenate([prompt_tokens, tokens], 1)
    m = np.concatenate([prompt_mask, mask], 1)
    pos = np.maximum(np.cumsum(m, 1) - 1, 0)
    logits, _ = models.apply(CONFIG, params, seq, pos, m)
    lp = jax.nn.log_softmax(np.asarray(logits, np.float32), -1)
    p = prompt_tokens.shape[1]
    pred = np.asarray(lp)[:, p - 1 : -1]
    return np.take_along_axis(pred, tokens[..., None], -1)[..., 0]


def test_observations_land_with_loss_mask_zero(params):
    """Three actions of 3 tokens (the action limit; no stop ids), 'xyz' after the first two."""
    envs = []

    def make():
        envs.append(EchoEnv())
        return envs[-1]

    tok = CharTokenizer()
    sampling = SamplingParams(max_new_tokens=20, n=2)
    ro, stats, completions = run_episodes(
        params,
        CONFIG,
        make,
        ["abc", "defgh"],
        jax.random.key(1),
        sampling,
        TurnParams(max_turns=3, max_action_tokens=3, max_observation_tokens=8),
        tokenizer=tok,
        bucket_lengths=BUCKETS,
    )
    obs = tok.encode(EchoEnv.OBS)
    pol = [1, 1, 1, 0, 0, 0] * 2 + [1, 1, 1] + [0] * 5
    for r in range(4):
        np.testing.assert_array_equal(ro.mask[r], [1] * 15 + [0] * 5)
        np.testing.assert_array_equal(ro.loss_mask[r], pol)
        np.testing.assert_array_equal(ro.tokens[r, 3:6], obs)
        np.testing.assert_array_equal(ro.tokens[r, 9:12], obs)
        assert (ro.sampler_logp[r][np.array(pol) == 0] == 0).all()
        assert (ro.sampler_logp[r][np.array(pol) == 1] < 0).all()
        np.testing.assert_array_equal(ro.turn_ids[r], [0] * 6 + [1] * 6 + [2] * 3 + [-1] * 5)
        np.testing.assert_array_equal(np.flatnonzero(ro.turn_rewards[r]), [2, 8, 14])
        np.testing.assert_array_equal(ro.turn_rewards[r, [2, 8, 14]], [1.0, 2.0, 3.0])
        # the environment saw exactly the decoded policy tokens of each action
        for k, start in enumerate((0, 6, 12)):
            assert envs[r].seen[k] == tok.decode(ro.tokens[r, start : start + 3])
        np.testing.assert_array_equal(stats.turn_starts[r], [0, 6, 12])
        np.testing.assert_array_equal(stats.turn_ends[r], [3, 9, 15])
    np.testing.assert_array_equal(stats.turns, 3)
    np.testing.assert_array_equal(stats.tool_calls, 2)
    np.testing.assert_array_equal(stats.returns, 6.0)
    assert not ro.truncated.any()
    assert completions[0] == tok.decode(ro.tokens[0, :15])
    # Log-probs of the policy tokens equal a teacher-forced pass over the interleaved sequence.
    ref = _teacher_forced_logp(params, ro.prompt_tokens, ro.prompt_mask, ro.tokens, ro.mask)
    keep = ro.loss_mask > 0
    np.testing.assert_allclose(ro.sampler_logp[keep], ref[keep], rtol=1e-4, atol=1e-4)


def test_raising_and_hanging_env_steps_are_counted(params):
    """'raise' fails at its 2nd step, 'hang' outlives the time limit at its 1st: each ends its
    own episodes with a counted error; the other example's episodes play to the end."""
    sampling = SamplingParams(max_new_tokens=20, n=2)
    t0 = time.monotonic()
    ro, stats, _ = run_episodes(
        params,
        CONFIG,
        EchoEnv,
        ["raise", "hang", "fine"],
        jax.random.key(1),
        sampling,
        TurnParams(max_turns=3, max_action_tokens=3, max_observation_tokens=8, step_timeout_s=0.5),
        tokenizer=CharTokenizer(),
        bucket_lengths=BUCKETS,
    )
    assert time.monotonic() - t0 < 60  # the hanging steps were not waited for
    np.testing.assert_array_equal(stats.errors, [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(stats.timeouts, [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(stats.turns, [2, 2, 1, 1, 3, 3])
    np.testing.assert_array_equal(ro.mask.sum(1), [9, 9, 3, 3, 15, 15])
    np.testing.assert_array_equal(stats.returns, [1.0, 1.0, 0.0, 0.0, 6.0, 6.0])


def test_run_parallel_orders_results_and_limits_time():
    def boom():
        raise ValueError("bad")

    out = run_parallel(
        [lambda: 1, boom, lambda: time.sleep(2.0), lambda: 4], timeout_s=0.3, workers=2
    )
    assert out[0] == ("ok", 1) and out[3] == ("ok", 4)
    assert out[1] == ("error", "ValueError: bad")
    assert out[2] == ("timeout", None)


def test_tokens_outside_mask_are_zero(params):
    ro, _, _ = run_episodes(
        params,
        CONFIG,
        EchoEnv,
        ["abc"],
        jax.random.key(2),
        SamplingParams(max_new_tokens=10, n=1),
        TurnParams(max_turns=3, max_action_tokens=4, max_observation_tokens=8),
        tokenizer=CharTokenizer(),
        bucket_lengths=BUCKETS,
    )
    # 4 + 3 obs, then the second action gets the 2 slots left... budget 10: 4+3+3 = 10 ends it
    assert ro.truncated[0]
    assert int(ro.mask.sum()) == 10
    assert jnp.asarray(ro.loss_mask).sum() == 7
