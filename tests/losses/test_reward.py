"""Bradley–Terry loss: numpy reference for the loss and its gradients, margins, masks, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.losses.reward import bradley_terry


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_bt(rc, rr, margin=0.0, s=0.0, w=None):
    """Frozen reference: weighted mean of −(1−s)·log σ(z) − s·log σ(−z), z = rc − rr − m."""
    w = np.ones_like(rc) if w is None else w
    z = rc - rr - margin
    per = -(1 - s) * _np_log_sigmoid(z) - s * _np_log_sigmoid(-z)
    return np.sum(per * w) / np.sum(w)


def np_bt_grad(rc, rr, margin=0.0, s=0.0, w=None):
    """Analytic d loss / d r_w = w·((1 − s) − σ(z)) · (−1) / Σw; d / d r_l is its negative."""
    w = np.ones_like(rc) if w is None else w
    z = rc - rr - margin
    g = -((1 - s) - _np_sigmoid(z)) * w / np.sum(w)
    return g, -g


RNG = np.random.default_rng(0)
RC = RNG.normal(size=7).astype(np.float64)
RR = RNG.normal(size=7).astype(np.float64)


def test_hand_computed():
    loss, m = bradley_terry(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]))
    expected = (np.log1p(np.exp(-1.0)) + np.log(2.0)) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], 0.5)  # the tie counts 0
    np.testing.assert_allclose(m["margin_mean"], 0.5)
    np.testing.assert_allclose(m["chosen_mean"], 0.5)
    np.testing.assert_allclose(m["rejected_mean"], 0.0)


@pytest.mark.parametrize("margin", [None, 0.5, "per_pair"])
@pytest.mark.parametrize("s", [0.0, 0.1])
@pytest.mark.parametrize("masked", [False, True])
def test_loss_and_grad_match_numpy(margin, s, masked):
    m = RNG.uniform(0, 1, size=7) if margin == "per_pair" else (margin or 0.0)
    w = (np.arange(7) % 3 != 0).astype(np.float64) if masked else None
    kw = dict(
        margin=None if margin is None else jnp.asarray(m, jnp.float32),
        label_smoothing=s,
        mask=None if w is None else jnp.asarray(w, jnp.float32),
    )

    def f(rc, rr):
        return bradley_terry(rc, rr, **kw)[0]

    rc, rr = jnp.asarray(RC, jnp.float32), jnp.asarray(RR, jnp.float32)
    np.testing.assert_allclose(f(rc, rr), np_bt(RC, RR, m, s, w), rtol=1e-5)
    gc, gr = jax.grad(f, argnums=(0, 1))(rc, rr)
    ec, er = np_bt_grad(RC, RR, m, s, w)
    np.testing.assert_allclose(gc, ec, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gr, er, rtol=1e-5, atol=1e-7)
    # and central finite differences of the numpy reference, coordinate by coordinate
    h = 1e-5
    fd = np.array(
        [
            (np_bt(RC + h * e, RR, m, s, w) - np_bt(RC - h * e, RR, m, s, w)) / (2 * h)
            for e in np.eye(7)
        ]
    )
    np.testing.assert_allclose(gc, fd, rtol=1e-4, atol=1e-6)


def test_mask_equals_call_on_kept_pairs():
    keep = np.array([1, 0, 1, 1, 0, 1, 0], bool)
    full, mf = bradley_terry(RC, RR, mask=keep.astype(np.float32), margin=0.3)
    kept, mk = bradley_terry(RC[keep], RR[keep], margin=0.3)
    np.testing.assert_allclose(full, kept, rtol=1e-6)
    for k in mk:
        np.testing.assert_allclose(mf[k], mk[k], rtol=1e-6)


def test_margin_raises_the_loss_and_jit_vmap_agree():
    base, _ = bradley_terry(RC, RR)
    with_margin, _ = bradley_terry(RC, RR, margin=1.0)
    assert with_margin > base
    jitted = jax.jit(lambda a, b: bradley_terry(a, b, margin=1.0)[0])(RC, RR)
    np.testing.assert_allclose(jitted, with_margin, rtol=1e-6)
    batched = jax.vmap(lambda a, b: bradley_terry(a, b)[0])(np.stack([RC, RR]), np.stack([RR, RC]))
    np.testing.assert_allclose(batched[0], base, rtol=1e-6)
    # swapping chosen and rejected: log σ(z) ↔ log σ(−z), the loss at s=0.5 is symmetric
    a, _ = bradley_terry(RC, RR, label_smoothing=0.5)
    b, _ = bradley_terry(RR, RC, label_smoothing=0.5)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry(jnp.zeros(3), jnp.zeros(3), label_smoothing=0.7)
    with pytest.raises(ValueError, match="mask"):
        bradley_terry(jnp.zeros(3), jnp.zeros(3), mask=jnp.ones(2))
