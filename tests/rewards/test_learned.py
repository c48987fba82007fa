"""The learned reward inside the RL step: on-device scoring of a `Rollout` equals a separate
forward pass of each unpadded sequence (one device and the 8-device mesh), tokenizer checks,
and the combination of reward terms against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models, parallel
from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm.rewards import learned
from jaxrl_llm.rewards import model as rm_model
from jaxrl_llm.trainers import config as config_lib
from tests.trainers.conftest import small_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random reward model with the builtin tokenizer, saved as a reward-model folder."""
    root = tmp_path_factory.mktemp("rm")
    tokenizer = models.load_tokenizer(models.build_builtin_tokenizer(str(root / "tok")))
    config = models.ModelConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        qkv_bias=True,
        architecture="qwen2",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    params = models.init_value_params(config, jax.random.key(3))
    # a non-zero head, so the score depends on the whole sequence
    params["value_head"]["kernel"] = jax.random.normal(jax.random.key(4), (32,)) * 0.5
    path = str(root / "reward_model")
    rm_model.save_reward_model(path, config, params, tokenizer=tokenizer)
    return path, tokenizer, config, params


def _rollout(tokenizer, rng):
    """8 rows: left-padded prompts of 3-7 tokens, right-padded completions of 0-5 tokens."""
    p, t, rows = 8, 6, 8
    prompt_tokens = np.zeros((rows, p), np.int32)
    prompt_mask = np.zeros((rows, p), np.int32)
    tokens = np.zeros((rows, t), np.int32)
    mask = np.zeros((rows, t), np.int32)
    seqs = []
    for i in range(rows):
        pl, cl = int(rng.integers(3, 8)), int(rng.integers(0, 6))
        pr = rng.integers(4, len(tokenizer), size=pl)
        co = rng.integers(4, len(tokenizer), size=cl)
        prompt_tokens[i, p - pl :], prompt_mask[i, p - pl :] = pr, 1
        tokens[i, :cl], mask[i, :cl] = co, 1
        seqs.append(np.concatenate([pr, co]))
    ro = rollout_lib.Rollout(
        prompt_tokens=jnp.asarray(prompt_tokens),
        prompt_mask=jnp.asarray(prompt_mask),
        tokens=jnp.asarray(tokens),
        mask=jnp.asarray(mask),
        sampler_logp=jnp.zeros((rows, t), jnp.float32),
        group_id=jnp.arange(rows, dtype=jnp.int32) // 2,
        truncated=jnp.zeros((rows,), bool),
    )
    return ro, seqs


def _reference(config, params, seqs):
    """The value head at the last token of each unpadded sequence, one forward per row."""
    out = []
    for s in seqs:
        ids = jnp.asarray(s, jnp.int32)[None]
        pos = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
        values = models.apply_value(config, params, ids, pos, jnp.ones_like(ids))
        out.append(float(values[0, -1]))
    return np.array(out, np.float32)


def test_on_device_score_equals_a_separate_forward_pass(folder):
    path, tokenizer, config, params = folder
    ro, seqs = _rollout(tokenizer, np.random.default_rng(0))
    want = _reference(config, params, seqs)
    lr = learned.LearnedReward(path, vocab=tokenizer.get_vocab())
    got = lr.rewards(ro)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.std(want) > 1e-3  # the rows really differ

    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = parallel.DEFAULT_RULES
    sharded = learned.LearnedReward(path, vocab=tokenizer.get_vocab(), mesh=mesh, rules=rules)
    ro_sharded = jax.device_put(ro, parallel.row_sharding(mesh, rules))
    out = sharded.score(ro_sharded)
    assert out.sharding.is_equivalent_to(parallel.row_sharding(mesh, rules), 1)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


def test_a_different_tokenizer_rescores_the_retokenised_texts(folder):
    """A policy tokenizer other than the folder's: completions are re-tokenised on the host;
    each score equals a forward pass of BOS + prompt + completion (+ EOS unless truncated) in
    the reward model's tokenizer, on one device and on the 8-device mesh."""
    path, tokenizer, config, params = folder
    vocab = dict(tokenizer.get_vocab())
    vocab["<extra>"] = len(vocab)
    rng = np.random.default_rng(1)
    prompts = ["".join(rng.choice(list("0123456789+-*="), rng.integers(1, 9))) for _ in range(6)]
    completions = ["".join(rng.choice(list("0123456789"), rng.integers(0, 12))) for _ in range(6)]
    truncated = np.array([False, True, False, False, True, False])
    ro = rollout_lib.Rollout(  # the policy's ids are not read on this path
        prompt_tokens=jnp.zeros((6, 4), jnp.int32),
        prompt_mask=jnp.ones((6, 4), jnp.int32),
        tokens=jnp.zeros((6, 4), jnp.int32),
        mask=jnp.ones((6, 4), jnp.int32),
        sampler_logp=jnp.zeros((6, 4), jnp.float32),
        group_id=jnp.arange(6, dtype=jnp.int32),
        truncated=jnp.asarray(truncated),
    )
    enc = lambda t: list(tokenizer.encode(t, add_special_tokens=False))
    seqs = [
        [tokenizer.bos_token_id] + enc(p) + enc(c) + ([] if t else [tokenizer.eos_token_id])
        for p, c, t in zip(prompts, completions, truncated)
    ]
    want = _reference(config, params, seqs)
    lr = learned.LearnedReward(path, vocab=vocab)
    assert lr.tokenizer is not None
    np.testing.assert_allclose(lr.rewards(ro, prompts, completions), want, rtol=1e-5, atol=1e-5)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = learned.LearnedReward(path, vocab=vocab, mesh=mesh, rules=parallel.DEFAULT_RULES)
    got = sharded.rewards(ro, prompts, completions)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs the prompt and completion texts"):
        lr.rewards(ro)


