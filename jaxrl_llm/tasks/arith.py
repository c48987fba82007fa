"""`arith`: integer arithmetic, the demo task (a tiny model learns it on a CPU in minutes).

Prompt "23+7=", answer "30". Operands have `d` digits (d drawn from `digits`),
there are `k` terms (k drawn from `num_terms`), operators are drawn from `ops`
with the usual precedence (so "2+3*4=" → "14"); answers may be negative.

Difficulty = d + k − 2 (1 for one-digit sums of two terms).

Reward: exact answer on the first line of the completion, stripped of
whitespace: 1.0 or 0.0 (component 'correct'); plus `format_weight` × 1[the
first line is a bare integer] (component 'format').
Train and test are disjoint by a stable hash of the prompt (`test_fraction`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from jaxrl_llm.tasks import expr
from jaxrl_llm.tasks.base import Example, draw_examples
from jaxrl_llm.tasks.rewards import exact_match, is_integer_format

__all__ = ["ArithTask"]

_OPS = "+-*"


def _as_tuple(x, field: str) -> tuple[int, ...]:
    t = (
        tuple(int(v) for v in x)
        if isinstance(x, Sequence) and not isinstance(x, str)
        else (int(x),)
    )
    if not t or min(t) < 1:
        raise ValueError(
            f"{field} must be a positive int or a non-empty sequence of them, got {x!r}"
        )
    return tuple(sorted(set(t)))


@dataclasses.dataclass(frozen=True)
class ArithTask:
    """Integer arithmetic with difficulty knobs `digits`, `ops`, `num_terms`."""

    digits: tuple = (1, 2)
    ops: str = "+-"
    num_terms: tuple = (2,)
    format_weight: float = 0.0
    test_fraction: float = 0.1
    name: str = "arith"

    def __post_init__(self):
        object.__setattr__(self, "digits", _as_tuple(self.digits, "digits"))
        object.__setattr__(self, "num_terms", _as_tuple(self.num_terms, "num_terms"))
        if min(self.num_terms) < 2:
            raise ValueError(f"num_terms must be ≥ 2, got {self.num_terms}")
        if not self.ops or any(o not in _OPS for o in self.ops):
            raise ValueError(f"ops must be a non-empty string over {_OPS!r}, got {self.ops!r}")

    @property
    def difficulties(self) -> tuple:
        return tuple(sorted({d + k - 2 for d in self.digits for k in self.num_terms}))

    def _sample(self, rng: random.Random) -> Example:
        d = rng.choice(self.digits)
        k = rng.choice(self.num_terms)
        lo = 0 if d == 1 else 10 ** (d - 1)
        nums = [rng.randrange(lo, 10**d) for _ in range(k)]
        ops = [rng.choice(self.ops) for _ in range(k - 1)]
        text = str(nums[0]) + "".join(o + str(n) for o, n in zip(ops, nums[1:]))
        value = expr.evaluate(text)
        return Example(
            id=f"arith:{text}", prompt=text + "=", answer=str(int(value)), difficulty=d + k - 2
        )

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """Up to `n` distinct problems of `split` (fewer only when the split holds fewer).

        `n=None` means 10 000.
        """
        return draw_examples(split, n, seed, self._sample, test_fraction=self.test_fraction)

    def sft_target(self, example: Example) -> str:
        return example.answer

    def reward_details(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        correct = exact_match(completion, example)
        comps = {"correct": correct}
        if self.format_weight:
            comps["format"] = is_integer_format(completion, example)
            return correct + self.format_weight * comps["format"], comps
        return correct, comps

    def reward(self, completion: str, example: Example) -> float:
        return self.reward_details(completion, example)[0]
