"""Multi-host runs with `jax.distributed`: start-up, per-process data, global arrays, logging.

One program runs in every process (one per host, or several on one host); the
mesh spans the devices of all of them and XLA does the communication. Nothing
here launches or supervises processes.

    initialize(coordinator_address, num_processes, process_id)   # before any other jax call
    lo, hi = process_rows(row_sharding, global_rows)             # my rows of the global batch
    local = load_my_prompts(lo, hi)                              # each process reads only these
    batch = make_global(local, row_sharding, global_rows)        # jax.make_array_from_process_local_data
    mine = host_local_rows(rollout.tokens)                       # my rows back on the host
    full = gather_to_host(rollout)                               # every process sees all rows
    rewards = gather_rows(my_rewards)                            # host numpy rows, concatenated
    bucket = global_max(longest_local_prompt)                    # one static shape everywhere
    if is_main_process(): writer.scalars(...)                    # summaries from process 0

Which rows a process owns is read from the sharding itself (the row blocks of
its addressable devices), so it stays right for any mesh layout; a layout
whose rows are not one contiguous block per process is refused with the
offending row ranges.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "distributed_kwargs",
    "initialize",
    "is_main_process",
    "process_rows",
    "local_rows",
    "make_global",
    "host_local_rows",
    "gather_to_host",
    "gather_rows",
    "global_max",
    "sum_over_processes",
    "log_main",
]

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAXRL_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXRL_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXRL_PROCESS_ID"


def distributed_kwargs(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `jax.distributed.initialize`, from flags, else the environment.

    Flags win over `JAXRL_COORDINATOR_ADDRESS` / `JAXRL_NUM_PROCESSES` /
    `JAXRL_PROCESS_ID`. An empty dict means "let jax discover the cluster"
    (TPU pods, SLURM, Open MPI, Kubernetes JobSet). A coordinator without a
    process count and id (or the reverse) is refused.
    """
    env = os.environ if env is None else env
    addr = coordinator_address or env.get(ENV_COORDINATOR) or None
    num = num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else env.get(ENV_PROCESS_ID)
    given = {"coordinator_address": addr, "num_processes": num, "process_id": pid}
    if all(v is None for v in given.values()):
        return {}
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"multi-host start-up needs coordinator_address, num_processes and "
            f"process_id together (or none of them, for auto-detection); missing "
            f"{missing} (flags --{' --'.join(missing)} or ${ENV_COORDINATOR}, "
            f"${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})"
        )
    num, pid = int(num), int(pid)
    if num < 1 or not 0 <= pid < num:
        raise ValueError(f"process_id = {pid} must be in [0, num_processes = {num})")
    return {"coordinator_address": str(addr), "num_processes": num, "process_id": pid}


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str = "gloo",
    initialization_timeout: int = 300,
) -> None:
    """`jax.distributed.initialize` from flags / environment; call before any other jax use.

    On CPU (tests, laptops) cross-process collectives need an implementation:
    `jax_cpu_collectives_implementation` is set to `cpu_collectives` ('gloo' or
    'mpi'). GPUs use NCCL and TPUs their interconnect whatever this says.
    """
    kwargs = distributed_kwargs(coordinator_address, num_processes, process_id)
    if cpu_collectives:
        if cpu_collectives not in ("gloo", "mpi"):
            raise ValueError(f"cpu_collectives = {cpu_collectives!r} is not one of ['gloo', 'mpi']")
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(initialization_timeout=initialization_timeout, **kwargs)
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_main_process() -> bool:
    """True on process 0, the one that writes logs, summaries and host-side files."""
    return jax.process_index() == 0


def log_main(msg: str, *args, level: int = logging.INFO, logger: logging.Logger | None = None):
    """Logs on process 0 only (every process runs the same code)."""
    if is_main_process():
        (logger or log).log(level, msg, *args)


def _row_blocks(sharding: Sharding, global_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Sorted distinct [start, stop) row blocks of this process's devices."""
    blocks = set()
    for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(global_shape[0])
        blocks.add((start, stop))
    return sorted(blocks)


def process_rows(
    sharding: Sharding, global_rows: int, *, trailing: tuple[int, ...] = ()
) -> tuple[int, int]:
    """`(start, stop)`: the rows of a `[global_rows, *trailing]` array this process holds.

    Read from the sharding (the union of the row blocks of this process's
    devices); refused when they are not one contiguous block.
    """
    shape = (int(global_rows),) + tuple(trailing)
    blocks = _row_blocks(sharding, shape)
    start, stop = blocks[0][0], blocks[0][1]
    for lo, hi in blocks[1:]:
        if lo > stop:
            raise ValueError(
                f"process {jax.process_index()} holds rows {blocks} of a batch of {global_rows}: "
                "not one contiguous block; order the mesh devices by process (the default) "
                "or put a process-local axis last"
            )
        stop = max(stop, hi)
    return start, stop


def local_rows(sharding: Sharding, global_rows: int) -> slice:
    """`slice(start, stop)` of `process_rows`: index a host-side list of examples with it."""
    return slice(*process_rows(sharding, global_rows))


def make_global(local_tree, shardings, global_rows: int):
    """Global arrays from each process's rows (`jax.make_array_from_process_local_data`).

    `local_tree`: numpy arrays `[local_rows, ...]` (this process's rows, in
    order); `shardings`: one sharding or a matching pytree. Leaves that are
    None stay None. Checks that each process passes exactly its row count.
    """

    def one(x, sharding):
        if x is None:
            return None
        x = np.asarray(x)
        lo, hi = process_rows(sharding, global_rows, trailing=x.shape[1:])
        if x.shape[0] != hi - lo:
            raise ValueError(
                f"process {jax.process_index()} passed {x.shape[0]} rows; its share "
                f"of the {global_rows}-row batch is rows [{lo}, {hi})"
            )
        return jax.make_array_from_process_local_data(sharding, x, (global_rows,) + x.shape[1:])

    if isinstance(shardings, Sharding):
        return jax.tree.map(lambda x: one(x, shardings), local_tree)
    return jax.tree.map(one, local_tree, shardings, is_leaf=lambda x: x is None)


def host_local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded global array, as numpy (no communication)."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if x.ndim == 0 or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    lo, hi = process_rows(x.sharding, x.shape[0], trailing=x.shape[1:])
    out = np.empty((hi - lo,) + x.shape[1:], x.dtype)
    for shard in x.addressable_shards:
        rows = shard.index[0]
        start, stop, _ = rows.indices(x.shape[0])
        rest = tuple(shard.index[1:])
        out[(slice(start - lo, stop - lo),) + rest] = np.asarray(shard.data)
    return out


def gather_to_host(tree):
    """Every process gets the full global value of each array, as numpy.

    Fully addressable or fully replicated arrays are read directly; others go
    through `multihost_utils.process_allgather` (a collective: call it on
    every process).
    """

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenates each process's host rows in process order (identity on one process).

    Rows must be in the order of `process_rows` (process 0's block first), as
    they are for the default, process-ordered mesh.
    """
    local = np.asarray(local)
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def global_max(value: int) -> int:
    """The largest of each process's `value` (e.g. its longest prompt, to agree on a bucket)."""
    if jax.process_count() == 1:
        return int(value)
    values = multihost_utils.process_allgather(np.asarray([int(value)], np.int64), tiled=True)
    return int(np.max(values))


def sum_over_processes(value: float) -> float:
    """The sum of each process's host number (e.g. reward errors counted on its own rows)."""
    if jax.process_count() == 1:
        return value
    values = multihost_utils.process_allgather(np.asarray([value], np.float64), tiled=True)
    return float(np.sum(values))
