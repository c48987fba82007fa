"""Metrics: tensorboardX scalars and text, a JSONL copy of the scalars, a compile counter,
provenance.

`MetricWriter.scalars(step, values)` writes each value to the TensorBoard event files and
appends one line to `<workdir>/metrics.jsonl`:

    {"step": 12, "time": 1733390000.5, "scalars": {"train/reward": 0.5, "eval/pass_at_4": 0.9}}

(process 0 only, flushed after every line), after one header line per writer naming the event
file it writes beside (`{"time": ..., "events_files": ["events.out.tfevents..."]}`), which `read_scalars_jsonl` and
`experiments/collate.py` read without parsing TFRecord files. A resumed run appends to the
same file; for a step written twice, the line written last wins. Tag names: docs/metrics.md.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time

import jax
import numpy as np

from jaxrl_llm import workdir as workdir_lib

__all__ = [
    "MetricWriter",
    "CompileCounter",
    "write_provenance",
    "read_scalars_jsonl",
    "jsonl_events_files",
]

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts every XLA backend compile in the process (all functions, not one cache).

    `jax.monitoring` listeners cannot be unregistered one by one, so one global
    listener feeds every counter created; a counter reports compiles since it
    was created or last `reset()`.
    """

    _lock = threading.Lock()
    _total = 0
    _installed = False

    def __init__(self):
        with CompileCounter._lock:
            if not CompileCounter._installed:
                jax.monitoring.register_event_duration_secs_listener(CompileCounter._on_event)
                CompileCounter._installed = True
        self._start = CompileCounter._total

    @staticmethod
    def _on_event(event, duration_secs, **kwargs):  # pylint: disable=unused-argument
        if event == _COMPILE_EVENT:
            with CompileCounter._lock:
                CompileCounter._total += 1

    @property
    def count(self) -> int:
        return CompileCounter._total - self._start

    def reset(self):
        self._start = CompileCounter._total


class MetricWriter:
    """Writes scalars and text to tensorboardX event files in `logdir` and the scalars also to
    `<logdir>/metrics.jsonl` (process 0 only; `jsonl=False` leaves the JSONL file out).

    `history` keeps every scalar in memory on every process: `{tag: [(step, value), ...]}`.
    """

    def __init__(self, logdir: str | None, *, enabled: bool = True, jsonl: bool = True):
        self._writer = None
        self._jsonl = None
        self.history = collections.defaultdict(list)
        if logdir and enabled and jax.process_index() == 0:
            from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

            os.makedirs(logdir, exist_ok=True)
            before = set(glob.glob(os.path.join(logdir, workdir_lib.EVENTS_GLOB)))
            self._writer = SummaryWriter(logdir)
            if jsonl:
                self._jsonl = _open_jsonl(workdir_lib.path(logdir, workdir_lib.METRICS_JSONL))
                # A header line names the event file this writer fills beside the JSONL file, so
                # a reader knows which event files hold scalars the JSONL file does not.
                new = set(glob.glob(os.path.join(logdir, workdir_lib.EVENTS_GLOB))) - before
                header = {"time": time.time(), "events_files": sorted(map(os.path.basename, new))}
                self._jsonl.write(json.dumps(header) + "\n")
                self._jsonl.flush()

    def scalars(self, step: int, values: dict):
        values = {k: float(np.asarray(v)) for k, v in values.items()}
        for k, v in values.items():
            self.history[k].append((step, v))
            if self._writer is not None:
                self._writer.add_scalar(k, v, step)
        if self._jsonl is not None and values:
            line = {"step": int(step), "time": time.time(), "scalars": values}
            self._jsonl.write(json.dumps(line) + "\n")
            self._jsonl.flush()

    def __call__(self, step: int, values: dict):
        """`writer(step, values)` is `writer.scalars(step, values)` (a `log_fn(step, dict)`)."""
        self.scalars(step, values)

    def text(self, step: int, tag: str, text: str):
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self):
        if self._writer is not None:
            self._writer.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def jsonl_events_files(workdir: str) -> set[str] | None:
    """Names of the event files whose scalars `<workdir>/metrics.jsonl` also holds (from its
    header lines); None when there is no metrics.jsonl."""
    path = workdir_lib.path(workdir, workdir_lib.METRICS_JSONL)
    if not os.path.exists(path):
        return None
    names: set[str] = set()
    with open(path) as f:
        for line in f:
            if '"events_files"' in line:
                try:
                    names.update(json.loads(line)["events_files"])
                except (ValueError, KeyError, TypeError):
                    continue
    return names


def _open_jsonl(path: str):
    """Opens for appending; a torn last line (a run killed mid-write) is ended first, so the
    next record starts on a line of its own."""
    torn = False
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    f = open(path, "a")  # noqa: SIM115 - closed by MetricWriter.close
    if torn:
        f.write("\n")
    return f


def read_scalars_jsonl(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The scalars of `<workdir>/metrics.jsonl`: {tag: (steps int64 [S], values float64 [S])}.

    Steps are sorted and unique; a step written more than once (a resumed run) keeps the
    value written last. Header lines and a torn or unparsable line (a run killed mid-write)
    are skipped.
    Returns None when the file does not exist (a workdir from before the JSONL file).
    """
    path = workdir_lib.path(workdir, workdir_lib.METRICS_JSONL)
    if not os.path.exists(path):
        return None
    series: dict[str, dict[int, float]] = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
                step, scalars = int(record["step"]), record["scalars"]
            except (ValueError, KeyError, TypeError):
                continue
            for tag, value in scalars.items():
                series.setdefault(tag, {})[step] = float(value)
    out = {}
    for tag, points in series.items():
        steps = np.array(sorted(points), np.int64)
        out[tag] = (steps, np.array([points[s] for s in steps], np.float64))
    return out


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = out.stdout.strip() or "unknown"
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_provenance(workdir: str, config) -> None:
    """Keeps the resolved config, package versions and the git commit beside the run."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_json_atomic(
        workdir_lib.path(workdir, workdir_lib.CONFIG_JSON),
        json.loads(config.to_json_best_effort(sort_keys=True)),
        sort_keys=True,
    )
    versions = {}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax.checkpoint",
        "transformers",
        "numpy",
        "ml_collections",
        "tensorboardX",
        "datasets",
    ):
        try:
            mod = __import__(name, fromlist=["_"])
            versions[name] = getattr(mod, "__version__", "unknown")
        except ImportError:
            versions[name] = "missing"
    info = dict(
        git_commit=_git_commit(),
        python=sys.version,
        platform=platform.platform(),
        argv=sys.argv,
        devices=[str(d) for d in jax.devices()],
        process_count=jax.process_count(),
        packages=versions,
    )
    workdir_lib.write_json_atomic(workdir_lib.path(workdir, workdir_lib.PROVENANCE_JSON), info)
    logging.info("provenance written to %s", workdir)
