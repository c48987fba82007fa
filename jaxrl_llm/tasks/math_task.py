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
number, see `math_answer`) equals the gold answer under `math_answer.answers_equal`.
Optional `format_weight` × component 'format' (the completion has an explicit
`\\boxed{}` or '####').
SFT target: the dataset's solution text (GSM8K's `<<…>>` calculator notes removed).

Bad rows are skipped and counted (`datafiles`): a line that is not UTF-8 or not
JSON, a missing question / answer / difficulty field, a question that is not
text, a solution without a gold answer. One warning names the file, the count
and the first bad rows; more than `max_bad_fraction` bad rows (default 0.1, a
task kwarg), an empty file or one without a valid row is a `DataError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from jaxrl_llm.tasks import math_answer
from jaxrl_llm.tasks.base import Example, check_split, split_of, stable_hash
from jaxrl_llm.tasks.datafiles import MAX_BAD_FRACTION, BadRow, LoadReport, check_rows, read_rows

__all__ = ["MathTask", "make_gsm8k", "make_math", "GSM8K_TEMPLATE", "MATH_TEMPLATE"]

GSM8K_TEMPLATE = "Question: {question}\nAnswer:"
MATH_TEMPLATE = "Problem: {question}\nPut the final answer in \\boxed{{}}.\nSolution:"
GOLD_FORMATS = ("hash", "boxed", "raw")
_FILE_KINDS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_CACHE: dict[tuple, list[dict]] = {}


def _gold(text: str, gold_format: str) -> str:
    if gold_format == "raw":
        ans = text.strip() or None
    elif gold_format == "hash":
        ans = math_answer.extract_hash(text)
    else:
        ans = math_answer.extract_boxed(text)
    if ans is None:
        marker = {"hash": "'#### …'", "boxed": "'\\boxed{…}'", "raw": "text"}[gold_format]
        raise BadRow(f"no gold answer ({marker}) in {text[:80]!r}")
    return ans


def _level(value: Any) -> int:
    m = re.search(r"\d+", str(value))
    return int(m.group()) if m else 0


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One record → {'question', 'solution', 'gold', 'difficulty'}; BadRow when it cannot be."""

    question_field: str
    answer_field: str
    gold_format: str
    difficulty_field: str | None

    def _field(self, record: dict, field: str) -> Any:
        if record.get(field) is None:
            raise BadRow(f"no field {field!r} (fields: {sorted(record)})")
        return record[field]

    def __call__(self, record: dict) -> dict:
        q = self._field(record, self.question_field)
        if not isinstance(q, str):
            raise BadRow(f"field {self.question_field!r} is {type(q).__name__}, not text")
        sol = self._field(record, self.answer_field)
        if isinstance(sol, bool) or not isinstance(sol, (str, int, float)):
            raise BadRow(f"field {self.answer_field!r} is {type(sol).__name__}, not text")
        sol = str(sol)
        diff = 0
        if self.difficulty_field:
            diff = _level(self._field(record, self.difficulty_field))
        return {
            "question": q,
            "solution": sol,
            "gold": _gold(sol, self.gold_format),
            "difficulty": diff,
        }


def _load_file(path: str, spec: RowSpec, max_bad_fraction: float) -> list[dict]:
    """Parsed rows of one file, cached per (file version, spec, limit): one warning per file."""
    st = os.stat(path) if os.path.isfile(path) else None
    key = (path, st and st.st_mtime_ns, st and st.st_size, spec, max_bad_fraction)
    if key not in _CACHE:
        _CACHE[key] = read_rows(path, spec, max_bad_fraction=max_bad_fraction)
    return _CACHE[key]


def _find_split_file(folder: str, split: str) -> str | None:
    for ext in _FILE_KINDS:
        candidate = os.path.join(folder, split + ext)
        if os.path.exists(candidate):
            return candidate
    return None


def load_rows(
    path: str,
    split: str,
    *,
    hub_config: str | None,
    test_fraction: float,
    spec: RowSpec,
    max_bad_fraction: float = MAX_BAD_FRACTION,
) -> list[dict]:
    """Parsed rows (`RowSpec`) of `split` from a file, a folder of split files or a hub dataset.

    Cached per process. Bad rows are skipped and counted; DataError past
    `max_bad_fraction` or when nothing is usable (module doc).
    """
    check_split(split)
    if os.path.isfile(path):
        if os.path.splitext(path)[1] not in _FILE_KINDS:
            raise ValueError(f"data file {path!r}: extension must be one of {sorted(_FILE_KINDS)}")
        rows = _load_file(path, spec, max_bad_fraction)
        return [r for r in rows if split_of(r["question"], test_fraction) == split]
    if os.path.isdir(path):
        f = _find_split_file(path, split)
        if f is None:
            raise ValueError(f"folder {path!r} has no {split}.{{json,jsonl,parquet}}")
        return _load_file(f, spec, max_bad_fraction)
    cache_key = (path, hub_config, split, spec, max_bad_fraction)
    if cache_key not in _CACHE:
        import datasets

        try:
            records = datasets.load_dataset(path, hub_config, split=split)
        except Exception as e:  # noqa: BLE001 - name the cause for the user
            raise ValueError(
                f"task data {path!r} is neither a file nor a folder, and loading it as a hub dataset "
                f"(config {hub_config!r}, split {split!r}) failed: {e}. Offline, pass a local "
                ".json / .jsonl / .parquet file or a folder with train.* and test.* files."
            ) from e
        report = LoadReport(source=f"hub dataset {path!r} ({hub_config}, {split})", unit="row")
        _CACHE[cache_key] = check_rows(
            enumerate(records, 1), spec, report, max_bad_fraction=max_bad_fraction
        )
    return _CACHE[cache_key]


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
    max_bad_fraction: float = MAX_BAD_FRACTION

    def __post_init__(self):
        if self.gold_format not in GOLD_FORMATS:
            raise ValueError(f"gold_format must be one of {GOLD_FORMATS}, got {self.gold_format!r}")
        if self.extract_mode not in math_answer.EXTRACT_MODES:
            raise ValueError(
                f"extract_mode must be one of {math_answer.EXTRACT_MODES}, got {self.extract_mode!r}"
            )
        if "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{question}'")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        """`n` examples of `split` (all when n is None), in a seed-shuffled order."""
        spec = RowSpec(
            self.question_field, self.answer_field, self.gold_format, self.difficulty_field
        )
        rows = load_rows(
            self.path,
            split,
            hub_config=self.hub_config,
            test_fraction=self.test_fraction,
            spec=spec,
            max_bad_fraction=self.max_bad_fraction,
        )
        order = np.random.default_rng(seed).permutation(len(rows))
        if n is not None:
            order = order[: int(n)]
        out = []
        for i in order:
            r = rows[int(i)]
            q, sol = r["question"], r["solution"]
            out.append(
                Example(
                    id=f"{self.name}:{stable_hash(q):016x}",
                    prompt=self.prompt_template.format(question=q.strip()),
                    answer=r["gold"],
                    difficulty=r["difficulty"],
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
