"""GSM8K / MATH-format tasks loaded with `datasets` from local json / jsonl / parquet or a hub name.

    make_gsm8k(path)   # fields 'question', 'answer' ('… #### 72'); gold = text after '####'
    make_math(path)    # fields 'problem', 'solution' ('… \\boxed{…}'), difficulty from 'level' ('Level 3')

`path` is one of
  * a file (.json, .jsonl, .parquet): one file; train / test are split by a
    stable hash of the question (`test_fraction`), so they are disjoint;
  * a folder holding `train.*` and `test.*` files (json / jsonl / parquet);
  * a hub dataset name (needs network, or a local `datasets` cache), with
    `hub_config` and the split names 'train' / 'test'.

Reward (component 'correct'): the answer extracted from the completion
(`extract_mode`, default 'auto': last `\\boxed{}` → '####' → last LaTeX span or
number, see `math_answer`) equals the gold answer under `math_answer.answers_equal`. Optional `format_weight` ×
component 'format' (the completion has an explicit `\\boxed{}` or '####').
SFT target: the dataset's solution text (GSM8K's `<<…>>` calculator notes removed).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from jaxrl_llm.tasks import math_answer
from jaxrl_llm.tasks.base import Example, check_split, split_of, stable_hash

__all__ = ["MathTask", "make_gsm8k", "make_math", "GSM8K_TEMPLATE", "MATH_TEMPLATE"]

GSM8K_TEMPLATE = "Question: {question}\nAnswer:"
MATH_TEMPLATE = "Problem: {question}\nPut the final answer in \\boxed{{}}.\nSolution:"
GOLD_FORMATS = ("hash", "boxed", "raw")
_FILE_KINDS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_CACHE: dict[tuple, list[dict]] = {}


def _load_file(path: str) -> list[dict]:
    import datasets  # lazy: heavy

    kind = _FILE_KINDS[os.path.splitext(path)[1]]
    return list(datasets.load_dataset(kind, data_files=path, split="train"))


def _find_split_file(folder: str, split: str) -> str | None:
    for ext in _FILE_KINDS:
        candidate = os.path.join(folder, split + ext)
        if os.path.exists(candidate):
            return candidate
    return None


def load_rows(
    path: str, split: str, *, hub_config: str | None, test_fraction: float, key_field: str
) -> list[dict]:
    """Rows of `split` from a file, a folder of split files or a hub dataset (cached per process)."""
    check_split(split)
    cache_key = (path, split, hub_config, test_fraction, key_field)
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    if os.path.isfile(path):
        if os.path.splitext(path)[1] not in _FILE_KINDS:
            raise ValueError(f"data file {path!r}: extension must be one of {sorted(_FILE_KINDS)}")
        rows = [r for r in _load_file(path) if split_of(str(r[key_field]), test_fraction) == split]
    elif os.path.isdir(path):
        f = _find_split_file(path, split)
        if f is None:
            raise ValueError(f"folder {path!r} has no {split}.{{json,jsonl,parquet}}")
        rows = _load_file(f)
    else:
        import datasets

        try:
            rows = list(datasets.load_dataset(path, hub_config, split=split))
        except Exception as e:  # noqa: BLE001 - name the cause for the user
            raise ValueError(
                f"task data {path!r} is neither a file nor a folder, and loading it as a hub dataset "
                f"(config {hub_config!r}, split {split!r}) failed: {e}. Offline, pass a local "
                ".json / .jsonl / .parquet file or a folder with train.* and test.* files."
            ) from e
    _CACHE[cache_key] = rows
    return rows


def _gold(text: str, gold_format: str) -> str:
    if gold_format == "raw":
        return text.strip()
    ans = (
        math_answer.extract_hash(text) if gold_format == "hash" else math_answer.extract_boxed(text)
    )
    if ans is None:
        raise ValueError(f"no gold answer ({gold_format}) in {text[:200]!r}")
    return ans


def _level(value: Any) -> int:
    m = re.search(r"\d+", str(value))
    return int(m.group()) if m else 0


@dataclasses.dataclass(frozen=True)
class MathTask:
    """A math word-problem task; see the module docstring."""

    path: str
    name: str = "gsm8k"
    question_field: str = "question"
    answer_field: str = "answer"
    gold_format: str = "hash"
    difficulty_field: str | None = None
    difficulties: tuple = (0,)
    prompt_template: str = GSM8K_TEMPLATE
    extract_mode: str = "auto"
    format_weight: float = 0.0
    test_fraction: float = 0.1
    hub_config: str | None = None

    def __post_init__(self):
        if self.gold_format not in GOLD_FORMATS:
            raise ValueError(f"gold_format must be one of {GOLD_FORMATS}, got {self.gold_format!r}")
        if self.extract_mode not in math_answer.EXTRACT_MODES:
            raise ValueError(
                f"extract_mode must be one of {math_answer.EXTRACT_MODES}, got {self.extract_mode!r}"
            )
        if "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{question}'")

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """`n` examples of `split` (all when n is None), in a seed-shuffled order."""
        rows = load_rows(
            self.path,
            split,
            hub_config=self.hub_config,
            test_fraction=self.test_fraction,
            key_field=self.question_field,
        )
        for field in (self.question_field, self.answer_field):
            if rows and field not in rows[0]:
                raise ValueError(f"data has no field {field!r}; fields: {sorted(rows[0])}")
        order = np.random.default_rng(seed).permutation(len(rows))
        if n is not None:
            order = order[: int(n)]
        out = []
        for i in order:
            r = rows[int(i)]
            q, sol = str(r[self.question_field]), str(r[self.answer_field])
            diff = _level(r[self.difficulty_field]) if self.difficulty_field else 0
            out.append(
                Example(
                    id=f"{self.name}:{stable_hash(q):016x}",
                    prompt=self.prompt_template.format(question=q.strip()),
                    answer=_gold(sol, self.gold_format),
                    difficulty=diff,
                    meta=(("solution", sol),),
                )
            )
        return out

    def sft_target(self, example: Example) -> str:
        sol = example.meta_dict().get("solution", example.answer)
        return " " + re.sub(r"<<[^>]*>>", "", sol).strip()

    def warmup(self) -> None:
        """Imports math-verify (sympy) once, before the first timed reward call."""
        math_answer.answers_equal("\\frac{1}{2}", "\\sqrt{1/4}")

    def reward_details(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        pred = math_answer.extract_answer(completion, self.extract_mode)
        correct = 1.0 if math_answer.answers_equal(pred, example.answer) else 0.0
        comps = {"correct": correct}
        if self.format_weight:
            has = (
                math_answer.extract_boxed(completion) is not None
                or math_answer.extract_hash(completion) is not None
            )
            comps["format"] = 1.0 if has else 0.0
            return correct + self.format_weight * comps["format"], comps
        return correct, comps

    def reward(self, completion: str, example: Example) -> float:
        return self.reward_details(completion, example)[0]


def make_gsm8k(path: str = "openai/gsm8k", **kwargs: Any) -> MathTask:
    """GSM8K format: 'question', 'answer' with '#### N'. Default path is the hub name (online)."""
    kwargs.setdefault("hub_config", "main")
    return MathTask(path=path, **kwargs)


def make_math(path: str, **kwargs: Any) -> MathTask:
    """MATH format: 'problem', 'solution' with \\boxed{}, difficulty from 'level'."""
    defaults = dict(
        name="math",
        question_field="problem",
        answer_field="solution",
        gold_format="boxed",
        difficulty_field="level",
        difficulties=(1, 2, 3, 4, 5),
        prompt_template=MATH_TEMPLATE,
    )
    return MathTask(path=path, **{**defaults, **kwargs})
