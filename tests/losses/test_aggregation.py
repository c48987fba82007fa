"""Tests for jaxrl_llm.losses.aggregation: hand values, a numpy reference, micro-batch invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl_llm.losses.aggregation import MODES, aggregate, global_counts


# ----------------------------------------------------------------------------- reference
def np_aggregate(x, m, mode, num_tokens=None, num_seqs=None, norm_constant=None):
    """Readable numpy reference, one row at a time."""
    x, m = np.asarray(x, np.float64), np.asarray(m, np.float64)
    B, T = x.shape
    seq_w = [max(m[i].max(), 0.0) for i in range(B)]
    n_tok = m.sum() if num_tokens is None else num_tokens
    n_seq = sum(seq_w) if num_seqs is None else num_seqs
    total = sum(x[i, t] * m[i, t] for i in range(B) for t in range(T) if m[i, t] != 0)
    if mode == "token-sum":
        return total
    if mode == "token-mean":
        return total / n_tok if n_tok else 0.0
    if mode == "seq-mean-token-mean":
        acc = 0.0
        for i in range(B):
            n_i = m[i].sum()
            if n_i:
                acc += seq_w[i] * sum(x[i, t] * m[i, t] for t in range(T) if m[i, t]) / n_i
        return acc / n_seq if n_seq else 0.0
    if mode == "seq-mean-token-sum":
        return total / n_seq if n_seq else 0.0
    c = T if norm_constant is None else norm_constant
    return total / (c * n_seq) if n_seq else 0.0


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    B, T = 5, 7
    lengths = np.array([7, 2, 5, 0, 3])  # one empty row
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    mask[2, 1] = 0.0  # a hole (observation token)
    mask[4] *= 0.5  # a weighted row (sample weight 0.5)
    x = rng.normal(size=(B, T)).astype(np.float32)
    return x, mask


# ----------------------------------------------------------------------------- hand values
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("token-sum", 7.0),
        ("seq-mean-token-mean", (1.5 + 4.0) / 2),
        ("seq-mean-token-sum", (3.0 + 4.0) / 2),
        ("seq-mean-token-sum-norm", 7.0 / (3 * 2)),  # C defaults to T = 3
    ],
)
def test_hand_values(mode, expected):
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    m = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(aggregate(x, m, mode), expected, rtol=1e-6)


def test_norm_constant_and_explicit_counts():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        aggregate(x, m, "seq-mean-token-sum-norm", norm_constant=10), 7 / 20, rtol=1e-6
    )
    np.testing.assert_allclose(aggregate(x, m, "token-mean", num_tokens=14), 0.5, rtol=1e-6)
    np.testing.assert_allclose(aggregate(x, m, "seq-mean-token-sum", num_seqs=7), 1.0, rtol=1e-6)


def test_weighted_mask_is_a_weighted_mean():
    """A row with sample weight w counts w in the sums and normalisers."""
    x = jnp.array([[2.0, 4.0], [10.0, 10.0]])
    m = jnp.array([[1.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(aggregate(x, m, "token-mean"), (2 + 4 + 10) / 3, rtol=1e-6)
    np.testing.assert_allclose(
        aggregate(x, m, "seq-mean-token-mean"), (3 + 0.5 * 10) / 1.5, rtol=1e-6
    )


@pytest.mark.parametrize("mode", MODES)
def test_against_numpy_reference(data, mode):
    x, m = data
    np.testing.assert_allclose(
        aggregate(x, m, mode), np_aggregate(x, m, mode), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        aggregate(x, m, mode, num_tokens=11.0, num_seqs=3.0, norm_constant=4.0),
        np_aggregate(x, m, mode, 11.0, 3.0, 4.0),
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------------------ gradient accumulation
@pytest.mark.parametrize("mode", MODES)
def test_microbatch_sum_equals_full_batch(data, mode):
    x, m = data
    n_tok, n_seq = global_counts(m)
    full = aggregate(x, m, mode, num_tokens=n_tok, num_seqs=n_seq)
    for cuts in ([2], [1, 3]):  # 2 and 3 micro-batches with unequal token counts
        pieces = np.split(np.arange(len(x)), cuts)
        tokens = [m[p].sum() for p in pieces]
        assert len(set(tokens)) == len(tokens)
        total = sum(aggregate(x[p], m[p], mode, num_tokens=n_tok, num_seqs=n_seq) for p in pieces)
        np.testing.assert_allclose(total, full, rtol=1e-5, atol=1e-6)


def test_local_counts_do_not_accumulate(data):
    """Without the global counts, the sum of micro-batch means is not the full mean (the test can fail)."""
    x, m = data
    pieces = np.split(np.arange(len(x)), [2])
    local = sum(aggregate(x[p], m[p], "token-mean") for p in pieces) / 2
    assert abs(float(local) - float(aggregate(x, m, "token-mean"))) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_gradient_accumulation(data, mode):
    x, m = data
    n_tok, n_seq = global_counts(m)
    grad = jax.grad(lambda x: aggregate(x, m, mode, num_tokens=n_tok, num_seqs=n_seq))
    pieces = np.split(np.arange(len(x)), [3])
    micro = [
        jax.grad(lambda y, p=p: aggregate(y, m[p], mode, num_tokens=n_tok, num_seqs=n_seq))(x[p])
        for p in pieces
    ]
    np.testing.assert_allclose(np.concatenate(micro), grad(x), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ masks, jit, vmap, dtype
@pytest.mark.parametrize("mode", MODES)
def test_masked_equals_kept(data, mode):
    """Masked positions never matter (even NaN there); dropping all-masked rows changes nothing."""
    x, m = data
    poisoned = np.where(m == 0, np.nan, x)
    np.testing.assert_allclose(aggregate(poisoned, m, mode), aggregate(x, m, mode), rtol=1e-6)
    g = jax.grad(lambda y: aggregate(y, m, mode))(jnp.asarray(poisoned))
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[m == 0] == 0)
    kept = m.sum(1) > 0
    np.testing.assert_allclose(
        aggregate(x[kept], m[kept], mode, norm_constant=x.shape[1]),
        aggregate(x, m, mode),
        rtol=1e-5,
        atol=1e-6,
    )


def test_token_mean_is_mean_of_kept_elements(data):
    x, m = data
    binary = (m > 0).astype(np.float32)
    np.testing.assert_allclose(aggregate(x, binary, "token-mean"), x[binary > 0].mean(), rtol=1e-5)


def test_empty_mask_gives_zero_not_nan():
    x = jnp.ones((2, 3))
    for mode in MODES:
        assert float(aggregate(x, jnp.zeros((2, 3)), mode)) == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_jit_and_vmap_agree(data, mode):
    x, m = data
    xs = np.stack([x, 2 * x + 1, -x])
    eager = np.array([aggregate(xi, m, mode) for xi in xs])
    jitted = jax.jit(aggregate, static_argnames="mode")
    np.testing.assert_allclose(jitted(x, m, mode=mode), eager[0], rtol=1e-5, atol=1e-6)
    batched = jax.jit(jax.vmap(lambda xi: aggregate(xi, m, mode)))(xs)
    np.testing.assert_allclose(batched, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_inputs_give_float32(data, mode):
    x, m = data
    out = aggregate(jnp.asarray(x, jnp.bfloat16), jnp.asarray(m, jnp.bfloat16), mode)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, aggregate(x, m, mode), rtol=2e-2, atol=2e-2)


def test_check_grads(data):
    x, m = data
    for mode in ("token-mean", "seq-mean-token-mean"):
        check_grads(
            jax.jit(lambda y, mode=mode: aggregate(y, m, mode)),
            (jnp.asarray(x, jnp.float32),),
            order=1,
            modes=["rev"],
            eps=1e-2,
            atol=1e-2,
            rtol=1e-2,
        )


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="token-mean, token-sum"):
        aggregate(jnp.ones((2, 2)), jnp.ones((2, 2)), "mean")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate(jnp.ones((2, 2)), jnp.ones((2, 3)), "token-mean")


def test_global_counts_and_sequence_weight_hand():
    from jaxrl_llm.losses.aggregation import sequence_weight

    m = jnp.array([[1.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(sequence_weight(m), [1.0, 0.5, 0.0])
    n_tok, n_seq = global_counts(m)
    assert float(n_tok) == 3.0 and float(n_seq) == 1.5
