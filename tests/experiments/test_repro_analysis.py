"""Known-answer tests of experiments/repro_analysis.py (crossover k, paired differences, entropy fit)."""

import numpy as np
import pytest

from experiments import repro_analysis as ra
from jaxrl_llm import passk

KS = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256], np.float64)


def _mixture_pass_at_k(ks, probs):
    """Exact pass@k of a model whose prompts have success probabilities `probs`: mean 1-(1-p)^k."""
    probs = np.asarray(probs, np.float64)
    return np.array([np.mean(1.0 - (1.0 - probs) ** k) for k in ks])


def _base_and_rl(k_star):
    """Base: every prompt solved with p = q. RL: fraction f solved always, the rest never.

    RL's pass@k is f for every k; the base's 1 - (1 - q)^k grows past f at k* = log(1-f)/log(1-q).
    """
    q = 0.05
    f = 1.0 - (1.0 - q) ** k_star  # so that the curves meet at k_star
    base = 1.0 - (1.0 - q) ** KS
    rl = np.full_like(KS, f)
    return base, rl


# ----------------------------------------------------------------------------- crossover_k


def test_crossover_at_grid_point_is_exact():
    base, rl = _base_and_rl(16)
    assert rl[0] > base[0] and rl[-1] < base[-1]
    assert ra.crossover_k(KS, rl, base) == 16.0


def test_crossover_linear_in_log_k_is_exact_between_grid_points():
    k_star = 20.0
    base = np.linspace(0.2, 0.9, KS.size)
    rl = base + 0.05 * (np.log(k_star) - np.log(KS))  # d(k) linear in log k, zero at 20
    assert ra.crossover_k(KS, rl, base) == pytest.approx(k_star, rel=1e-12)


def test_crossover_of_pass_at_k_curves_within_interpolation_tolerance():
    # Off-grid crossing of genuine pass@k curves (d is not linear in log k): the log-k
    # interpolation lands within 10 % of the true crossing found by bisection.
    k_star = 23.0
    base, rl = _base_and_rl(k_star)
    got = ra.crossover_k(KS, rl, base)
    assert 16 < got < 32
    assert got == pytest.approx(k_star, rel=0.10)


def test_crossover_of_mixture_models():
    # RL sharpens: easy prompts go to p = 0.9, hard ones (base p = 0.01) to 0 -> it leads at
    # small k, the base overtakes at the k where its hard-prompt coverage outweighs that.
    base_p = np.r_[np.full(6, 0.3), np.full(4, 0.01)]
    rl_p = np.r_[np.full(6, 0.9), np.full(4, 0.0)]
    base, rl = _mixture_pass_at_k(KS, base_p), _mixture_pass_at_k(KS, rl_p)
    lo, hi = 1.0, 256.0  # true crossing by bisection in log k
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        d = _mixture_pass_at_k([mid], rl_p)[0] - _mixture_pass_at_k([mid], base_p)[0]
        lo, hi = (mid, hi) if d > 0 else (lo, mid)
    assert ra.crossover_k(KS, rl, base) == pytest.approx(lo, rel=0.15)


def test_crossover_none_and_first_k_conventions():
    base = np.linspace(0.1, 0.8, KS.size)
    assert ra.crossover_k(KS, base + 0.01, base) is None  # always above: no crossover
    assert ra.crossover_k(KS, base - 0.01, base) == 1.0  # never above: the smallest k
    assert ra.crossover_k(KS, base, base) == 1.0  # equal is not above
    # only the first crossing counts
    d = np.array([0.1, 0.05, -0.01, 0.02, 0.03, 0.03, 0.03, 0.03, 0.03])
    assert 2 < ra.crossover_k(KS, base + d, base) < 4


def test_crossover_rejects_bad_grids():
    with pytest.raises(ValueError, match="strictly increasing"):
        ra.crossover_k([1, 4, 2], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="must both be"):
        ra.crossover_k(KS, np.zeros(3), np.zeros(KS.size))


# ----------------------------------------------------------------------------- crossover_interval


def test_crossover_interval_over_seeds_brackets_the_true_k():
    base, rl = _base_and_rl(16)
    rng = np.random.default_rng(0)
    seeds = rl[None] + rng.normal(0.0, 0.01, size=(5, KS.size))
    point, lo, hi, frac_none = ra.crossover_interval(KS, seeds, base, num_resamples=500, seed=1)
    assert 8 < lo <= point <= hi < 32  # within one grid step of the true k = 16
    assert point == pytest.approx(16, rel=0.3)
    assert frac_none == 0.0
    # deterministic for a seed
    assert ra.crossover_interval(KS, seeds, base, num_resamples=500, seed=1) == (
        point,
        lo,
        hi,
        frac_none,
    )


