"""Tests for jaxrl_llm/checkpoint.py: a corrupted newest step falls back to the previous one."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.checkpoint import Checkpointer, CheckpointRestoreError
from jaxrl_llm.trainers.state import TrainState


def _state(step: int) -> TrainState:
    params = {
        "embed": jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) + step,
        "layer": {"w": jnp.full((32, 32), float(step), jnp.bfloat16), "b": jnp.zeros(32)},
    }
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        opt_state={"mu": jax.tree.map(lambda x: x * 0.5, params)},
        rng=jax.random.key_data(jax.random.key(step)),
        kl_coef=jnp.asarray(0.1 * step, jnp.float32),
    )


@pytest.fixture(autouse=True)
def _close_checkpointers(monkeypatch):
    """Closes every Checkpointer a test opens (an open orbax manager warns when collected)."""
    opened = []
    init = Checkpointer.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(Checkpointer, "__init__", tracked)
    yield
    for c in opened:
        c.close()


def _abstract():
    return jax.eval_shape(lambda: _state(0))


def _saved(tmp_path, steps=(1, 2)) -> tuple[str, Checkpointer]:
    workdir = str(tmp_path / "run")
    ckpt = Checkpointer(workdir, keep=3)
    for s in steps:
        ckpt.save(s, _state(s), {"source": {"pos": 10 * s}, "counters": {"bad_steps": 0}})
    return workdir, ckpt


def _array_data_files(step_dir: str) -> list[str]:
    """The tensorstore data files of a step's state item (largest first)."""
    files = [
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for f in names
        if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep or root.endswith(os.sep + "d")
    ]
    assert files, os.listdir(os.path.join(step_dir, "state"))
    return sorted(files, key=os.path.getsize, reverse=True)


def _truncate(path: str, keep: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _assert_is_step(state, step: int):
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_state(step))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_round_trip(tmp_path):
    _, ckpt = _saved(tmp_path)
    state, meta, skipped = ckpt.restore_latest_good(_abstract())
    assert skipped == [] and meta["step"] == 2 and meta["source"] == {"pos": 20}
    _assert_is_step(state, 2)
    state, meta = ckpt.restore(_abstract(), step=1)
    _assert_is_step(state, 1)


def test_truncated_array_file_falls_back_to_previous_step(tmp_path, caplog):
    workdir, ckpt = _saved(tmp_path)
    _truncate(_array_data_files(os.path.join(workdir, "checkpoints", "2"))[0])
    ckpt.close()
    ckpt = Checkpointer(workdir, keep=3)  # a restart
    with caplog.at_level(logging.WARNING):
        state, meta, skipped = ckpt.restore_latest_good(_abstract())
    assert meta["step"] == 1 and [s for s, _ in skipped] == [2]
    _assert_is_step(state, 1)
    lines = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(lines) == 1 and "step 2" in lines[0] and "\n" not in lines[0]
    # The unreadable step is moved aside (kept for inspection) and the run can save it again.
    assert ckpt.all_steps() == [1]
    assert os.path.isdir(os.path.join(workdir, "checkpoints.skipped", "2"))
    ckpt.save(2, _state(2), {"source": {"pos": 20}})
    _assert_is_step(ckpt.restore(_abstract())[0], 2)


def test_plain_restore_falls_back_too(tmp_path):
    """The trainer calls `restore(abstract_state)`: it resumes from the good step."""
    workdir, ckpt = _saved(tmp_path)
    for f in _array_data_files(os.path.join(workdir, "checkpoints", "2")):
        _truncate(f, 0.3)
    state, meta = Checkpointer(workdir, keep=3).restore(_abstract())
    assert meta["step"] == 1
    _assert_is_step(state, 1)


@pytest.mark.parametrize("item", ["meta/metadata", "state/_METADATA"])
def test_truncated_metadata_json_falls_back(tmp_path, item):
    workdir, ckpt = _saved(tmp_path)
    path = os.path.join(workdir, "checkpoints", "2", item)
    json.loads(open(path).read())  # it is a JSON file
    _truncate(path)
    state, meta, skipped = Checkpointer(workdir, keep=3).restore_latest_good(_abstract())
    assert meta["step"] == 1 and [s for s, _ in skipped] == [2]
    _assert_is_step(state, 1)


def test_no_step_restores_is_one_clear_error(tmp_path):
    workdir, ckpt = _saved(tmp_path)
    for s in (1, 2):
        _truncate(os.path.join(workdir, "checkpoints", str(s), "meta", "metadata"))
    with pytest.raises(CheckpointRestoreError, match=r"no checkpoint in .* restores") as e:
        Checkpointer(workdir, keep=3).restore_latest_good(_abstract())
    assert "step 2:" in str(e.value) and "step 1:" in str(e.value)
    with pytest.raises(CheckpointRestoreError, match="checkpoint step 1 .* does not restore"):
        Checkpointer(workdir, keep=3).restore(_abstract(), step=1)


def test_no_checkpoint_at_all(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Checkpointer(str(tmp_path)).restore_latest_good(_abstract())
