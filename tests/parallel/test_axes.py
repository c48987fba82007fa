"""Logical → mesh rules, divisibility fallback, and the (data, fsdp, tensor) mesh."""

import logging

import jax
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as PS

from jaxrl_llm.models import ModelConfig, init_params, logical_axes
from jaxrl_llm.parallel import axes as A
from jaxrl_llm.parallel import logical_to_sharding, logical_to_spec, make_mesh, resolve_mesh_shape


def test_default_rules_by_hand():
    assert logical_to_spec(("embed", "mlp")) == PS("fsdp", "tensor")
    assert logical_to_spec(("layers", "embed", "heads", "head_dim")) == PS(
        None, "fsdp", "tensor", None
    )
    assert logical_to_spec(("vocab", "embed")) == PS("tensor", "fsdp")
    assert logical_to_spec(("batch", "length", "embed")) == PS(("data", "fsdp"), None, None)
    # a mesh axis is used once per array: embed loses fsdp to batch
    assert logical_to_spec(("batch", "embed")) == PS(("data", "fsdp"), None)
    custom = ((A.EMBED, None), (A.MLP, "fsdp"))
    assert logical_to_spec(("embed", "mlp"), custom) == PS(None, "fsdp")


def test_make_mesh_sizes_and_auto_axes():
    mesh = make_mesh({"fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert dict(make_mesh(devices=jax.devices()[:2]).shape) == {"data": 1, "fsdp": 2, "tensor": 1}
    assert resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="has 6 devices but 8 are available"):
        make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(ValueError, match=r"product 3\) do not divide the 8 devices"):
        make_mesh({"data": 3, "fsdp": -1})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 8})


def test_logical_to_sharding_params_and_divisibility(caplog):
    config = ModelConfig.tiny(num_kv_heads=1, num_heads=2, head_dim=32, vocab_size=60)
    specs = logical_axes(config)
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    with caplog.at_level(logging.WARNING):
        shard = logical_to_sharding(specs, mesh, shapes=shapes)
    q = shard["layers"]["attn"]["q_proj"]["kernel"]
    assert q.spec == PS(None, "fsdp", "tensor", None)
    # kv_heads = 1 is not divisible by tensor = 2 -> replicated, with a warning naming the array
    k = shard["layers"]["attn"]["k_proj"]["kernel"]
    assert k.spec == PS(None, "fsdp", None, None)
    assert any("k_proj" in r.getMessage() and "kv_heads" in r.getMessage() for r in caplog.records)
    # vocab 60 is divisible by tensor = 2: stays sharded
    assert shard["embed"]["embedding"].spec == PS("tensor", "fsdp")
    # without shapes: names only, no divisibility check
    plain = logical_to_sharding(specs, mesh)
    assert plain["layers"]["attn"]["k_proj"]["kernel"].spec == PS(None, "fsdp", "tensor", None)


def test_cache_axes_match_cache_tree():
    from jaxrl_llm.models import cache_logical_axes, init_cache

    config = ModelConfig.tiny()
    cache = init_cache(config, 4, 8)
    names = cache_logical_axes(config)
    assert set(names) == set(cache)
    for key, value in cache.items():
        assert len(names[key]) == value.ndim
    shard = logical_to_sharding(names, make_mesh({"fsdp": 4, "tensor": 2}), shapes=cache)
    assert shard["k"].spec == PS(None, ("data", "fsdp"), None, "tensor", None)
