"""The layout of a run workdir: every file and folder name, and small helpers to read and write them.

One run writes everything into its workdir; the grid runner, the evaluation CLI and the
collation script read it back. The names live here and nowhere else:

| name | written by | holds |
|---|---|---|
| `checkpoints/` | `checkpoint.Checkpointer` | orbax steps: train state + JSON meta |
| `config.json` | `metrics.write_provenance` | the resolved config |
| `provenance.json` | `metrics.write_provenance` | git commit, package versions, devices, argv |
| `metrics.jsonl` | `metrics.MetricWriter` | one JSON line per `scalars(step, dict)` call |
| `events.out.tfevents.*` | `metrics.MetricWriter` (tensorboardX) | the same scalars, for TensorBoard |
| `done.json` | the trainer, at the end | the finished-run summary (final / initial eval, counters) |
| `eval.json` | `python -m jaxrl_llm.evaluation` | `{"step", "n", "metrics"}` of a held-out evaluation |
| `cell.json` | `experiments/grid.py` | the grid cell: name, index, overrides, seed key |
| `grid.log` | `experiments/grid.py` | the output of the cell's training and evaluation commands |
| `checkpoints.skipped/` | `checkpoint.Checkpointer` | checkpoint steps that did not restore, moved aside |
| `sft/` | the trainer's SFT warm start | the warm-started policy as a Hugging Face folder |
| `tokenizer/` | the trainer (builtin tokenizer) | the tokenizer folder |
| `pending_rollouts/<step>.pkl` | the trainer with `rollout.async_steps > 0` | the batches sampled ahead of checkpoint `<step>` |
| `partial_rollouts/<step>.pkl` | the trainer with `rollout.partial_budget > 0` | the paused and waiting groups at checkpoint `<step>` |
| `lora_adapter/` | the trainer with `model.lora_rank > 0`, at the end | the final adapters as a PEFT folder (docs/lora.md) |

JSON and pickle files are written atomically (a temporary file in the same folder, then `os.replace`),
so a reader never sees half a file, even when the writer is killed mid-write.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from typing import Any

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_JSON",
    "PROVENANCE_JSON",
    "METRICS_JSONL",
    "EVENTS_GLOB",
    "DONE_JSON",
    "EVAL_JSON",
    "CELL_JSON",
    "GRID_LOG",
    "CHECKPOINT_SKIPPED_DIR",
    "SFT_DIR",
    "TOKENIZER_DIR",
    "PENDING_ROLLOUTS_DIR",
    "PARTIAL_ROLLOUTS_DIR",
    "LORA_ADAPTER_DIR",
    "path",
    "checkpoint_dir",
    "sft_dir",
    "tokenizer_dir",
    "pending_rollouts_file",
    "partial_rollouts_file",
    "lora_adapter_dir",
    "has_sft_model",
    "write_json_atomic",
    "write_pickle_atomic",
    "read_pickle",
    "read_json",
    "read_done",
    "write_done",
    "is_finished",
    "read_eval",
    "read_cell",
    "write_cell",
]

CHECKPOINT_DIR = "checkpoints"
CONFIG_JSON = "config.json"
PROVENANCE_JSON = "provenance.json"
METRICS_JSONL = "metrics.jsonl"
EVENTS_GLOB = "events.out.tfevents.*"
DONE_JSON = "done.json"
EVAL_JSON = "eval.json"
CELL_JSON = "cell.json"
GRID_LOG = "grid.log"
CHECKPOINT_SKIPPED_DIR = "checkpoints.skipped"
SFT_DIR = "sft"
TOKENIZER_DIR = "tokenizer"
PENDING_ROLLOUTS_DIR = "pending_rollouts"
PARTIAL_ROLLOUTS_DIR = "partial_rollouts"
LORA_ADAPTER_DIR = "lora_adapter"


def path(workdir: str, name: str) -> str:
    """`<workdir>/<name>` for one of this module's names."""
    return os.path.join(workdir, name)


def checkpoint_dir(workdir: str) -> str:
    """The absolute orbax folder of a run (absolute: orbax needs it)."""
    return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def sft_dir(workdir: str) -> str:
    return os.path.join(workdir, SFT_DIR)


