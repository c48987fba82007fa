"""Statistics over seeds: IQM, bootstrap confidence intervals, sigmoidal compute curves.

- `iqm`: interquartile mean (Agarwal et al. 2021, "Deep Reinforcement Learning
  at the Edge of the Statistical Precipice").
- `bootstrap_ci`, `iqm_ci`, `mean_ci`: stratified percentile bootstrap
  intervals over runs (seeds), fixed numpy seed.
- `sigmoid_curve`, `fit_sigmoid`: R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B),
  the compute-performance form of "The Art of Scaling Reinforcement Learning
  Compute for LLMs" (ScaleRL): asymptote A, midpoint C_mid, exponent B.

Host-side numpy; scipy is needed only by `fit_sigmoid`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "iqm",
    "bootstrap_ci",
    "iqm_ci",
    "mean_ci",
    "sigmoid_curve",
    "fit_sigmoid",
]


def iqm(x, axis: int | None = -1, *, fractional: bool = False) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50 % of the values along `axis`.

    Default (`fractional=False`) equals `scipy.stats.trim_mean(x, 0.25, axis)`,
    which is what Agarwal et al.'s `rliable` computes: sort, drop
    floor(n / 4) values at each end, average the rest (for n < 4 the plain mean).

    `fractional=True` gives every value its share of the probability mass that
    falls inside the quantile band [0.25, 0.75] of the empirical distribution
    (each value holds mass 1/n), so for n not divisible by 4 the boundary values
    enter with fractional weight; e.g. n = 3: weights (1/6, 2/3, 1/6).
    With n divisible by 4 both definitions agree.
    """
    x = np.asarray(x, np.float64)
    if axis is None:
        x, axis = x.ravel(), -1
    x = np.sort(np.moveaxis(x, axis, -1), axis=-1)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("iqm: need at least one value")
    if not fractional:
        cut = int(0.25 * n)
        return x[..., cut : n - cut].mean(axis=-1)
    lo = np.arange(n) / n  # value i holds mass [i/n, (i+1)/n)
    weights = np.clip(np.minimum(lo + 1.0 / n, 0.75) - np.maximum(lo, 0.25), 0.0, None) / 0.5
    return (x * weights).sum(axis=-1)


