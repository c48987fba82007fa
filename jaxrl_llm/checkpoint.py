"""Orbax checkpoints of the train state plus host-side metadata (data position, counters).

A checkpoint is one orbax step folder holding two items:
  state: the device pytree (policy, critic, optimiser states, step, RNG, KL-controller state),
         restored into the shardings of an abstract target, so a checkpoint saved on one mesh
         restores onto another (resharding);
  meta:  JSON: data-source position, host counters, the step.
Saves are atomic (orbax writes a temporary folder and renames it on success); a save cut short
leaves only the temporary folder, which the manager ignores on restore.

Fault injection for tests: with the environment variable `JAXRL_LLM_KILL_IN_SAVE=<step>` the
process kills itself with SIGKILL inside the save of that step, after part of the checkpoint
is on disk and before it is committed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "KILL_IN_SAVE_ENV"]

KILL_IN_SAVE_ENV = "JAXRL_LLM_KILL_IN_SAVE"


class _MetaHandler(ocp.handlers.JsonCheckpointHandler):
    """JSON handler with a deterministic fault-injection point inside the save."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_at_step = int(os.environ.get(KILL_IN_SAVE_ENV, "-1"))

    async def _save_fn(self, x, directory):
        await super()._save_fn(x, directory)
        if x.get("step") == self.kill_at_step:
            logging.warning(
                "fault injection: killing the process inside the save of step %d", self.kill_at_step
            )
            os.kill(os.getpid(), signal.SIGKILL)


@ocp.args.register_with_handler(_MetaHandler, for_save=True)
@dataclasses.dataclass
class _MetaSave(ocp.args.JsonSave):
    pass


@ocp.args.register_with_handler(_MetaHandler, for_restore=True)
@dataclasses.dataclass
class _MetaRestore(ocp.args.JsonRestore):
    pass


class Checkpointer:
    """Keep-N, atomic, synchronous orbax checkpoints in `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers=dict(state=ocp.StandardCheckpointHandler(), meta=_MetaHandler()),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def discard_after(self, step: int) -> None:
        """Deletes the complete checkpoints of steps after `step` (runs resumed together from the
        newest step they all have)."""
        for s in self.all_steps():
            if s > step:
                self._manager.delete(s)

    def save(self, step: int, state, meta: dict) -> None:
        meta = dict(meta, step=int(step))
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=_MetaSave(meta))
        )
        self._manager.wait_until_finished()

    def restore(self, abstract_state, step: int | None = None):
        """Restores (state, meta) at `step` (default: latest) into `abstract_state`'s shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        abstract = jax.tree.map(_as_abstract, abstract_state)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=_MetaRestore()),
        )
        return out.state, out.meta

    def close(self):
        self._manager.close()


def _as_abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
