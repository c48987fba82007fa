"""Tests for jaxrl_llm/workdir.py: names, done.json round trip, atomic writes, corrupt files."""

import json
import os

import pytest

from jaxrl_llm import workdir as wd


def test_names_are_the_documented_ones():
    assert (wd.DONE_JSON, wd.EVAL_JSON, wd.CELL_JSON) == ("done.json", "eval.json", "cell.json")
    assert (wd.CONFIG_JSON, wd.PROVENANCE_JSON, wd.METRICS_JSONL) == (
        "config.json",
        "provenance.json",
        "metrics.jsonl",
    )
    assert (wd.CHECKPOINT_DIR, wd.SFT_DIR, wd.TOKENIZER_DIR) == ("checkpoints", "sft", "tokenizer")
    assert wd.checkpoint_dir("runs/a") == os.path.abspath("runs/a/checkpoints")
    assert wd.sft_dir("w") == os.path.join("w", "sft")
    assert wd.tokenizer_dir("w") == os.path.join("w", "tokenizer")


def test_has_sft_model(tmp_path):
    assert not wd.has_sft_model(str(tmp_path))
    os.makedirs(tmp_path / "sft")
    assert not wd.has_sft_model(str(tmp_path))
    (tmp_path / "sft" / "config.json").write_text("{}")
    assert not wd.has_sft_model(str(tmp_path))  # config.json without weights: a cut save
    (tmp_path / "sft" / "model.safetensors").write_bytes(b"x")
    assert wd.has_sft_model(str(tmp_path))


def test_done_round_trip_and_is_finished(tmp_path):
    w = str(tmp_path / "run")
    assert wd.read_done(w) is None and not wd.is_finished(w)
    summary = {"steps": 3, "initial_eval": {"eval/accuracy": 0.25}, "final_eval": {"x": 1.0}}
    assert wd.write_done(w, summary) == os.path.join(w, "done.json")
    assert wd.is_finished(w)
    assert wd.read_done(w) == summary
    assert [n for n in os.listdir(w) if n.endswith(".tmp")] == []


def test_write_killed_midway_keeps_the_old_file(tmp_path, monkeypatch):
    w = str(tmp_path)
    wd.write_done(w, {"steps": 1})

    def torn_dump(obj, f, **kwargs):
        f.write('{"steps": 2, "fin')  # half a file, then the writer dies
        raise KeyboardInterrupt

    monkeypatch.setattr(wd.json, "dump", torn_dump)
    with pytest.raises(KeyboardInterrupt):
        wd.write_done(w, {"steps": 2})
    monkeypatch.undo()
    assert wd.read_done(w) == {"steps": 1}
    assert sorted(os.listdir(w)) == ["done.json"]  # no temporary file left behind


def test_corrupt_json_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "done.json").write_text('{"steps": ')
    with pytest.raises(ValueError, match="done.json is not valid JSON"):
        wd.read_done(str(tmp_path))
    assert wd.is_finished(str(tmp_path))


def test_cell_and_eval(tmp_path):
    w = str(tmp_path)
    assert wd.read_cell(w) is None and wd.read_eval(w) is None
    wd.write_cell(w, {"name": "a=1", "index": 0, "overrides": {"a": 1}})
    assert wd.read_cell(w)["overrides"] == {"a": 1}
    (tmp_path / "eval.json").write_text(json.dumps({"step": 4, "n": 2, "metrics": {}}))
    assert wd.read_eval(w)["step"] == 4