def bootstrap_ci(
    x,
    statistic: Callable = None,
    *,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Stratified percentile bootstrap confidence interval of `statistic` over runs.

    Args:
      x: `[R]` values of R runs (seeds), or `[R, M]`: R runs on each of M tasks
        (stratified: runs are resampled with replacement within each task, as
        in Agarwal et al. 2021). NaNs are not allowed.
      statistic: maps an array `[..., R*M]` to `[...]` along the last axis
        (default `iqm`; `np.mean` style functions need `axis=-1`).
      confidence: coverage of the two-sided interval, in (0, 1).
      num_resamples: bootstrap replicates.
      seed: numpy seed; the same inputs give the same interval.
    Returns:
      (point, low, high): the statistic on `x` and the (1-c)/2, (1+c)/2
      percentiles of its bootstrap distribution.
    """
    statistic = iqm if statistic is None else statistic
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"bootstrap_ci: x must be [runs] or [runs, tasks], got shape {x.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if np.isnan(x).any():
        raise ValueError("bootstrap_ci: x contains NaN")
    runs, tasks = x.shape
    point = float(statistic(x.reshape(-1)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(num_resamples, runs, tasks))
    samples = np.take_along_axis(np.broadcast_to(x, (num_resamples, runs, tasks)), idx, axis=1)
    stats = np.asarray(statistic(samples.reshape(num_resamples, runs * tasks)))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def iqm_ci(x, **kwargs) -> tuple[float, float, float]:
    """(IQM, low, high) with a percentile bootstrap interval; see `bootstrap_ci`."""
    return bootstrap_ci(x, iqm, **kwargs)


def mean_ci(x, **kwargs) -> tuple[float, float, float]:
    """(mean, low, high) with a percentile bootstrap interval; see `bootstrap_ci`."""
    return bootstrap_ci(x, lambda v: np.mean(v, axis=-1), **kwargs)


def sigmoid_curve(compute, asymptote, midpoint, exponent, r0):
    """R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)   (ScaleRL, eq. 1).

    A: asymptotic performance; C_mid: compute at which half of the gain
    A - R0 is reached; B: steepness (compute efficiency); R0: performance at C -> 0.
    """
    compute = np.asarray(compute, np.float64)
    return r0 + (asymptote - r0) / (1.0 + (midpoint / compute) ** exponent)


def fit_sigmoid(
    compute,
    performance,
    *,
    r0: float | None = None,
    asymptote_bounds: tuple[float, float] | None = None,
    exponent_bounds: tuple[float, float] = (0.05, 20.0),
) -> dict[str, float]:
    """Least-squares fit of `sigmoid_curve` to a compute-performance curve.

    Fits log C_mid (bounded to [min C / 100, max C * 100]), B (`exponent_bounds`),
    A (default bounds: the data range widened by its span on each side) and,
    unless `r0` is given, R0 (same default bounds). Several starting points
    are tried; the best fit (smallest squared error) is kept.

    Args:
      compute: `[M]` positive compute values (steps, FLOPs, GPU-hours).
      performance: `[M]` performance at those points.
      r0: fix R0 to this value (ScaleRL fixes it to the initial performance).
    Returns:
      dict with `asymptote` (A), `midpoint` (C_mid), `exponent` (B), `r0`,
      `r2` and `num_points`. All NaN when the fit fails or M < 4.
    """
    from scipy.optimize import curve_fit  # scipy is optional: only this function needs it

    c = np.asarray(compute, np.float64).ravel()
    y = np.asarray(performance, np.float64).ravel()
    if c.shape != y.shape:
        raise ValueError(f"fit_sigmoid: compute {c.shape} and performance {y.shape} differ")
    if np.any(c <= 0):
        raise ValueError("fit_sigmoid: compute must be positive")
    keep = np.isfinite(y)
    c, y = c[keep], y[keep]
    nan = {
        "asymptote": np.nan,
        "midpoint": np.nan,
        "exponent": np.nan,
        "r0": np.nan if r0 is None else float(r0),
        "r2": np.nan,
        "num_points": int(y.size),
    }
    num_free = 3 if r0 is not None else 4
    if y.size < num_free:
        return nan
    span = max(float(y.max() - y.min()), 1e-6)
    a_lo, a_hi = asymptote_bounds or (float(y.min()) - span, float(y.max()) + span)
    logc_lo, logc_hi = np.log(c.min() / 100.0), np.log(c.max() * 100.0)

    def model(cc, a, logmid, b, *rest):
        return sigmoid_curve(cc, a, np.exp(logmid), b, rest[0] if rest else r0)

    lower = [a_lo, logc_lo, exponent_bounds[0]]
    upper = [a_hi, logc_hi, exponent_bounds[1]]
    if r0 is None:
        lower.append(float(y.min()) - span)
        upper.append(float(y.max()) + span)
    order = np.argsort(c)
    best = None
    for logmid0 in np.quantile(np.log(c), [0.25, 0.5, 0.75]):
        for b0 in (0.5, 1.0, 3.0):
            for rising in (True, False):
                a0 = y[order[-3:]].mean() if rising else y[order[:3]].mean()
                p0 = [a0, logmid0, b0]
                if r0 is None:
                    p0.append(y[order[:3]].mean() if rising else y[order[-3:]].mean())
                p0 = np.clip(p0, np.add(lower, 1e-9), np.subtract(upper, 1e-9))
                try:
                    params, _ = curve_fit(model, c, y, p0=p0, bounds=(lower, upper), maxfev=5000)
                except (RuntimeError, ValueError):
                    continue
                sse = float(((model(c, *params) - y) ** 2).sum())
                if best is None or sse < best[0]:
                    best = (sse, params)
    if best is None:
        return nan
    sse, params = best
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "asymptote": float(params[0]),
        "midpoint": float(np.exp(params[1])),
        "exponent": float(params[2]),
        "r0": float(params[3]) if r0 is None else float(r0),
        "r2": 1.0 - sse / ss_tot if ss_tot > 0 else np.nan,
        "num_points": int(y.size),
    }
