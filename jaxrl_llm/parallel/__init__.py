"""Device mesh, logical axis names and rules, shardings."""

from jaxrl_llm.parallel.axes import (
    DEFAULT_RULES,
    LOGICAL_AXES,
    MESH_AXES,
    logical_to_sharding,
    logical_to_spec,
)
from jaxrl_llm.parallel.mesh import make_mesh, resolve_mesh_shape

__all__ = [
    "DEFAULT_RULES",
    "LOGICAL_AXES",
    "MESH_AXES",
    "logical_to_sharding",
    "logical_to_spec",
    "make_mesh",
    "resolve_mesh_shape",
]
