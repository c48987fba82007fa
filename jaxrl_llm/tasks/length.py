"""Length shaping on TOKEN counts (the trainer passes `mask.sum(-1)`, never character counts).

* `overlong_penalty` — DAPO soft overlong punishment (Yu et al. 2025), max length
  L_max, buffer L_c, response length |y| in tokens:

      R_len(y) = 0                                  |y| ≤ L_max − L_c
               = ((L_max − L_c) − |y|) / L_c        L_max − L_c < |y| ≤ L_max
               = −1                                 |y| > L_max

  scaled by `penalty` (1.0 in the paper) and added to the task reward.
* `laser_reward` — LASER step length reward (Liu et al. 2025, "Learn to Reason
  Efficiently with Adaptive Length-based Reward Shaping"): α · 1[|y| ≤ L_T],
  given only to correct responses when `only_correct` (the LASER-D choice; the
  plain step form rewards every short response).
* `truncation_weight` — 0 for truncated completions (hit max_new_tokens without
  a stop token), 1 otherwise: multiply into the loss mask / sample weight to
  drop truncated samples from the loss.
* `shape_rewards` — all of the above in one call, each part reported by name.

All return float32 numpy arrays; inputs are [N] arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "token_lengths",
    "overlong_penalty",
    "laser_reward",
    "truncation_weight",
    "shape_rewards",
]


def _vec(x, name: str, dtype=np.float64) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {a.shape}")
    return a


def token_lengths(mask) -> np.ndarray:
    """int32 [N]: valid tokens per row of a completion mask [N, T]."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be [N, T], got shape {m.shape}")
    return m.astype(np.int64).sum(axis=1).astype(np.int32)


def overlong_penalty(lengths, max_len: int, buffer: int, *, penalty: float = 1.0) -> np.ndarray:
    """DAPO's soft overlong penalty (formula in the module docstring), float32 [N] in [−penalty, 0]."""
    L = _vec(lengths, "lengths")
    if not 0 < buffer <= max_len:
        raise ValueError(f"need 0 < buffer ≤ max_len, got buffer={buffer}, max_len={max_len}")
    start = max_len - buffer
    r = np.where(L <= start, 0.0, (start - L) / buffer)
    r = np.where(L > max_len, -1.0, r)
    return (penalty * r).astype(np.float32)


def laser_reward(
    lengths, correct, target_len: int, *, alpha: float = 0.5, only_correct: bool = True
) -> np.ndarray:
    """LASER step reward α · 1[|y| ≤ L_T] (· correct when `only_correct`), float32 [N]."""
    L, c = _vec(lengths, "lengths"), _vec(correct, "correct")
    if L.shape != c.shape:
        raise ValueError(f"lengths {L.shape} and correct {c.shape} differ")
    r = alpha * (L <= target_len).astype(np.float64)
    if only_correct:
        r = r * (c > 0)
    return r.astype(np.float32)


def truncation_weight(truncated) -> np.ndarray:
    """float32 [N]: 0.0 where truncated, 1.0 elsewhere."""
    return (1.0 - _vec(truncated, "truncated", bool).astype(np.float32)).astype(np.float32)


def shape_rewards(
    rewards,
    lengths,
    *,
    truncated=None,
    correct=None,
    max_len: int | None = None,
    overlong_buffer: int = 0,
    overlong_penalty_scale: float = 1.0,
    laser_target: int = 0,
    laser_alpha: float = 0.5,
    laser_only_correct: bool = True,
    mask_truncated: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(shaped rewards float32 [N], sample weight float32 [N], {component: float32 [N]}).

    Each shaping is off at its default (overlong_buffer=0, laser_target=0,
    mask_truncated=False), in which case rewards come back unchanged (as float32).
    """
    r = _vec(rewards, "rewards").astype(np.float32)
    L = _vec(lengths, "lengths")
    if L.shape != r.shape:
        raise ValueError(f"rewards {r.shape} and lengths {L.shape} differ")
    weight = np.ones_like(r)
    comps: dict[str, np.ndarray] = {}
    if overlong_buffer:
        if max_len is None:
            raise ValueError("overlong_buffer needs max_len (max_new_tokens)")
        comps["overlong"] = overlong_penalty(
            L, max_len, overlong_buffer, penalty=overlong_penalty_scale
        )
        r = r + comps["overlong"]
    if laser_target:
        if correct is None:
            raise ValueError("laser_target needs `correct` [N]")
        comps["laser"] = laser_reward(
            L, correct, laser_target, alpha=laser_alpha, only_correct=laser_only_correct
        )
        r = r + comps["laser"]
    if mask_truncated:
        if truncated is None:
            raise ValueError("mask_truncated needs `truncated` [N]")
        weight = weight * truncation_weight(truncated)
    return r.astype(np.float32), weight, comps
