"""Shardings of the things a run places on a mesh: params, optimiser state, batches.

    shard = param_shardings(model_config, mesh, rules)          # rules + divisibility rule
    params = init_sharded_params(model_config, key, mesh, rules)  # born sharded
    opt_shard = opt_state_shardings(optimizer, params, shard, mesh)
    rows = batch_sharding(mesh, rules)                         # [N, ...] split over `batch`
    check_batch_divides(16, mesh, rules, what="train.microbatch_size")

Sharded initialisation follows `eval_shape → shardings → jit(out_shardings)`:
no device ever holds a replicated copy of the model.

Divisibility rule (one rule everywhere, documented in docs/scaling.md): a
parameter dimension that its mesh axis does not divide is *replicated along
that axis*, with a warning naming the array, the dimension and both sizes
(`axes.logical_to_spec`); e.g. Qwen2.5-0.5B's 14 query heads on `tensor = 4`
keep their `fsdp` split and are replicated over `tensor`. A *batch* that does
not divide its mesh axes is refused at start-up (`check_batch_divides`), since
replicating a batch would silently repeat work.
"""

from __future__ import annotations

import math

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_llm.parallel import axes as A

__all__ = [
    "param_shardings",
    "init_sharded_params",
    "opt_state_shardings",
    "batch_axes",
    "batch_shards",
    "batch_sharding",
    "replicated",
    "check_batch_divides",
    "describe_shardings",
]


def param_shardings(model_config, mesh: Mesh, rules=None):
    """`NamedSharding` pytree of `init_params(model_config, ·)` under `rules`.

    Uses the parameter shapes, so the divisibility rule applies: a mesh axis
    that does not divide a dimension is dropped from it (replicated) with a
    logged warning.
    """
    from jaxrl_llm import models  # pylint: disable=g-import-not-at-top  (models imports parallel)

    shapes = jax.eval_shape(lambda: models.init_params(model_config, jax.random.key(0)))
    return A.logical_to_sharding(models.logical_axes(model_config), mesh, rules, shapes=shapes)


def init_sharded_params(model_config, key: jax.Array, mesh: Mesh, rules=None):
    """Random parameters created directly in their shardings (jit with `out_shardings`).

    Same values as `models.init_params(model_config, key)` on one device.
    """
    from jaxrl_llm import models  # pylint: disable=g-import-not-at-top

    init = jax.jit(
        models.init_params,
        static_argnums=0,
        out_shardings=param_shardings(model_config, mesh, rules),
    )
    return init(model_config, key)


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


def batch_axes(mesh: Mesh, rules=None) -> tuple[str, ...]:
    """The mesh axes the logical `batch` axis maps to under `rules` (e.g. `("data", "fsdp")`)."""
    spec = A.logical_to_spec((A.BATCH,), rules, mesh)[0]
    if spec is None:
        return ()
    return (spec,) if isinstance(spec, str) else tuple(spec)


def batch_shards(mesh: Mesh, rules=None) -> int:
    """How many ways the rows of a batch are split (product of the batch mesh axes)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def batch_sharding(mesh: Mesh, rules=None) -> NamedSharding:
    """Rows `[N, ...]` split over the batch mesh axes; the other dimensions replicated."""
    axes = batch_axes(mesh, rules)
    first = None if not axes else (axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, PartitionSpec(first))


def check_batch_divides(rows: int, mesh: Mesh, rules=None, *, what: str = "batch") -> None:
    """Refuses (ValueError naming the numbers) a row count the batch shards do not divide."""
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
