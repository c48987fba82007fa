"""The jitted RL update: exact gradient accumulation over unequal micro-batches, NaN skipping."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_llm import models
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl_step
from jaxrl_llm.trainers.state import TrainState, completion_logprobs

N, P, T = 8, 5, 6


@pytest.fixture(scope="module")
def setup():
    mc = models.ModelConfig.tiny(vocab_size=32)
    params = models.init_params(mc, jax.random.key(0))
    rng = np.random.default_rng(0)
    pt = rng.integers(3, 32, (N, P)).astype(np.int32)
    pm = np.ones((N, P), np.int32)
    pm[:4, :2] = 0  # left padding on half the rows
    toks = rng.integers(3, 32, (N, T)).astype(np.int32)
    lengths = np.array([6, 1, 2, 6, 3, 5, 1, 4])  # micro-batches of unequal token counts
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    mask[5] *= 0.0  # a row left out (PSR-style weight 0)
    adv = rng.normal(size=(N, 1)).astype(np.float32) * mask
    old = np.asarray(completion_logprobs(mc, params, pt, pm, toks)[0]) + rng.normal(
        scale=0.05, size=(N, T)
    ).astype(np.float32)
    batch = rl_step.TrainBatch(
        prompt_tokens=jnp.asarray(pt),
        prompt_mask=jnp.asarray(pm),
        tokens=jnp.asarray(toks),
        mask=jnp.asarray(mask),
        old_logp=jnp.asarray(old),
        advantages=jnp.asarray(adv),
        ref_logp=jnp.asarray(old) - 0.1,
    )
    return mc, params, batch


def _settings(agg, policy_loss="ppo_clip", kl=0.0, entropy=0.0):
    c = config_lib.base_config()
    c.unlock()
    c.algo.aggregation = agg
    c.algo.policy_loss = policy_loss
    c.algo.kl.coef = kl
    c.algo.entropy_coef = entropy
    c.rollout.max_new_tokens = T
    return rl_step.LossSettings.from_config(c)


def _step(mc, params, batch, s, num_micro):
    opt = optax.sgd(1.0)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        kl_coef=jnp.asarray(0.05, jnp.float32),
    )
    fn = jax.jit(
        functools.partial(
            rl_step.train_step,
            model_config=mc,
            s=s,
            num_micro=num_micro,
            optimizer=opt,
            critic_optimizer=None,
            policy_warmup=0,
        )
    )
    new_state, metrics = fn(state, batch)
    grads = jax.tree.map(lambda a, b: a - b, params, new_state.params)  # sgd(1): Δ = −grad
    return grads, metrics


@pytest.mark.parametrize("agg", list(config_lib.AGGREGATIONS))
def test_micro_batches_equal_full_batch(setup, agg):
    mc, params, batch = setup
    s = _settings(agg, kl=0.05, entropy=0.01)
    g1, m1 = _step(mc, params, batch, s, 1)
    for num_micro in (2,):
        g, m = _step(mc, params, batch, s, num_micro)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g)):
            np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)
        np.testing.assert_allclose(m1["loss/total"], m["loss/total"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m1["entropy"], m["entropy"], rtol=1e-5)
        np.testing.assert_allclose(m1["kl"], m["kl"], rtol=1e-5)
    assert float(jnp.abs(jax.tree.leaves(g1)[0]).sum()) > 0


def test_non_finite_loss_skips_update(setup):
    mc, params, batch = setup
    bad = batch.replace(advantages=batch.advantages.at[0, 0].set(jnp.nan))
    g, m = _step(mc, params, bad, _settings("token-mean"), 2)
    assert float(m["skipped"]) == 1.0
    for leaf in jax.tree.leaves(g):
        assert float(jnp.abs(leaf).max()) == 0.0


def test_loss_matches_hand_computed_reinforce(setup):
    """On-policy reinforce with token-mean: loss = -Σ A·logp / Σ mask."""
    mc, params, batch = setup
    lp = completion_logprobs(mc, params, batch.prompt_tokens, batch.prompt_mask, batch.tokens)[0]
    b = batch.replace(old_logp=lp, ref_logp=None)
    _, m = _step(mc, params, b, _settings("token-mean", policy_loss="reinforce"), 2)
    expected = -np.sum(np.asarray(b.advantages) * np.asarray(lp) * np.asarray(b.mask)) / np.sum(
        np.asarray(b.mask)
    )
    np.testing.assert_allclose(float(m["loss/total"]), expected, rtol=1e-5)


@pytest.mark.parametrize("micro_rows", [8, 2, 3])
def test_chunked_logprobs_and_row_selection_on_a_mesh(setup, micro_rows):
    """`RLPrograms.logprobs` in `micro_rows` chunks (strided when they divide N, slices when not)
    = one full forward pass, row for row, on a batch split over 8 devices; `select_rows` picks
    exactly the asked rows, in the asked order, laid out with the batch sharding."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as PS

    mc, params, batch = setup
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows, repl = NamedSharding(mesh, PS("data")), NamedSharding(mesh, PS())
    c = config_lib.base_config()
    c.unlock()
    c.rollout.max_new_tokens = T
    batch_sh = jax.tree.map(lambda _: rows, batch)
    programs = rl_step.RLPrograms(
        c, mc, optax.sgd(1.0), None, state_shardings=None, batch_sharding=batch_sh, replicated=repl
    )
    sharded = jax.device_put(batch, batch_sh)
    want = np.asarray(
        completion_logprobs(mc, params, batch.prompt_tokens, batch.prompt_mask, batch.tokens)[0]
    )
    got = programs.logprobs(params, sharded, micro_rows)
    assert got.sharding.is_equivalent_to(rows, 2)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)

    idx = np.roll(np.array([5, 0, 3, 6, 1, 2, 7, 4]), micro_rows)
    picked = programs.select_rows(sharded, idx)
    for name in ("tokens", "mask", "advantages", "ref_logp"):
        np.testing.assert_array_equal(
            np.asarray(getattr(picked, name)), np.asarray(getattr(batch, name))[idx], err_msg=name
        )
    assert picked.tokens.sharding.is_equivalent_to(rows, 2)


