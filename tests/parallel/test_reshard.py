"""Save on mesh A, restore on mesh B: identical values, B's shardings.

The train state (policy params, Adam state after one update, step, RNG, KL coefficient)
is saved with `Checkpointer` from a pure-FSDP mesh and restored into abstract targets
on other meshes, including one whose tensor axis does not divide a parameter dimension
(that dimension is then replicated along `tensor`, by the divisibility rule).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as PS

from jaxrl_llm import checkpoint as ckpt_lib
from jaxrl_llm import models
from jaxrl_llm.parallel import make_mesh
from jaxrl_llm.parallel import sharding as S
from jaxrl_llm.trainers.state import TrainState

CONFIG = models.ModelConfig.tiny(vocab_size=64, num_heads=6, num_kv_heads=2, head_dim=8)
OPT = optax.adam(1e-2)


def _mesh(d, f, t):
    return make_mesh({"data": d, "fsdp": f, "tensor": t}, devices=jax.devices()[: d * f * t])


def _state_shardings(mesh):
    p_shard = models.param_shardings(CONFIG, mesh)
    params = jax.eval_shape(lambda: models.init_params(CONFIG, jax.random.key(0)))
    rep = S.replicated(mesh)
    return TrainState(
        step=rep,
        params=p_shard,
        opt_state=S.opt_state_shardings(OPT, params, p_shard, mesh),
        rng=rep,
        kl_coef=rep,
    )


def _abstract(mesh):
    shapes = jax.eval_shape(lambda: _make_state(None))
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shapes,
        _state_shardings(mesh),
    )


def _make_state(mesh):
    params = (
        models.init_params(CONFIG, jax.random.key(0))
        if mesh is None
        else models.init_sharded_params(CONFIG, jax.random.key(0), mesh)
    )
    grads = jax.tree.map(lambda p: jnp.sin(100.0 * p), params)  # any non-trivial update
    updates, opt_state = OPT.update(grads, OPT.init(params), params)
    return TrainState(
        step=jnp.asarray(7, jnp.int32),
        params=optax.apply_updates(params, updates),
        opt_state=opt_state,
        rng=jax.random.key_data(jax.random.key(3)),
        kl_coef=jnp.asarray(0.125, jnp.float32),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    mesh_a = _mesh(1, 8, 1)
    shardings = _state_shardings(mesh_a)
    state = jax.jit(lambda: _make_state(mesh_a), out_shardings=shardings)()
    workdir = str(tmp_path_factory.mktemp("reshard"))
    ckpt = ckpt_lib.Checkpointer(workdir)
    ckpt.save(7, state, {"step": 7})
    ckpt.close()
    return workdir, jax.device_get(state), state


@pytest.mark.parametrize(
    "shape", [(2, 2, 2), (1, 2, 4), (1, 1, 1)], ids=lambda s: "x".join(map(str, s))
)
def test_restore_on_another_mesh_is_identical(saved, shape, caplog):
    workdir, host_state, state_a = saved
    mesh_b = _mesh(*shape)
    with caplog.at_level(logging.WARNING):
        target = _abstract(mesh_b)
    ckpt = ckpt_lib.Checkpointer(workdir)
    restored, meta = ckpt.restore(target)
    ckpt.close()
    assert meta["step"] == 7
    # B's shardings, not A's
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert got.sharding.mesh.shape == mesh_b.shape
        assert got.sharding.spec == want.sharding.spec
        assert got.sharding.shard_shape(got.shape) == want.sharding.shard_shape(want.shape)
    q_a = state_a.params["layers"]["attn"]["q_proj"]["kernel"]
    q_b = restored.params["layers"]["attn"]["q_proj"]["kernel"]
    assert q_a.sharding.spec == PS(None, "fsdp", "tensor", None)
    if shape == (1, 2, 4):  # 6 heads on tensor = 4: heads replicated over tensor, with a warning
        assert q_b.sharding.spec == PS(None, "fsdp", None, None)
        assert any(
            "q_proj" in r.getMessage() and "size 6" in r.getMessage() for r in caplog.records
        )
    # identical values, bit for bit
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), host_state)
    assert float(np.abs(host_state.opt_state[0].mu["embed"]["embedding"]).max()) > 0
