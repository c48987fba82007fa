"""Axis names (logical and mesh) and the logical → mesh rules.

Every parameter and activation carries *logical* axis names; a rule table maps
them to *mesh* axes (`data`, `fsdp`, `tensor`), first matching rule first
(flax `logical_to_mesh_axes` semantics: a mesh axis is used at most once per
array, so a later rule for the same mesh axis is skipped).

Default rules (FSDP + tensor parallelism; with `tensor=1` this is pure FSDP):

| logical   | mesh            |
|-----------|-----------------|
| batch     | (data, fsdp)    |
| embed     | fsdp            |
| mlp, heads, kv_heads, vocab | tensor |
| length, kv_length, head_dim, layers | replicated |

Divisibility rule: `logical_to_sharding(..., shapes=...)` drops a mesh axis
from a dimension that its size does not divide (that dimension is then
replicated along that mesh axis) and logs a warning naming the array.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH",
    "LENGTH",
    "KV_LENGTH",
    "EMBED",
    "MLP",
    "HEADS",
    "KV_HEADS",
    "HEAD_DIM",
    "VOCAB",
    "LAYERS",
    "LOGICAL_AXES",
    "DATA",
    "FSDP",
    "TENSOR",
    "MESH_AXES",
    "DEFAULT_RULES",
    "logical_to_spec",
    "logical_to_sharding",
]

log = logging.getLogger(__name__)

# Logical axis names.
BATCH = "batch"
LENGTH = "length"
KV_LENGTH = "kv_length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
VOCAB = "vocab"
LAYERS = "layers"
LOGICAL_AXES = (BATCH, LENGTH, KV_LENGTH, EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS)

# Mesh axis names.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    (BATCH, (DATA, FSDP)),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (KV_HEADS, TENSOR),
    (VOCAB, TENSOR),
    (LENGTH, None),
    (KV_LENGTH, None),
    (HEAD_DIM, None),
    (LAYERS, None),
)


def _as_tuple(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def logical_to_spec(
    names: Sequence[str | None],
    rules=None,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
    what: str = "array",
) -> PartitionSpec:
    """PartitionSpec of one array from its logical axis names.

    Rules are `(logical, mesh_axes)` pairs, first match wins and each mesh
    axis is used once per array. Mesh axes absent from `mesh` (when given) are
    dropped. With `shape`, a mesh axis whose size does not divide the
    dimension is dropped (replicated) with a warning.
    """
    rules = DEFAULT_RULES if rules is None else tuple(tuple(r) for r in rules)
    used: set[str] = set()
    out = []
    for dim, name in enumerate(names):
        assigned: tuple[str, ...] = ()
        if name is not None:
            for logical, mesh_axes in rules:
                if logical != name:
                    continue
                cand = _as_tuple(mesh_axes)
                if mesh is not None:
                    cand = tuple(a for a in cand if a in mesh.shape)
                if any(a in used for a in cand):
                    continue
                assigned = cand
                break
        if shape is not None and mesh is not None and assigned:
            kept, size = [], shape[dim]
            for a in assigned:
                if size % mesh.shape[a] == 0:
                    kept.append(a)
                    size //= mesh.shape[a]
                elif mesh.shape[a] > 1:
                    log.warning(
                        "%s: dim %d (%s, size %d) not divisible by mesh axis %r (size %d); "
                        "replicated along it",
                        what,
                        dim,
                        name,
                        shape[dim],
                        a,
                        mesh.shape[a],
                    )
            assigned = tuple(kept)
        used.update(assigned)
        out.append(None if not assigned else (assigned[0] if len(assigned) == 1 else assigned))
    return PartitionSpec(*out)


def _is_names(x) -> bool:
    return isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x)


def logical_to_sharding(specs, mesh: Mesh, rules=None, shapes=None):
    """Pytree of `NamedSharding` from a pytree of logical-name tuples (e.g. `logical_axes(config)`).

    `shapes` (optional): a matching pytree of arrays / `ShapeDtypeStruct`s /
    shape tuples; enables the divisibility rule (non-dividing mesh axes are
    replicated, with a warning).
    """
    if shapes is None:
        return jax.tree.map(
            lambda names: NamedSharding(mesh, logical_to_spec(names, rules, mesh)),
            specs,
            is_leaf=_is_names,
        )

    flat_specs, treedef = jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_names)
    flat_shapes = treedef.flatten_up_to(shapes)
    out = []
    for (path, names), shp in zip(flat_specs, flat_shapes):
        shp = tuple(shp) if isinstance(shp, (tuple, list)) else tuple(shp.shape)
        what = jax.tree_util.keystr(path)
        out.append(NamedSharding(mesh, logical_to_spec(names, rules, mesh, shp, what)))
    return jax.tree_util.tree_unflatten(treedef, out)
