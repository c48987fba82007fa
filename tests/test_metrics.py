"""Tests for jaxrl_llm/metrics.py: the JSONL copy of the scalars beside the event files."""

import glob
import json
import os

import numpy as np
import pytest

from jaxrl_llm import metrics


def test_scalars_are_appended_to_metrics_jsonl_and_flushed(tmp_path):
    w = metrics.MetricWriter(str(tmp_path))
    w.scalars(1, {"train/reward": np.float32(0.25), "train/kl": 0.5})
    # Flushed line by line: readable while the writer is still open (a run killed later).
    header, *lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    events = [os.path.basename(p) for p in glob.glob(str(tmp_path / "events.out.tfevents.*"))]
    assert json.loads(header)["events_files"] == events and len(events) == 1
    assert metrics.jsonl_events_files(str(tmp_path)) == set(events)
    record = json.loads(lines[0])
    assert record["step"] == 1 and record["scalars"] == {"train/reward": 0.25, "train/kl": 0.5}
    assert isinstance(record["time"], float)
    w(2, {"train/reward": 0.75})  # a writer is also a log_fn(step, dict)
    w.close()
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    got = metrics.read_scalars_jsonl(str(tmp_path))
    np.testing.assert_array_equal(got["train/reward"][0], [1, 2])
    np.testing.assert_array_equal(got["train/reward"][1], [0.25, 0.75])
    assert w.history["train/kl"] == [(1, 0.5)]


def test_resumed_run_appends_and_the_last_value_wins(tmp_path):
    w = metrics.MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
        w.scalars(step, {"train/reward": float(step)})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "scalars": {"train/rew')  # torn line of a killed run
    w = metrics.MetricWriter(str(tmp_path))  # resumed from the checkpoint of step 2
    w.scalars(3, {"train/reward": 30.0})
    w.close()
    steps, values = metrics.read_scalars_jsonl(str(tmp_path))["train/reward"]
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_array_equal(values, [1.0, 2.0, 30.0])


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics.jax, "process_index", lambda: 1)
    w = metrics.MetricWriter(str(tmp_path / "run"))
    w.scalars(1, {"x": 1.0})
    w.close()
    assert not os.path.exists(tmp_path / "run")
    assert w.history["x"] == [(1, 1.0)]


@pytest.mark.parametrize("kwargs", [dict(enabled=False), dict(jsonl=False)])
def test_jsonl_can_be_left_out(tmp_path, kwargs):
    w = metrics.MetricWriter(str(tmp_path), **kwargs)
    w.scalars(1, {"x": 1.0})
    w.close()
    assert not os.path.exists(tmp_path / "metrics.jsonl")
    assert metrics.read_scalars_jsonl(str(tmp_path)) is None


def test_provenance_files(tmp_path):
    import ml_collections

    c = ml_collections.ConfigDict({"train": {"steps": 3}})
    metrics.write_provenance(str(tmp_path), c)
    assert json.loads((tmp_path / "config.json").read_text()) == {"train": {"steps": 3}}
    assert "packages" in json.loads((tmp_path / "provenance.json").read_text())
