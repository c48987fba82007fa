"""`Rollout.loss_mask` in the trainer: environment tokens leave every normaliser and loss term;
without a loss mask (single-turn) the batch is unchanged; turn-level credit and the GAE option."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.losses import aggregation as agg_lib
from jaxrl_llm.losses import gae, group_advantages
from jaxrl_llm.losses.turns import turn_advantages
from jaxrl_llm.rollout import Rollout
from jaxrl_llm.trainers import rl_step, stages
from tests.trainers.conftest import small_config

T, G = 10, 2


def _multi_turn(seed=0):
    """4 rows: actions of policy tokens (1) and observations (0) interleaved, per-turn rewards."""
    rng = np.random.default_rng(seed)
    layouts = [
        [1, 1, 0, 0, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    ]
    turns = [
        [0, 0, 0, 0, 1, 1, 1, -1, -1, -1],
        [0, 0, 0, 0, 0, 0, 1, -1, -1, -1],
        [0, 0, 0, 1, 1, 1, 2, 2, -1, -1],
        [0, 0, 0, 0, 0, 0, -1, -1, -1, -1],
    ]
    loss_mask = np.array(layouts, np.int32)
    turn_ids = np.array(turns, np.int32)
    mask = (turn_ids >= 0).astype(np.int32)
    turn_rewards = np.zeros((4, T), np.float32)
    for r in range(4):
        for k in range(turn_ids[r].max() + 1):
            last = np.flatnonzero((turn_ids[r] == k) & (loss_mask[r] > 0))[-1]
            turn_rewards[r, last] = rng.choice([0.0, 0.5, 1.0])
    ro = Rollout(
        prompt_tokens=np.ones((4, 3), np.int32),
        prompt_mask=np.ones((4, 3), np.int32),
        tokens=rng.integers(3, 40, size=(4, T)).astype(np.int32) * mask,
        mask=mask,
        sampler_logp=(-rng.random((4, T))).astype(np.float32) * loss_mask,
        group_id=np.arange(4, dtype=np.int32) // G,
        truncated=np.zeros(4, bool),
        loss_mask=loss_mask,
        turn_ids=turn_ids,
        turn_rewards=turn_rewards,
    )
    return ro, turn_rewards.sum(1)


def _config(**kw):
    base = {"train.samples_per_prompt": G, "train.prompts_per_step": 2, "rollout.max_new_tokens": T}
    return small_config(**{**base, **kw})


def _build(c, ro, rewards, programs=None):
    state = types.SimpleNamespace(
        kl_coef=jnp.float32(0.0), params=None, ref_params=None, critic_params=None
    )
    n = ro.tokens.shape[0]
    return stages.build_batch(
        c,
        programs,
        state,
        ro,
        rewards,
        (rewards >= 1).astype(np.float32),
        np.ones(n, np.float32),
        micro_rows=n,
        needs_ref=False,
    )


def _numpy_agg(x, m, mode, c_norm):
    m = m.astype(np.float64)
    if mode == "token-mean":
        return (x * m).sum() / m.sum()
    kept = m.max(1) > 0
    if mode == "seq-mean-token-mean":
        return ((x * m).sum(1)[kept] / m.sum(1)[kept]).mean()
    assert mode == "seq-mean-token-sum-norm"  # Dr. GRPO's constant normaliser
    return (x * m).sum() / (kept.sum() * c_norm)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_environment_tokens_leave_every_normaliser(mode):
    ro, rewards = _multi_turn()
    c = _config(**{"algo.aggregation": mode})
    _, batch = _build(c, ro, rewards)
    # token by token: the loss mask is the policy mask, never an environment token
    np.testing.assert_array_equal(np.asarray(batch.mask), ro.loss_mask)
    np.testing.assert_array_equal(np.asarray(batch.token_mask), ro.loss_mask)
    assert np.asarray(batch.mask)[(ro.mask > 0) & (ro.loss_mask == 0)].sum() == 0
    x = np.random.default_rng(1).normal(size=(4, T)).astype(np.float32)
    num_tokens, num_seqs = rl_step.batch_counts(batch.mask)
    got = agg_lib.aggregate(
        x, batch.mask, mode, num_tokens=num_tokens, num_seqs=num_seqs, norm_constant=float(T)
    )
    want = _numpy_agg(x, ro.loss_mask, mode, T)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    wrong = _numpy_agg(x, ro.mask, mode, T)  # what counting observation tokens would give
    assert abs(want - wrong) > 1e-3
    # advantages (GRPO on the episode return) sit on policy tokens only
    adv = np.asarray(batch.advantages) * np.asarray(batch.mask)
    grpo = np.asarray(group_advantages(rewards, G))
    np.testing.assert_allclose(adv, grpo[:, None] * ro.loss_mask, rtol=1e-5, atol=1e-6)


def _single_turn_twin(ro):
    """The same rows as a single-turn rollout and as a one-turn multi-turn rollout."""
    mask = ro.mask
    last = mask.sum(1) - 1
    tr = np.zeros(mask.shape, np.float32)
    rewards = np.array([1.0, 0.0, 0.5, 1.0], np.float32)
    tr[np.arange(4), last] = rewards
    single = ro.replace(loss_mask=None, turn_ids=None, turn_rewards=None)
    one_turn = ro.replace(loss_mask=mask, turn_ids=np.where(mask > 0, 0, -1), turn_rewards=tr)
    return single, one_turn, rewards


@pytest.mark.parametrize("credit", ["episode", "turn"])
def test_one_turn_rollout_builds_the_same_batch(credit):
    ro, _ = _multi_turn()
    single, one_turn, rewards = _single_turn_twin(ro)
    c = _config(**{"env.credit": credit})
    _, a = _build(c, single, rewards)
    _, b = _build(c, one_turn, rewards)
    np.testing.assert_array_equal(np.asarray(a.mask), single.mask.astype(np.float32))
    for f in ("mask", "token_mask", "old_logp", "tokens"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), f)
    if credit == "episode":
        np.testing.assert_array_equal(np.asarray(a.advantages), np.asarray(b.advantages))
    else:  # GRPO over one turn: the same numbers, through the turn-level estimator
        np.testing.assert_allclose(np.asarray(a.advantages), np.asarray(b.advantages), atol=1e-6)


def test_turn_credit_uses_per_turn_returns():
    ro, rewards = _multi_turn()
    _, episode = _build(_config(), ro, rewards)
    _, turn = _build(_config(**{"env.credit": "turn", "env.turn_gamma": 0.9}), ro, rewards)
    want = turn_advantages(ro.turn_rewards, ro.turn_ids, ro.loss_mask, G, gamma=0.9)
    np.testing.assert_allclose(np.asarray(turn.advantages), np.asarray(want), atol=1e-6)
    assert not np.allclose(np.asarray(turn.advantages), np.asarray(episode.advantages))


@pytest.mark.parametrize("through_obs", [False, True])
def test_gae_over_observations_is_a_named_option(through_obs):
    ro, rewards = _multi_turn()
    values = np.random.default_rng(2).normal(size=(4, T)).astype(np.float32)
    programs = types.SimpleNamespace(values=lambda *a, **k: jnp.asarray(values))
    c = _config(
        **{
            "algo.advantage": "gae",
            "algo.lam": 0.8,
            "critic.enabled": True,
            "env.credit": "turn",
            "env.gae_over_observations": through_obs,
        }
    )
    out, batch = _build(c, ro, rewards, programs)
    token_rewards = np.asarray(out.token_rewards)
    np.testing.assert_allclose(token_rewards, ro.turn_rewards * ro.loss_mask, atol=1e-7)
    over = ro.mask if through_obs else ro.loss_mask
    want, _ = gae(token_rewards, values, over, gamma=1.0, lam=0.8)
    other, _ = gae(
        token_rewards, values, ro.loss_mask if through_obs else ro.mask, gamma=1.0, lam=0.8
    )
    keep = ro.loss_mask > 0
    got = np.asarray(batch.advantages)[keep]
    np.testing.assert_allclose(got, np.asarray(want)[keep], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, np.asarray(other)[keep], atol=1e-3)
