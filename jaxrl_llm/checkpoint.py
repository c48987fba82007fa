"""Orbax checkpoints of the train state plus host-side metadata (data position, counters).

A checkpoint is one orbax step folder holding two items:
  state: the device pytree (policy, critic, optimiser states, step, RNG, KL-controller state),
         restored into the shardings of an abstract target, so a checkpoint saved on one mesh
         restores onto another (resharding);
  meta:  JSON: data-source position, host counters, the step.
Saves are atomic (orbax writes a temporary folder and renames it on success); a save cut short
leaves only the temporary folder, which the manager ignores on restore.

A committed step can still be unreadable (a disk that filled up, a file truncated by a copy or
a sync tool). `restore()` without a step, and `restore_latest_good()`, try the steps newest
first: a step that does not restore is logged in one line (step and reason), moved aside to
`<workdir>/checkpoints.skipped/<step>` (so the resumed run can save that step again, and the
files stay for inspection), and the next older one is tried; when none restores, one
`CheckpointRestoreError` lists every step and why.

Fault injection for tests: with the environment variable `JAXRL_LLM_KILL_IN_SAVE=<step>` the
process kills itself with SIGKILL inside the save of that step, after part of the checkpoint
is on disk and before it is committed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal

import jax
import orbax.checkpoint as ocp

from jaxrl_llm import workdir as workdir_lib

__all__ = [
    "Checkpointer",
    "CheckpointRestoreError",
    "KILL_IN_SAVE_ENV",
    "SKIPPED_DIR",
    "one_line_error",
]

KILL_IN_SAVE_ENV = "JAXRL_LLM_KILL_IN_SAVE"
SKIPPED_DIR = workdir_lib.CHECKPOINT_SKIPPED_DIR


class CheckpointRestoreError(RuntimeError):
    """No checkpoint step restores (or the one asked for does not); the message says why."""


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
        self.directory = workdir_lib.checkpoint_dir(workdir)
        self.skipped_directory = os.path.join(os.path.dirname(self.directory), SKIPPED_DIR)
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
        """Restores (state, meta) at `step` into `abstract_state`'s shardings.

        Without `step`: the newest step that restores (see `restore_latest_good`; unreadable
        newer steps are logged and moved aside). With `step`: that step, or a
        `CheckpointRestoreError` saying why it does not restore.
        """
        if step is None:
            state, meta, _ = self.restore_latest_good(abstract_state)
            return state, meta
        try:
            return self._restore_step(abstract_state, step)
        except Exception as e:  # noqa: BLE001 - any reader failure becomes one clear error
            raise CheckpointRestoreError(
                f"checkpoint step {step} in {self.directory} does not restore: {one_line_error(e)}"
            ) from e

    def restore_latest_good(self, abstract_state, *, move_aside: bool = True):
        """(state, meta, skipped): the newest step that restores, trying steps newest first.

        `skipped` is a list of `(step, reason)` for the newer steps that did not restore, each
        also logged as one warning line. With `move_aside` (default) they are moved to
        `<workdir>/checkpoints.skipped/<step>` (process 0; every process waits for it), so
        the resumed run can save those steps again. Raises `FileNotFoundError` when there is
        no complete step, `CheckpointRestoreError` (listing each step and why) when none
        restores.
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        skipped = []
        for step in steps:
            try:
                state, meta = self._restore_step(abstract_state, step)
            except Exception as e:  # noqa: BLE001 - any reader failure: try the next older step
                skipped.append((step, one_line_error(e)))
                logging.warning(
                    "checkpoint step %d in %s does not restore, skipped: %s",
                    step,
                    self.directory,
                    skipped[-1][1],
                )
                continue
            if skipped and move_aside:
                self._move_aside([s for s, _ in skipped])
            if skipped:
                logging.warning("restored checkpoint step %d instead", step)
            return state, meta, skipped
        lines = "\n".join(f"  step {s}: {r}" for s, r in skipped)
        raise CheckpointRestoreError(
            f"no checkpoint in {self.directory} restores ({len(skipped)} tried, newest first):\n"
            f"{lines}\nMove the folder aside to start the run afresh."
        )

    def _restore_step(self, abstract_state, step: int):
        abstract = jax.tree.map(_as_abstract, abstract_state)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=_MetaRestore()),
        )
        if not isinstance(out.meta, dict):
            raise ValueError(f"meta is {type(out.meta).__name__}, not a JSON object")
        return out.state, out.meta

    def _move_aside(self, steps) -> None:
        if jax.process_index() == 0:
            os.makedirs(self.skipped_directory, exist_ok=True)
            for s in steps:
                src = os.path.join(self.directory, str(s))
                dst = os.path.join(self.skipped_directory, str(s))
                if os.path.exists(dst):
                    shutil.rmtree(dst)
                if os.path.exists(src):
                    os.replace(src, dst)
                    logging.warning("moved the unreadable checkpoint step %d to %s", s, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

            multihost_utils.sync_global_devices("jaxrl_llm_checkpoint_move_aside")
        self._manager.reload()

    def close(self):
        self._manager.close()


def one_line_error(e: BaseException) -> str:
    """One line: the innermost cause's type and the first line of its message (tensorstore's
    outer errors are a long dump of the store's spec; the cause names the file and the fault)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).split(" See full TensorStore details")[0].strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:300] + " ..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _as_abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
