"""Reward composition and small reusable reward functions on text.

A composed reward is a weighted sum of named reward functions,

    r(y, x) = Σ_i w_i · f_i(y, x),

and every f_i(y, x) is reported on its own (unweighted) in
`RewardPool.score(...)[1]['components'][name]`. Values stay Python floats /
float32 end to end: nothing is rounded or cast to int (a test checks that
fractional rewards reach the advantages unchanged).

Reward functions must be module-level (or `functools.partial` of module-level
functions) so that the spawn-context reward pool can pickle them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from jaxrl_llm.tasks.base import Example, reward_details

__all__ = [
    "RewardTerm",
    "compose",
    "ComposedTask",
    "first_line",
    "exact_match",
    "is_integer_format",
    "task_reward",
]

_INT = re.compile(r"^[+-]?\d+$")


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """A named reward function f(completion, example) -> float with its weight."""

    name: str
    fn: Callable[[str, Example], float]
    weight: float = 1.0


def compose(
    terms: Sequence[RewardTerm], completion: str, example: Example
) -> tuple[float, dict[str, float]]:
    """(Σ_i w_i f_i(completion, example), {name_i: f_i(...)}) — unweighted components."""
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"reward term names must be unique, got {names}")
    comps = {t.name: float(t.fn(completion, example)) for t in terms}
    total = sum(t.weight * comps[t.name] for t in terms)
    return float(total), comps


def first_line(completion: str) -> str:
    """The first line of `completion`, stripped of surrounding whitespace."""
    return completion.strip().split("\n", 1)[0].strip()


def exact_match(completion: str, example: Example) -> float:
    """1.0 when the first line of the completion, stripped, equals the answer; else 0.0."""
    return 1.0 if first_line(completion) == example.answer.strip() else 0.0


def is_integer_format(completion: str, example: Example) -> float:
    """1.0 when the first line of the completion is a bare integer (e.g. '-12'); else 0.0."""
    del example
    return 1.0 if _INT.match(first_line(completion)) else 0.0


def task_reward(completion: str, example: Example, *, task: Any) -> float:
    """A task's own total reward, as a reward function (use with functools.partial)."""
    return reward_details(task, completion, example)[0]


@dataclasses.dataclass(frozen=True)
class ComposedTask:
    """A task whose reward is `base_weight · task reward + Σ w_i f_i` over extra terms.

    Prompts, splits, SFT targets and difficulties come from `task`. The task's
    own components are reported under their names, its total as 'task', and
    each extra term under its name.
    """

    task: Any
    terms: tuple = ()
    base_weight: float = 1.0

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def difficulties(self) -> tuple:
        return self.task.difficulties

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        return self.task.examples(split, n, seed)

    def sft_target(self, example: Example) -> str:
        return self.task.sft_target(example)

    def reward_details(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        base, base_comps = reward_details(self.task, completion, example)
        extra_total, extra = compose(self.terms, completion, example)
        comps = {**base_comps, "task": base, **extra}
        return self.base_weight * base + extra_total, comps

    def reward(self, completion: str, example: Example) -> float:
        return self.reward_details(completion, example)[0]
