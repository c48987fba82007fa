"""A task whose reward function raises, hangs or returns NaN, chosen by the prompt (not the
completion), so a trainer run with a random model hits every fault. Importable by spawned
reward workers as `tests.trainers.faulty_rewards:make`."""

import dataclasses
import time

from jaxrl_llm.tasks import Example


@dataclasses.dataclass(frozen=True)
class FaultyPromptTask:
    name: str = "faulty_prompts"
    difficulties: tuple = (0,)
    always_raise: bool = False  # every reward call raises (the stop-rule test)

    def examples(self, split, n, seed):
        return [
            Example(id=f"{split}-{i}", prompt=f"{i % 4}+{i}=", answer=str(i % 4 + i))
            for i in range(n)
        ]

    def sft_target(self, example):
        return example.answer

    def reward_details(self, completion, example):
        kind = int(example.prompt.split("+")[0])
        if kind == 0 or self.always_raise:
            raise ValueError("reward function failed on purpose")
        if kind == 1:
            time.sleep(120)
        if kind == 2:
            return float("nan"), {"correct": 0.0}
        return 0.25, {"correct": 0.0}

    def reward(self, completion, example):
        return self.reward_details(completion, example)[0]


def make(**kwargs):
    return FaultyPromptTask(**kwargs)
