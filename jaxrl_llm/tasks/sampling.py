"""Dynamic sampling (DAPO; Yu et al. 2025, "DAPO: An Open-Source LLM RL System at Scale").

A group of G samples whose rewards are all equal has zero group-relative
advantage and gives no gradient. Dynamic sampling drops such groups and keeps
sampling until B informative groups are collected or `max_attempts` batches
have been drawn:

    kept, stats = dynamic_sampling(sample_fn, B, group_size, max_attempts)   # or: kept = ...; kept.stats
    # sample_fn(attempt) -> (batch, rewards [M·G])   generates and scores M prompts × G samples
    kept.rows_by_attempt     # {attempt: row indices [k·G] into that attempt's batch}
    kept.groups              # [(attempt, group)] in order; select_rows(kept) gathers the rows
    stats                    # attempts, groups_sampled, groups_dropped, frac_dropped, groups_kept, filled

Exactly B groups are returned so shapes stay static: when the cap is reached
with fewer than B informative groups, the rest is filled with zero-variance
groups (`fill=True`, counted in stats['filled']; they contribute zero GRPO
advantage) — or, with `fill=False`, fewer groups are returned (possibly none:
`select_rows` then gives a batch with 0 rows). Groups are taken
in sampling order (attempt, then group), so the result is deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["informative_groups", "dynamic_sampling", "DynamicSample", "select_rows"]


def informative_groups(rewards, group_size: int, *, atol: float = 0.0) -> np.ndarray:
    """bool [M]: whether group m's rewards are not all equal (max − min > atol).

    rewards: [M·G], contiguous groups of G.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if group_size < 1 or r.size % group_size:
        raise ValueError(
            f"rewards of size {r.size} do not split into groups of group_size={group_size}"
        )
    g = r.reshape(-1, group_size)
    return (g.max(axis=1) - g.min(axis=1)) > atol


@dataclasses.dataclass
class DynamicSample:
    """The batches drawn, the kept groups and the sampling statistics."""

    batches: list  # what sample_fn returned, per attempt
    rewards: list  # rewards per attempt, float32 [M·G]
    groups: list  # kept (attempt, group) pairs, in order
    rows_by_attempt: dict  # {attempt: int row indices into that batch}
    stats: dict

    def __iter__(self):
        """`kept, stats = dynamic_sampling(...)`."""
        return iter((self, self.stats))

    def kept_rewards(self) -> np.ndarray:
        """float32 [B·G]: the rewards of the kept rows, in `groups` order."""
        return (
            np.concatenate([self.rewards[a][rows] for a, rows in self.rows_by_attempt.items()])
            if self.groups
            else np.zeros((0,), np.float32)
        )


def dynamic_sampling(
    sample_fn: Callable[[int], tuple[Any, Any]],
    B: int,
    group_size: int,
    max_attempts: int,
    *,
    atol: float = 0.0,
    fill: bool = True,
) -> DynamicSample:
    """B informative groups from up to `max_attempts` calls of `sample_fn` (module doc).

    The result unpacks as `(kept, stats)` (kept is the result itself).
    """
    if B < 1 or group_size < 1 or max_attempts < 1:
        raise ValueError(
            f"B, group_size and max_attempts must be ≥ 1, got {B}, {group_size}, {max_attempts}"
        )
    batches, rewards_all, informative, uninformative = [], [], [], []
    sampled = 0
    for attempt in range(max_attempts):
        batch, rewards = sample_fn(attempt)
        rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
        keep = informative_groups(rewards, group_size, atol=atol)
        batches.append(batch)
        rewards_all.append(rewards)
        sampled += keep.size
        informative += [(attempt, int(g)) for g in np.flatnonzero(keep)]
        uninformative += [(attempt, int(g)) for g in np.flatnonzero(~keep)]
        if len(informative) >= B:
            break
    groups = informative[:B]
    filled = 0
    if len(groups) < B and fill:
        filled = min(B - len(groups), len(uninformative))
        groups = sorted(groups + uninformative[:filled])
    rows_by_attempt: dict[int, np.ndarray] = {}
    for a, g in groups:
        rows_by_attempt.setdefault(a, []).append(np.arange(g * group_size, (g + 1) * group_size))
    rows_by_attempt = {a: np.concatenate(r) for a, r in rows_by_attempt.items()}
    dropped = len(uninformative)
    stats = {
        "attempts": len(batches),
        "groups_sampled": sampled,
        "groups_dropped": dropped,
        "frac_dropped": dropped / max(sampled, 1),
        "groups_kept": len(groups),
        "filled": filled,
    }
    return DynamicSample(batches, rewards_all, groups, rows_by_attempt, stats)


def select_rows(
    result: DynamicSample,
    take: Callable[[Any, np.ndarray], Any] | None = None,
    concat: Callable[[list], Any] | None = None,
):
    """The kept rows of every attempt's batch, concatenated in `result.groups` order.

    By default batches are pytrees of arrays (None leaves stay None):
    `take(batch, rows)` indexes every leaf, `concat` concatenates leaf-wise.

    When no group was kept (`fill=False` and every group constant), the result
    is an empty batch: `take(first batch, int rows [0])`, so every leaf has 0
    rows and its trailing shape and dtype. With no batch at all to take the
    structure from, it raises ValueError.
    """
    import jax  # lazy: keeps this module light for reward workers

    take = take or (lambda b, rows: jax.tree.map(lambda x: x[rows], b))
    concat = concat or (
        lambda parts: jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)
    )
    if not result.rows_by_attempt:
        if not result.batches:
            raise ValueError("select_rows: no group was kept and there is no batch to shape one")
        return take(result.batches[0], np.zeros((0,), np.int64))
    parts = [take(result.batches[a], rows) for a, rows in result.rows_by_attempt.items()]
    return parts[0] if len(parts) == 1 else concat(parts)
