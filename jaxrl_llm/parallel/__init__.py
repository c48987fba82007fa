"""Device mesh, logical axis names and rules, shardings of rows and small state.

The lowest layer of the package: nothing here imports another `jaxrl_llm`
package (tests/test_layers.py checks it). Parameter shardings, which need the
model, are `jaxrl_llm.models.param_shardings` / `init_sharded_params`.
"""

from jaxrl_llm.parallel.axes import (
    DEFAULT_RULES,
    LOGICAL_AXES,
    MESH_AXES,
    logical_to_sharding,
    logical_to_spec,
)
from jaxrl_llm.parallel.mesh import make_mesh, resolve_mesh_shape
from jaxrl_llm.parallel.sharding import (
    batch_axes,
    batch_shards,
    check_batch_divides,
    opt_state_shardings,
    replicated,
    row_sharding,
)

__all__ = [
    "DEFAULT_RULES",
    "LOGICAL_AXES",
    "MESH_AXES",
    "batch_axes",
    "batch_shards",
    "check_batch_divides",
    "logical_to_sharding",
    "logical_to_spec",
    "make_mesh",
    "opt_state_shardings",
    "replicated",
    "resolve_mesh_shape",
    "row_sharding",
]
