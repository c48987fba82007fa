"""Analyses of the pre-registered reproductions (docs/reproductions/): crossover k, paired
pass@k differences, the entropy-performance fit. Host-side numpy, no JAX.

- `per_prompt_pass_at_k`: per-prompt unbiased pass@k curves from correct counts
  (`jaxrl_llm.passk.pass_at_k`), the input of the paired analyses below.
- `crossover_k`, `crossover_interval`: the reasoning-boundary crossover ("Does Reinforcement
  Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base Model?", Yue et
  al. 2025): the smallest k at which an RL model's pass@k curve stops being above the base
  model's, interpolated in log k, with a bootstrap interval over seeds (and prompts).
- `paired_difference_per_k`: variant minus base pass@k per k with a 95 % percentile-bootstrap
  interval (`jaxrl_llm.stats.mean_ci` where the data are one level of units; a two-level
  bootstrap over seeds and prompts otherwise).
- `headroom_acceptance`: the pilot's pre-registered rule for the base model (pass@1 in
  [0.10, 0.30], upper 95 % bound of pass@n below 0.95), docs/reproductions/nsr_headroom.md.
- `fit_entropy_performance`, `fit_entropy_performance_runs`: R = -a * exp(H) + b (Cui et al.
  2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"),
  `jaxrl_llm.passk.fit_entropy_performance` with a check that the fit is identifiable.

IQM with bootstrap intervals per variant and k is `experiments/collate.py`'s
`pass_at_k_table` (`jaxrl_llm.stats.iqm_ci`); it is not repeated here.

Curves are indexed by a strictly increasing grid `ks` of positive k (normally 1, 2, 4, ...,
256). Array conventions: `[S, K]` per-seed curves (each the mean over the held-out prompts);
`[S, P, K]` per-seed, per-prompt curves; a base model (one checkpoint) is `[K]` or `[P, K]`,
or `[S_b, K]` / `[S_b, P, K]` when it was evaluated with several sampling seeds.
"""

from __future__ import annotations

import numpy as np

from jaxrl_llm import passk, stats

__all__ = [
    "per_prompt_pass_at_k",
    "crossover_k",
    "crossover_interval",
    "paired_difference_per_k",
    "headroom_acceptance",
    "fit_entropy_performance",
    "fit_entropy_performance_runs",
]


def per_prompt_pass_at_k(correct_counts, n: int, ks) -> np.ndarray:
    """Unbiased pass@k per prompt (Chen et al. 2021) for every k: `[..., P]` counts -> `[..., P, K]`.

    `correct_counts[..., p]` is the number of correct samples among `n` for prompt p.
    """
    c = np.asarray(correct_counts, np.int64)
    ks = _check_ks(ks)
    if ks[-1] > n:
        raise ValueError(f"per_prompt_pass_at_k: largest k={ks[-1]:g} exceeds n={n}")
    return np.stack([passk.pass_at_k(n, c, int(k)) for k in ks], axis=-1)


# ----------------------------------------------------------------------------- crossover


def _check_ks(ks) -> np.ndarray:
    ks = np.asarray(ks, np.float64)
    if ks.ndim != 1 or ks.size < 2 or np.any(ks <= 0) or np.any(np.diff(ks) <= 0):
        raise ValueError(f"ks must be >= 2 strictly increasing positive values, got {ks}")
    return ks


