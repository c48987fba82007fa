"""Tests for jaxrl_llm.losses.entropy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl_llm.losses.entropy import entropy_bonus, token_entropy


def np_entropy(logits):
    """Frozen reference: H = −Σ p log p with p = softmax(logits), in float64."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(-1)


@pytest.fixture(scope="module")
def logits():
    return np.random.default_rng(1).normal(size=(3, 5, 11)).astype(np.float32) * 2.0


def test_hand_computed():
    # Uniform over 4 tokens: ln 4.
    np.testing.assert_allclose(token_entropy(jnp.zeros((4,))), math.log(4), rtol=1e-6)
    # p = (1/4, 3/4): −(¼ ln ¼ + ¾ ln ¾).
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(token_entropy(jnp.log(jnp.array([1.0, 3.0]))), h, rtol=1e-6)
    # Banned tokens (−inf logits) contribute 0: a point mass has entropy 0.
    np.testing.assert_allclose(token_entropy(jnp.array([0.0, -jnp.inf, -jnp.inf])), 0.0, atol=1e-7)
    np.testing.assert_allclose(
        token_entropy(jnp.array([0.0, 0.0, -jnp.inf])), math.log(2), rtol=1e-6
    )


def test_matches_numpy_and_is_stable(logits):
    got = token_entropy(jnp.asarray(logits))
    assert got.shape == logits.shape[:-1] and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_entropy(logits), rtol=1e-5, atol=1e-6)
    # Shift invariance with huge logits (a naive exp would overflow).
    np.testing.assert_allclose(
        token_entropy(jnp.asarray(logits) + 1e4), np_entropy(logits), atol=2e-2
    )
    assert np.all(np.asarray(got) >= 0) and np.all(np.asarray(got) <= math.log(11) + 1e-6)


def test_bf16_gives_float32(logits):
    got = token_entropy(jnp.asarray(logits, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_entropy(logits), rtol=0.03, atol=0.03)


def test_jit_vmap_agree(logits):
    x = jnp.asarray(logits)
    eager = token_entropy(x)
    np.testing.assert_allclose(jax.jit(token_entropy)(x), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(token_entropy)(x), eager, rtol=1e-6)


def test_grads(logits):
    x = jnp.asarray(logits[0, :2, :5])
    check_grads(
        jax.jit(lambda l: jnp.sum(token_entropy(l))),
        (x,),
        order=1,
        modes=("rev",),
        atol=1e-2,
        rtol=1e-2,
    )
    # Entropy is maximal at uniform logits: zero gradient there.
    np.testing.assert_allclose(
        jax.grad(lambda l: token_entropy(l))(jnp.ones(6)), np.zeros(6), atol=1e-7
    )


def test_banned_tokens_finite_grad():
    g = jax.grad(lambda l: token_entropy(l))
    np.testing.assert_allclose(
        g(jnp.array([0.0, 1.0, -jnp.inf])), g(jnp.array([0.0, 1.0, -60.0])), atol=1e-7
    )


# entropy_bonus ----------------------------------------------------------------
H = np.array([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]], np.float32)
MASK = np.array([[1, 1, 0], [1, 0, 0]], np.float32)


@pytest.mark.parametrize(
    "agg, value",
    [
        ("token-mean", (1 + 2 + 3) / 3),
        ("token-sum", 6.0),
        ("seq-mean-token-mean", (1.5 + 3) / 2),
        ("seq-mean-token-sum", (3 + 3) / 2),
    ],
)
def test_entropy_bonus_hand_computed(agg, value):
    got = entropy_bonus(jnp.asarray(H), jnp.asarray(MASK), 0.01, agg)
    np.testing.assert_allclose(got, -0.01 * value, rtol=1e-6)
    assert got.dtype == jnp.float32 and got.shape == ()


def test_entropy_bonus_global_counts_and_zero_coef():
    got = entropy_bonus(jnp.asarray(H), jnp.asarray(MASK), 0.5, "token-mean", num_tokens=12.0)
    np.testing.assert_allclose(got, -0.5 * 6 / 12, rtol=1e-6)
    assert float(entropy_bonus(jnp.asarray(H), jnp.asarray(MASK), 0.0)) == 0.0


def test_entropy_bonus_masked_equals_kept():
    masked = entropy_bonus(jnp.asarray(H), jnp.asarray(MASK), 0.1, "token-mean")
    kept = entropy_bonus(jnp.array([[1.0, 2.0, 3.0]]), jnp.ones((1, 3)), 0.1, "token-mean")
    np.testing.assert_allclose(masked, kept, rtol=1e-6)


def test_entropy_bonus_jit_vmap_and_grad():
    h, m = jnp.asarray(H), jnp.asarray(MASK)
    f = lambda h, m, c: entropy_bonus(h, m, c, "seq-mean-token-mean")
    np.testing.assert_allclose(jax.jit(f)(h, m, 0.3), f(h, m, 0.3), rtol=1e-6)
    # vmap over coefficients (an ablation grid in one program).
    coefs = jnp.array([0.0, 0.1, 0.3])
    np.testing.assert_allclose(
        jax.vmap(f, in_axes=(None, None, 0))(h, m, coefs), -coefs * 2.25, rtol=1e-6
    )
    # d/dH of token-mean bonus: −coef/N_tok on kept tokens, 0 elsewhere.
    g = jax.grad(lambda h: entropy_bonus(h, m, 0.3))(h)
    np.testing.assert_allclose(g, -0.3 * np.asarray(MASK) / 3, rtol=1e-6)


def test_entropy_bonus_shape_error():
    with pytest.raises(ValueError, match="equal shapes"):
        entropy_bonus(jnp.zeros((2, 3)), jnp.ones((3, 2)), 0.1)
