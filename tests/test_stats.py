"""Tests for jaxrl_llm/stats.py: IQM by hand and vs scipy, bootstrap coverage, sigmoid fit."""

import numpy as np
import pytest
from scipy import stats as sps

from jaxrl_llm import stats


def test_iqm_by_hand_and_vs_trim_mean():
    # n=8: drop 2 at each end -> mean(3, 4, 5, 6) = 4.5.
    x = np.array([100.0, 1, 6, 5, 2, 4, 3, -50])
    assert stats.iqm(x) == pytest.approx(np.mean([2, 3, 4, 5]))
    # n=3: trim_mean cuts int(0.75) = 0 -> plain mean; fractional -> weights 1/6, 2/3, 1/6.
    y = np.array([0.0, 3.0, 12.0])
    assert stats.iqm(y) == pytest.approx(5.0)
    assert stats.iqm(y, fractional=True) == pytest.approx(0 / 6 + 3 * 2 / 3 + 12 / 6)
    # n=5 fractional: masses [0,.2),[.2,.4),... overlap [.25,.75] by (0,.15,.2,.15,0).
    z = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    assert stats.iqm(z, fractional=True) == pytest.approx((0.15 * 1 + 0.2 * 2 + 0.15 * 3) / 0.5)
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        v = rng.normal(size=(3, n))
        np.testing.assert_allclose(
            stats.iqm(v, axis=-1), sps.trim_mean(v, 0.25, axis=-1), rtol=1e-12
        )
        np.testing.assert_allclose(
            stats.iqm(v.T, axis=0), sps.trim_mean(v, 0.25, axis=-1), rtol=1e-12
        )
        if n % 4 == 0:
            np.testing.assert_allclose(stats.iqm(v, fractional=True), stats.iqm(v), rtol=1e-12)
    assert stats.iqm(np.arange(8.0).reshape(2, 4), axis=None) == pytest.approx(3.5)


def test_bootstrap_ci_coverage_and_width():
    rng = np.random.default_rng(123)
    true_mean, hits, trials = 2.0, 0, 200
    for t in range(trials):
        x = rng.normal(true_mean, 1.0, size=30)
        point, lo, hi = stats.mean_ci(x, num_resamples=1000, seed=t)
        assert lo <= point <= hi
        hits += lo <= true_mean <= hi
    assert hits / trials >= 0.90
    assert hits / trials <= 0.99  # a 95 % interval, not a trivially wide one

    widths = {}
    for n in (5, 50):
        w = []
        for t in range(20):
            _, lo, hi = stats.iqm_ci(rng.normal(0, 1, size=n), seed=t)
            w.append(hi - lo)
        widths[n] = np.mean(w)
    assert widths[50] < 0.5 * widths[5]


def test_bootstrap_ci_deterministic_stratified_and_errors():
    x = np.array([0.1, 0.5, 0.9, 0.4])
    assert stats.iqm_ci(x, seed=3) == stats.iqm_ci(x, seed=3)
    # Constant data: zero-width interval at the value.
    assert stats.mean_ci(np.full(5, 0.7)) == pytest.approx((0.7, 0.7, 0.7))
    # Stratified over tasks: each task's column is resampled on its own, so a task
    # whose runs are constant keeps exactly its value in every replicate.
    runs = np.stack([np.array([0.0, 1.0, 0.0, 1.0]), np.full(4, 5.0)], axis=1)  # [R=4, M=2]
    point, lo, hi = stats.mean_ci(runs, num_resamples=500)
    assert point == pytest.approx(2.75)
    assert 2.5 <= lo <= point <= hi <= 3.0
    with pytest.raises(ValueError, match="NaN"):
        stats.mean_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="confidence"):
        stats.mean_ci([1.0, 2.0], confidence=95)


@pytest.mark.parametrize("a,cmid,b,r0", [(0.8, 300.0, 1.5, 0.1), (0.45, 2000.0, 0.7, 0.3)])
def test_sigmoid_fit_recovers_parameters(a, cmid, b, r0):
    c = np.geomspace(10, 20000, 25)
    y = stats.sigmoid_curve(c, a, cmid, b, r0)
    fit = stats.fit_sigmoid(c, y)
    assert fit["asymptote"] == pytest.approx(a, rel=1e-3)
    assert fit["midpoint"] == pytest.approx(cmid, rel=1e-2)
    assert fit["exponent"] == pytest.approx(b, rel=1e-2)
    assert fit["r0"] == pytest.approx(r0, abs=1e-3)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-6)
    fixed = stats.fit_sigmoid(c, y, r0=r0)
    assert fixed["asymptote"] == pytest.approx(a, rel=1e-3) and fixed["r0"] == r0


def test_sigmoid_fit_too_few_points_is_nan():
    fit = stats.fit_sigmoid([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    assert np.isnan(fit["asymptote"]) and fit["num_points"] == 3
    with pytest.raises(ValueError, match="positive"):
        stats.fit_sigmoid([0.0, 1, 2, 3], [0, 1, 2, 3])