def test_crossover_interval_without_noise_is_a_point():
    base, rl = _base_and_rl(16)
    assert ra.crossover_interval(KS, np.stack([rl] * 4), np.stack([base] * 3)) == (
        16.0,
        16.0,
        16.0,
        0.0,
    )


def test_crossover_interval_counts_replicates_without_crossover():
    # Seeds of a stay above b everywhere (margin 0.02 +- 0.01): no crossover in any replicate.
    base = np.linspace(0.2, 0.9, KS.size)
    a = base[None] + 0.02 + np.random.default_rng(0).uniform(-0.01, 0.01, size=(5, KS.size))
    point, lo, hi, frac_none = ra.crossover_interval(KS, a, base, num_resamples=300)
    assert point is None and frac_none == 1.0 and lo == hi == np.inf


def test_crossover_interval_per_prompt_resamples_prompts():
    # Per-prompt curves [S, P, K]: the prompts, not only the seeds, carry the uncertainty.
    base_p = np.r_[np.full(6, 0.3), np.full(4, 0.01)]
    rl_p = np.r_[np.full(6, 0.9), np.full(4, 0.0)]
    per_prompt = lambda p: np.stack([_mixture_pass_at_k(KS, [x]) for x in p])  # noqa: E731
    base, rl = per_prompt(base_p), per_prompt(rl_p)  # [P, K]
    seeds = np.stack([rl] * 3)  # identical seeds: only prompt resampling varies
    point, lo, hi, _ = ra.crossover_interval(KS, seeds, base, num_resamples=400)
    assert point == pytest.approx(ra.crossover_k(KS, rl.mean(0), base.mean(0)))
    assert lo < point < hi  # prompt resampling widens it
    with pytest.raises(ValueError, match="does not match"):
        ra.crossover_interval(KS, seeds, base[:5])


# ----------------------------------------------------------------------------- paired difference


def test_paired_difference_per_prompt_known_sign():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=(200, 3))
    # variant better at k index 0, worse at 2, equal in distribution at 1
    shift = np.array([0.1, 0.0, -0.1])
    noise = rng.normal(0.0, 0.05, size=base.shape)
    variant = base + shift + noise - noise.mean(axis=0)  # mean difference exactly `shift`
    out = ra.paired_difference_per_k(base, variant, num_resamples=1000)
    assert out["sign"].tolist() == [1, 0, -1]
    np.testing.assert_allclose(out["diff"], shift, atol=1e-12)
    assert np.all(out["ci_low"] <= out["diff"]) and np.all(out["diff"] <= out["ci_high"])


def test_paired_difference_fixed_base_matches_mean_ci():
    from jaxrl_llm import stats

    base = np.array([0.3, 0.6])
    variant = np.array([[0.35, 0.55], [0.40, 0.50], [0.33, 0.58], [0.37, 0.52], [0.36, 0.56]])
    out = ra.paired_difference_per_k(base, variant, num_resamples=500, seed=3)
    ref = stats.mean_ci(variant[:, 1] - base[1], num_resamples=500, seed=3)
    assert (out["diff"][1], out["ci_low"][1], out["ci_high"][1]) == pytest.approx(ref)
    assert out["sign"].tolist() == [1, -1]


def test_paired_difference_two_level_seeds_and_prompts():
    # Per-prompt pass@k from correct counts (n = 16): the variant solves 2 more samples of
    # every prompt -> positive at k = 1; at k = 16 both cover the same prompts.
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 12, size=40)
    ks = [1, 16]
    base = ra.per_prompt_pass_at_k(counts, 16, ks)  # [P, K]
    variant = ra.per_prompt_pass_at_k(np.stack([counts + 2] * 4), 16, ks)  # [S, P, K]
    out = ra.paired_difference_per_k(base, variant, num_resamples=500)
    np.testing.assert_allclose(out["diff"], [2 / 16, 0.0], atol=1e-12)
    assert out["sign"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="need base"):
        ra.paired_difference_per_k(base[:5], variant)


