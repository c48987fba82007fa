"""Where a run places rows and small state on a mesh: the one place batch sharding is decided.

    axes = batch_axes(mesh, rules)            # mesh axes of the logical `batch` axis
    rows = row_sharding(mesh, rules)          # [N, ...] split over those axes
    n = batch_shards(mesh, rules)             # how many ways the rows split
    rep = replicated(mesh)                    # scalars, RNG keys, metrics
    opt_shard = opt_state_shardings(optimizer, params, param_shards, mesh)
    check_batch_divides(16, mesh, rules, what="train.microbatch_size")

Everything here follows the logical-axis rules (`axes.DEFAULT_RULES` unless
given): the trainer, the sampler and the benchmarks call these functions
instead of naming mesh axes themselves, so custom rules (say `batch → data`
only) move every row-split array at once. Parameter shardings need the model
and live in `jaxrl_llm.models.sharding` (`param_shardings`,
`init_sharded_params`).

Divisibility rule (one rule everywhere, documented in docs/scaling.md): a
parameter dimension that its mesh axis does not divide is *replicated along
that axis*, with a warning naming the array, the dimension and both sizes
(`axes.logical_to_spec`); e.g. Qwen2.5-0.5B's 14 query heads on `tensor = 4`
keep their `fsdp` split and are replicated over `tensor`. A *batch* that does
not divide its mesh axes is refused at start-up (`check_batch_divides`), since
replicating a batch would silently repeat work; only `row_sharding(..., rows=)`
(the sampler, whose callers may pass any prompt count) falls back to the same
drop-and-warn rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_llm.parallel import axes as A

__all__ = [
    "batch_axes",
    "batch_shards",
    "row_sharding",
    "batch_sharding",
    "replicated",
    "opt_state_shardings",
    "check_batch_divides",
    "describe_shardings",
]


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on `mesh` (scalars, RNG keys, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(optimizer: optax.GradientTransformation, params, param_shards, mesh: Mesh):
    """Shardings of `optimizer.init(params)`: per-parameter leaves (Adam's mu, nu, ...)
    follow their parameter; the rest (step counts) is replicated.

    `params` may be arrays or `ShapeDtypeStruct`s.
    """
    abstract = jax.eval_shape(optimizer.init, params)
    rep = replicated(mesh)
    return optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract,
        param_shards,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


@dataclasses.dataclass(frozen=True)
class _AxisSizes:
    """Stands in for a `Mesh` where only axis sizes are known (`logical_to_spec` reads `.shape`)."""

    shape: Mapping[str, int]


def _as_mesh(mesh):
    return _AxisSizes(dict(mesh)) if isinstance(mesh, Mapping) else mesh


def batch_axes(mesh: Mesh | Mapping[str, int], rules=None) -> tuple[str, ...]:
    """The mesh axes the logical `batch` axis maps to under `rules` (e.g. `("data", "fsdp")`).

    `mesh` is a `Mesh`, or a mapping of mesh axis sizes where no devices are needed
    (config checks: `dict(zip(MESH_AXES, resolve_mesh_shape(sizes, n)))`). Axes the mesh
    lacks are left out; `rules=None` means `axes.DEFAULT_RULES`.
    """
    spec = A.logical_to_spec((A.BATCH,), rules, _as_mesh(mesh))[0]
    if spec is None:
        return ()
    return (spec,) if isinstance(spec, str) else tuple(spec)


def batch_shards(mesh: Mesh | Mapping[str, int], rules=None) -> int:
    """How many ways the rows of a batch are split (product of the batch mesh axes).

    `mesh`: a `Mesh` or a mapping of axis sizes, as for `batch_axes`.
    """
    mesh = _as_mesh(mesh)
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def row_sharding(mesh: Mesh, rules=None, *, rows: int | None = None) -> NamedSharding:
    """Rows `[N, ...]` split over `batch_axes(mesh, rules)`; the other dimensions replicated.

    With `rows`, a batch mesh axis that does not divide the rows left is dropped
    (those rows are replicated along it) with a warning, as the divisibility rule
    does for parameters; without it the caller guarantees divisibility
    (`check_batch_divides`).
    """
    shape = None if rows is None else (int(rows),)
    return NamedSharding(mesh, A.logical_to_spec((A.BATCH,), rules, mesh, shape, what="rows"))


batch_sharding = row_sharding  # the earlier name of `row_sharding`


def check_batch_divides(
    rows: int, mesh: Mesh | Mapping[str, int], rules=None, *, what: str = "batch"
) -> None:
    """Refuses (ValueError naming the numbers) a row count the batch shards do not divide.

    `mesh`: a `Mesh` or a mapping of axis sizes, as for `batch_axes`.
    """
    mesh = _as_mesh(mesh)
    shards = batch_shards(mesh, rules)
    if rows % shards:
        sizes = " * ".join(f"{a}={mesh.shape[a]}" for a in batch_axes(mesh, rules))
        raise ValueError(
            f"{what} = {rows} rows do not divide over the {shards} batch shards of the mesh "
            f"({sizes}); use a multiple of {shards}"
        )


def describe_shardings(tree) -> list[tuple[str, tuple, PartitionSpec, tuple]]:
    """(path, global shape, spec, per-device shard shape) for each array: for logs and tests."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        sh = x.sharding
        out.append(
            (jax.tree_util.keystr(path), tuple(x.shape), sh.spec, tuple(sh.shard_shape(x.shape)))
        )
    return out
