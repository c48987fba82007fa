"""The task contract: `Example`, the `Task` protocol, the task registry and shared helpers.

Everything in `jaxrl_llm.tasks` works on TEXT on the host: the trainer tokenises
prompts and decodes completions. A task is any object with

    name: str
    difficulties: tuple                                    # difficulty levels
    examples(split, n, seed) -> list[Example]               # 'train' | 'test'; deterministic; disjoint
    reward(completion, example) -> float                    # picklable (module-level class)
    sft_target(example) -> str                              # completion text for the SFT warm start

and optionally `reward_details(completion, example) -> (total, {name: value})`,
which `RewardPool` uses to report each reward component separately.

`make_task(name_or_import_path, **kwargs)` builds a registered task ('arith',
'countdown', 'sort', 'gsm8k') or calls a user factory 'my_pkg.my_mod:make'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Example",
    "Task",
    "SPLITS",
    "make_task",
    "register_task",
    "registered_tasks",
    "reward_details",
    "stable_hash",
    "split_of",
    "per_difficulty_accuracy",
    "check_split",
    "split_rng",
    "draw_examples",
]

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its reference answer.

    id: stable, content-derived identifier (the same problem has the same id in
      every run), used by prompt selection to track per-prompt statistics.
    prompt: the text given to the model.
    answer: the reference answer the verifier compares against.
    difficulty: the difficulty level (one of `task.difficulties`).
    meta: hashable extras, e.g. (("numbers", (3, 5, 7)),).
    """

    id: str
    prompt: str
    answer: str
    difficulty: int = 0
    meta: tuple = ()

    def meta_dict(self) -> dict:
        """`meta` as a dict (meta is a tuple of (key, value) pairs)."""
        return dict(self.meta)


@runtime_checkable
class Task(Protocol):
    """A verifiable task: prompts, a reward, SFT targets, difficulty levels."""

    name: str
    difficulties: tuple

    def examples(self, split: str, n: int, seed: int) -> list[Example]: ...

    def reward(self, completion: str, example: Example) -> float: ...

    def sft_target(self, example: Example) -> str: ...


def reward_details(task: Any, completion: str, example: Example) -> tuple[float, dict[str, float]]:
    """(total reward, {component name: value}) for any task.

    Uses `task.reward_details` when the task defines it, else `task.reward`
    with no components.
    """
    fn = getattr(task, "reward_details", None)
    if fn is not None:
        total, comps = fn(completion, example)
        return float(total), {k: float(v) for k, v in comps.items()}
    return float(task.reward(completion, example)), {}


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process and run (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def split_rng(seed: int, split: str) -> random.Random:
    """The generator of a synthetic task's `split` for `seed` (Python's Mersenne Twister, fast per draw)."""
    check_split(split)
    return random.Random(stable_hash(f"{int(seed)}:{split}"))


def draw_examples(
    split: str,
    n: int | None,
    seed: int,
    sample,
    *,
    test_fraction: float,
    split_key=lambda ex: ex.id,
    tries_per_example: int = 50,
) -> list:
    """Up to `n` distinct examples of `split` from a synthetic generator (`n=None`: 10 000).

    Rejection sampling from `sample(rng) -> Example | None` with `split_rng(seed, split)`:
    an example is kept when it is new (by `id`) and `split_of(split_key(ex))` is `split`.
    Stops after `tries_per_example * n + 1000` draws, or after 5000 draws in a row without
    a new example (the split is nearly exhausted): fewer than `n` only then.
    """
    check_split(split)
    n = 10_000 if n is None else int(n)
    rng = split_rng(seed, split)
    out, seen = [], set()
    misses = 0
    for _ in range(tries_per_example * n + 1000):
        if len(out) == n or misses > 5000:
            break
        misses += 1
        ex = sample(rng)
        if ex is None or ex.id in seen or split_of(split_key(ex), test_fraction) != split:
            continue
        seen.add(ex.id)
        out.append(ex)
        misses = 0
    return out


def split_of(key: str, test_fraction: float) -> str:
    """'test' for a fixed `test_fraction` of keys (by stable hash), 'train' for the rest.

    Splitting by a hash of the problem's canonical text makes train and test
    disjoint whatever the seed and whatever `n` is asked for.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    u = (stable_hash(key) % 1_000_003) / 1_000_003.0
    return "test" if u < test_fraction else "train"


def per_difficulty_accuracy(
    examples: Sequence[Example], rewards: Sequence[float] | np.ndarray, *, threshold: float = 1.0
) -> dict[int, float]:
    """Fraction of rewards ≥ `threshold` per difficulty level.

    `rewards` may hold several samples per example: len(rewards) = k·len(examples),
    rows grouped per example (the trainer's [B·G] layout).
    """
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if len(examples) == 0 or rewards.size % len(examples):
        raise ValueError(
            f"rewards ({rewards.size}) must be a multiple of len(examples) ({len(examples)})"
        )
    k = rewards.size // len(examples)
    per_ex = (rewards.reshape(len(examples), k) >= threshold).mean(axis=1)
    out: dict[int, list[float]] = {}
    for ex, acc in zip(examples, per_ex):
        out.setdefault(int(ex.difficulty), []).append(float(acc))
    return {d: float(np.mean(v)) for d, v in sorted(out.items())}


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_task(name: str, factory: Callable[..., Any]) -> None:
    """Adds `factory(**kwargs) -> Task` under `name`."""
    _REGISTRY[name] = factory


# Built-in tasks by import path, imported on first use so that `import jaxrl_llm.tasks`
# stays light in reward workers.
_BUILTIN = {
    "arith": "jaxrl_llm.tasks.arith:ArithTask",
    "countdown": "jaxrl_llm.tasks.countdown:CountdownTask",
    "sort": "jaxrl_llm.tasks.sort:SortTask",
    "gsm8k": "jaxrl_llm.tasks.math_task:make_gsm8k",
    "math": "jaxrl_llm.tasks.math_task:make_math",
}


def _resolve(import_path: str) -> Callable[..., Any]:
    module_name, _, attr = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"task import path {import_path!r}: cannot import {module_name!r}: {e}"
        ) from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(
            f"task import path {import_path!r}: {module_name} has no callable {attr!r}"
        )
    return factory


def registered_tasks() -> tuple[str, ...]:
    return tuple(sorted({**_BUILTIN, **_REGISTRY}))


def make_task(name_or_import_path: str, **kwargs: Any) -> Any:
    """Builds a task from the registry or from an import path 'pkg.module:factory'.

    Raises ValueError naming the registered tasks when the name is unknown, and
    when an import path does not resolve or does not give a task.
    """
    if name_or_import_path in _REGISTRY:
        return _REGISTRY[name_or_import_path](**kwargs)
    if name_or_import_path in _BUILTIN:
        return _resolve(_BUILTIN[name_or_import_path])(**kwargs)
    if ":" in name_or_import_path:
        task = _resolve(name_or_import_path)(**kwargs)
        missing = [
            m
            for m in ("name", "examples", "reward", "sft_target", "difficulties")
            if not hasattr(task, m)
        ]
        if missing:
            raise ValueError(
                f"task from {name_or_import_path!r} lacks {missing} (see jaxrl_llm.tasks.Task)"
            )
        return task
    raise ValueError(
        f"unknown task {name_or_import_path!r}; registered: {', '.join(registered_tasks())}; "
        "or give an import path 'my_pkg.my_module:make'"
    )
