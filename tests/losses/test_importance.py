"""Importance weights: exact probability ratios per token and per sequence, numpy and jax."""

import numpy as np
import pytest

from jaxrl_llm.losses.importance import importance_weights


def _softmax_logp(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_importance_weights_are_exact_probability_ratios():
    rng = np.random.default_rng(0)
    N, T, V = 3, 5, 7
    cur_logits, beh_logits = rng.normal(size=(N, T, V)), rng.normal(size=(N, T, V))
    tokens = rng.integers(0, V, size=(N, T))
    mask = np.ones((N, T), np.float32)
    mask[1, 3:] = 0
    take = lambda lp: np.take_along_axis(lp, tokens[..., None], -1)[..., 0]  # noqa: E731
    cur, beh = take(_softmax_logp(cur_logits)), take(_softmax_logp(beh_logits))
    # reference: probabilities (not log-probs), product over valid tokens
    p_cur = np.exp(cur_logits) / np.exp(cur_logits).sum(-1, keepdims=True)
    p_beh = np.exp(beh_logits) / np.exp(beh_logits).sum(-1, keepdims=True)
    pc, pb = take(p_cur), take(p_beh)
    want_tok = np.where(mask > 0, pc / pb, 0.0)
    want_seq = np.prod(np.where(mask > 0, pc / pb, 1.0), axis=1)
    np.testing.assert_allclose(importance_weights(cur, beh, mask), want_tok, rtol=1e-12)
    np.testing.assert_allclose(
        importance_weights(cur, beh, mask, level="sequence"), want_seq, rtol=1e-12
    )
    np.testing.assert_allclose(
        importance_weights(cur, beh, mask, level="sequence", clip=1.0),
        np.minimum(want_seq, 1.0),
        rtol=1e-12,
    )
    np.testing.assert_array_equal(importance_weights(beh, beh, mask), mask)  # on-policy: w = 1
    import jax.numpy as jnp

    np.testing.assert_allclose(
        importance_weights(
            jnp.asarray(cur, jnp.float32), jnp.asarray(beh, jnp.float32), jnp.asarray(mask)
        ),
        want_tok,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="shape"):
        importance_weights(cur, beh[:, :2], mask)


# ----------------------------------------------------------------------------- rollout correction
def _reference_correction(old, rollout, mask, level, mode, C, low):
    """Frozen, readable reference: loops over rows and tokens, ratios in probability space."""
    N, T = old.shape
    w, keep = np.zeros((N, T)), np.zeros((N, T))
    for i in range(N):
        valid = [t for t in range(T) if mask[i, t] != 0]
        token_rho = {t: np.exp(old[i, t]) / np.exp(rollout[i, t]) for t in valid}
        for t in valid:
            if level == "token":
                rho = token_rho[t]
            elif level == "sequence":
                rho = np.prod([token_rho[s] for s in valid])
            else:  # geometric mean
                rho = np.prod([token_rho[s] for s in valid]) ** (1.0 / len(valid))
            if mode == "truncate":
                w[i, t], keep[i, t] = min(rho, C), 1.0
            else:
                keep[i, t] = float(low <= rho <= C)
                w[i, t] = keep[i, t]
    return w, keep


def _correction_batch(seed=0, N=8, T=7, scale=0.6):
    rng = np.random.default_rng(seed)
    old = rng.normal(size=(N, T)) * scale - 1.0
    rollout = old + rng.normal(size=(N, T)) * scale
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, size=(N, 1))).astype(np.float64)
    mask[2] = 0.0  # a row left out
    mask[4] *= 0.5  # a weighted row (sample weight)
    old[mask == 0] = np.nan  # padding holds anything: it must reach neither weights nor metrics
    rollout[mask == 0] = -np.inf
    return old, rollout, mask


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_rollout_correction_matches_reference(level, mode):
    from jaxrl_llm.losses.importance import rollout_correction

    old, rollout, mask = _correction_batch()
    C, low = (1.5, 0.7) if mode == "mask" else (1.5, None)
    w, keep, m = rollout_correction(
        old, rollout, mask, level=level, mode=mode, threshold=C, low_threshold=low
    )
    want_w, want_keep = _reference_correction(
        old, rollout, mask, level, mode, C, 1 / C if low is None else low
    )
    np.testing.assert_allclose(w, want_w, rtol=1e-12)
    np.testing.assert_array_equal(keep, want_keep)
    assert np.all(w[mask == 0] == 0) and np.all(keep[mask == 0] == 0)  # exactly zero
    # some tokens truncated / masked and some not, so the test exercises both branches
    changed = (want_w != 1.0) if mode == "mask" else (want_w == C)
    assert 0 < changed[mask != 0].mean() < 1
    # diagnostics, by hand
    d = np.where(mask != 0, old - rollout, 0.0)
    np.testing.assert_allclose(m["logp_gap"], (mask * d).sum() / mask.sum(), rtol=1e-12)
    np.testing.assert_allclose(m["logp_gap_abs"], (mask * np.abs(d)).sum() / mask.sum())
    if mode == "truncate":
        trunc = (mask * (want_w == C) * (mask != 0)).sum() / mask.sum()
        np.testing.assert_allclose(m["truncated_frac"], trunc, rtol=1e-12)
        assert float(m["masked_frac"]) == 0.0
    else:
        dropped = (mask * ((mask != 0) & (want_keep == 0))).sum() / mask.sum()
        np.testing.assert_allclose(m["masked_frac"], dropped, rtol=1e-12)
        assert float(m["truncated_frac"]) == 0.0
    np.testing.assert_allclose(m["weight_mean"], (mask * want_w).sum() / mask.sum(), rtol=1e-12)
    rows = mask.sum(1) > 0
    if level == "token":
        log_units = d[mask != 0]
    elif level == "sequence":
        log_units = d.sum(1)[rows]
    else:
        log_units = d.sum(1)[rows] / (mask != 0).sum(1)[rows]
    for key, q in (("ratio_p01", 0.01), ("ratio_p50", 0.5), ("ratio_p99", 0.99)):
        np.testing.assert_allclose(m[key], np.exp(np.quantile(log_units, q)), rtol=1e-10)


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_rollout_correction_is_one_on_policy_and_jits(level, mode):
    import jax
    import jax.numpy as jnp

    from jaxrl_llm.losses.importance import CORRECTION_METRIC_KEYS, rollout_correction

    old, rollout, mask = _correction_batch(seed=1)
    # old == rollout: every weight and keep is exactly the validity indicator
    w, keep, m = rollout_correction(old, old, mask, level=level, mode=mode)
    np.testing.assert_array_equal(w, (mask != 0).astype(float))
    np.testing.assert_array_equal(keep, (mask != 0).astype(float))
    assert float(m["logp_gap_abs"]) == 0.0 and float(m["ratio_p50"]) == 1.0
    # jit on float32 / bf16 arrays = numpy float64 (to float32 precision), same metric keys
    fn = jax.jit(lambda a, b, c: rollout_correction(a, b, c, level=level, mode=mode, threshold=1.5))
    want_w, want_keep, want_m = rollout_correction(
        old, rollout, mask, level=level, mode=mode, threshold=1.5
    )
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got_w, got_keep, got_m = fn(f32(old), f32(rollout), f32(mask))
    assert got_w.dtype == jnp.float32 and set(got_m) == set(CORRECTION_METRIC_KEYS)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-5)
    np.testing.assert_array_equal(got_keep, want_keep)
    for k in CORRECTION_METRIC_KEYS:
        np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-5, atol=1e-7, err_msg=k)
    bf = fn(jnp.asarray(old, jnp.bfloat16), jnp.asarray(rollout, jnp.bfloat16), f32(mask))
    assert bf[0].dtype == jnp.float32


def test_rollout_correction_rejects_bad_calls():
    from jaxrl_llm.losses.importance import rollout_correction

    old, rollout, mask = _correction_batch()
    with pytest.raises(ValueError, match="shape"):
        rollout_correction(old, rollout[:, :2], mask)
    with pytest.raises(ValueError, match="level"):
        rollout_correction(old, rollout, mask, level="row")
    with pytest.raises(ValueError, match="mode"):
        rollout_correction(old, rollout, mask, mode="clip")
    with pytest.raises(ValueError, match="low_threshold"):
        rollout_correction(old, rollout, mask, mode="truncate", low_threshold=0.5)
    with pytest.raises(ValueError, match="low_threshold"):
        rollout_correction(old, rollout, mask, mode="mask", threshold=2.0, low_threshold=3.0)
