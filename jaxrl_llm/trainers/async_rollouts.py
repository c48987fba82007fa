"""Asynchronous rollouts (`rollout.async_steps = k`): the queue of batches sampled ahead.

With `k > 0` the batch that step `t` trains on was sampled with the parameters of step
`max(t - k, 0)`: at step `t` the trainer launches the sampler for step `t + k` with the
current parameters, dispatches the update of step `t` (on a batch collected `k` steps ago),
and scores the new completions on the host while the device runs the update. So a run with
`k = 1` equals, bit for bit, a synchronous run whose step `t` samples with the parameters of
step `t - 1` (step 0 with the initial ones): same prompts, same keys (`fold_in(rng, t)` for
step `t`'s batch, whenever it is sampled), same programs.

The loss sees the staleness through the log-probs: `old_logp` is the sampler's (the
behaviour policy π_rollout, which PPO then anchors on), or, with `algo.recompute_old_logp`,
the current policy's, with `algo.rollout_correction` (TIS / MIS, token / sequence /
geometric) weighing π_old against π_rollout and logging their gap and ratio quantiles.
`rollout/staleness` logs `t - params_step` per step.

This module owns the queue entry (`Collected`) and its persistence: when the trainer saves
checkpoint `s`, the batches queued for steps `s .. s + k - 1` (already sampled with older
parameters) are written first to `workdir.pending_rollouts_file(workdir, s)` (pickle,
atomic rename), so a resumed run trains on exactly the batches the uninterrupted run would
have. A missing or unreadable file is reported in one line and the queue is refilled with the
restored parameters (counted in `counters["async_pending_lost"]`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np

from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.parallel import multihost

__all__ = ["Collected", "save_pending", "load_pending", "prune_pending"]

_FORMAT = 1


@dataclasses.dataclass
class Collected:
    """One scored batch waiting for its step.

    step: the RL step that trains on it; params_step: the step whose parameters sampled it.
    The other fields are what the collect stage returns (`Trainer.collect`).
    """

    step: int
    params_step: int
    examples: list
    ro: Any
    completions: list
    rewards: np.ndarray
    correct: np.ndarray
    info: dict
    greedy: np.ndarray | None
    data_metrics: dict

    @property
    def staleness(self) -> int:
        return self.step - self.params_step


def save_pending(workdir: str, step: int, queue) -> str | None:
    """Writes the queued batches beside checkpoint `step` (process 0 only). Returns the file."""
    entries = []
    for c in queue:
        host_ro = jax.tree.map(np.asarray, multihost.gather_to_host(c.ro))
        entries.append(dataclasses.replace(c, ro=host_ro))
    if jax.process_index() != 0:
        return None
    file = workdir_lib.pending_rollouts_file(workdir, step)
    workdir_lib.write_pickle_atomic(file, {"format": _FORMAT, "step": int(step), "queue": entries})
    return file


def load_pending(workdir: str, step: int, row_sharding) -> list[Collected] | None:
    """The batches saved with checkpoint `step`, their rollouts placed with `row_sharding`;
    None (with a one-line warning) when the file is missing or does not read."""
    file = workdir_lib.pending_rollouts_file(workdir, step)
    try:
        blob = workdir_lib.read_pickle(file)
        if blob.get("format") != _FORMAT or blob.get("step") != int(step):
            raise ValueError(f"format {blob.get('format')}, step {blob.get('step')}")
        queue = list(blob["queue"])
    except FileNotFoundError:
        logging.warning("async rollouts: no queued batches saved with step %d (%s)", step, file)
        return None
    except Exception as e:  # a truncated or foreign file: resample instead of failing the resume
        logging.warning("async rollouts: %s does not read (%s: %s)", file, type(e).__name__, e)
        return None
    return [dataclasses.replace(c, ro=jax.device_put(c.ro, row_sharding)) for c in queue]


def prune_pending(workdir: str, keep_steps) -> None:
    """Removes the queue files of checkpoint steps no longer kept."""
    folder = os.path.dirname(workdir_lib.pending_rollouts_file(workdir, 0))
    if jax.process_index() != 0 or not os.path.isdir(folder):
        return
    keep = {f"{int(s)}.pkl" for s in keep_steps}
    for name in os.listdir(folder):
        if name.endswith(".pkl") and name not in keep:
            os.remove(os.path.join(folder, name))
