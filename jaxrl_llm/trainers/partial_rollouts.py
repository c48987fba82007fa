"""Partial rollouts in the trainer (`rollout.partial_budget = K`): long completions span steps.

Each collect stage runs rounds of the sampler (`rollout.partial.continue_rows`) on exactly
`prompts_per_step` groups: the groups paused earlier (oldest first), then fresh prompts from
the source to fill up. In a round every unfinished row draws at most K more tokens with the
current parameters. A group whose G rows are all finished (a stop id, or `max_new_tokens`
tokens) becomes ready; the others are paused, their tokens and sampler log-probs kept. Rounds
go on until `prompts_per_step` groups are ready; the oldest ready groups form the step's
batch, the rest wait for the next step. A group enters a batch only when all its samples are
complete, so group baselines compare whole completions.

A resumed row's early tokens were drawn by older parameters: `sampler_logp` holds each
token's log-prob under the parameters that drew it (the behaviour policy), which the loss
uses as `old_logp` (the off-policy PPO correction) or, with `algo.recompute_old_logp`, weighs
against the current policy through `algo.rollout_correction`, as for asynchronous rollouts.
Per step the trainer logs `rollout/partial_rounds`, `rollout/partial_paused` (groups paused
after the stage), `rollout/partial_waiting` (ready groups left for later steps),
`rollout/partial_resumed_frac` (rows of the batch drawn by several parameter versions) and
`rollout/partial_staleness_mean` / `_max` (step minus the version of each batch token).

Keys: the rows started in round `i` of step `t` take `fold_in(fold_in(collect key of t, 0),
i)` as `start_rows`' key, so a row's tokens follow its own key scheme however it is cut
into segments (`rollout/partial.py`). Resume: when checkpoint `s` is saved, the pool (paused
and waiting groups) is written first to `workdir.partial_rollouts_file(workdir, s)`; a
resumed run continues exactly those groups and reproduces the uninterrupted run. A missing
or unreadable file is one warning line and `counters["partial_pool_lost"]`; the run goes on
with an empty pool (those prompts are dropped).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np

from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.rollout.partial import PartialRows, continue_rows, start_rows

__all__ = ["Group", "PartialPool"]

_FORMAT = 1


@dataclasses.dataclass
class Group:
    """One prompt's G completions in progress."""

    example: Any
    rows: PartialRows


class PartialPool:
    """The paused and the waiting (ready, not yet trained on) groups of a run."""

    def __init__(self, group: int, budget: int, kv_buckets: int = 0):
        self.group, self.budget = int(group), int(budget)
        self.kv_buckets = int(kv_buckets)  # `rollout.kv_buckets` of every round's decode
        self.paused: list[Group] = []
        self.ready: list[Group] = []

    def collect(self, trainer, params, source, step: int, key) -> tuple[list, PartialRows, dict]:
        """Runs rounds until `prompts_per_step` groups are ready (module docstring).

        Returns `(examples, rows, metrics)`: the batch's B examples, its finished rows (B·G,
        row b·G + j sample j of example b; `rows.to_rollout()` is the batch) and the stage's
        metrics.
        """
        c = trainer.config
        b, g = c.train.prompts_per_step, self.group
        sampling, t_max = trainer.sampling, int(trainer.sampling.max_new_tokens)
        max_rounds = -(-t_max // self.budget) + 1  # the first round's B groups finish by then
        rounds = 0
        while len(self.ready) < b:
            if rounds >= max_rounds:
                raise RuntimeError(f"partial rollouts: no batch after {rounds} rounds")
            groups, self.paused = self.paused[:b], self.paused[b:]
            fresh = source.next(b - len(groups)) if len(groups) < b else []
            if fresh:
                started = start_rows(
                    trainer.prompt_batch(fresh), jax.random.fold_in(key, rounds), g, t_max
                )
                groups += [
                    Group(ex, started.select(np.arange(i * g, (i + 1) * g)))
                    for i, ex in enumerate(fresh)
                ]
            rows = continue_rows(
                trainer.sampler_params(params),
                trainer.model_config,
                PartialRows.concat([x.rows for x in groups]),
                sampling,
                self.budget,
                version=step,
                kv_buckets=self.kv_buckets,
            )
            for i, x in enumerate(groups):
                x.rows = rows.select(np.arange(i * g, (i + 1) * g))
                (self.ready if x.rows.finished.all() else self.paused).append(x)
            rounds += 1
        batch, self.ready = self.ready[:b], self.ready[b:]
        rows = PartialRows.concat([x.rows for x in batch])
        rows.group_id = np.repeat(np.arange(b, dtype=np.int32), g)
        return [x.example for x in batch], rows, self._metrics(rows, step, rounds)

    def _metrics(self, rows: PartialRows, step: int, rounds: int) -> dict:
        valid = rows.versions >= 0
        stale = (step - rows.versions)[valid]
        first = np.where(valid, rows.versions, np.iinfo(np.int32).max).min(axis=1)
        last = rows.versions.max(axis=1)
        return {
            "rollout/partial_rounds": float(rounds),
            "rollout/partial_paused": float(len(self.paused)),
            "rollout/partial_waiting": float(len(self.ready)),
            "rollout/partial_resumed_frac": float(np.mean((last > first) & valid.any(axis=1))),
            "rollout/partial_staleness_mean": float(stale.mean()) if stale.size else 0.0,
            "rollout/partial_staleness_max": float(stale.max()) if stale.size else 0.0,
        }

    # ------------------------------------------------------------------------- persistence
    def save(self, workdir: str, step: int) -> str | None:
        """Writes the pool beside checkpoint `step` (process 0 only); returns the file."""
        if jax.process_index() != 0:
            return None
        file = workdir_lib.partial_rollouts_file(workdir, step)
        blob = {"format": _FORMAT, "step": int(step), "paused": self.paused, "ready": self.ready}
        workdir_lib.write_pickle_atomic(file, blob)
        return file

    def load(self, workdir: str, step: int) -> bool:
        """Restores the pool saved with checkpoint `step`; False (one warning line, empty
        pool) when the file is missing or does not read."""
        file = workdir_lib.partial_rollouts_file(workdir, step)
        try:
            blob = workdir_lib.read_pickle(file)
            if blob.get("format") != _FORMAT or blob.get("step") != int(step):
                raise ValueError(f"format {blob.get('format')}, step {blob.get('step')}")
            paused, ready = list(blob["paused"]), list(blob["ready"])
        except FileNotFoundError:
            logging.warning("partial rollouts: no pool saved with step %d (%s)", step, file)
            return False
        except Exception as e:  # a truncated or foreign file: go on with an empty pool
            logging.warning(
                "partial rollouts: %s does not read (%s: %s)", file, type(e).__name__, e
            )
            return False
        self.paused, self.ready = paused, ready
        return True

    @staticmethod
    def prune(workdir: str, keep_steps) -> None:
        """Removes the pool files of checkpoint steps no longer kept."""
        folder = os.path.dirname(workdir_lib.partial_rollouts_file(workdir, 0))
        if jax.process_index() != 0 or not os.path.isdir(folder):
            return
        keep = {f"{int(s)}.pkl" for s in keep_steps}
        for name in os.listdir(folder):
            if name.endswith(".pkl") and name not in keep:
                os.remove(os.path.join(folder, name))
