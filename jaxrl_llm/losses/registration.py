"""Registration of advantage estimators and policy losses, at their definition site.

An estimator or a loss registers itself where it is defined, with what it needs from the
trainer::

    @register_advantage("rloo", level="sequence", min_group=2)
    def _rloo(*, rewards, group_size, **_):
        return rloo(rewards, group_size), None

    @register_policy_loss("ppo_clip", ratio_based=True)
    def ppo_clip(logp, old_logp, advantages, mask, *, clip_low=0.2, ...): ...

`registry` collects every entry (it imports each module of this package, so a new module
registers itself by being there), runs them by name and validates a config against what
each entry declares (`registry.check_config`). This module holds only the tables and the
decorators, so the modules that define losses can import it without a cycle.

Contract of an advantage entry: called with keywords `rewards [N]`, `mask [N, T]`,
`group_size` (static int), `correct [N]` (the verifier's verdict, 0/1), `token_rewards [N, T]`
(the reward at the last valid token minus any per-token KL penalty), `values [N, T]` or None,
`greedy_rewards [N]` or None, `old_logp [N, T]` and `ref_logp [N, T]` (the current policy's
and the reference's token log-probs; given to an entry that declares `needs_logps`, else
None), and the hyperparameters it declares in `hparams` (values from
`config.algo`, each with the default given here). It returns `(advantages, returns, weight)`:
advantages `[N]` (level "sequence", broadcast onto the mask by the registry) or `[N, T]`
(level "token"), returns `[N, T]` or None, sample weights `[N]` or None (ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "Estimator",
    "PolicyLoss",
    "ESTIMATORS",
    "LOSSES",
    "register_advantage",
    "register_policy_loss",
]


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A registered advantage estimator and what the trainer must provide for it.

    level: "sequence" (one advantage per completion) or "token".
    needs_critic: reads `values` (needs `critic.enabled`).
    needs_greedy: reads `greedy_rewards`, the reward of one greedy completion per prompt
      (the trainer samples it with the current policy before the update).
    needs_logps: reads `old_logp` and `ref_logp` (the trainer keeps a reference for it).
    requires: `config.algo` fields it is only correct with, each with the values allowed
      (checked by `registry.check_config`), e.g. `{"aggregation": ("seq-mean-token-sum",)}`.
    min_group: the smallest `train.samples_per_prompt` it is defined for.
    hparams: the `config.algo` fields it reads, with their defaults (a mapping).
    """

    name: str
    fn: Callable[..., Any]
    level: str = "sequence"
    needs_critic: bool = False
    needs_greedy: bool = False
    min_group: int = 1
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs_logps: bool = False
    requires: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

    def __call__(self, **kwargs):
        return self.fn(**kwargs)


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss.

    ratio_based: uses the ratio to the behaviour log-probs (so it can learn from replayed or
      stale samples: the ratio is the importance correction).
    batch_stats: needs statistics of the whole minibatch (`registry.policy_loss_stats`)
      before it is split into micro-batches.
    """

    name: str
    fn: Callable[..., Any]
    ratio_based: bool = True
    batch_stats: bool = False

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


ESTIMATORS: dict[str, Estimator] = {}
LOSSES: dict[str, PolicyLoss] = {}


def _add(table, entry):
    if entry.name in table and table[entry.name].fn is not entry.fn:
        raise ValueError(f"{entry.name!r} is registered twice")
    table[entry.name] = entry


def register_advantage(
    name: str,
    *,
    level: str = "sequence",
    needs_critic: bool = False,
    needs_greedy: bool = False,
    min_group: int = 1,
    hparams: Mapping[str, Any] | None = None,
    needs_logps: bool = False,
    requires: Mapping[str, tuple] | None = None,
):
    """Decorator: registers `fn` as the advantage estimator `name` (returns `fn` unchanged)."""
    if level not in ("sequence", "token"):
        raise ValueError(f"level must be 'sequence' or 'token', got {level!r}")

    def wrap(fn):
        entry = Estimator(
            name,
            fn,
            level,
            needs_critic,
            needs_greedy,
            int(min_group),
            dict(hparams or {}),
            needs_logps,
            dict(requires or {}),
        )
        _add(ESTIMATORS, entry)
        return fn

    return wrap


def register_policy_loss(name: str, *, ratio_based: bool = True, batch_stats: bool = False):
    """Decorator: registers `fn` as the policy loss `name` (returns `fn` unchanged)."""

    def wrap(fn):
        _add(LOSSES, PolicyLoss(name, fn, ratio_based, batch_stats))
        return fn

    return wrap
