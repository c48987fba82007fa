"""Tests for jaxrl_llm.losses.kl: estimators, exact KL, controllers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl_llm.losses.kl import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    KLControllerState,
    full_kl,
    kl_estimate,
)


# ---------------------------------------------------------------------------
# Frozen, readable numpy reference (Schulman 2020, "Approximating KL Divergence").
def np_kl_estimate(logp, ref_logp, kind):
    d = np.asarray(logp, np.float64) - np.asarray(ref_logp, np.float64)
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        return np.exp(-d) + d - 1.0
    if kind == "abs":
        return np.abs(d)
    raise AssertionError(kind)


def np_full_kl(logits, ref_logits):
    def log_softmax(x):
        x = np.asarray(x, np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lp, lq = log_softmax(logits), log_softmax(ref_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    n, t, v = 3, 4, 7
    logits = rng.normal(size=(n, t, v)).astype(np.float32)
    ref_logits = (logits + 0.7 * rng.normal(size=(n, t, v))).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    logp = rng.normal(size=(n, t)).astype(np.float32) - 2.0
    ref_logp = (logp + 0.5 * rng.normal(size=(n, t))).astype(np.float32)
    return dict(logits=logits, ref_logits=ref_logits, mask=mask, logp=logp, ref_logp=ref_logp)


# ---------------------------------------------------------------------------
# kl_estimate
def test_hand_computed_values():
    # d = logp − ref_logp = [1, −1, 0]
    logp = jnp.array([0.0, -1.0, -0.3])
    ref = jnp.array([-1.0, 0.0, -0.3])
    np.testing.assert_allclose(kl_estimate(logp, ref, "k1"), [1.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(kl_estimate(logp, ref, "k2"), [0.5, 0.5, 0.0], atol=1e-6)
    # k3(1) = e^−1 + 1 − 1; k3(−1) = e − 1 − 1
    np.testing.assert_allclose(
        kl_estimate(logp, ref, "k3"), [0.36787944, 0.71828183, 0.0], atol=1e-6
    )
    np.testing.assert_allclose(kl_estimate(logp, ref, "abs"), [1.0, 1.0, 0.0], atol=1e-6)


def test_default_kind_is_k3():
    logp, ref = jnp.array([0.2, -0.4]), jnp.array([-0.1, 0.3])
    np.testing.assert_array_equal(kl_estimate(logp, ref), kl_estimate(logp, ref, "k3"))


@pytest.mark.parametrize("kind", KL_KINDS)
def test_matches_numpy_reference(batch, kind):
    got = kl_estimate(jnp.asarray(batch["logp"]), jnp.asarray(batch["ref_logp"]), kind)
    assert got.dtype == jnp.float32 and got.shape == batch["logp"].shape
    np.testing.assert_allclose(
        got, np_kl_estimate(batch["logp"], batch["ref_logp"], kind), rtol=1e-5, atol=1e-6
    )


def test_k3_small_d_is_precise():
    # exp(−d) + d − 1 ≈ d²/2 for tiny d; naive float32 evaluation would give 0 here.
    d = jnp.array([1e-4, -1e-4], jnp.float32)
    np.testing.assert_allclose(kl_estimate(d, jnp.zeros(2), "k3"), [5e-9, 5e-9], rtol=1e-2)


def test_clamps_follow_verl_convention():
    logp = jnp.array([30.0, -30.0, 0.5])
    ref = jnp.zeros(3)
    # Plain k3 is unclamped: k3(−30) = e^30 − 31.
    np.testing.assert_allclose(kl_estimate(logp, ref, "k3")[1], math.exp(30) - 31, rtol=1e-5)
    # verl low_var_kl: log-ratio to ±20 before exp, result to ±10.
    got = kl_estimate(logp, ref, "k3", clamp=10.0, log_ratio_clamp=20.0)
    np.testing.assert_allclose(got, [10.0, 10.0, math.exp(-0.5) + 0.5 - 1], rtol=1e-6)
    # log-ratio clamp alone: k3(20) = e^−20 + 19, k3(−20) = e^20 − 21.
    got = kl_estimate(logp, ref, "k3", log_ratio_clamp=20.0)
    np.testing.assert_allclose(got[:2], [math.exp(-20) + 19, math.exp(20) - 21], rtol=1e-5)
    # result clamp on k1 is symmetric.
    np.testing.assert_allclose(kl_estimate(logp, ref, "k1", clamp=10.0), [10.0, -10.0, 0.5])


def test_bad_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="k1.*k2.*k3.*abs"):
        kl_estimate(jnp.zeros(2), jnp.zeros(2), kind="k4")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="equal shapes"):
        kl_estimate(jnp.zeros((2, 3)), jnp.zeros((3, 2)))


def test_bf16_inputs_give_float32(batch):
    logp, ref = batch["logp"], batch["ref_logp"]
    got = kl_estimate(jnp.asarray(logp, jnp.bfloat16), jnp.asarray(ref, jnp.bfloat16), "k3")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_kl_estimate(logp, ref, "k3"), rtol=0.05, atol=0.02)


def test_jit_and_vmap_agree(batch):
    logp, ref = jnp.asarray(batch["logp"]), jnp.asarray(batch["ref_logp"])
    eager = kl_estimate(logp, ref, "k3", clamp=10.0)
    jitted = jax.jit(kl_estimate, static_argnames=("kind", "clamp"))(
        logp, ref, kind="k3", clamp=10.0
    )
    vmapped = jax.vmap(lambda a, b: kl_estimate(a, b, "k3", clamp=10.0))(logp, ref)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-6)


@pytest.mark.parametrize("kind", ["k2", "k3"])
def test_grads(kind):
    logp = jnp.array([-0.3, -1.2, -2.0])
    ref = jnp.array([-0.5, -0.9, -2.4])
    check_grads(
        lambda a: jnp.sum(kl_estimate(a, ref, kind)),
        (logp,),
        order=2,
        modes=("rev",),
        atol=1e-2,
        rtol=1e-2,
    )
    # ∂k3/∂logp = 1 − exp(−d); ∂k2/∂logp = d.
    d = logp - ref
    expected = d if kind == "k2" else 1 - jnp.exp(-d)
    np.testing.assert_allclose(
        jax.grad(lambda a: jnp.sum(kl_estimate(a, ref, kind)))(logp), expected, rtol=1e-5
    )


# ---------------------------------------------------------------------------
# Monte Carlo: k1 and k3 are unbiased for KL(π‖π_ref) under y ~ π; k2 is not.
@pytest.fixture(scope="module")
def mc():
    key = jax.random.PRNGKey(0)
    k_pi, k_ref, k_s = jax.random.split(key, 3)
    t, v, m = 3, 8, 200_000
    logits = 1.5 * jax.random.normal(k_pi, (1, t, v))
    ref_logits = logits + jax.random.normal(k_ref, (1, t, v))
    logp_all = jax.nn.log_softmax(logits, -1)[0]  # [T, V]
    ref_all = jax.nn.log_softmax(ref_logits, -1)[0]
    y = jax.random.categorical(k_s, logp_all, axis=-1, shape=(m, t))  # samples from π, [M, T]
    logp = jnp.take_along_axis(logp_all.T, y, axis=0)  # logp_all.T is [V, T]
    ref = jnp.take_along_axis(ref_all.T, y, axis=0)
    exact = full_kl(logits, ref_logits, jnp.ones((1, t)))[0]
    return dict(logp=logp, ref=ref, exact=exact, m=m)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_under_sampling(mc, kind):
    samples = kl_estimate(mc["logp"], mc["ref"], kind)  # [M, T]
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(mc["m"])
    # Tolerance: 5 Monte Carlo standard errors per position (each well below 0.01 here).
    assert np.all(se < 0.01)
    assert np.all(mc["exact"] > 0.05)
    np.testing.assert_array_less(np.abs(mean - mc["exact"]), 5 * se)


def test_k2_is_biased_so_the_monte_carlo_check_has_power(mc):
    samples = kl_estimate(mc["logp"], mc["ref"], "k2")
    se = samples.std(0) / math.sqrt(mc["m"])
    assert np.any(np.abs(samples.mean(0) - mc["exact"]) > 20 * se)


# ---------------------------------------------------------------------------
# full_kl
def test_full_kl_matches_numpy_and_masks(batch):
    got = full_kl(
        jnp.asarray(batch["logits"]), jnp.asarray(batch["ref_logits"]), jnp.asarray(batch["mask"])
    )
    assert got.shape == batch["mask"].shape and got.dtype == jnp.float32
    expected = np_full_kl(batch["logits"], batch["ref_logits"]) * batch["mask"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got) >= 0)
    assert np.all(np.asarray(got)[batch["mask"] == 0] == 0)


def test_full_kl_hand_computed():
    # π = (1/2, 1/2), π_ref = (1/4, 3/4): KL = ½ ln 2 + ½ ln(2/3).
    logits = jnp.log(jnp.array([[[0.5, 0.5]]]))
    ref = jnp.log(jnp.array([[[0.25, 0.75]]]))
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    np.testing.assert_allclose(full_kl(logits, ref, jnp.ones((1, 1))), [[expected]], rtol=1e-6)
    # Identical distributions (even with shifted logits) give 0.
    np.testing.assert_allclose(full_kl(logits, logits + 3.0, jnp.ones((1, 1))), [[0.0]], atol=1e-7)


def test_full_kl_chunked_equals_unchunked(batch):
    args = (
        jnp.asarray(batch["logits"]),
        jnp.asarray(batch["ref_logits"]),
        jnp.asarray(batch["mask"]),
    )
    np.testing.assert_allclose(full_kl(*args, chunk_size=2), full_kl(*args), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="chunk_size"):
        full_kl(*args, chunk_size=3)


def test_full_kl_masked_equals_kept_rows(batch):
    logits, ref, mask = (jnp.asarray(batch[k]) for k in ("logits", "ref_logits", "mask"))
    got = full_kl(logits, ref, mask)
    # Row 1 keeps its first two tokens: the same numbers as a call on just those tokens.
    kept = full_kl(logits[1:2, :2], ref[1:2, :2], jnp.ones((1, 2)))
    np.testing.assert_allclose(got[1, :2], kept[0], rtol=1e-6)


def test_full_kl_jit_vmap_bf16(batch):
    logits, ref, mask = (jnp.asarray(batch[k]) for k in ("logits", "ref_logits", "mask"))
    eager = full_kl(logits, ref, mask)
    np.testing.assert_allclose(jax.jit(full_kl)(logits, ref, mask), eager, rtol=1e-6, atol=1e-7)
    vm = jax.vmap(lambda a, b, m: full_kl(a[None], b[None], m[None])[0])(logits, ref, mask)
    np.testing.assert_allclose(vm, eager, rtol=1e-6, atol=1e-7)
    low = full_kl(logits.astype(jnp.bfloat16), ref.astype(jnp.bfloat16), mask)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, eager, rtol=0.05, atol=0.01)


def test_full_kl_grads(batch):
    logits = jnp.asarray(batch["logits"][:1, :2, :4])
    ref = jnp.asarray(batch["ref_logits"][:1, :2, :4])
    mask = jnp.ones((1, 2))
    f = jax.jit(lambda l: jnp.sum(full_kl(l, ref, mask)))
    check_grads(f, (logits,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_full_kl_banned_tokens_finite_grad():
    # A −inf logit (banned token) under π contributes 0, and gradients stay finite:
    # equal to the KL with that token given a very low finite logit.
    ref = jnp.array([[[0.5, 0.2, 0.1]]])
    one = jnp.ones((1, 1))
    banned = jnp.array([[[0.0, 1.0, -jnp.inf]]])
    low = jnp.array([[[0.0, 1.0, -60.0]]])
    np.testing.assert_allclose(full_kl(banned, ref, one), full_kl(low, ref, one), rtol=1e-6)
    g = jax.grad(lambda l: jnp.sum(full_kl(l, ref, one)))
    np.testing.assert_allclose(g(banned), g(low), atol=1e-7)


def test_full_kl_shape_errors():
    with pytest.raises(ValueError, match="N, T, V"):
        full_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((2,)))
    with pytest.raises(ValueError, match="mask"):
        full_kl(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.ones((3, 2)))


# ---------------------------------------------------------------------------
# Controllers
def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    state = ctl.init()
    assert isinstance(state, KLControllerState)
    state = ctl.update(state, kl=100.0, n_steps=512)
    np.testing.assert_allclose(state.coef, 0.05, rtol=1e-7)


@pytest.mark.parametrize(
    "kl, expected",
    [
        (9.0, 0.1 * (1 + 0.2 * 256 / 10_000)),  # kl/target − 1 = 0.5, clipped to +0.2
        (6.6, 0.1 * (1 + 0.1 * 256 / 10_000)),  # +0.1, inside the clip
        (6.0, 0.1),  # on target: unchanged
        (5.4, 0.1 * (1 - 0.1 * 256 / 10_000)),  # −0.1
        (1.0, 0.1 * (1 - 0.2 * 256 / 10_000)),  # clipped to −0.2
    ],
)
def test_adaptive_controller_exact_step(kl, expected):
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    state = ctl.update(ctl.init(), kl=kl, n_steps=256)
    np.testing.assert_allclose(state.coef, expected, rtol=1e-6)
    assert state.coef.dtype == jnp.float32


def test_adaptive_controller_under_jit_and_scan():
    ctl = AdaptiveKLController(init_coef=0.2, target=1.0, horizon=100.0)
    kls = jnp.array([2.0, 1.1, 0.5, 0.95])

    def step(state, kl):
        state = ctl.update(state, kl, 10)
        return state, state.coef

    _, coefs = jax.jit(lambda s: jax.lax.scan(step, s, kls))(ctl.init())
    coef, expected = 0.2, []
    for kl in [2.0, 1.1, 0.5, 0.95]:
        coef *= 1 + min(max(kl / 1.0 - 1, -0.2), 0.2) * 10 / 100.0
        expected.append(coef)
    np.testing.assert_allclose(coefs, expected, rtol=1e-6)
    # Too much KL raises the coefficient, too little lowers it.
    assert coefs[0] > 0.2 and coefs[2] < coefs[1]
