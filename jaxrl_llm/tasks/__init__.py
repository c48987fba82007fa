"""Verifiable tasks, rewards and prompt selection (host-side Python on text).

See `base` for the task contract, `reward_pool` for time-limited scoring,
`sources` for the prompt-source protocol.
"""
from jaxrl_llm.tasks.arith import ArithTask
from jaxrl_llm.tasks.base import (
    Example,
    Task,
    make_task,
    per_difficulty_accuracy,
    register_task,
    registered_tasks,
    reward_details,
)
from jaxrl_llm.tasks.reward_pool import RewardPool, score_in_process
from jaxrl_llm.tasks.rewards import ComposedTask, RewardTerm, compose
from jaxrl_llm.tasks.sources import ExampleStream, PromptSource, TaskSource

__all__ = [
    "ArithTask",
    "ComposedTask",
    "Example",
    "ExampleStream",
    "PromptSource",
    "RewardPool",
    "RewardTerm",
    "Task",
    "TaskSource",
    "compose",
    "make_task",
    "per_difficulty_accuracy",
    "register_task",
    "registered_tasks",
    "reward_details",
    "score_in_process",
]