def test_vocab_blocked_log_probs_give_the_same_update(setup):
    """`train.vocab_block` (online log-sum-exp over vocabulary blocks, a ragged last block
    here: 32 = 12 + 12 + 8) changes how the update is computed, not what it computes."""
    mc, params, batch = setup
    plain = _settings("token-mean", kl=0.1, entropy=0.01)
    blocked = dataclasses.replace(plain, vocab_block=12)
    g0, m0 = _step(mc, params, batch, plain, 2)
    g1, m1 = _step(mc, params, batch, blocked, 2)
    for k in ("loss/total", "loss/kl", "entropy", "grad_norm"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)


# ----------------------------------------------------------------------------- rollout correction
def _corrected(s, kind, level="token", threshold=2.0, low=None):
    return dataclasses.replace(
        s,
        rollout_correction=kind,
        correction_level=level,
        correction_threshold=threshold,
        correction_low=low,
    )


@pytest.mark.parametrize(
    "kind,level", [("tis", "token"), ("tis", "sequence"), ("mis", "token"), ("mis", "geometric")]
)
def test_rollout_correction_on_policy_is_the_plain_update(setup, kind, level):
    """Sampler log-probs equal to the trainer's: every weight is 1 and nothing is dropped, so the
    corrected update is the uncorrected one, bit for bit."""
    mc, params, batch = setup
    s = _settings("token-mean", kl=0.05, entropy=0.01)
    g0, m0 = _step(mc, params, batch, s, 2)
    g1, m1 = _step(
        mc, params, batch.replace(rollout_logp=batch.old_logp), _corrected(s, kind, level), 2
    )
    jax.tree.map(np.testing.assert_array_equal, g1, g0)
    for k in m0:
        np.testing.assert_array_equal(m1[k], m0[k], err_msg=k)
    assert float(m1["correction/logp_gap_abs"]) == 0.0
    assert float(m1["correction/weight_mean"]) == 1.0


def _hand_ppo_terms(mc, params, batch):
    lp = np.asarray(
        completion_logprobs(mc, params, batch.prompt_tokens, batch.prompt_mask, batch.tokens)[0],
        np.float64,
    )
    old, adv = np.asarray(batch.old_logp, np.float64), np.asarray(batch.advantages, np.float64)
    r = np.exp(lp - old)
    return np.maximum(-adv * r, -adv * np.clip(r, 0.8, 1.2))  # ppo_clip, ε = 0.2


@pytest.mark.parametrize("num_micro", [1, 2])
def test_tis_loss_equals_hand_computed_truncated_weights(setup, num_micro):
    """ρ_t = π_old / π_rollout from a constructed gap; TIS loss = Σ m·min(ρ, C)·ℓ_t / Σ m (the
    normaliser is unchanged)."""
    mc, params, batch = setup
    rng = np.random.default_rng(3)
    gap = rng.normal(scale=0.8, size=batch.old_logp.shape).astype(np.float32)
    b = batch.replace(ref_logp=None, rollout_logp=batch.old_logp - gap)
    s = _settings("token-mean")
    C = 1.5
    _, m = _step(mc, params, b, _corrected(s, "tis", threshold=C), num_micro)
    mask = np.asarray(b.mask, np.float64)
    w = np.minimum(np.exp(gap.astype(np.float64)), C)
    assert 0 < ((w == C) & (mask > 0)).sum() < (mask > 0).sum()  # some, not all, truncated
    ell = _hand_ppo_terms(mc, params, b)
    expected = np.sum(mask * w * ell) / np.sum(mask)
    np.testing.assert_allclose(float(m["loss/total"]), expected, rtol=1e-5)
    _, m_plain = _step(mc, params, b, s, num_micro)
    assert abs(float(m_plain["loss/total"]) - expected) > 1e-4  # the weights did something
    np.testing.assert_allclose(
        m["correction/truncated_frac"], np.sum(mask * (w == C)) / np.sum(mask), rtol=1e-5
    )
    np.testing.assert_allclose(
        m["correction/logp_gap"], np.sum(mask * gap) / np.sum(mask), rtol=1e-5, atol=1e-7
    )


def test_mis_drops_tokens_from_the_loss_and_its_normaliser(setup):
    """MIS (token level, keep 1/C ≤ ρ ≤ C): loss = Σ m·keep·ℓ_t / Σ m·keep (verl's convention)."""
    mc, params, batch = setup
    rng = np.random.default_rng(4)
    gap = rng.normal(scale=0.8, size=batch.old_logp.shape).astype(np.float32)
    b = batch.replace(ref_logp=None, rollout_logp=batch.old_logp - gap)
    _, m = _step(mc, params, b, _corrected(_settings("token-mean"), "mis", threshold=1.5), 2)
    mask = np.asarray(b.mask, np.float64)
    keep = (np.abs(gap) <= np.log(1.5)).astype(np.float64)
    assert 0 < np.sum(mask * keep) < np.sum(mask)
    ell = _hand_ppo_terms(mc, params, b)
    expected = np.sum(mask * keep * ell) / np.sum(mask * keep)
    np.testing.assert_allclose(float(m["loss/total"]), expected, rtol=1e-5)
    np.testing.assert_allclose(
        m["correction/masked_frac"], np.sum(mask * (1 - keep)) / np.sum(mask), rtol=1e-5
    )
