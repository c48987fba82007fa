"""Tests for jaxrl_llm.losses.value: clipped value loss and HL-Gauss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl_llm.losses.value import (
    clipped_value_loss,
    hl_gauss_bin_centres,
    hl_gauss_loss,
    hl_gauss_readout,
    hl_gauss_targets,
)

# Two valid tokens worked by hand (clip ε = 0.2), one padding token with junk.
#   token 0: v=1.0, v_old=0.5, R=2.0: (v−R)² = 1; v_clip = 0.7, (0.7−2)² = 1.69 → ½·1.69 = 0.845, clipped wins
#   token 1: v=0.0, v_old=0.5, R=1.0: (v−R)² = 1; v_clip = 0.3, (0.3−1)² = 0.49 → ½·1 = 0.5
V = np.array([[1.0, 0.0, 50.0]], np.float32)
V_OLD = np.array([[0.5, 0.5, -50.0]], np.float32)
R = np.array([[2.0, 1.0, 7.0]], np.float32)
M = np.array([[1.0, 1.0, 0.0]], np.float32)


def test_clipped_value_loss_hand_computed():
    loss, metrics = clipped_value_loss(*(jnp.asarray(a) for a in (V, V_OLD, R, M)), clip=0.2)
    np.testing.assert_allclose(loss, (0.845 + 0.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["vf_clip_frac"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(metrics["value_mean"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(metrics["return_mean"], 1.5, rtol=1e-6)
    assert loss.dtype == jnp.float32
    # No clip: plain ½(v − R)².
    loss, metrics = clipped_value_loss(*(jnp.asarray(a) for a in (V, V_OLD, R, M)), clip=None)
    np.testing.assert_allclose(loss, 0.5, rtol=1e-6)
    assert float(metrics["vf_clip_frac"]) == 0.0
    # token-sum aggregation.
    loss, _ = clipped_value_loss(*(jnp.asarray(a) for a in (V, V_OLD, R, M)), agg="token-sum")
    np.testing.assert_allclose(loss, 1.345, rtol=1e-6)


def test_clipped_value_loss_masked_equals_kept():
    masked, m1 = clipped_value_loss(*(jnp.asarray(a) for a in (V, V_OLD, R, M)))
    kept, m2 = clipped_value_loss(*(jnp.asarray(a[:, :2]) for a in (V, V_OLD, R)), jnp.ones((1, 2)))
    np.testing.assert_allclose(masked, kept, rtol=1e-6)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-6)


def test_clipped_value_loss_jit_vmap_bf16():
    rng = np.random.default_rng(2)
    v, v_old, r = (rng.normal(size=(4, 3, 5)).astype(np.float32) for _ in range(3))
    m = (rng.uniform(size=(4, 3, 5)) > 0.3).astype(np.float32)
    f = lambda *a: clipped_value_loss(*a, clip=0.2, agg="seq-mean-token-mean")[0]
    eager = np.array([f(*(jnp.asarray(x[i]) for x in (v, v_old, r, m))) for i in range(4)])
    np.testing.assert_allclose(jax.vmap(f)(v, v_old, r, m), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(v, v_old, r, m), eager, rtol=1e-6)
    low = jax.vmap(f)(*(jnp.asarray(x, jnp.bfloat16) for x in (v, v_old, r)), m)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, eager, rtol=0.05, atol=0.02)


def test_clipped_value_loss_grad():
    # Unclipped branch: ∂/∂v of ½(v−R)²/N = (v−R)/N; clipped branch (v outside v_old ± ε): 0.
    g = jax.grad(lambda v: clipped_value_loss(v, *(jnp.asarray(a) for a in (V_OLD, R, M)))[0])(
        jnp.asarray(V)
    )
    np.testing.assert_allclose(g, [[0.0, (0.0 - 1.0) / 2, 0.0]], atol=1e-7)
    # Smooth region check (all tokens well inside the clip range).
    v_old = jnp.array([[0.1, -0.2, 0.3]])
    v = v_old + jnp.array([[0.05, -0.03, 0.02]])
    f = jax.jit(
        lambda v: clipped_value_loss(v, v_old, jnp.array([[1.0, 2.0, -1.0]]), jnp.ones((1, 3)))[0]
    )
    check_grads(f, (v,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_clipped_value_loss_shape_error():
    with pytest.raises(ValueError, match="equal shapes"):
        clipped_value_loss(
            jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((3, 2)), jnp.ones((2, 3))
        )


# HL-Gauss ---------------------------------------------------------------------
def np_hl_gauss_targets(y, v_min, v_max, num_bins, sigma):
    """Frozen reference: Gaussian CDF differences over the bin edges, renormalised."""
    edges = np.linspace(v_min, v_max, num_bins + 1)
    cdf = np.array([0.5 * (1 + math.erf((e - y) / (math.sqrt(2) * sigma))) for e in edges])
    return np.diff(cdf) / (cdf[-1] - cdf[0])


def test_hl_gauss_targets_hand_computed():
    # Support [0, 4], 4 bins, σ = 1, y = 2: Φ(−2..2) = .02275, .15866, .5, .84134, .97725.
    p = hl_gauss_targets(jnp.array(2.0), v_min=0.0, v_max=4.0, num_bins=4, sigma=1.0)
    np.testing.assert_allclose(p, [0.1423835, 0.3576165, 0.3576165, 0.1423835], rtol=1e-5)
    ys = jnp.array([[0.3, 1.7], [3.9, 2.5]])
    got = hl_gauss_targets(ys, v_min=0.0, v_max=4.0, num_bins=8, sigma=0.4)
    assert got.shape == (2, 2, 8) and got.dtype == jnp.float32
    for idx in np.ndindex(2, 2):
        np.testing.assert_allclose(
            got[idx], np_hl_gauss_targets(float(ys[idx]), 0.0, 4.0, 8, 0.4), atol=1e-6
        )


def test_hl_gauss_targets_sum_to_one_and_readout_recovers_target():
    v_min, v_max, k = -5.0, 5.0, 20
    width = (v_max - v_min) / k
    ys = jnp.linspace(v_min, v_max, 41)
    p = hl_gauss_targets(ys, v_min=v_min, v_max=v_max, num_bins=k)  # σ = 0.75 · width
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    back = hl_gauss_readout(jnp.log(p), v_min=v_min, v_max=v_max)
    err = np.abs(np.asarray(back) - np.asarray(ys))
    # Everywhere in range: within one bin (truncation at the support edges biases inwards).
    assert err.max() < width
    # At least 4σ = 3 bins from the edges: within 0.2 % of a bin.
    interior = np.abs(np.asarray(ys)) <= 5.0 - 3 * width
    assert err[interior].max() < 2e-3 * width
    # Targets outside the support are clipped to it.
    np.testing.assert_allclose(
        hl_gauss_targets(jnp.array(9.0), v_min=v_min, v_max=v_max, num_bins=k),
        hl_gauss_targets(jnp.array(5.0), v_min=v_min, v_max=v_max, num_bins=k),
    )


def test_hl_gauss_bin_centres_and_readout_hand():
    np.testing.assert_allclose(hl_gauss_bin_centres(0.0, 4.0, 4), [0.5, 1.5, 2.5, 3.5])
    # softmax([0, ln 3, −inf, −inf]) = (¼, ¾, 0, 0) → ¼·0.5 + ¾·1.5 = 1.25
    logits = jnp.array([0.0, math.log(3.0), -jnp.inf, -jnp.inf])
    np.testing.assert_allclose(hl_gauss_readout(logits, v_min=0.0, v_max=4.0), 1.25, rtol=1e-6)


def test_hl_gauss_loss_is_cross_entropy_and_minimised_at_targets():
    kw = dict(v_min=0.0, v_max=4.0, sigma=1.0)
    p = np.asarray(hl_gauss_targets(jnp.array(2.0), num_bins=4, **kw), np.float64)
    logits = jnp.array([0.3, -0.2, 1.0, 0.1])
    log_q = np.asarray(jax.nn.log_softmax(logits), np.float64)
    np.testing.assert_allclose(
        hl_gauss_loss(logits, jnp.array(2.0), **kw), -(p * log_q).sum(), rtol=1e-6
    )
    # ∇_logits CE = softmax(logits) − p: zero at logits = log p, where CE = H(p).
    g = jax.grad(lambda l: hl_gauss_loss(l, jnp.array(2.0), **kw))(logits)
    np.testing.assert_allclose(g, np.exp(log_q) - p, atol=1e-6)
    at_p = jnp.log(jnp.asarray(p, jnp.float32))
    np.testing.assert_allclose(
        hl_gauss_loss(at_p, jnp.array(2.0), **kw), -(p * np.log(p)).sum(), rtol=1e-5
    )
    check_grads(
        jax.jit(lambda l: hl_gauss_loss(l, jnp.array(2.0), **kw)),
        (logits,),
        order=1,
        modes=("rev",),
    )


def test_hl_gauss_jit_vmap_bf16_and_masking():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 3, 6)).astype(np.float32)
    target = rng.uniform(-1, 1, size=(2, 3)).astype(np.float32)
    kw = dict(v_min=-1.0, v_max=1.0)
    eager = hl_gauss_loss(jnp.asarray(logits), jnp.asarray(target), **kw)
    assert eager.shape == (2, 3)
    np.testing.assert_allclose(
        jax.jit(lambda l, t: hl_gauss_loss(l, t, **kw))(logits, target), eager, rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.vmap(lambda l, t: hl_gauss_loss(l, t, **kw))(logits, target), eager, rtol=1e-6
    )
    low = hl_gauss_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(target), **kw)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, eager, rtol=0.02, atol=0.02)
    # Element-wise: a masked-out element does not change the others.
    np.testing.assert_allclose(
        hl_gauss_loss(jnp.asarray(logits[:1, :2]), jnp.asarray(target[:1, :2]), **kw), eager[:1, :2]
    )
    rd = jax.jit(lambda l: hl_gauss_readout(l, **kw))(logits)
    assert rd.shape == (2, 3) and np.all(np.abs(np.asarray(rd)) <= 1.0)


def test_hl_gauss_errors():
    with pytest.raises(ValueError, match="num_bins"):
        hl_gauss_targets(jnp.array(0.0), v_min=0.0, v_max=1.0, num_bins=1)
    with pytest.raises(ValueError, match="v_max"):
        hl_gauss_targets(jnp.array(0.0), v_min=1.0, v_max=1.0, num_bins=4)
    with pytest.raises(ValueError, match="num_bins"):
        hl_gauss_readout(jnp.zeros((3, 5)), v_min=0.0, v_max=1.0, num_bins=4)
    with pytest.raises(ValueError, match="target.shape"):
        hl_gauss_loss(jnp.zeros((3, 5)), jnp.zeros((2,)), v_min=0.0, v_max=1.0)
