"""Parameter shardings of a model on a mesh, and parameters initialised already sharded.

    shard = param_shardings(model_config, mesh, rules)            # rules + divisibility rule
    params = init_sharded_params(model_config, key, mesh, rules)  # born sharded

These need the model's parameter shapes and logical axes, so they live with the
model; the mesh-only pieces (batch rows, replication, optimiser state) are in
`jaxrl_llm.parallel.sharding`. Sharded initialisation follows
`eval_shape → shardings → jit(out_shardings)`: no device ever holds a
replicated copy of the model.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.transformer import init_params, logical_axes
from jaxrl_llm.parallel import axes as A

__all__ = ["param_shardings", "init_sharded_params"]


def param_shardings(model_config: ModelConfig, mesh: Mesh, rules=None):
    """`NamedSharding` pytree of `init_params(model_config, ·)` under `rules`.

    Uses the parameter shapes, so the divisibility rule applies: a mesh axis
    that does not divide a dimension is dropped from it (replicated) with a
    logged warning.
    """
    shapes = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
    return A.logical_to_sharding(logical_axes(model_config), mesh, rules, shapes=shapes)


def init_sharded_params(model_config: ModelConfig, key: jax.Array, mesh: Mesh, rules=None):
    """Random parameters created directly in their shardings (jit with `out_shardings`).

    Same values as `init_params(model_config, key)` on one device.
    """
    init = jax.jit(
        init_params, static_argnums=0, out_shardings=param_shardings(model_config, mesh, rules)
    )
    return init(model_config, key)
