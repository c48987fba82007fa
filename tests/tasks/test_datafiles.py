"""Data files read row by row: bad rows skipped and counted, unusable files one DataError."""

import json
import logging

import pytest

from jaxrl_llm.tasks import BadRow, DataError, Example, filter_long_prompts, read_rows
from jaxrl_llm.tasks.datafiles import LoadReport

LOGGER = "jaxrl_llm.tasks.datafiles"


def _need_text(record):
    if not isinstance(record.get("text"), str):
        raise BadRow(f"field 'text' is {type(record.get('text')).__name__}, not text")
    return record["text"]


def _write_lines(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return str(path)


def test_good_file_reads_every_row_and_warns_nothing(tmp_path, caplog):
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps({"text": f"t{i}"}) for i in range(4)])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert read_rows(path, _need_text) == ["t0", "t1", "t2", "t3"]
    assert caplog.text == ""


def test_bad_lines_are_skipped_counted_and_named(tmp_path, caplog):
    lines = [json.dumps({"text": f"t{i}"}) for i in range(20)]
    lines[2] = '{"text": "t2",'  # malformed JSON
    lines[9] = b'{"text": "caf\xe9"}'  # latin-1 byte: not UTF-8
    lines.insert(5, "   ")  # blank lines are not rows
    path = _write_lines(tmp_path / "d.jsonl", lines)
    report = LoadReport(source=f"data file {path!r}")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        rows = read_rows(path, _need_text, report=report)
    assert rows == [f"t{i}" for i in range(20) if i not in (2, 9)]
    assert report.rows == 20 and [i for i, _ in report.bad] == [3, 11]  # file line numbers
    assert path in caplog.text and "skipped 2 of 20 rows (10.0%)" in caplog.text
    assert "line 3: invalid JSON" in caplog.text
    assert "line 11: not UTF-8 (byte 0xe9 at column 14)" in caplog.text


def test_type_change_between_rows_is_a_bad_row(tmp_path):
    rows = [{"text": "a"}, {"text": 7}, {"text": ["b"]}] + [{"text": f"t{i}"} for i in range(17)]
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    report = LoadReport(source="d")
    assert len(read_rows(path, _need_text, report=report)) == 18
    assert report.bad == [
        (2, "field 'text' is int, not text"),
        (3, "field 'text' is list, not text"),
    ]


def test_over_the_limit_stops_with_the_summary(tmp_path):
    lines = [json.dumps({"text": "ok"})] * 7 + ["oops", "[1, 2]", '{"text": null}']  # 3 of 10
    path = _write_lines(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError) as err:
        read_rows(path, _need_text)
    msg = str(err.value)
    assert path in msg and "skipped 3 of 10 rows (30.0%)" in msg and "max_bad_fraction=0.1" in msg
    assert "line 8: invalid JSON" in msg and "line 9: not a JSON object but list" in msg
    assert "line 10: field 'text' is NoneType" in msg
    assert isinstance(err.value, ValueError)
    assert len(read_rows(path, _need_text, max_bad_fraction=0.3)) == 7  # 0.3 is not over 0.3
    with pytest.raises(ValueError, match="max_bad_fraction"):
        read_rows(path, _need_text, max_bad_fraction=1.5)


def test_summary_names_five_bad_rows_and_no_valid_row_is_an_error(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", ["x"] * 8)
    with pytest.raises(DataError, match="line 5: invalid JSON.*… 3 more; no valid row") as err:
        read_rows(path, _need_text, max_bad_fraction=1.0)
    assert "line 6" not in str(err.value)


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.jsonl", b"", "is empty: no rows"),
        ("blank.jsonl", b"\n  \n", "is empty: no rows"),
        ("latin1.jsonl", '{"text": "café"}\n{"text": "thé"}\n'.encode("latin-1"), "not UTF-8"),
        ("utf16.jsonl", '{"text": "a"}\n'.encode("utf-16"), "UTF-16"),
        ("bad.json", b'[{"text": "a"},\n {"text": }]', "invalid JSON array.*line 2"),
        ("bad.parquet", b"not parquet", "cannot read it as parquet"),
    ],
)
def test_unusable_file_is_one_data_error_naming_the_path(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        read_rows(str(path), _need_text)
    assert str(path) in str(err.value)


def test_missing_file_and_folder_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_rows(str(tmp_path / "none.jsonl"))
    with pytest.raises(DataError, match="is not a file"):
        read_rows(str(tmp_path))


def test_json_array_json_lines_and_a_utf8_bom(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2))
    assert read_rows(str(arr), _need_text) == ["a", "b"]
    lines = tmp_path / "l.json"  # datasets reads JSON lines from .json too
    lines.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\n{"text": "b"}\n')
    assert read_rows(str(lines)) == [{"text": "a"}, {"text": "b"}]


def _chars(prompts):  # one token per character, plus a BOS
    return [[0] + [ord(c) for c in p] for p in prompts]


def test_filter_long_prompts_by_hand(caplog):
    exs = [Example(id=str(i), prompt="x" * n, answer="") for i, n in enumerate([3, 9, 4, 12])]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        kept, dropped = filter_long_prompts(exs, _chars, 5, source="gsm8k train")
    assert [e.id for e in kept] == ["0", "2"] and dropped == 2  # 4 and 5 tokens kept, 10 and 13 not
    assert "gsm8k train: 2 of 4 prompts are longer than 5 tokens" in caplog.text
    assert "longest 13 tokens" in caplog.text
    pairs = [("ab", "c"), ("abcdef", "g")]  # SFT pairs: the prompt is the first element
    assert filter_long_prompts(pairs, _chars, 3) == ([("ab", "c")], 1)
    assert filter_long_prompts(["a", "b"], _chars, 2) == (["a", "b"], 0)
    assert filter_long_prompts([], _chars, 2) == ([], 0)
    with pytest.raises(DataError, match="none is left"):
        filter_long_prompts(["abc"], _chars, 2)
