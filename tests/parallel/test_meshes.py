"""One program, six meshes: the same loss, gradients, updated params and sampled tokens.

Meshes (data, fsdp, tensor) = (1,1,1), (8,1,1), (1,8,1), (2,4,1), (1,4,2), (2,2,2) on 8
virtual CPU devices. The reference is the (1,1,1) mesh. Tolerance: float32 with
`highest` matmul precision; sharding only reorders sums (a psum over shards instead of
one loop), so losses and gradients agree to rtol 2e-5 / atol 1e-6 and the updated
parameters (one Adam step) to atol 1e-6. Sampled tokens must be identical.

Also: every array is really sharded as the rules say (spec and per-device shard
shapes, and each shard holds its slice of the global value), and the divisibility
rule (a non-dividing parameter dimension is replicated along that mesh axis with a
warning; a non-dividing batch is refused with the numbers).
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as PS

from jaxrl_llm import models
from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm.parallel import make_mesh
from jaxrl_llm.parallel import sharding as S
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl_step
from jaxrl_llm.trainers.state import TrainState

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]
B, G, P, T = 8, 2, 6, 5  # N = 16 rows; 2 micro-batches of 8 rows
N = B * G
LR, B1 = 1e-3, 0.9
RTOL, ATOL = 2e-5, 1e-6
CONFIG = models.ModelConfig.tiny(
    vocab_size=64, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128
)


def _settings():
    c = config_lib.base_config()
    c.unlock()
    c.algo.kl.coef = 0.05  # KL in the loss: ref_logp flows through the sharded step
    c.algo.entropy_coef = 0.01
    c.rollout.max_new_tokens = T
    return rl_step.LossSettings.from_config(c)


def _mesh(shape):
    d, f, t = shape
    return make_mesh({"data": d, "fsdp": f, "tensor": t}, devices=jax.devices()[: d * f * t])


@pytest.fixture(scope="module")
def inputs():
    params = jax.device_get(models.init_params(CONFIG, jax.random.key(0)))
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, P + 1, B)
    pmask = (np.arange(P)[None] >= P - lengths[:, None]).astype(np.int32)  # left padded
    ptoks = (rng.integers(3, 64, (B, P)) * pmask).astype(np.int32)
    return params, rollout_lib.PromptBatch(tokens=ptoks, mask=pmask)


def _run(shape, params, prompts):
    """Sample on `shape`, then one Adam step on the samples; everything needed to compare."""
    mesh = _mesh(shape)
    p_shard = models.param_shardings(CONFIG, mesh)
    params = jax.device_put(params, p_shard)
    sampling = rollout_lib.SamplingParams(max_new_tokens=T, temperature=1.0, n=G)
    ro = rollout_lib.generate(params, CONFIG, prompts, jax.random.key(1), sampling, mesh=mesh)

    optimizer = optax.adam(LR, b1=B1, eps=1e-6)
    rep = S.replicated(mesh)
    o_shard = S.opt_state_shardings(optimizer, params, p_shard, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=o_shard)(params)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        params=params,
        opt_state=opt_state,
        rng=jax.device_put(jax.random.key_data(jax.random.key(2)), rep),
        kl_coef=jax.device_put(jnp.asarray(0.05, jnp.float32), rep),
    )
    state_shard = TrainState(step=rep, params=p_shard, opt_state=o_shard, rng=rep, kl_coef=rep)

    # A batch built from the rollout: rewards from the tokens, group-centred advantages.
    mask = np.asarray(ro.mask, np.float32)
    reward = (np.asarray(ro.tokens) % 3 == 0).sum(1).astype(np.float32)
    adv = reward - reward.reshape(B, G).mean(1).repeat(G)
    old = np.asarray(ro.sampler_logp)
    rows = S.row_sharding(mesh)
    batch = rl_step.TrainBatch(
        prompt_tokens=ro.prompt_tokens,
        prompt_mask=ro.prompt_mask,
        tokens=ro.tokens,
        mask=jnp.asarray(mask),
        old_logp=jnp.asarray(old + 0.01 * mask),
        advantages=jnp.asarray(adv[:, None] * mask),
        ref_logp=jnp.asarray(old - 0.05 * mask),
    )
    batch = jax.device_put(batch, rows)
    batch_shard = jax.tree.map(lambda _: rows, batch)
    step = jax.jit(
        functools.partial(
            rl_step.train_step,
            model_config=CONFIG,
            s=_settings(),
            num_micro=2,
            optimizer=optimizer,
            critic_optimizer=None,
            policy_warmup=0,
        ),
        in_shardings=(state_shard, batch_shard),
        out_shardings=(state_shard, rep),
    )
    new, metrics = step(state, batch)
    grads = jax.tree.map(lambda m: m / (1 - B1), new.opt_state[0].mu)  # Adam's mu_1 = (1-b1) g
    return {
        "ro": jax.device_get(ro),
        "metrics": jax.device_get(metrics),
        "grads": jax.device_get(grads),
        "params": jax.device_get(new.params),
        "shardings": (S.describe_shardings(new.params), S.describe_shardings(new.opt_state[0].mu)),
        "ro_spec": ro.tokens.sharding.spec,
    }


@pytest.fixture(scope="module")
def runs(inputs):
    params, prompts = inputs
    return {shape: _run(shape, params, prompts) for shape in MESHES}


@pytest.mark.parametrize("shape", MESHES[1:], ids=lambda s: "x".join(map(str, s)))
def test_same_numbers_on_every_mesh(runs, shape):
    ref, got = runs[(1, 1, 1)], runs[shape]
    np.testing.assert_array_equal(got["ro"].tokens, ref["ro"].tokens)
    np.testing.assert_array_equal(got["ro"].mask, ref["ro"].mask)
    np.testing.assert_allclose(got["ro"].sampler_logp, ref["ro"].sampler_logp, rtol=RTOL, atol=ATOL)
    for k in ("loss/total", "loss/policy", "loss/kl", "kl", "entropy", "grad_norm", "num_tokens"):
        np.testing.assert_allclose(
            got["metrics"][k], ref["metrics"][k], rtol=RTOL, atol=ATOL, err_msg=k
        )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
        got["grads"],
        ref["grads"],
    )
    # Adam's first step moves each weight by about lr * g / (|g| + eps): for a gradient entry
    # near eps, a rounding-level difference in g changes the step by a visible fraction of lr
    # (seen: 2.7e-6 on one of 4096 entries). Params are compared to 1 % of lr.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * LR),
        got["params"],
        ref["params"],
    )


def test_reference_step_is_not_trivial(runs, inputs):
    """Guards the comparison: the update moved every kernel and the gradient is not zero."""
    ref = runs[(1, 1, 1)]
    params, _ = inputs
    assert ref["metrics"]["grad_norm"] > 1e-3
    assert ref["metrics"]["num_tokens"] > N  # several tokens per row
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref["params"], params)
    assert min(jax.tree.leaves(moved)) > 0.5 * LR  # Adam's first step moves each leaf by ~LR
    assert len(set(map(tuple, ref["ro"].tokens.tolist()))) > N // 2  # samples differ


# Expected specs, written out by hand from the default rules (batch → (data, fsdp),
# embed → fsdp, heads / kv_heads / mlp / vocab → tensor, the rest replicated).
EXPECTED_SPECS = {
    "['embed']['embedding']": PS("tensor", "fsdp"),  # [vocab, embed]
    "['final_norm']['scale']": PS("fsdp"),
    "['lm_head']['kernel']": PS("fsdp", "tensor"),  # [embed, vocab]
    "['layers']['attn']['q_proj']['kernel']": PS(None, "fsdp", "tensor", None),
    "['layers']['attn']['k_proj']['kernel']": PS(None, "fsdp", "tensor", None),
    "['layers']['attn']['v_proj']['kernel']": PS(None, "fsdp", "tensor", None),
    "['layers']['attn']['o_proj']['kernel']": PS(None, "tensor", None, "fsdp"),
    "['layers']['attn_norm']['scale']": PS(None, "fsdp"),
    "['layers']['mlp']['gate_proj']['kernel']": PS(None, "fsdp", "tensor"),
    "['layers']['mlp']['up_proj']['kernel']": PS(None, "fsdp", "tensor"),
    "['layers']['mlp']['down_proj']['kernel']": PS(None, "tensor", "fsdp"),
    "['layers']['mlp_norm']['scale']": PS(None, "fsdp"),
}


def _drop_size_one(spec, mesh_shape):
    sizes = dict(zip(("data", "fsdp", "tensor"), mesh_shape))
    out = []
    for e in spec:
        axes = () if e is None else ((e,) if isinstance(e, str) else tuple(e))
        out.append(tuple(a for a in axes if sizes[a] > 1))
    return out


def _shard_shape(shape, spec, mesh_shape):
    sizes = dict(zip(("data", "fsdp", "tensor"), mesh_shape))
    return tuple(
        d // int(np.prod([sizes[a] for a in axes]))
        for d, axes in zip(
            shape, _drop_size_one(spec, mesh_shape) + [()] * (len(shape) - len(spec))
        )
    )


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_params_and_adam_state_really_sharded(runs, shape):
    """Spec and per-device shard shape of every updated param and of Adam's mu, by hand."""
    assert not CONFIG.tie_embeddings  # the table above has an lm_head
    param_rows, mu_rows = runs[shape]["shardings"]
    for rows in (param_rows, mu_rows):
        assert {r[0] for r in rows} == set(EXPECTED_SPECS)
        for path, gshape, spec, shard in rows:
            want = EXPECTED_SPECS[path]
            assert _drop_size_one(spec, shape) == _drop_size_one(want, shape), (path, spec)
            assert shard == _shard_shape(gshape, want, shape), (path, shard)
    # rollout rows split over (data, fsdp)
    assert _drop_size_one(runs[shape]["ro_spec"], shape)[0] == tuple(
        a for a, n in zip(("data", "fsdp"), shape[:2]) if n > 1
    )