def test_paired_difference_two_trained_variants():
    # Two variants with seeds: per-prompt curves [S, P, K]; the variant is 0.05 above at k
    # index 0 in every seed and prompt, equal at index 1 up to seed noise of mean zero.
    rng = np.random.default_rng(1)
    prompts = rng.uniform(0.2, 0.7, size=(30, 2))
    noise = rng.normal(0.0, 0.02, size=(4, 1, 2))
    other = prompts[None] + noise - noise.mean(0)  # [4, P, K]
    noise = rng.normal(0.0, 0.02, size=(5, 1, 2))
    variant = prompts[None] + np.array([0.05, 0.0]) + noise - noise.mean(0)  # [5, P, K]
    out = ra.paired_difference_per_k(other, variant, num_resamples=500)
    np.testing.assert_allclose(out["diff"], [0.05, 0.0], atol=1e-12)
    assert out["sign"].tolist() == [1, 0]
    # a per-run scalar (P = K = 1): final entropy 0.9 +- 0.01 vs 0.5 +- 0.01
    hi_h = np.array([0.89, 0.90, 0.91, 0.90, 0.90])[:, None, None]
    lo_h = np.array([0.49, 0.51, 0.50])[:, None, None]
    out = ra.paired_difference_per_k(lo_h, hi_h, num_resamples=500)
    assert out["diff"][0] == pytest.approx(0.4) and out["sign"][0] == 1
    assert 0.38 < out["ci_low"][0] < 0.4 < out["ci_high"][0] < 0.42


def test_per_prompt_pass_at_k_matches_passk():
    counts = np.array([[0, 3, 8], [1, 2, 8]])
    got = ra.per_prompt_pass_at_k(counts, 8, [1, 4, 8])
    assert got.shape == (2, 3, 3)
    np.testing.assert_allclose(got[..., 1], passk.pass_at_k(8, counts, 4))
    np.testing.assert_allclose(got[0, 1], [3 / 8, 1 - (5 * 4 * 3 * 2) / (8 * 7 * 6 * 5), 1.0])
    with pytest.raises(ValueError, match="exceeds"):
        ra.per_prompt_pass_at_k(counts, 8, [1, 16])


# ----------------------------------------------------------------------------- pilot rule


def test_headroom_acceptance_rule():
    ok = ra.headroom_acceptance(0.2, 100 / 128, 128)
    assert ok["accept"] and ok["reasons"] == []
    assert ok["coverage_ci"][0] < 100 / 128 < ok["coverage_ci"][1] < 0.95
    # with 128 prompts a coverage of 115/128 = 0.898 passes, 116/128 = 0.906 does not
    assert ra.headroom_acceptance(0.2, 115 / 128, 128)["accept"]
    high = ra.headroom_acceptance(0.2, 116 / 128, 128)
    assert not high["accept"] and "coverage upper bound" in high["reasons"][0]
    both = ra.headroom_acceptance(0.35, 1.0, 128)
    assert not both["accept"] and len(both["reasons"]) == 2
    assert not ra.headroom_acceptance(0.05, 0.5, 128)["accept"]
    with pytest.raises(ValueError, match="not a fraction"):
        ra.headroom_acceptance(0.2, 0.333, 128)


# ----------------------------------------------------------------------------- entropy fit


def test_entropy_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    for a_true, b_true in [(0.3, 1.2), (0.05, 0.6), (1.0, 3.0)]:
        h = np.linspace(1.5, 0.1, 40)  # entropy decays over training
        r = -a_true * np.exp(h) + b_true + rng.normal(0.0, 0.002, size=h.size)
        a, b, r2 = ra.fit_entropy_performance(h, r)
        assert a == pytest.approx(a_true, rel=0.02)
        assert b == pytest.approx(b_true, abs=0.01)
        assert r2 > 0.99


def test_entropy_fit_exact_without_noise():
    h = np.array([1.0, 0.8, 0.5, 0.3])
    a, b, r2 = ra.fit_entropy_performance(h, -0.2 * np.exp(h) + 0.9)
    assert (a, b, r2) == pytest.approx((0.2, 0.9, 1.0), abs=1e-12)


def test_entropy_fit_degenerate_inputs_fail_clearly():
    with pytest.raises(ValueError, match="not identifiable"):
        ra.fit_entropy_performance(np.full(10, 0.7), np.linspace(0.2, 0.5, 10))
    with pytest.raises(ValueError, match=">= 3"):
        ra.fit_entropy_performance([1.0, 0.5], [0.2, 0.4])
    with pytest.raises(ValueError, match="finite"):
        ra.fit_entropy_performance([1.0, np.nan, 0.5], [0.2, 0.3, 0.4])


def test_entropy_fit_per_run():
    h = np.stack([np.linspace(1.2, 0.2, 20), np.linspace(1.0, 0.4, 20)])
    r = np.stack([-0.1 * np.exp(h[0]) + 0.8, -0.4 * np.exp(h[1]) + 1.5])
    out = ra.fit_entropy_performance_runs(h, r)
    np.testing.assert_allclose(out["a"], [0.1, 0.4], rtol=1e-9)
    np.testing.assert_allclose(out["b"], [0.8, 1.5], rtol=1e-9)
    np.testing.assert_allclose(out["r2"], 1.0)
    np.testing.assert_allclose(out["rmse"], 0.0, atol=1e-12)
