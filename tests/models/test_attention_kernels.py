"""Fused attention (`models/attention_kernels.py`) = the XLA attention of `transformer.py` on
every valid position, forward and gradients, on CPU.

The Pallas kernels (TPU splash, GPU Triton flash) run in interpret mode; the cuDNN wrapper runs
its own layout code (valid slots gathered to the front, causal attention over sequence lengths,
scattered back) through `jax.nn.dot_product_attention(implementation="xla")`: cuDNN itself is
checked against XLA on a GPU by `benchmarks/attention_parity.py` (run by `benchmarks/gpu.sh`).

Tolerances (float32, `highest` matmul precision): outputs within 2e-5, gradients within 1e-4
(absolute; the values are O(1)). Observed on this CPU: outputs <= 7.2e-7 and q / k / v
gradients <= 1.5e-6 for every kernel and layout; whole-model logits <= 1.8e-7 and parameter
gradients <= 1.6e-5.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxrl_llm import parallel
from jaxrl_llm.models import attention_kernels as ak
from jaxrl_llm.models import transformer
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.trainers import config as config_lib

FWD_TOL, GRAD_TOL = 2e-5, 1e-4
N, S, HEADS, KV_HEADS, D = 2, 32, 4, 2, 16


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _rows(layout: str):
    """`mask`, `segment_ids` (or None) `[N, S]` of one padding layout."""
    mask = np.ones((N, S), np.int32)
    seg = None
    if layout == "left":  # prompts: padding first
        mask[0, :9], mask[1, :1] = 0, 0
    elif layout == "right":  # completions: padding last
        mask[0, 20:], mask[1, 31:] = 0, 0
    elif layout == "both":  # prompt + completion: padding on both sides
        mask[0, :5], mask[0, 27:], mask[1, :12], mask[1, 30:] = 0, 0, 0, 0
    elif layout == "packed":  # packs of 3 and 2 rows (segments 1, 2, ...), padded at the end
        seg = np.zeros((N, S), np.int32)
        seg[0, :7], seg[0, 7:19], seg[0, 19:28] = 1, 2, 3
        seg[1, :16], seg[1, 16:29] = 4, 5
        mask = (seg > 0).astype(np.int32)
    return jnp.asarray(mask), None if seg is None else jnp.asarray(seg)


def _reference(q, k, v, mask, seg):
    """The XLA path of `transformer.Attention`, written out: GQA, causal by slot, masked keys."""
    allowed = transformer.attention_mask(mask, segment_ids=seg)  # [N, S, S]
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) * q.shape[-1] ** -0.5
    scores = jnp.where(allowed[:, None], scores, -1e30)
    return jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v)


def _qkv(seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (N, S, HEADS, D))
    k = jax.random.normal(keys[1], (N, S, KV_HEADS, D))
    v = jax.random.normal(keys[2], (N, S, KV_HEADS, D))
    w = jax.random.normal(keys[3], (N, S, HEADS, D))  # cotangent of the outputs
    return q, k, v, w


def _fwd_and_grads(fn, q, k, v, w, mask):
    """Outputs on valid slots and the gradients of `sum(valid outputs * w)` w.r.t. q, k, v."""

    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(jnp.where(mask[:, :, None, None] > 0, out * w, 0.0)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _assert_close(fn, layout, seed=0):
    mask, seg = _rows(layout)
    q, k, v, w = _qkv(seed)
    out, grads = _fwd_and_grads(fn(mask, seg), q, k, v, w, mask)
    ref, ref_grads = _fwd_and_grads(
        lambda q, k, v: _reference(q, k, v, mask, seg), q, k, v, w, mask
    )
    valid = np.asarray(mask) > 0
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=FWD_TOL)
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=GRAD_TOL, err_msg=name)


def _kernel(impl):
    def make(mask, seg):
        layout = ak.make_layout(impl, mask, seg, interpret=True)
        return lambda q, k, v: ak.attend(q, k, v, layout)

    return make


@pytest.mark.parametrize("layout", ["left", "right", "both"])
def test_cudnn_layout_equals_xla_attention(layout):
    _assert_close(_kernel("cudnn"), layout)


@pytest.mark.parametrize("impl", ["splash", "pallas_gpu"])
@pytest.mark.parametrize("layout", ["left", "right", "packed"])
def test_pallas_kernels_equal_xla_attention(impl, layout):
    _assert_close(_kernel(impl), layout)


def test_the_comparison_can_fail():
    """Left-padded rows passed to the right-padding API as they are (no gather to the front)
    attend to the wrong slots: the same comparison rejects it."""

    def unconverted(mask, seg):
        del seg
        lengths = mask.sum(axis=1)
        return lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths
        )

    with pytest.raises(AssertionError):
        _assert_close(unconverted, "left")


def test_cudnn_refuses_segment_ids_and_packed_passes_run_pallas():
    mask, seg = _rows("packed")
    with pytest.raises(ValueError, match="pallas_gpu"):
        ak.make_layout("cudnn", mask, seg)
    assert ak.resolve("cudnn", packed=True, platform="gpu") == "pallas_gpu"
    assert ak.resolve("auto", packed=True, platform="gpu", dtype="bfloat16") == "pallas_gpu"


def test_resolve_and_platform_rules():
    pick = {
        (p, dt): ak.resolve("auto", packed=False, platform=p, dtype=dt)
        for p in ("cpu", "gpu", "tpu")
        for dt in ("float32", "bfloat16")
    }
    assert pick == {
        ("cpu", "float32"): "xla",
        ("cpu", "bfloat16"): "xla",
        ("gpu", "float32"): "xla",
        ("gpu", "bfloat16"): "cudnn",
        ("tpu", "float32"): "splash",
        ("tpu", "bfloat16"): "splash",
    }
    assert ak.runnable("cpu") == ("xla", "auto")
    assert ak.runnable("gpu") == ("xla", "auto", "cudnn", "pallas_gpu")
    assert ak.runnable("tpu") == ("xla", "auto", "splash")
    with pytest.raises(ValueError, match="'splash' needs a TPU backend"):
        ak.check_platform("splash", "cpu")
    ak.check_platform("splash", "cpu", interpret=True)
    with pytest.raises(ValueError, match="allowed"):
        ModelConfig.tiny(attention="flash")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        ModelConfig.tiny(attention="cudnn")
    ModelConfig.tiny(attention="cudnn", attention_interpret=True)  # the CPU test path


# ------------------------------------------------------------------------- whole model
def _model_rows(layout):
    mask, seg = _rows(layout)
    if seg is None:
        positions = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0)
    else:  # positions restart in every segment
        starts = jnp.concatenate([jnp.ones((N, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
        idx = jnp.arange(S)[None, :]
        start_of = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
        positions = idx - start_of
    tokens = jax.random.randint(jax.random.key(7), (N, S), 0, 64)
    return tokens, positions, mask, seg


def _logits_and_grads(config, params, layout):
    tokens, positions, mask, seg = _model_rows(layout)
    w = jax.random.normal(jax.random.key(8), (N, S, config.vocab_size))

    def loss(params):
        logits, _ = transformer.apply(config, params, tokens, positions, mask, segment_ids=seg)
        return jnp.sum(jnp.where(mask[:, :, None] > 0, logits * w, 0.0)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads, np.asarray(mask) > 0


@pytest.mark.parametrize(
    "attention, layout, remat",
    [("cudnn", "both", False), ("splash", "packed", False), ("pallas_gpu", "left", True)],
)
def test_model_apply_with_kernel_equals_xla(attention, layout, remat):
    # 2 layers, 4 heads over 2 KV heads, head_dim 16; one case under remat keeping the
    # attention context (the kernels' custom VJPs inside `nn.remat`)
    config = ModelConfig.tiny(remat=remat, remat_policy="qkv_attn")
    params = transformer.init_params(config, jax.random.key(0))
    ref, ref_grads, valid = _logits_and_grads(config, params, layout)
    kernel_config = config.replace(attention=attention, attention_interpret=True)
    logits, grads, _ = _logits_and_grads(kernel_config, params, layout)
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(ref)[valid], atol=FWD_TOL)
    for (path, g), r in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(ref_grads)
    ):
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(r), atol=GRAD_TOL, err_msg=jax.tree_util.keystr(path)
        )


def test_auto_on_cpu_is_the_xla_program_and_decoding_never_uses_a_kernel():
    config = ModelConfig.tiny()
    params = transformer.init_params(config, jax.random.key(0))
    tokens, positions, mask, _ = _model_rows("left")
    ref, _ = transformer.apply(config, params, tokens, positions, mask)
    auto, _ = transformer.apply(config.replace(attention="auto"), params, tokens, positions, mask)
    assert jnp.array_equal(auto, ref)  # bit for bit
    # splash without interpret mode cannot run here: the cache-free pass refuses it ...
    splash = config.replace(attention="splash")
    with pytest.raises(ValueError, match="'splash' needs a TPU backend"):
        transformer.apply(splash, params, tokens, positions, mask)
    # ... while a pass with a KV cache (prefill + decode) is the XLA program, bit for bit
    cache = transformer.init_cache(config, N, S + 1)
    want, want_cache = transformer.apply(config, params, tokens, positions, mask, cache)
    got, got_cache = transformer.apply(splash, params, tokens, positions, mask, cache)
    assert jnp.array_equal(got, want) and jnp.array_equal(got_cache["k"], want_cache["k"])


def test_trainer_config_field_and_platform_check():
    c = config_lib.base_config(runlocal=True)
    assert c.model.attention == "xla"
    config_lib.validate(c, num_devices=jax.device_count())
    loose = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
    loose.model.attention = "flash"
    with pytest.raises(config_lib.ConfigError, match=r"config.model.attention = 'flash' is not"):
        config_lib.validate(loose)
    c.model.attention = "splash"
    config_lib.validate(c)  # no devices given: the platform is not checked
    with pytest.raises(
        config_lib.ConfigError,
        match=r"^config.model.attention = 'splash' cannot run on this 'cpu' backend; "
        r"allowed here: \['xla', 'auto'\]$",
    ):
        config_lib.validate(c, num_devices=jax.device_count())
    c.model.attention = "cudnn"
    with pytest.raises(config_lib.ConfigError, match="needs model.dtype in"):
        config_lib.validate(c)


def test_pallas_kernel_runs_per_row_shard_under_a_mesh():
    """Under a mesh and logical rules the kernel runs inside a `shard_map` over the rows' batch
    axes (a custom call GSPMD cannot split), with the same numbers as the unsharded XLA model."""
    config = ModelConfig.tiny()
    kernel_config = config.replace(attention="pallas_gpu", attention_interpret=True)
    params = transformer.init_params(config, jax.random.key(0))
    tokens, positions, mask, _ = _model_rows("left")
    ref, _ = transformer.apply(config, params, tokens, positions, mask)
    mesh = parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(parallel.axes.DEFAULT_RULES):
        fn = jax.jit(lambda p: transformer.apply(kernel_config, p, tokens, positions, mask)[0])
        assert "shard_map" in str(jax.make_jaxpr(fn)(params))
        got = fn(params)
    valid = np.asarray(mask) > 0
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=FWD_TOL)