def _crossover_rows(ks: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """Crossover k of each row of `diff = a - b` ([R, K]); NaN where a stays above b."""
    above = diff > 0
    has = ~above.all(axis=-1)
    i = np.argmax(~above, axis=-1)  # first k where a is not above b
    out = np.full(diff.shape[0], np.nan)
    first = has & (i == 0)
    out[first] = ks[0]  # a is not above b even at the smallest k
    mid = has & (i > 0)
    if np.any(mid):
        r, j = np.nonzero(mid)[0], i[mid]
        d0, d1 = diff[r, j - 1], diff[r, j]  # d0 > 0 >= d1
        t = d0 / (d0 - d1)
        logk = np.log(ks[j - 1]) + t * (np.log(ks[j]) - np.log(ks[j - 1]))
        out[r] = np.where(d1 == 0, ks[j], np.exp(logk))  # exactly the grid k at a tie
    return out


def crossover_k(ks, curve_a, curve_b) -> float | None:
    """The smallest k at which `curve_a` (RL) stops being above `curve_b` (base).

    With d(k) = a(k) - b(k) on the grid, let k_j be the first grid point with d(k_j) <= 0.
    The crossover is the zero of d interpolated linearly in log k between k_{j-1} and k_j:

        log k* = log k_{j-1} + d_{j-1} / (d_{j-1} - d_j) * (log k_j - log k_{j-1}),

    so k* = k_j exactly when the curves meet at a grid point (d_j = 0). Conventions:
    returns `ks[0]` when a is not above b even at the smallest k (no crossover from above:
    the RL model never leads), and None when a stays above b at every k of the grid (no
    crossover up to `ks[-1]`). Only the first crossing counts; a later re-crossing is ignored.
    Ties are crossings: where both curves reach 1.0, d = 0 ends the lead.

    Args:
      ks: `[K]` strictly increasing positive k values (e.g. 1, 2, 4, ..., 256).
      curve_a, curve_b: `[K]` pass@k curves on that grid.
    """
    ks = _check_ks(ks)
    a, b = np.asarray(curve_a, np.float64), np.asarray(curve_b, np.float64)
    if a.shape != ks.shape or b.shape != ks.shape:
        raise ValueError(f"crossover_k: curves {a.shape}, {b.shape} must both be [K={ks.size}]")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("crossover_k: curves contain NaN")
    k = _crossover_rows(ks, (a - b)[None])[0]
    return None if np.isnan(k) else float(k)


def _multinomial_weights(rng, resamples: int, units: int) -> np.ndarray:
    """`[R, units]` bootstrap weights: counts of each unit in a resample, divided by `units`."""
    idx = rng.integers(0, units, size=(resamples, units))
    w = np.zeros((resamples, units))
    np.add.at(w, (np.arange(resamples)[:, None], idx), 1.0)
    return w / units


def crossover_interval(
    ks,
    curves_a,
    curves_b,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float | None, float, float, float]:
    """Crossover k of the seed-mean curves with a percentile-bootstrap interval.

    What is resampled (with replacement, `num_resamples` times, numpy `seed`):
    - `curves_a` `[S, K]` (per-seed curves, each a mean over prompts): the S seeds of a; and,
      when `curves_b` is `[S_b, K]`, the S_b seeds of b independently (a `[K]` base is fixed).
    - `curves_a` `[S, P, K]` (per seed and prompt): the seeds of a (and of b when it is
      `[S_b, P, K]`) and the P prompts, the same prompt draw for a and b (paired by prompt).
      `curves_b` is then `[P, K]` or `[S_b, P, K]`.
    Each replicate's curves are the means over the drawn seeds (and prompts); its crossover is
    `crossover_k` of those. A replicate without a crossover counts as k = +inf (beyond the
    grid), so `hi` (and even `lo`) is inf when enough replicates keep a above b up to
    `ks[-1]`.

    Returns:
      (point, lo, hi, frac_no_crossover): `crossover_k` of the full-data mean curves (None if
      none), the (1 - c)/2 and (1 + c)/2 quantiles of the replicates (inverted-CDF quantiles,
      so they are replicate values), and the fraction of replicates without a crossover.
    """
    ks = _check_ks(ks)
    a, b = np.asarray(curves_a, np.float64), np.asarray(curves_b, np.float64)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"crossover_interval: confidence must be in (0, 1), got {confidence}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("crossover_interval: curves contain NaN")
    if a.ndim not in (2, 3) or a.shape[-1] != ks.size:
        raise ValueError(f"crossover_interval: curves_a must be [S, K] or [S, P, K], got {a.shape}")
    if b.ndim == a.ndim - 1:
        b = b[None]  # one base model: one "seed"
    if b.ndim != a.ndim or b.shape[1:] != a.shape[1:]:
        raise ValueError(
            f"crossover_interval: curves_b {np.shape(curves_b)} does not match curves_a {a.shape}"
        )
    rng = np.random.default_rng(seed)
    wa = _multinomial_weights(rng, num_resamples, a.shape[0])
    wb = _multinomial_weights(rng, num_resamples, b.shape[0])
    if a.ndim == 2:
        mean_a, mean_b = wa @ a, wb @ b  # [R, K]
        point_diff = a.mean(0) - b.mean(0)
    else:
        wp = _multinomial_weights(rng, num_resamples, a.shape[1])
        mean_a = np.einsum("rs,spk,rp->rk", wa, a, wp)
        mean_b = np.einsum("rs,spk,rp->rk", wb, b, wp)
        point_diff = a.mean((0, 1)) - b.mean((0, 1))
    reps = _crossover_rows(ks, mean_a - mean_b)
    frac_none = float(np.isnan(reps).mean())
    reps = np.where(np.isnan(reps), np.inf, reps)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha], method="inverted_cdf")
    point = _crossover_rows(ks, point_diff[None])[0]
    return (None if np.isnan(point) else float(point)), float(lo), float(hi), frac_none


