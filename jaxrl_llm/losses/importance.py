"""Importance weights between the current policy and the one that sampled a batch.

Rollout replay (`tasks.ReplaySource`) trains on groups sampled by an older policy; the
correction is the probability ratio w = π_current(y) / π_behaviour(y). In a PPO-style loss,
passing the behaviour log-probs as `old_logp` applies exactly this weight through the ratio;
this function computes it directly (diagnostics, REINFORCE-style losses, truncated variants).
"""

from __future__ import annotations

import numpy as np

__all__ = ["importance_weights"]


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
