"""`sort`: sort a short list of integers. Prompt "sort 4,1,3=", answer "1,3,4".

Knobs: `length` (how many numbers, the difficulty), `max_value`, `descending`.
Reward: 'correct' = exact match of the first line of the completion (spaces
ignored); plus `partial_weight` × 'partial' = fraction of positions right
(when the completion is a comma-separated list of the right length, else 0).
Train / test are split by a stable hash of the prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxrl_llm.tasks.base import Example, draw_examples
from jaxrl_llm.tasks.rewards import first_line

__all__ = ["SortTask"]


def _as_tuple(x) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in x})) if isinstance(x, Sequence) else (int(x),)


@dataclasses.dataclass(frozen=True)
class SortTask:
    length: tuple = (3, 4)
    max_value: int = 9
    descending: bool = False
    partial_weight: float = 0.0
    test_fraction: float = 0.1
    name: str = "sort"

    def __post_init__(self):
        object.__setattr__(self, "length", _as_tuple(self.length))
        if min(self.length) < 2:
            raise ValueError(f"length must be ≥ 2, got {self.length}")
        if self.max_value < 1:
            raise ValueError(f"max_value must be ≥ 1, got {self.max_value}")

    @property
    def difficulties(self) -> tuple:
        return self.length

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """Up to `n` distinct lists of `split` (n=None: 10 000)."""
        return draw_examples(
            split,
            n,
            seed,
            self._sample,
            test_fraction=self.test_fraction,
            split_key=lambda ex: ex.prompt,
        )

    def _sample(self, rng) -> Example:
        k = rng.choice(self.length)
        values = [rng.randint(0, self.max_value) for _ in range(k)]
        prompt = f"sort {','.join(map(str, values))}="
        answer = ",".join(map(str, sorted(values, reverse=self.descending)))
        return Example(id=f"sort:{prompt}", prompt=prompt, answer=answer, difficulty=k)

    def sft_target(self, example: Example) -> str:
        return example.answer

    def reward_details(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        got = first_line(completion).replace(" ", "")
        correct = float(got == example.answer)
        comps = {"correct": correct}
        if self.partial_weight:
            want, have = example.answer.split(","), got.split(",")
            comps["partial"] = (
                sum(a == b for a, b in zip(want, have)) / len(want)
                if len(have) == len(want)
                else 0.0
            )
            return correct + self.partial_weight * comps["partial"], comps
        return correct, comps

    def reward(self, completion: str, example: Example) -> float:
        return self.reward_details(completion, example)[0]