# ----------------------------------------------------------------------------- paired difference


def paired_difference_per_k(
    base,
    variant,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Mean of variant - base pass@k per k, with a percentile-bootstrap interval.

    Shapes and what is resampled:
    - `base [U, K]`, `variant [U, K]`: U paired units (prompts, or seeds evaluated on the same
      prompts); the per-unit differences are resampled (`stats.mean_ci` per k).
    - `base [K]` (one curve, e.g. the base model's prompt mean), `variant [S, K]`: the seeds of
      the variant against a fixed base (`stats.mean_ci` of `variant - base` per k); the base's
      own sampling error is not in the interval, so prefer the per-prompt form.
    - `base [P, K]`, `variant [S, P, K]`: the difference averaged over seeds and prompts;
      two-level bootstrap: seeds of the variant and prompts (the same prompt draw for base and
      variant: paired by prompt) resampled independently in each replicate.
    - `base [S_b, P, K]`, `variant [S, P, K]`: two trained variants (e.g. W-REINFORCE against
      GRPO): seed-mean of variant minus seed-mean of base; each side's seeds are drawn
      independently (different runs), the prompts once for both (paired by prompt). A per-run
      scalar (final entropy, say) is the case P = K = 1.

    Returns:
      {"diff", "ci_low", "ci_high"}: `[K]` float arrays, and "sign": `[K]` int, +1 where the
      interval lies above 0, -1 where below, 0 where it contains 0. Intervals are per k
      (marginal): no correction for looking at K values of k.
    """
    b, v = np.asarray(base, np.float64), np.asarray(variant, np.float64)
    if np.isnan(b).any() or np.isnan(v).any():
        raise ValueError("paired_difference_per_k: inputs contain NaN")
    kw = dict(num_resamples=num_resamples, seed=seed, confidence=confidence)
    if v.ndim == 2 and b.shape in (v.shape, v.shape[1:]):
        d = v - b  # [U, K]
        rows = [stats.mean_ci(d[:, k], **kw) for k in range(d.shape[1])]
        diff, lo, hi = (np.array(x) for x in zip(*rows))
    elif v.ndim == 3 and (b.shape == v.shape[1:] or (b.ndim == 3 and b.shape[1:] == v.shape[1:])):
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        b = b[None] if b.ndim == 2 else b  # one base model: one "seed"
        rng = np.random.default_rng(seed)
        wv = _multinomial_weights(rng, num_resamples, v.shape[0])
        wb = _multinomial_weights(rng, num_resamples, b.shape[0])
        wp = _multinomial_weights(rng, num_resamples, v.shape[1])
        reps = np.einsum("rs,spk,rp->rk", wv, v, wp) - np.einsum("rs,spk,rp->rk", wb, b, wp)
        alpha = (1.0 - confidence) / 2.0
        diff = v.mean((0, 1)) - b.mean((0, 1))
        lo, hi = np.quantile(reps, [alpha, 1.0 - alpha], axis=0)
    else:
        raise ValueError(
            "paired_difference_per_k: need base [U, K] & variant [U, K], base [K] & variant "
            f"[S, K], or base [P, K] or [S_b, P, K] & variant [S, P, K]; got {b.shape} and "
            f"{v.shape}"
        )
    sign = np.where(lo > 0, 1, np.where(hi < 0, -1, 0))
    return {"diff": diff, "ci_low": lo, "ci_high": hi, "sign": sign}


# ----------------------------------------------------------------------------- pilot rule


def headroom_acceptance(
    pass_at_1: float,
    coverage: float,
    num_prompts: int,
    *,
    pass_at_1_range: tuple[float, float] = (0.10, 0.30),
    max_coverage_upper: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """The base-model pilot's acceptance rule (docs/reproductions/nsr_headroom.md).

    Accept the task when the base model's pass@1 lies in `pass_at_1_range` and the upper end
    of the 95 % percentile-bootstrap interval (over prompts, `stats.mean_ci`) of its coverage
    is below `max_coverage_upper`. `coverage` must be pass@k at k = n (every sample used), the
    fraction of prompts with at least one correct sample; that per-prompt value is 0 or 1, so
    the per-prompt vector, and its bootstrap, follow from the mean and `num_prompts` alone
    (the evaluation CLI's `eval.json` holds only means).

    Returns:
      {"accept": bool, "pass_at_1", "coverage", "coverage_ci": (lo, hi), "reasons": [str]}
      with one reason per failed condition.
    """
    covered = coverage * num_prompts
    if num_prompts < 1 or abs(covered - round(covered)) > 1e-6 * num_prompts:
        raise ValueError(
            f"headroom_acceptance: coverage {coverage} is not a fraction of {num_prompts} "
            "prompts; pass coverage = pass@n at k = n"
        )
    m = int(round(covered))
    x = np.r_[np.ones(m), np.zeros(num_prompts - m)]
    _, lo, hi = stats.mean_ci(x, num_resamples=num_resamples, seed=seed)
    reasons = []
    if not pass_at_1_range[0] <= pass_at_1 <= pass_at_1_range[1]:
        reasons.append(
            f"pass@1 {pass_at_1:.3f} outside [{pass_at_1_range[0]}, {pass_at_1_range[1]}]"
        )
    if hi >= max_coverage_upper:
        reasons.append(f"coverage upper bound {hi:.3f} >= {max_coverage_upper}")
    return {
        "accept": not reasons,
        "pass_at_1": float(pass_at_1),
        "coverage": m / num_prompts,
        "coverage_ci": (lo, hi),
        "reasons": reasons,
    }


# ----------------------------------------------------------------------------- entropy fit


def fit_entropy_performance(H, R, *, min_spread: float = 1e-6) -> tuple[float, float, float]:
    """Least squares for R = -a * exp(H) + b (Cui et al. 2025, eq. "R = -a e^H + b").

    Linear in x = exp(H): `jaxrl_llm.passk.fit_entropy_performance`. Fails with a clear
    error instead of returning an arbitrary (minimum-norm) solution when the fit is not
    identifiable: fewer than 3 points (2 points always fit exactly, r2 = 1 says nothing),
    NaNs, or an entropy that does not vary (relative spread of exp(H) below `min_spread`).

    Args:
      H: `[T]` policy entropies along one run (e.g. `train/entropy` at the evaluated steps).
      R: `[T]` performance at the same points (e.g. `eval/accuracy`).
    Returns:
      (a, b, r2); r2 is NaN when R is constant.
    """
    h, r = np.asarray(H, np.float64).ravel(), np.asarray(R, np.float64).ravel()
    if h.shape != r.shape or h.size < 3:
        raise ValueError(
            f"fit_entropy_performance: need H and R of equal length >= 3, got {h.shape}, {r.shape}"
        )
    if not (np.isfinite(h).all() and np.isfinite(r).all()):
        raise ValueError("fit_entropy_performance: H and R must be finite")
    x = np.exp(h)
    if np.ptp(x) <= min_spread * np.abs(x).max():
        raise ValueError(
            "fit_entropy_performance: the entropy H is (nearly) constant over the run, so a and "
            "b of R = -a exp(H) + b are not identifiable"
        )
    return passk.fit_entropy_performance(h, r)


def fit_entropy_performance_runs(H, R) -> dict[str, np.ndarray]:
    """`fit_entropy_performance` per run: `H [S, T]`, `R [S, T]` -> {"a", "b", "r2", "rmse"} `[S]`.

    `rmse` is the root mean squared residual (in units of R), a goodness of fit that stays
    meaningful when R hardly varies and r2 does not.
    """
    h, r = np.asarray(H, np.float64), np.asarray(R, np.float64)
    if h.ndim != 2 or h.shape != r.shape:
        raise ValueError(
            f"fit_entropy_performance_runs: need H, R of one shape [S, T], got {h.shape}, {r.shape}"
        )
    out = {key: np.empty(h.shape[0]) for key in ("a", "b", "r2", "rmse")}
    for s in range(h.shape[0]):
        a, b, r2 = fit_entropy_performance(h[s], r[s])
        resid = r[s] - (-a * np.exp(h[s]) + b)
        out["a"][s], out["b"][s], out["r2"][s] = a, b, r2
        out["rmse"][s] = float(np.sqrt(np.mean(resid**2)))
    return out
