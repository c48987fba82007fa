"""`countdown`: reach a target with the given numbers and + - * / (TinyZero-style Countdown).

Prompt "3,5,7 to 22=", a correct completion "3*5+7" (or "3*5+7=22"). The
verifier parses the first line of the completion with the safe grammar of
`jaxrl_llm.tasks.expr` (digits, + - * / ( ) and spaces only; no `eval`, no
unary minus, bounded length), checks that the numbers used are exactly the
given ones (each once; `use_all=False`: a sub-multiset) and that the exact
rational value equals the target.

Reward: 'correct' ∈ {0, 1}; plus `format_weight` × 'valid' (a parsable
expression over allowed numbers, whatever its value).
Difficulty = how many numbers are given (`num_numbers`). Train and test are
split by a stable hash of (sorted numbers, target), so re-orderings of a test
problem never appear in training.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Sequence
from fractions import Fraction

from jaxrl_llm.tasks import expr
from jaxrl_llm.tasks.base import Example, draw_examples
from jaxrl_llm.tasks.rewards import first_line

__all__ = ["CountdownTask", "check_solution"]

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _combine(left, op, right):
    """(text, value, precedence) of `left op right`, parenthesised only where needed."""
    (lt, lv, lp), (rt, rv, rp), p = left, right, _PREC[op]
    lt = f"({lt})" if lp < p else lt
    rt = f"({rt})" if rp < p or (rp == p and op in "-/") else rt
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else None}[op]
    return f"{lt}{op}{rt}", value, p


def check_solution(
    completion: str, numbers: Sequence[int], target: int, *, use_all: bool = True
) -> tuple[bool, bool]:
    """(valid, correct) of a Countdown answer; never raises on any input text."""
    text = first_line(completion)
    if "=" in text:
        text = text.split("=", 1)[0].strip()
    try:
        value, used = expr.parse_expr(text, allow_unary_minus=False, max_len=100)
    except expr.ExprError:
        return False, False
    have, need = collections.Counter(used), collections.Counter(int(n) for n in numbers)
    ok_numbers = have == need if use_all else not (have - need)
    if not ok_numbers:
        return False, False
    return True, value == Fraction(int(target))


def _as_tuple(x) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in x})) if isinstance(x, Sequence) else (int(x),)


@dataclasses.dataclass(frozen=True)
class CountdownTask:
    """Countdown with knobs `num_numbers`, `max_number`, `max_target`, `ops`."""

    num_numbers: tuple = (3,)
    max_number: int = 9
    max_target: int = 99
    ops: str = "+-*"
    use_all: bool = True
    format_weight: float = 0.0
    test_fraction: float = 0.1
    name: str = "countdown"

    def __post_init__(self):
        object.__setattr__(self, "num_numbers", _as_tuple(self.num_numbers))
        if min(self.num_numbers) < 2:
            raise ValueError(f"num_numbers must be ≥ 2, got {self.num_numbers}")
        if not self.ops or any(o not in "+-*/" for o in self.ops):
            raise ValueError(f"ops must be a non-empty string over '+-*/', got {self.ops!r}")
        if self.max_number < 1 or self.max_target < 1:
            raise ValueError("max_number and max_target must be ≥ 1")

    @property
    def difficulties(self) -> tuple:
        return self.num_numbers

    def _sample(self, rng: random.Random) -> Example | None:
        k = rng.choice(self.num_numbers)
        numbers = [rng.randint(1, self.max_number) for _ in range(k)]
        nodes = [(str(v), Fraction(v), 3) for v in numbers]
        while len(nodes) > 1:  # combine two random sub-expressions until one is left
            i, j = rng.sample(range(len(nodes)), 2)
            op = rng.choice(self.ops)
            new = _combine(nodes[i], op, nodes[j])
            if new[1] is None:
                return None
            nodes = [n for t, n in enumerate(nodes) if t not in (i, j)] + [new]
        text, value, _ = nodes[0]
        if value.denominator != 1 or not 0 <= value <= self.max_target:
            return None
        target = int(value)
        prompt = f"{','.join(map(str, numbers))} to {target}="
        return Example(
            id=f"countdown:{prompt}",
            prompt=prompt,
            answer=str(target),
            difficulty=k,
            meta=(("numbers", tuple(numbers)), ("solution", text)),
        )

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """Up to `n` distinct problems of `split` (n=None: 10 000)."""
        return draw_examples(
            split,
            n,
            seed,
            self._sample,
            test_fraction=self.test_fraction,
            split_key=lambda ex: f"{sorted(ex.meta_dict()['numbers'])}:{ex.answer}",
            tries_per_example=100,
        )

    def sft_target(self, example: Example) -> str:
        return example.meta_dict()["solution"]

    def reward_details(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        valid, correct = check_solution(
            completion, example.meta_dict()["numbers"], int(example.answer), use_all=self.use_all
        )
        comps = {"correct": float(correct)}
        if self.format_weight:
            comps["valid"] = float(valid)
            return float(correct) + self.format_weight * float(valid), comps
        return float(correct), comps

    def reward(self, completion: str, example: Example) -> float:
        return self.reward_details(completion, example)[0]
