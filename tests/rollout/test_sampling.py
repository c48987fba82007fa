"""Sampling math: chi-square frequency tests against a numpy reference, exact top-p sets.

The expected probabilities are computed here in numpy (HF warper order:
temperature -> top-k -> top-p on the top-k survivors -> min-p), never by the
code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrl_llm.rollout import (
    TOP_P_CANDIDATES,
    sample_from_weights,
    sample_tokens,
    top_k_values,
    truncation_threshold,
)

LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)
DRAWS = 40_000
sample = jax.jit(sample_tokens, static_argnames=("top_k", "greedy"))


def reference_probs(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Renormalised truncated softmax, written independently in numpy."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones(len(z), bool)
    if top_k:
        keep &= z >= np.sort(z)[::-1][top_k - 1]
    q = np.where(keep, p, 0.0)
    q /= q.sum()
    order = np.argsort(-q, kind="stable")
    mass_before = np.cumsum(q[order]) - q[order]
    in_nucleus = np.zeros(len(z), bool)
    in_nucleus[order] = mass_before < top_p
    keep &= in_nucleus
    if min_p:
        keep &= p >= min_p * p.max()
    out = np.where(keep, p, 0.0)
    return out / out.sum()


def draw_counts(seed, logits, **kw):
    top_k = kw.pop("top_k", 0)
    batch = jnp.broadcast_to(jnp.asarray(logits), (DRAWS, len(logits)))
    tokens = sample(
        jax.random.key(seed),
        batch,
        kw.get("temperature", 1.0),
        kw.get("top_p", 1.0),
        kw.get("min_p", 0.0),
        top_k=top_k,
    )
    return np.bincount(np.asarray(tokens), minlength=len(logits))


def chi_square_pvalue(counts, probs):
    probs = np.asarray(probs, np.float64) / np.sum(probs, dtype=np.float64)
    support = probs > 0
    assert counts[~support].sum() == 0, f"drew truncated tokens: {counts}, expected {probs}"
    return stats.chisquare(counts[support], probs[support] * counts.sum()).pvalue


CASES = [
    dict(),
    dict(temperature=0.5),
    dict(temperature=2.0),
    dict(top_k=3),
    dict(top_p=0.7),
    dict(min_p=0.2),
    dict(top_k=4, top_p=0.9),
    dict(temperature=0.8, top_k=5, top_p=0.85, min_p=0.05),
]


@pytest.mark.parametrize(
    "kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain"
)
def test_frequencies_match_renormalised_softmax(kw):
    probs = reference_probs(LOGITS, **kw)
    counts = draw_counts(0, LOGITS, **dict(kw))
    assert chi_square_pvalue(counts, probs) > 1e-3
    if kw:  # the test has power: the untruncated softmax at temperature 1 is rejected
        plain = reference_probs(LOGITS)
        assert (
            stats.chisquare(counts, plain * counts.sum()).pvalue < 1e-6
            or (counts[plain > 0] == 0).any()
        )


def test_sample_from_weights_two_level_blocks():
    """A vocabulary spanning several blocks (and not a multiple of the block size)."""
    v = 1000
    weights = np.zeros(v, np.float32)
    support = np.array([3, 255, 256, 511, 700, 999])
    weights[support] = [1.0, 2.0, 0.5, 3.0, 1.5, 2.0]
    batch = jnp.broadcast_to(jnp.asarray(weights), (DRAWS, v))
    tokens = np.asarray(jax.jit(sample_from_weights)(jax.random.key(1), batch))
    counts = np.bincount(tokens, minlength=v)
    assert chi_square_pvalue(counts, weights / weights.sum()) > 1e-3


def test_same_key_same_draws_and_different_keys_differ():
    batch = jnp.broadcast_to(jnp.asarray(LOGITS), (DRAWS, len(LOGITS)))
    a = sample(jax.random.key(3), batch, 1.0, 1.0, 0.0)
    b = sample(jax.random.key(3), batch, 1.0, 1.0, 0.0)
    c = sample(jax.random.key(4), batch, 1.0, 1.0, 0.0)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()


def test_greedy_is_argmax_first_on_ties():
    logits = jnp.array([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 5.0, 0.0]])
    np.testing.assert_array_equal(sample(jax.random.key(0), logits, greedy=True), [1, 0])


@pytest.mark.parametrize("scale", [6.0, 0.05], ids=["peaked-candidates", "flat-bisection"])
def test_top_p_set_is_exact_beyond_candidate_cap(scale):
    """Both top-p paths (inside TOP_P_CANDIDATES, and the bisection fallback) give the exact nucleus."""
    v, top_p = 1000, 0.9
    z = np.random.default_rng(7).normal(size=(3, v)).astype(np.float32) * scale
    z[1, ::7] = -np.inf  # banned tokens
    tau = np.asarray(jax.jit(truncation_threshold)(jnp.asarray(z), top_p, 0.0))
    for row, t in zip(z, tau[:, 0]):
        want = reference_probs(row, top_p=top_p) > 0
        sizes = want.sum()
        assert (sizes < TOP_P_CANDIDATES) == (scale > 1), sizes  # the intended path is exercised
        np.testing.assert_array_equal(row >= t, want)


def test_min_p_zero_and_top_p_one_keep_everything():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 50)).astype(np.float32))
    tau = jax.jit(truncation_threshold)(z, 1.0, 0.0)
    assert np.all(np.asarray(z) >= np.asarray(tau))


@pytest.mark.parametrize("k", [1, 7, 50])
def test_top_k_values_block_prefilter_is_exact(k):
    rng = np.random.default_rng(k)
    z = rng.normal(size=(3, 20_011)).astype(np.float32)
    z[1] = np.round(z[1], 1)  # many ties
    z[2, 5000:5100] = 9.0  # the top values crowd into few blocks
    got = np.asarray(jax.jit(top_k_values, static_argnums=1)(jnp.asarray(z), k))
    np.testing.assert_array_equal(got, -np.sort(-z, axis=-1)[:, :k])
