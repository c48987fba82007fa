"""Verifiable tasks, rewards and prompt selection (host-side Python on text).

`base`: the task contract and registry; `reward_pool`: time-limited scoring in
spawn workers; `sources` / `selection`: prompt sources (plain, difficulty
filter, replay, bandit curriculum); `sampling`: DAPO dynamic sampling;
`length`: token-count length shaping; `rewards`: reward composition;
`math_answer`: answer extraction and equivalence; `datafiles`: data files read
row by row (bad rows skipped and counted, `DataError`), `filter_long_prompts`.
Nothing here imports jax at
module level (reward workers stay light).
"""

from jaxrl_llm.tasks import datafiles, length, math_answer
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
from jaxrl_llm.tasks.countdown import CountdownTask
from jaxrl_llm.tasks.datafiles import BadRow, DataError, filter_long_prompts, read_rows
from jaxrl_llm.tasks.math_task import MathTask, make_gsm8k, make_math
from jaxrl_llm.tasks.reward_pool import RewardPool, reward_failure_streak, score_in_process
from jaxrl_llm.tasks.rewards import ComposedTask, RewardTerm, compose
from jaxrl_llm.tasks.sampling import (
    DynamicSample,
    dynamic_sampling,
    informative_groups,
    select_rows,
)
from jaxrl_llm.tasks.selection import (
    CURRICULUM_METHODS,
    CurriculumSource,
    DifficultyFilter,
    ReplayItem,
    ReplaySource,
    make_prompt_source,
    prompt_stats,
)
from jaxrl_llm.tasks.sort import SortTask
from jaxrl_llm.tasks.sources import ExampleStream, PromptSource, TaskSource, load_examples

__all__ = [
    "ArithTask",
    "BadRow",
    "CURRICULUM_METHODS",
    "ComposedTask",
    "CountdownTask",
    "CurriculumSource",
    "DataError",
    "DifficultyFilter",
    "DynamicSample",
    "Example",
    "ExampleStream",
    "MathTask",
    "PromptSource",
    "ReplayItem",
    "ReplaySource",
    "RewardPool",
    "RewardTerm",
    "SortTask",
    "Task",
    "TaskSource",
    "compose",
    "datafiles",
    "dynamic_sampling",
    "filter_long_prompts",
    "informative_groups",
    "length",
    "load_examples",
    "make_gsm8k",
    "make_prompt_source",
    "make_math",
    "make_task",
    "math_answer",
    "per_difficulty_accuracy",
    "prompt_stats",
    "read_rows",
    "register_task",
    "registered_tasks",
    "reward_details",
    "reward_failure_streak",
    "score_in_process",
    "select_rows",
]
