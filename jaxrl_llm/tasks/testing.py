"""Tasks for testing the reward machinery: importable by spawned reward workers.

`FaultyTask` decides its reward from the completion text:
    'raise'   → raises RuntimeError
    'sleep'   → sleeps `sleep_s` seconds (past any sensible time limit), then returns 1.0
    'nan'     → float('nan');  'inf' → float('inf')
    'exit'    → kills its own process (a crashing worker)
    anything else → float(completion) (so '0.25' → 0.25), components {'half': value / 2}
"""

from __future__ import annotations

import dataclasses
import os
import time

from jaxrl_llm.tasks.base import Example

__all__ = ["FaultyTask", "UnloadableTask", "make_faulty"]


@dataclasses.dataclass(frozen=True)
class FaultyTask:
    sleep_s: float = 60.0
    name: str = "faulty"
    difficulties: tuple = (0,)

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        return [Example(id=f"{split}-{seed}-{i}", prompt=f"{i}=", answer=str(i)) for i in range(n)]

    def sft_target(self, example: Example) -> str:
        return example.answer

    def reward_details(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        if completion == "raise":
            raise RuntimeError("reward function failed on purpose")
        if completion == "sleep":
            time.sleep(self.sleep_s)
            return 1.0, {}
        if completion == "nan":
            return float("nan"), {}
        if completion == "inf":
            return float("inf"), {}
        if completion == "exit":
            os._exit(3)
        value = float(completion)
        return value, {"half": value / 2}

    def reward(self, completion: str, example: Example) -> float:
        return self.reward_details(completion, example)[0]


def make_faulty(**kwargs) -> FaultyTask:
    """Factory for `make_task('jaxrl_llm.tasks.testing:make_faulty', ...)`."""
    return FaultyTask(**kwargs)


def _fail_to_load():
    raise RuntimeError("this task cannot be loaded in a worker")


class UnloadableTask(FaultyTask):
    """Pickles in the parent but raises when a worker unpickles it."""

    def __reduce__(self):
        return (_fail_to_load, ())
