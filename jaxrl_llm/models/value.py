"""Value model: the policy backbone with a scalar head, `V(s_t) = w^T h_t + b` (float32).

The value model of PPO (Schulman et al. 2017; Ouyang et al. 2022) is usually
initialised from the policy (or reward) checkpoint: the backbone is copied,
the LM head dropped and a new scalar head added.

Params: the backbone keys of `init_params` (`embed`, `layers`, `final_norm`)
plus `value_head: {"kernel": [H], "bias": []}`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl_llm.models import transformer as T
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.parallel import axes as A

__all__ = ["init_value_params", "init_value_head", "apply_value", "value_logical_axes"]


def _value_head_boxed(config: ModelConfig, key):
    kernel = nn.initializers.normal(T._INIT_STD)(key, (config.hidden_size,), jnp.float32)
    return {
        "kernel": nn.LogicallyPartitioned(kernel.astype(config.param_dtype), (A.EMBED,)),
        "bias": nn.LogicallyPartitioned(jnp.zeros((), config.param_dtype), ()),
    }


def init_value_head(config: ModelConfig, key: jax.Array) -> dict:
    """The value head alone, `{"kernel": [hidden], "bias": []}`: `init_value_params(config, key,
    p)["value_head"]` (the same key gives the same head)."""
    _, k_head = jax.random.split(key)
    return nn.unbox(_value_head_boxed(config, k_head))


def init_value_params(config: ModelConfig, key: jax.Array, policy_params=None) -> dict:
    """Value-model params; the backbone is copied from `policy_params` when given, else random."""
    k_body, k_head = jax.random.split(key)
    if policy_params is None:
        body = T.init_params(config, k_body)
    else:
        missing = [k for k in T._BACKBONE_KEYS if k not in policy_params]
        if missing:
            raise ValueError(f"policy_params lack backbone entries {missing}")
        body = policy_params
    params = {k: jax.tree.map(jnp.asarray, body[k]) for k in T._BACKBONE_KEYS}
    params["value_head"] = nn.unbox(_value_head_boxed(config, k_head))
    return params


def value_logical_axes(config: ModelConfig) -> dict:
    """Logical axis names of `init_value_params(config, key)`."""
    specs = {k: v for k, v in T.logical_axes(config).items() if k in T._BACKBONE_KEYS}
    specs["value_head"] = {"kernel": (A.EMBED,), "bias": ()}
    return specs


@functools.partial(jax.jit, static_argnums=0)
def apply_value(
    config: ModelConfig, params: dict, tokens, positions, mask, segment_ids=None
) -> jax.Array:
    """Per-token values `[N, S]` float32 (same input conventions as `apply`, packed rows'
    `segment_ids` included)."""
    hidden = T.apply_hidden(config, params, tokens, positions, mask, segment_ids)
    head = params["value_head"]
    values = jnp.einsum("bse,e->bs", hidden.astype(jnp.float32), head["kernel"].astype(jnp.float32))
    values = values + head["bias"].astype(jnp.float32)
    return nn.with_logical_constraint(values, (A.BATCH, A.LENGTH))