def tokenizer_dir(workdir: str) -> str:
    return os.path.join(workdir, TOKENIZER_DIR)


def lora_adapter_dir(workdir: str) -> str:
    """The final LoRA adapters of a run, in PEFT's layout (`models.save_peft`)."""
    return os.path.join(workdir, LORA_ADAPTER_DIR)


def pending_rollouts_file(workdir: str, step: int) -> str:
    """The batches an asynchronous run had sampled ahead when it saved checkpoint `step`."""
    return os.path.join(workdir, PENDING_ROLLOUTS_DIR, f"{int(step)}.pkl")


def partial_rollouts_file(workdir: str, step: int) -> str:
    """The paused and waiting groups of a partial-rollout run at checkpoint `step`."""
    return os.path.join(workdir, PARTIAL_ROLLOUTS_DIR, f"{int(step)}.pkl")


def has_sft_model(workdir: str) -> bool:
    """Whether `<workdir>/sft/` holds a saved warm-start model: its Hugging Face `config.json`
    and `*.safetensors` weights. `models.save_hf` writes the weights first and config.json last,
    each through a temporary name, so a save killed midway leaves no config.json."""
    folder = sft_dir(workdir)
    return os.path.exists(os.path.join(folder, "config.json")) and any(
        n.endswith(".safetensors") for n in (os.listdir(folder) if os.path.isdir(folder) else ())
    )


def _write_atomic(file: str, write, mode: str) -> str:
    """`write(f)` into a temporary file beside `file`, fsync, then `os.replace` onto `file`."""
    folder = os.path.dirname(os.path.abspath(file))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(file)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return file


def write_json_atomic(file: str, obj: Any, *, indent: int | None = 2, **dump_kwargs) -> str:
    """Writes `obj` as JSON to `file` through a temporary file in the same folder and `os.replace`.

    A reader sees the old file or the new one, never a partial one; a writer killed mid-write
    leaves a stray `.<name>.*.tmp` file and the old content. Returns `file`.
    """
    return _write_atomic(file, lambda f: json.dump(obj, f, indent=indent, **dump_kwargs), "w")


def write_pickle_atomic(file: str, obj: Any) -> str:
    """Pickles `obj` to `file`, atomically as `write_json_atomic`. Returns `file`."""
    return _write_atomic(file, lambda f: pickle.dump(obj, f), "wb")


def read_pickle(file: str) -> Any:
    """The object pickled in `file` (only files this library wrote: pickle runs code)."""
    with open(file, "rb") as f:
        return pickle.load(f)


def read_json(file: str) -> Any | None:
    """The parsed JSON in `file`, or None when it does not exist.

    A file that exists but does not parse raises `ValueError` naming the file (it is not
    silently treated as missing: a corrupt `done.json` must not make a run look unfinished).
    """
    if not os.path.exists(file):
        return None
    with open(file) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); delete or repair it") from e


def read_done(workdir: str) -> dict | None:
    """The finished-run summary in `<workdir>/done.json`, or None if the run has not finished."""
    return read_json(path(workdir, DONE_JSON))


def write_done(workdir: str, summary: dict) -> str:
    """Writes the finished-run summary to `<workdir>/done.json` atomically; returns the path.

    Call from process 0 only. The trainer passes `initial_eval` (from the run's first life,
    kept in checkpoint meta across restarts) inside `summary`.
    """
    return write_json_atomic(path(workdir, DONE_JSON), summary)


def is_finished(workdir: str) -> bool:
    """Whether the run in `workdir` finished (its `done.json` exists)."""
    return os.path.exists(path(workdir, DONE_JSON))


def read_eval(workdir: str) -> dict | None:
    """`<workdir>/eval.json` (`{"step", "n", "metrics"}`), or None."""
    return read_json(path(workdir, EVAL_JSON))


def read_cell(workdir: str) -> dict | None:
    """`<workdir>/cell.json` of a grid cell, or None."""
    return read_json(path(workdir, CELL_JSON))


def write_cell(workdir: str, record: dict) -> str:
    """Writes a grid cell's record to `<workdir>/cell.json` atomically; returns the path."""
    return write_json_atomic(path(workdir, CELL_JSON), record, indent=1)
