"""Importance weights between the current policy and the one that sampled a batch.

Rollout replay (`tasks.ReplaySource`) trains on groups sampled by an older policy; the
correction is the probability ratio w = π_current(y) / π_behaviour(y). In a PPO-style loss,
passing the behaviour log-probs as `old_logp` applies exactly this weight through the ratio;
this function computes it directly (diagnostics, REINFORCE-style losses, truncated variants).

`rollout_correction` is the other gap: the sampler's policy π_rollout (a bf16 inference
engine, a stale asynchronous copy) differs from the trainer's π_old, recomputed in float32.
It gives the per-token weights (TIS) or keep mask (MIS) that correct the PPO loss for it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["importance_weights", "rollout_correction", "CORRECTION_METRIC_KEYS"]

CORRECTION_LEVELS = ("token", "sequence", "geometric")
CORRECTION_MODES = ("truncate", "mask")
CORRECTION_METRIC_KEYS = (
    "logp_gap_abs",
    "logp_gap",
    "ratio_p01",
    "ratio_p50",
    "ratio_p99",
    "truncated_frac",
    "masked_frac",
    "weight_mean",
)


def _xp(x):
    if type(x).__module__.startswith(("jax", "jaxlib")):
        import jax.numpy as jnp

        return jnp
    return np


def importance_weights(
    current_logp, behaviour_logp, mask, *, level: str = "token", clip: float | None = None
):
    """w = π_current(y) / π_behaviour(y) from log-probs, per token or per sequence.

    current_logp, behaviour_logp, mask: [N, T] (log-probs of the sampled tokens).
      level='token':    w_t = exp(log π(y_t) − log β(y_t)) · m_t           [N, T]
      level='sequence': w   = exp(Σ_t m_t (log π(y_t) − log β(y_t)))      [N]
    Exact (no clipping) unless `clip` is given (w ≤ clip). Works on numpy and
    jax arrays. In a PPO-style loss, using the behaviour log-probs as `old_logp`
    for replayed rows applies exactly this correction through the ratio.
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    shapes = {a.shape for a in (current_logp, behaviour_logp, mask)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(
            f"current_logp, behaviour_logp, mask must share one [N, T] shape, got {shapes}"
        )
    xp = _xp(current_logp)
    m = mask.astype(xp.float32) if hasattr(mask, "astype") else xp.asarray(mask, xp.float32)
    d = (current_logp - behaviour_logp) * m
    w = xp.exp(d) * m if level == "token" else xp.exp(d.sum(axis=-1))
    return xp.minimum(w, clip) if clip is not None else w


def rollout_correction(
    old_logp,
    rollout_logp,
    mask,
    *,
    level: str = "token",
    mode: str = "truncate",
    threshold: float = 2.0,
    low_threshold: float | None = None,
):
    """Rollout-correction weights for a sampler π_rollout that differs from the trainer's π_old.

    old_logp, rollout_logp, mask: [N, T] (log-probs of the sampled tokens under the trainer's
    recomputed π_old and under the sampler). With d_t = m_t (log π_old(y_t) − log π_rollout(y_t))
    (d_t = 0 outside the mask, whatever the padding holds) and n_i the row's valid tokens:

      level='token':     log ρ_{i,t} = d_{i,t}                       (one ρ per token)
      level='sequence':  log ρ_i = Σ_t d_{i,t}        (ρ_i = Π_t ρ_{i,t}, one ρ per row)
      level='geometric': log ρ_i = (1/n_i) Σ_t d_{i,t}  (geometric mean of the ρ_{i,t})

      mode='truncate' (TIS):  w = min(ρ, C) on valid tokens, keep = valid tokens
      mode='mask'     (MIS):  keep = 1[C_low ≤ ρ ≤ C] on valid tokens, w = keep

    C = `threshold`; C_low = `low_threshold` (mask mode only; None: 1/C, verl's default).
    A row's ρ (sequence, geometric) is broadcast over its tokens. The weights multiply the
    per-token policy-gradient loss as constants (they correct the sampling measure, they are
    not optimised); the keep mask removes tokens (token level) or whole rows from the loss.

    Papers and conventions: TIS is Yao et al. 2025 ("Your efficient RL framework secretly
    brings you off-policy RL training"; token level, C = 2 there and verl's default). MIS
    (masked / rejection-sampled IS) and the geometric level follow verl's rollout-correction
    documentation (docs/algo/rollout_corr.md, which cites Liu, Li et al. 2025, "When Speed
    Kills Stability: Demystifying RL Collapse from the Training-Inference Mismatch"): verl's
    `rollout_is` (TIS, levels token / sequence) and `rollout_rs` (MIS, levels token /
    sequence / geometric, lower bound 1/C by default). Differences from verl: no ±20 safety
    clamp of log ρ (truncation and the bounds are applied in log space, so nothing overflows:
    a truncated weight is exactly C); TIS is also offered at the geometric level.

    Returns (weights [N, T], keep_mask [N, T], metrics); weights and keep are exactly 0 outside
    the mask and exactly 1 on valid tokens when old_logp == rollout_logp (and C_low ≤ 1 ≤ C for
    MIS). Metrics (scalars, the same keys for every level and mode, `CORRECTION_METRIC_KEYS`):
      logp_gap_abs, logp_gap: mask-weighted token means of |log π_old − log π_rollout| and of
        log π_old − log π_rollout (k1 of KL(π_rollout ‖ π_old) with the sign flipped);
      ratio_p01, ratio_p50, ratio_p99: quantiles of ρ over the level's units (valid tokens, or
        rows with a valid token), unweighted, interpolated in log space (exp of the quantiles
        of log ρ; NaN when nothing is valid);
      truncated_frac: mask-weighted fraction of tokens whose ρ > C was truncated (TIS; else 0);
      masked_frac: mask-weighted fraction of tokens dropped (MIS; else 0);
      weight_mean: mask-weighted token mean of the weights.
    Works on numpy and jax arrays (jit-able; computed in at least float32).
    """
    if level not in CORRECTION_LEVELS:
        raise ValueError(f"level must be one of {CORRECTION_LEVELS}, got {level!r}")
    if mode not in CORRECTION_MODES:
        raise ValueError(f"mode must be one of {CORRECTION_MODES}, got {mode!r}")
    shapes = {tuple(a.shape) for a in (old_logp, rollout_logp, mask)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"old_logp, rollout_logp, mask must share one [N, T] shape, got {shapes}")
    if not threshold > 0:
        raise ValueError(f"threshold C must be > 0, got {threshold}")
    if low_threshold is not None and mode != "mask":
        raise ValueError("low_threshold applies to mode='mask' only (TIS truncates from above)")
    low = 1.0 / threshold if low_threshold is None else float(low_threshold)
    if mode == "mask" and not 0 <= low <= threshold:
        raise ValueError(f"need 0 <= low_threshold <= threshold, got {low} and {threshold}")
    xp = _xp(old_logp)
    if xp is not np:
        import jax

        old_logp, rollout_logp = jax.lax.stop_gradient((old_logp, rollout_logp))
    dt = xp.promote_types(xp.result_type(old_logp, rollout_logp), xp.float32)
    m = xp.asarray(mask).astype(dt)
    valid = m != 0
    d = xp.where(valid, old_logp.astype(dt) - rollout_logp.astype(dt), 0.0)
    if level == "token":
        log_rho, unit_valid = d, valid
    else:
        log_rho = d.sum(axis=-1, keepdims=True)
        n = valid.sum(axis=-1, keepdims=True)
        if level == "geometric":
            log_rho = log_rho / xp.maximum(n, 1).astype(dt)
        unit_valid = n > 0
    log_rho_tok = xp.broadcast_to(log_rho, d.shape)
    log_c = math.log(threshold)
    zero = xp.zeros_like(d)
    if mode == "truncate":
        over = valid & (log_rho_tok > log_c)
        w = xp.where(over, xp.asarray(threshold, dt), xp.exp(xp.minimum(log_rho_tok, log_c)))
        w = xp.where(valid, w, 0.0).astype(dt)
        keep, dropped = valid.astype(dt), zero
    else:
        log_low = math.log(low) if low > 0 else -math.inf
        inside = (log_rho_tok >= log_low) & (log_rho_tok <= log_c)
        keep = (valid & inside).astype(dt)
        w, over, dropped = keep, zero, (valid & ~inside).astype(dt)
    total = xp.maximum(m.sum(), xp.finfo(dt).tiny)
    mean = lambda x: (m * x).sum() / total  # noqa: E731
    units = xp.where(unit_valid, log_rho, xp.nan)
    q = xp.exp(xp.nanquantile(units, xp.asarray([0.01, 0.5, 0.99], dt)))
    metrics = {
        "logp_gap_abs": mean(xp.abs(d)),
        "logp_gap": mean(d),
        "ratio_p01": q[0],
        "ratio_p50": q[1],
        "ratio_p99": q[2],
        "truncated_frac": mean(xp.asarray(over, dt)),
        "masked_frac": mean(dropped),
        "weight_mean": mean(w),
    }
    return w, keep, {k: xp.asarray(v, dt) for k, v in metrics.items()}