def test_not_a_reward_model_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        learned.check_folder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="has no reward_model.json and is not an HF"):
        learned.check_folder(str(tmp_path))


def test_combine_weighted_sum_and_batch_normalisation():
    task = np.array([1.0, 0.0, 1.0, 0.0])
    rm = np.array([2.0, 4.0, 6.0, 8.0])
    total, terms = learned.combine({"task": task, "learned": rm}, {"task": 0.5, "learned": 2.0})
    np.testing.assert_allclose(total, 0.5 * task + 2.0 * rm)
    total, terms = learned.combine(
        {"task": task, "learned": rm}, {"task": 1.0, "learned": 1.0}, normalize="batch"
    )
    z = (rm - 5.0) / (np.sqrt(5.0) + 1e-6)  # mean 5, population std sqrt(5)
    np.testing.assert_allclose(terms["learned"], z, rtol=1e-6)
    np.testing.assert_allclose(total, task + z, rtol=1e-6)
    # weight 0 leaves the term out, even a NaN one
    total, terms = learned.combine(
        {"task": task, "learned": np.full(4, np.nan)}, {"task": 1.0, "learned": 0.0}
    )
    np.testing.assert_array_equal(total, task)
    assert set(terms) == {"task"}


def test_combine_gdpo_normalises_each_term_within_its_group():
    task = np.array([1.0, 0.0, 1.0, 1.0])  # groups of 2: [1, 0], [1, 1]
    rm = np.array([10.0, 30.0, 5.0, 7.0])
    total, terms = learned.combine(
        {"task": task, "learned": rm}, {"task": 1.0, "learned": 3.0}, mode="gdpo", group=2
    )
    eps = 1e-6
    want_task = np.array([0.5 / (0.5 + eps), -0.5 / (0.5 + eps), 0.0, 0.0])
    want_rm = np.array([-10 / (10 + eps), 10 / (10 + eps), -1 / (1 + eps), 1 / (1 + eps)])
    np.testing.assert_allclose(terms["task"], want_task, rtol=1e-6)
    np.testing.assert_allclose(terms["learned"], want_rm, rtol=1e-6)
    np.testing.assert_allclose(total, want_task + 3 * want_rm, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="max"), "combine mode 'max'"),
        (dict(normalize="ema"), "normalize 'ema'"),
        (dict(group=3), "lengths \\[4\\] for groups of 3"),
    ],
)
def test_combine_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        learned.combine({"task": np.zeros(4)}, {"task": 1.0}, **kwargs)
    with pytest.raises(ValueError, match="weight 0"):
        learned.combine({"task": np.zeros(4)}, {"task": 0.0})


def test_config_checks_the_reward_model_before_building(folder, tmp_path):
    path = folder[0]
    c = small_config(**{"reward_terms.task_weight": 0.0})
    with pytest.raises(config_lib.ConfigError, match="set but no reward_model.path or judge"):
        config_lib.validate(c)
    c = small_config(**{"reward_model.weight": 2.0})
    with pytest.raises(config_lib.ConfigError, match="weight = 2.0 set but no reward_model.path"):
        config_lib.validate(c)
    c = small_config(**{"judge.path": str(tmp_path)})
    with pytest.raises(config_lib.ConfigError, match="not a model folder"):
        config_lib.validate(c)
    c = small_config(**{"reward_model.path": str(tmp_path / "nope")})
    with pytest.raises(config_lib.ConfigError, match="config.reward_model.path: .* not a folder"):
        config_lib.validate(c)
    c = small_config(**{"reward_model.path": path, "reward_model.weight": 0.0})
    c.reward_terms.task_weight = 0.0
    with pytest.raises(config_lib.ConfigError, match="are all 0"):
        config_lib.validate(c)
    c = small_config(
        **{"reward_model.path": path, "reward_terms.combine": "gdpo", "algo.advantage": "remax"}
    )
    with pytest.raises(config_lib.ConfigError, match="greedy baseline"):
        config_lib.validate(c)
    config_lib.validate(small_config(**{"reward_model.path": path}))
