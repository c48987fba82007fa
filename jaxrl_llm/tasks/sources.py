"""Prompt sources: the one protocol through which the trainer gets prompts.

    source.next(n) -> list[Example]        # the next n prompts
    source.update(stats)                   # per-prompt outcomes of the last step
    source.state_dict() / load_state_dict  # JSON-friendly; resume replays the same prompts

`stats` is a list of dicts, one per prompt of the step:
    {'id': str, 'rewards': [G floats], 'advantages': mean |advantage| (float), 'difficulty': int}

Filters, replay and curricula (`jaxrl_llm.tasks.selection`) wrap a source and
forward `update` to it, so they compose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxrl_llm.tasks.base import Example
from jaxrl_llm.tasks.datafiles import filter_long_prompts

__all__ = ["PromptSource", "TaskSource", "ExampleStream", "check_stats", "load_examples"]

_STAT_KEYS = ("id", "rewards", "advantages", "difficulty")


@runtime_checkable
class PromptSource(Protocol):
    def next(self, n: int) -> list[Example]: ...

    def update(self, stats: Sequence[dict]) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_stats(stats: Sequence[dict]) -> None:
    """Raises ValueError naming the missing key when a per-prompt stat lacks one."""
    for s in stats:
        missing = [k for k in _STAT_KEYS if k not in s]
        if missing:
            raise ValueError(f"per-prompt stats need keys {_STAT_KEYS}; missing {missing} in {s!r}")


class ExampleStream:
    """Cycles deterministically through `examples`, reshuffled each epoch.

    Epoch e visits the examples in the order `default_rng([seed, e]).permutation(len)`,
    so the position (epoch, index) fully determines what comes next.
    """

    def __init__(self, examples: Sequence[Example], seed: int = 0, *, shuffle: bool = True):
        if len(examples) == 0:
            raise ValueError("ExampleStream needs at least one example")
        self.examples = list(examples)
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.index = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))

    def next(self, n: int) -> list[Example]:
        if n < 0:
            raise ValueError(f"n must be ≥ 0, got {n}")
        out = []
        for _ in range(n):
            if self.index == len(self.examples):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self.examples[int(self._order[self.index])])
            self.index += 1
        return out

    def update(self, stats: Sequence[dict]) -> None:
        check_stats(stats)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "size": len(self.examples),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != len(self.examples) or int(state["seed"]) != self.seed:
            raise ValueError(
                f"prompt state is for {state['size']} examples with seed {state['seed']}, "
                f"this source has {len(self.examples)} with seed {self.seed}"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._make_order()


class TaskSource(ExampleStream):
    """The plain source: `num_examples` examples of `task`'s `split`, cycled in epoch-shuffled order.

    TaskSource(task, split='train', seed=0) draws `task.examples(split, num_examples, seed)`
    once; `num_examples=None` asks the task for all it has (dataset tasks).

    With `max_prompt_len` (the largest prompt bucket) and `encode_fn` (batched
    prompts → token ids, see `filter_long_prompts`), prompts longer than
    `max_prompt_len` tokens are dropped at load, counted in `num_dropped` and
    logged; DataError when none is left.
    """

    def __init__(
        self,
        task: Any,
        split: str = "train",
        seed: int = 0,
        *,
        num_examples: int | None = 10_000,
        encode_fn: Callable[[list[str]], Sequence[Sequence[int]]] | None = None,
        max_prompt_len: int | None = None,
    ):
        self.task, self.split = task, split
        examples, self.num_dropped = load_examples(
            task, split, num_examples, seed, encode_fn=encode_fn, max_prompt_len=max_prompt_len
        )
        super().__init__(examples, seed)


def load_examples(
    task: Any,
    split: str,
    n: int | None,
    seed: int,
    *,
    encode_fn: Callable[[list[str]], Sequence[Sequence[int]]] | None = None,
    max_prompt_len: int | None = None,
) -> tuple[list[Example], int]:
    """(`task.examples(split, n, seed)` without prompts over `max_prompt_len` tokens, num dropped).

    No filtering when `max_prompt_len` is None.
    """
    examples = task.examples(split, n, seed)
    if max_prompt_len is None:
        return examples, 0
    if encode_fn is None:
        raise ValueError("max_prompt_len needs encode_fn (prompts → token ids)")
    name = getattr(task, "name", type(task).__name__)
    return filter_long_prompts(examples, encode_fn, max_prompt_len, source=f"{name} {split}")
