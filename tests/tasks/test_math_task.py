"""GSM8K / MATH-format task from small generated jsonl / parquet files."""

import json
import logging

import pytest

from jaxrl_llm.tasks import DataError, RewardPool, make_task
from jaxrl_llm.tasks.math_task import MathTask


def _gsm8k_rows(n):
    return [
        {
            "question": f"Tom has {i} apples and buys {i + 3} more. How many now?",
            "answer": f"He buys {i + 3}.\n{i}+{i + 3}=<<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3}\n#### {2 * i + 3:,}",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k") / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _gsm8k_rows(60)) + "\n")
    return str(path)


def test_gsm8k_from_jsonl_splits_and_gold(gsm8k_file):
    task = make_task("gsm8k", path=gsm8k_file, test_fraction=0.25)
    train, test = task.examples("train", None, 0), task.examples("test", None, 0)
    assert len(train) + len(test) == 60 and len(test) > 0
    assert not {e.id for e in train} & {e.id for e in test}
    assert task.examples("train", 5, 1) == task.examples("train", 5, 1)
    e = train[0]
    i = int(e.prompt.split("has ")[1].split(" ")[0])
    assert e.answer == f"{2 * i + 3:,}"  # gold keeps the dataset's text
    assert e.prompt == f"Question: Tom has {i} apples and buys {i + 3} more. How many now?\nAnswer:"
    target = task.sft_target(e)
    assert "<<" not in target and target.strip().endswith(f"#### {2 * i + 3:,}")
    assert task.reward(target, e) == 1.0  # SFT target is correct
    assert task.reward(f"So {2 * i + 3} apples.", e) == 1.0  # last number
    assert task.reward(f"\\boxed{{{2 * i + 4}}}", e) == 0.0
    assert task.reward("I do not know", e) == 0.0


def test_thousands_gold_and_format_component(tmp_path):
    rows = [{"question": "q1", "answer": "x\n#### 1,200"}, {"question": "q2", "answer": "#### -3"}]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q3", "answer": "#### 0.5"}))
    task = make_task("gsm8k", path=str(tmp_path), format_weight=0.1)  # folder with split files
    train = {e.prompt: e for e in task.examples("train", None, 0)}
    e1 = train["Question: q1\nAnswer:"]
    assert task.reward_details("It is 1200 in total", e1) == (1.0, {"correct": 1.0, "format": 0.0})
    assert task.reward_details("#### 1200", e1) == (1.1, {"correct": 1.0, "format": 1.0})
    (t,) = task.examples("test", None, 0)
    assert task.reward_details("\\boxed{\\frac{1}{2}}", t) == (1.1, {"correct": 1.0, "format": 1.0})


def test_math_format_parquet_with_levels(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {
            "problem": f"p{i}",
            "solution": f"so \\boxed{{\\frac{{{i}}}{{2}}}}",
            "level": f"Level {1 + i % 5}",
        }
        for i in range(20)
    ]
    path = tmp_path / "math.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    task = make_task("math", path=str(path), test_fraction=0.0)
    exs = task.examples("train", None, 0)
    assert len(exs) == 20 and task.difficulties == (1, 2, 3, 4, 5)
    e = next(x for x in exs if x.prompt.startswith("Problem: p4\n"))
    assert e.difficulty == 5 and e.answer == "\\frac{4}{2}"
    assert task.reward("the answer is \\boxed{2}", e) == 1.0
    assert task.reward("the answer is \\boxed{4/2}", e) == 1.0
    assert task.reward("the answer is \\boxed{3}", e) == 0.0


def test_math_task_scores_in_spawn_workers(gsm8k_file):
    task = make_task("gsm8k", path=gsm8k_file)
    exs = task.examples("train", 4, 0)
    comps = [task.sft_target(exs[0]), "no idea", f"\\boxed{{{exs[2].answer}}}", "#### 99999"]
    with RewardPool(num_workers=1, timeout_s=30.0) as pool:
        rewards, info = pool.score(task, comps, exs)
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert info["errors"] == info["timeouts"] == 0


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="gold_format"):
        MathTask(path="x", gold_format="last")
    with pytest.raises(ValueError, match="extract_mode"):
        MathTask(path="x", extract_mode="first")


def test_missing_local_data_is_a_named_error(tmp_path):
    task = make_task("gsm8k", path=str(tmp_path / "no_such_dataset_here"))
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        task.examples("train", 3, 0)


_LATEX_CASES = [  # (completion, gold, reward): LaTeX without \boxed is read as LaTeX
    ("The answer is $\\frac{1}{2}$.", "2", 0.0),  # was read as 2: a wrong answer rewarded
    ("The answer is $\\frac{1}{2}$.", "0.5", 1.0),  # ... and the right one rejected
    ("So it is $2^{10}$", "1024", 1.0),
    ("So it is $2^{10}$", "10", 0.0),
    ("So it is 2^{10}.", "1024", 1.0),
    ("It is \\(\\sqrt{2}\\)", "2", 0.0),
    ("Since $2^{10} = 1024$, the answer is 1024.", "1024", 1.0),
    ("She pays $5 and then $10 more, 15 in all", "15", 1.0),
]


@pytest.mark.parametrize("kind", ["gsm8k", "math"])
def test_latex_answer_without_box_is_scored_as_latex(tmp_path, kind):
    golds = sorted({gold for _, gold, _ in _LATEX_CASES})
    if kind == "gsm8k":
        rows = [{"question": f"q{g}", "answer": f"work\n#### {g}"} for g in golds]
    else:
        rows = [
            {"problem": f"q{g}", "solution": f"so \\boxed{{{g}}}", "level": "Level 2"}
            for g in golds
        ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = make_task(kind, path=str(path), test_fraction=0.0)
    by_gold = {e.answer: e for e in task.examples("train", None, 0)}
    assert sorted(by_gold) == golds
    got = [task.reward(c, by_gold[g]) for c, g, _ in _LATEX_CASES]
    assert got == [r for _, _, r in _LATEX_CASES]


# ----------------------------------------------------------------------------- bad data files


def _lines(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return str(path)


def _good(i):
    return json.dumps({"question": f"q{i}", "answer": f"w\n#### {i}"})


def test_empty_jsonl_is_a_data_error_naming_the_file(tmp_path):
    path = _lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match="is empty") as err:
        make_task("gsm8k", path=path).examples("train", None, 0)
    assert path in str(err.value)


def test_bad_rows_are_skipped_counted_and_reported_once(tmp_path, caplog):
    lines = [_good(i) for i in range(20)]
    lines[1] = '{"question": "q1", "answer": '  # malformed JSON
    lines[4] = json.dumps({"question": "q4", "answer": "no marker 4"})  # no gold answer
    lines[7] = json.dumps({"question": ["q7"], "answer": "#### 7"})  # type change
    lines[9] = b'{"question": "caf\xe9", "answer": "#### 9"}'  # not UTF-8
    lines[12] = json.dumps({"question": "q12"})  # no answer field
    path = _lines(tmp_path / "data.jsonl", lines)
    task = make_task("gsm8k", path=path, test_fraction=0.5, max_bad_fraction=0.25)  # 5/20 bad
    with caplog.at_level(logging.WARNING, logger="jaxrl_llm.tasks.datafiles"):
        train, test = task.examples("train", None, 0), task.examples("test", None, 0)
        task.examples("train", 3, 1)
    assert sorted(int(e.answer) for e in train + test) == [
        i for i in range(20) if i not in (1, 4, 7, 9, 12)
    ]
    assert caplog.text.count("skipped 5 of 20 rows (25.0%)") == 1  # one summary per file
    for part in (
        path,
        "line 2: invalid JSON",
        "line 5: no gold answer ('#### …')",
        "line 8: field 'question' is list, not text",
        "line 10: not UTF-8",
        "line 13: no field 'answer'",
    ):
        assert part in caplog.text


def test_too_many_bad_rows_stop_loading_with_the_summary(tmp_path):
    lines = [_good(i) for i in range(8)] + ["{", json.dumps({"question": "q", "answer": "x"})]
    path = _lines(tmp_path / "data.jsonl", lines)  # 2 of 10 bad > 0.1 (the default)
    with pytest.raises(DataError, match="skipped 2 of 10 rows.*line 9.*line 10") as err:
        make_task("gsm8k", path=path).examples("train", None, 0)
    assert path in str(err.value) and "max_bad_fraction=0.1" in str(err.value)
    loose = make_task("gsm8k", path=path, max_bad_fraction=0.2, test_fraction=0.0)
    assert len(loose.examples("train", None, 0)) == 8
    with pytest.raises(ValueError, match="max_bad_fraction"):
        make_task("gsm8k", path=path, max_bad_fraction=-0.1)


def test_a_field_missing_everywhere_is_named(tmp_path):
    path = _lines(tmp_path / "data.jsonl", [json.dumps({"q": "a", "a": "#### 1"})] * 3)
    with pytest.raises(DataError, match=r"no field 'question' \(fields: \['a', 'q'\]\)"):
        make_task("gsm8k", path=path).examples("train", None, 0)


def test_numeric_raw_answers_and_non_utf8_file(tmp_path):
    rows = [{"problem": "p1", "solution": 0.5, "level": 2}, {"problem": "p2", "solution": "3"}]
    path = _lines(tmp_path / "raw.jsonl", [json.dumps(r) for r in rows])
    task = make_task("math", path=path, gold_format="raw", difficulty_field=None, test_fraction=0.0)
    assert sorted(e.answer for e in task.examples("train", None, 0)) == ["0.5", "3"]
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question": "à", "answer": "#### 1"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as err:
        make_task("gsm8k", path=str(latin1)).examples("train", None, 0)
    assert str(latin1) in str(err.value)
