"""Tests for jaxrl_llm.losses.preference (DPO, cDPO, IPO, rDPO, hinge, SimPO)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl_llm.losses.preference import dpo, hinge, ipo, rdpo, simpo


def neg_log_sigmoid(x):
    return math.log1p(math.exp(-x))


# One pair by hand: policy (−1, −3), reference (−2, −2) → h = (−1+2) − (−3+2) = 2.
ONE = tuple(jnp.array([x]) for x in (-1.0, -3.0, -2.0, -2.0))


def test_dpo_hand_computed():
    loss, m = dpo(*ONE, beta=0.5)  # βh = 1
    np.testing.assert_allclose(loss, neg_log_sigmoid(1.0), rtol=1e-6)
    np.testing.assert_allclose(loss, 0.31326169, rtol=1e-6)
    np.testing.assert_allclose(m["chosen_reward"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(m["rejected_reward"], -0.5, rtol=1e-6)
    np.testing.assert_allclose(m["reward_margin"], 1.0, rtol=1e-6)
    assert float(m["reward_accuracy"]) == 1.0
    assert loss.dtype == jnp.float32 and loss.shape == ()


def test_cdpo_label_smoothing_hand_computed():
    loss, _ = dpo(*ONE, beta=0.5, label_smoothing=0.1)
    np.testing.assert_allclose(
        loss, 0.9 * neg_log_sigmoid(1.0) + 0.1 * neg_log_sigmoid(-1.0), rtol=1e-6
    )
    np.testing.assert_allclose(loss, 0.41326169, rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(*ONE, label_smoothing=0.7)


def test_ipo_hand_computed():
    loss, _ = ipo(*ONE, beta=0.5)  # (h − 1/(2β))² = (2 − 1)²
    np.testing.assert_allclose(loss, 1.0, rtol=1e-6)
    loss, _ = ipo(*ONE, beta=0.25)  # (2 − 2)²
    np.testing.assert_allclose(loss, 0.0, atol=1e-7)


def test_rdpo_hand_computed_and_eps_zero_is_dpo():
    loss, _ = rdpo(*ONE, beta=0.5, flip_rate=0.1)
    expected = (0.9 * neg_log_sigmoid(1.0) - 0.1 * neg_log_sigmoid(-1.0)) / 0.8
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(loss, 0.18826169, rtol=1e-5)
    rng = np.random.default_rng(4)
    args = tuple(jnp.asarray(rng.normal(size=6) - 3.0, jnp.float32) for _ in range(4))
    np.testing.assert_allclose(
        rdpo(*args, beta=0.3, flip_rate=0.0)[0], dpo(*args, beta=0.3)[0], rtol=1e-6
    )
    with pytest.raises(ValueError, match="flip_rate"):
        rdpo(*ONE, flip_rate=0.5)


def test_rdpo_is_unbiased_under_label_flips():
    # E over a flip with prob. ε of the rDPO loss = the clean DPO loss (Chowdhury et al. 2024, Lemma 3.1).
    rng = np.random.default_rng(5)
    c, r, rc, rr = (jnp.asarray(rng.normal(size=5) - 2.0, jnp.float32) for _ in range(4))
    eps, beta = 0.2, 0.7
    clean = -jax.nn.log_sigmoid(beta * ((c - rc) - (r - rr)))
    per_pair = lambda *a: jax.vmap(
        lambda *x: rdpo(*(v[None] for v in x), beta=beta, flip_rate=eps)[0]
    )(*a)
    noisy = (1 - eps) * per_pair(c, r, rc, rr) + eps * per_pair(r, c, rr, rc)
    np.testing.assert_allclose(noisy, clean, rtol=1e-5)


def test_hinge_hand_computed():
    np.testing.assert_allclose(hinge(*ONE, beta=0.5)[0], 0.0, atol=1e-7)  # 1 − βh = 0
    np.testing.assert_allclose(hinge(*ONE, beta=0.25)[0], 0.5, rtol=1e-6)  # 1 − 0.5


def test_simpo_hand_computed():
    # chosen: −4 over 2 tokens → −2; rejected: −9 over 3 tokens → −3; β = 2, γ = 1:
    # β(−2) − β(−3) − γ = 1 → −log σ(1).
    loss, m = simpo(
        jnp.array([-4.0]), jnp.array([2]), jnp.array([-9.0]), jnp.array([3]), beta=2.0, gamma=1.0
    )
    np.testing.assert_allclose(loss, neg_log_sigmoid(1.0), rtol=1e-6)
    np.testing.assert_allclose(m["chosen_reward"], -4.0, rtol=1e-6)
    np.testing.assert_allclose(m["rejected_reward"], -6.0, rtol=1e-6)
    np.testing.assert_allclose(m["reward_margin"], 2.0, rtol=1e-6)
    assert float(m["reward_accuracy"]) == 1.0


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(6)
    arrays = [jnp.asarray(rng.normal(size=(3, 5)) - 4.0, jnp.float32) for _ in range(4)]
    mask = jnp.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], jnp.float32)
    return arrays, mask


LOSSES = {
    "dpo": lambda *a, **k: dpo(*a, beta=0.2, label_smoothing=0.05, **k),
    "ipo": lambda *a, **k: ipo(*a, beta=0.2, **k),
    "rdpo": lambda *a, **k: rdpo(*a, beta=0.2, flip_rate=0.1, **k),
    "hinge": lambda *a, **k: hinge(*a, beta=0.2, **k),
    # (logp sums, lengths): reuse the arrays, lengths taken positive.
    "simpo": lambda c, r, rc, rr, **k: simpo(
        c, jnp.abs(rc) + 1, r, jnp.abs(rr) + 1, beta=2.0, gamma=0.5, **k
    ),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_equals_kept(pairs, name):
    arrays, mask = pairs
    fn = LOSSES[name]
    for row in range(3):
        keep = np.asarray(mask[row]) > 0
        masked_loss, masked_m = fn(*(a[row] for a in arrays), mask=mask[row])
        kept_loss, kept_m = fn(*(a[row][keep] for a in arrays))
        np.testing.assert_allclose(masked_loss, kept_loss, rtol=1e-6)
        for k in kept_m:
            np.testing.assert_allclose(masked_m[k], kept_m[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_vmap_bf16(pairs, name):
    arrays, mask = pairs
    fn = LOSSES[name]
    eager = np.array([fn(*(a[i] for a in arrays), mask=mask[i])[0] for i in range(3)])
    batched = jax.jit(jax.vmap(lambda *a: fn(*a[:4], mask=a[4])[0]))(*arrays, mask)
    np.testing.assert_allclose(batched, eager, rtol=1e-5)
    low, metrics = fn(*(a[1].astype(jnp.bfloat16) for a in arrays))
    assert low.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in metrics.values())
    np.testing.assert_allclose(low, eager[1], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["dpo", "ipo", "rdpo", "simpo"])
def test_grads(pairs, name):
    arrays, _ = pairs
    fn = LOSSES[name]
    rest = [a[1] for a in arrays[1:]]
    f = jax.jit(lambda c: fn(c, *rest)[0])
    check_grads(f, (arrays[0][1],), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_dpo_gradient_sign():
    # Descending the loss raises the chosen log-prob and lowers the rejected one.
    g = jax.grad(lambda c, r: dpo(c, r, ONE[2], ONE[3])[0], argnums=(0, 1))(ONE[0], ONE[1])
    assert float(g[0][0]) < 0 < float(g[1][0])


def test_shape_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        dpo(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match="mask"):
        ipo(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), mask=jnp.ones(2))
