"""Metrics: tensorboardX scalars and text, console lines, a compile counter, provenance."""

from __future__ import annotations

import collections
import json
import logging
import os
import platform
import subprocess
import sys
import threading

import jax
import numpy as np

__all__ = ["MetricWriter", "CompileCounter", "write_provenance"]

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
    """Writes scalars and text to tensorboardX event files in `logdir` (process 0 only)."""

    def __init__(self, logdir: str | None, *, enabled: bool = True):
        self._writer = None
        self.history = collections.defaultdict(list)
        if logdir and enabled and jax.process_index() == 0:
            from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

            os.makedirs(logdir, exist_ok=True)
            self._writer = SummaryWriter(logdir)

    def scalars(self, step: int, values: dict):
        for k, v in values.items():
            v = float(np.asarray(v))
            self.history[k].append((step, v))
            if self._writer is not None:
                self._writer.add_scalar(k, v, step)

    def text(self, step: int, tag: str, text: str):
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
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
    with open(os.path.join(workdir, "provenance.json"), "w") as f:
        json.dump(info, f, indent=2)
    logging.info("provenance written to %s", workdir)
