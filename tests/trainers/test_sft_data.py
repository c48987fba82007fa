"""SFT data files (`sft.load_jsonl_pairs`): bad rows skipped and counted, unusable files named."""

import json
import logging

import pytest

from jaxrl_llm.tasks import DataError
from jaxrl_llm.trainers.sft import load_jsonl_pairs


def _lines(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return str(path)


def _pair(i):
    return json.dumps({"prompt": f"{i}+{i}=", "completion": f" {2 * i}"})


def test_pairs_in_file_order(tmp_path):
    path = _lines(tmp_path / "sft.jsonl", [_pair(i) for i in range(3)])
    assert load_jsonl_pairs(path) == [("0+0=", " 0"), ("1+1=", " 2"), ("2+2=", " 4")]


def test_bad_rows_are_skipped_and_counted(tmp_path, caplog):
    lines = [_pair(i) for i in range(20)]
    lines[3] = '{"prompt": "3+3=", "completion": " 6"'  # malformed JSON
    lines[6] = json.dumps({"prompt": "6+6=", "completion": 12})  # type change: a number
    lines[11] = b'{"prompt": "\xff", "completion": " 22"}'  # not UTF-8
    lines[15] = json.dumps({"prompt": "15+15="})  # no completion
    path = _lines(tmp_path / "sft.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="jaxrl_llm.tasks.datafiles"):
        pairs = load_jsonl_pairs(path, max_bad_fraction=0.2)  # 4 of 20 bad
    assert [p for p, _ in pairs] == [f"{i}+{i}=" for i in range(20) if i not in (3, 6, 11, 15)]
    assert path in caplog.text and "skipped 4 of 20 rows (20.0%)" in caplog.text
    for part in (
        "line 4: invalid JSON",
        "line 7: field 'completion' is int, not text",
        "line 12: not UTF-8 (byte 0xff at column 13)",
        "line 16: SFT rows need the fields 'prompt' and 'completion'; missing ['completion']",
    ):
        assert part in caplog.text
    with pytest.raises(DataError, match="skipped 4 of 20 rows.*max_bad_fraction=0.1"):
        load_jsonl_pairs(path)  # the default limit: 0.2 > 0.1


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "is empty"),
        ('{"prompt": "é", "completion": "à"}\n'.encode("latin-1"), "not UTF-8"),
        (b'{"question": "q", "answer": "a"}\n', r"missing \['prompt', 'completion'\]"),
    ],
)
def test_unusable_file_is_a_data_error_naming_it(tmp_path, content, match):
    path = tmp_path / "sft.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        load_jsonl_pairs(str(path))
    assert str(path) in str(err.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_jsonl_pairs(str(tmp_path / "nope.jsonl"))