def test_shards_hold_their_slices_and_init_is_born_sharded(inputs):
    """On (1,4,2): 8 distinct q_proj shards, each equal to its slice of the global value;
    `init_sharded_params` gives the single-device values without a replicated copy."""
    params, _ = inputs
    mesh = _mesh((1, 4, 2))
    sharded = models.init_sharded_params(CONFIG, jax.random.key(0), mesh)
    q = sharded["layers"]["attn"]["q_proj"]["kernel"]  # [L, 64, 4, 16]
    assert q.sharding.spec == PS(None, "fsdp", "tensor", None)
    full = np.asarray(params["layers"]["attn"]["q_proj"]["kernel"])
    seen = set()
    for shard in q.addressable_shards:
        assert shard.data.shape == (2, 16, 2, 16)
        np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
        seen.add((shard.index[1].start, shard.index[2].start))
    assert len(seen) == 8  # no two devices alike
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded), params)


def test_indivisible_param_dim_is_replicated_with_a_warning(caplog):
    """Qwen2.5-0.5B-style heads: 14 query heads, 2 KV heads on tensor = 4 (does not divide)."""
    config = models.ModelConfig.tiny(
        hidden_size=64,
        num_heads=14,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=128,
        vocab_size=64,
    )
    mesh = _mesh((1, 2, 4))
    with caplog.at_level(logging.WARNING):
        shard = models.param_shardings(config, mesh)
    attn = shard["layers"]["attn"]
    assert attn["q_proj"]["kernel"].spec == PS(None, "fsdp", None, None)  # 14 % 4 != 0
    assert attn["k_proj"]["kernel"].spec == PS(None, "fsdp", None, None)  # 2 % 4 != 0
    assert attn["o_proj"]["kernel"].spec == PS(None, None, None, "fsdp")
    assert shard["layers"]["mlp"]["up_proj"]["kernel"].spec == PS(
        None, "fsdp", "tensor"
    )  # 128 % 4 == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "q_proj" in text and "size 14" in text and "'tensor' (size 4)" in text
    # and the replicated layout still runs (params born sharded, forward agrees with 1 device)
    params = models.init_sharded_params(config, jax.random.key(0), mesh)
    toks = np.arange(16, dtype=np.int32).reshape(2, 8) % 64
    pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    got, _ = models.apply(config, params, toks, pos, np.ones_like(toks))
    want, _ = models.apply(config, jax.device_get(params), toks, pos, np.ones_like(toks))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=1e-5)


def test_indivisible_batch_is_refused_with_the_numbers():
    mesh = _mesh((2, 4, 1))
    S.check_batch_divides(16, mesh, what="train.microbatch_size")
    with pytest.raises(
        ValueError,
        match=r"train.microbatch_size = 12 rows do not divide over the "
        r"8 batch shards of the mesh \(data=2 \* fsdp=4\)",
    ):
        S.check_batch_divides(12, mesh, what="train.microbatch_size")
    with pytest.raises(ValueError, match="has 6 devices but 8 are available"):
        make_mesh({"data": 3, "fsdp": 2, "tensor": 1})
