"""Sequence packing (`trainers/packing.py`, `models.apply(..., segment_ids=)`): packed
log-probs and their gradients equal the unpacked per-row pass; segments do not see each
other; placement and its errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.trainers import packing
from jaxrl_llm.trainers.state import completion_logprobs

CONFIG = models.ModelConfig.tiny(vocab_size=96, qkv_bias=True, architecture="qwen2")
P, T = 6, 7


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(lambda x: x * 3.0, models.init_params(CONFIG, jax.random.key(0)))


@pytest.fixture(scope="module")
def rows():
    """6 rows: left-padded prompts of 1..6 tokens, completions of 1..7 tokens."""
    rng = np.random.default_rng(0)
    plen, clen = [1, 6, 3, 2, 5, 4], [7, 1, 4, 6, 2, 5]
    pt = np.zeros((6, P), np.int32)
    pm = np.zeros((6, P), np.int32)
    tok = np.zeros((6, T), np.int32)
    mask = np.zeros((6, T), np.int32)
    for r, (a, b) in enumerate(zip(plen, clen)):
        pt[r, P - a :], pm[r, P - a :] = rng.integers(1, 96, a), 1
        tok[r, :b], mask[r, :b] = rng.integers(1, 96, b), 1
    return pt, pm, tok, mask


def _unpacked(params, rows, temperature=1.0):
    pt, pm, tok, mask = rows
    lp, _ = completion_logprobs(CONFIG, params, pt, pm, tok, temperature=temperature)
    return jnp.where(mask > 0, lp, 0.0)


@pytest.mark.parametrize("budget, max_packs", [(13, 6), (16, 4), (40, 2)])
def test_packed_logprobs_and_gradients_equal_unpacked(params, rows, budget, max_packs):
    pt, pm, tok, mask = rows
    plan = packing.plan_packs(packing.row_lengths(pm, mask), budget, max_packs)
    packed = packing.pack_rows(pt, pm, tok, mask, plan)
    assert packed.tokens.shape == (max_packs, budget)
    if budget > 13:
        assert (np.bincount(plan.pack) > 1).any()  # rows really share packs
    got = packing.packed_completion_logprobs(CONFIG, params, packed, temperature=0.7)
    want = _unpacked(params, rows, temperature=0.7)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)

    weights = jnp.asarray(np.random.default_rng(1).normal(size=mask.shape), jnp.float32)

    def loss(fn):
        return lambda p: jnp.sum(fn(p) * weights)

    g_packed = jax.grad(
        loss(lambda p: packing.packed_completion_logprobs(CONFIG, p, packed, temperature=0.7))
    )(params)
    g_plain = jax.grad(loss(lambda p: _unpacked(p, rows, temperature=0.7)))(params)
    for a, b in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=1e-4)


def test_segments_do_not_see_each_other(params, rows):
    """Changing every token of one row changes no other row's log-probs in its pack; without
    segment ids (one long causal row) they do change."""
    pt, pm, tok, mask = rows
    plan = packing.plan_packs(packing.row_lengths(pm, mask), 40, 2)
    base = packing.pack_rows(pt, pm, tok, mask, plan)
    victim = int(np.flatnonzero(plan.offset == 0)[0])
    neighbours = [r for r in range(6) if plan.pack[r] == plan.pack[victim] and r != victim]
    assert neighbours
    tok2, pt2 = tok.copy(), pt.copy()
    tok2[victim] = (tok2[victim] + 5) % 96 * (mask[victim] > 0)
    pt2[victim] = np.where(pm[victim] > 0, (pt2[victim] + 7) % 96, 0)
    changed = packing.pack_rows(pt2, pm, tok2, mask, plan)
    a = packing.packed_completion_logprobs(CONFIG, params, base)
    b = packing.packed_completion_logprobs(CONFIG, params, changed)
    np.testing.assert_array_equal(np.asarray(a)[neighbours], np.asarray(b)[neighbours])
    leaky = [packing.Packed(**{**vars(x), "segment_ids": (x.mask > 0).astype(np.int32)}) for x in (base, changed)]  # fmt: skip
    a, b = (packing.packed_completion_logprobs(CONFIG, params, x) for x in leaky)
    assert not np.allclose(np.asarray(a)[neighbours], np.asarray(b)[neighbours])


def test_plan_is_first_fit_and_refuses_what_does_not_fit():
    plan = packing.plan_packs([5, 4, 3, 2, 6], budget=8, max_packs=3)
    np.testing.assert_array_equal(plan.pack, [0, 1, 0, 1, 2])
    np.testing.assert_array_equal(plan.offset, [0, 0, 5, 4, 0])
    assert plan.used == 3
    with pytest.raises(ValueError, match="row 1 holds 9 tokens > budget 8"):
        packing.plan_packs([3, 9], budget=8, max_packs=4)
    with pytest.raises(ValueError, match="need 3 packs of 8; max_packs is 2"):
        packing.plan_packs([5, 5, 5], budget=8, max_packs=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        packing.plan_packs([1], budget=0, max_packs=1)


def test_segment_ids_are_refused_with_a_cache(params):
    cache = models.init_cache(CONFIG, 1, 4)
    one = jnp.ones((1, 1), jnp.int32)
    with pytest.raises(ValueError, match="cache-free"):
        models.apply(CONFIG, params, one, one * 0, one, cache, segment_ids=one)


@pytest.mark.parametrize("vocab_block", [0, 40])
def test_one_pack_per_call_equals_the_padded_pass(params, rows, vocab_block):
    """The trainer's no-gradient path: `slot_logprobs` on one [1, budget] pack per call,
    gathered back per row, equals the padded pass (vocabulary-blocked head included)."""
    pt, pm, tok, mask = rows
    plan = packing.plan_packs(packing.row_lengths(pm, mask), 16, max_packs=6)
    packed = packing.pack_rows(pt, pm, tok, mask, plan)
    calls = []

    def run_pack(*xs):
        calls.append(xs[0].shape)
        return packing.slot_logprobs(CONFIG, params, *xs, temperature=0.7, vocab_block=vocab_block)

    got = packing.packed_logprobs_by_pack(run_pack, packed)
    np.testing.assert_allclose(got, np.asarray(_unpacked(params, rows, 0.7)), atol=2e-5, rtol=0)
    assert calls == [(1, 16)] * plan.used


def test_a_packed_run_matches_the_padded_run(tmp_path, sft_checkpoint):
    """GRPO with a KL term (reference log-probs every step) and recomputed old log-probs: with
    `train.pack_budget` both passes run packed, and with `train.micro_tokens` the update too
    (token-budget micro-batches); 3 steps match the padded run."""
    from jaxrl_llm.trainers import rl
    from tests.trainers.conftest import recipe_overrides, small_config

    runs = {}
    for budget, micro_tokens in ((0, 0), (64, 0), (64, 128)):
        c = small_config(
            **recipe_overrides(sft_checkpoint),
            **{
                "train.steps": 3,
                "train.prompts_per_step": 8,
                "train.samples_per_prompt": 4,
                "algo.kl.coef": 0.05,
                "algo.recompute_old_logp": True,
                "rollout.prompt_buckets": (16, 32),
                "train.pack_budget": budget,
                "train.micro_tokens": micro_tokens,
                "eval.size": 16,
                "checkpoint.every": 0,
            },
        )
        workdir = str(tmp_path / f"{budget}_{micro_tokens}")
        runs[budget, micro_tokens] = rl.Trainer(c, workdir).run(log=lambda *a: None)
    a, b, u = ({h["step"]: h for h in run["history"] if "train/kl" in h} for run in runs.values())
    assert sorted(a) == sorted(b) == sorted(u) == [1, 2, 3]
    for step in a:
        for other in (b, u):
            assert a[step]["train/reward"] == other[step]["train/reward"], step
            for k in ("train/kl", "train/loss/total", "train/grad_norm"):
                np.testing.assert_allclose(a[step][k], other[step][k], rtol=1e-3, atol=1e-6, err_msg=k)  # fmt: skip
    assert a[3]["train/kl"] > 0
    logged = {}
    for name in ("64_0", "64_128"):
        with open(os.path.join(str(tmp_path / name), "metrics.jsonl")) as f:
            lines = [json.loads(x).get("scalars", {}) for x in f]
        logged[name] = [r for r in lines if "train/loss/total" in r]
    assert len(logged["64_128"]) == 3
    assert all("train/packed/micro_batches" not in r for r in logged["64_0"])
    for r in logged["64_128"]:
        # 32 rows of up to 32 + max_new_tokens tokens in 128-token micro-batches: several
        assert r["train/packed/micro_batches"] >= 2
        assert 0 < r["train/packed/fill"] <= 1


def test_a_pack_budget_below_the_longest_row_is_a_config_error():
    from jaxrl_llm.trainers import config as config_lib
    from tests.trainers.conftest import small_config

    c = small_config(**{"train.pack_budget": 100, "rollout.prompt_buckets": (16, 128)})
    with pytest.raises(config_lib.ConfigError, match=r"train\.pack_budget = 100 cannot hold"):
        config_lib.validate(c)


def test_vmapped_seeds_refuse_packing(tmp_path):
    from jaxrl_llm.trainers import config as config_lib
    from jaxrl_llm.trainers import seeds
    from tests.trainers.conftest import small_config

    c = small_config(**{"train.pack_budget": 1024})
    with pytest.raises(config_lib.ConfigError, match="cannot run as vmapped seeds"):
        seeds.SeedsTrainer(c, [str(tmp_path / "a"), str(tmp_path / "b")], [0, 1])
