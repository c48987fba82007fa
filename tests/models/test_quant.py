"""Quantised frozen kernels (QLoRA): the per-block error bound of each scheme against a numpy
reference of its rounding, exact byte counts (tiny model and Qwen2.5-7B shapes), the merge with a
zero adapter is the dequantised base bit for bit, gradients are those of plain LoRA on the
dequantised base, and sharded quantisation equals the one-device one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.models import ModelConfig, apply, init_params, logical_axes, lora, quant
from jaxrl_llm.models.presets import qwen25_config
from jaxrl_llm.parallel import DEFAULT_RULES, logical_to_sharding, make_mesh

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=128,  # o/down_proj: two blocks of 64 along their last axis
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=12,  # q/k/v: one block of 12
    intermediate_size=96,  # gate/up: blocks of 48 (the largest divisor <= 64)
    qkv_bias=True,
    tie_embeddings=False,
    max_position_embeddings=64,
)
NF4_LEVELS = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453]
    + [-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0]
    + [0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224]
    + [0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
)
# float32 rounding of w / s and q · s on top of the scheme's bound
SLACK = 1 + 2**-14


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def _blocks(x, block):
    """[..., n] -> [..., n // block, block]."""
    return x.reshape(x.shape[:-1] + (x.shape[-1] // block, block))


def _kernel(key, shape):
    """Normal entries whose magnitude varies a lot between blocks (so per-block scales matter),
    one exact zero and one value at a block's absmax."""
    w = jax.random.normal(key, shape) * jnp.exp(
        2 * jax.random.normal(jax.random.fold_in(key, 1), shape[:-1] + (1,))
    )
    return w.at[0, 0, 0].set(0.0)


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4"])
def test_dequantisation_error_is_within_the_scheme_bound(scheme):
    w = _kernel(jax.random.key(0), (2, 6, 128))
    qk = jax.jit(lambda w: quant.quantize(w, scheme))(w)
    assert qk.shape == w.shape and qk.block == 64 and qk.scheme == scheme
    assert qk.value.scale.shape == (2, 6, 2) and qk.value.scale.dtype == jnp.float32
    wb = _blocks(np.asarray(w, np.float64), 64)
    absmax = np.abs(wb).max(-1)
    scale = np.asarray(qk.value.scale)
    # the scale is the block's absmax over the scheme's symmetric bound
    qmax = {"int8": 127.5, "int4": 7.5, "nf4": 1.0}[scheme]
    np.testing.assert_allclose(scale, absmax / qmax, rtol=1e-6)
    got = _blocks(np.asarray(qk.dequantize(), np.float64), 64)
    err = np.abs(got - wb)
    bound = quant.max_error(qk)[..., None]
    assert (err <= bound * SLACK).all(), float((err / bound).max())
    # a numpy reference of the rounding: the error is the distance to the nearest level
    u = wb / scale[..., None]
    if scheme == "nf4":
        want = np.abs(u[..., None] - NF4_LEVELS).min(-1) * scale[..., None]
        assert np.abs(err / bound).max() > 0.5  # blocks with entries in the widest gap
    else:
        lo, hi = {"int8": (-128, 127), "int4": (-8, 7)}[scheme]
        want = np.abs(u - np.clip(np.round(u), lo, hi)) * scale[..., None]
        assert np.abs(err / bound).max() > 0.99  # the bound is attained
    np.testing.assert_allclose(err, want, atol=2e-6 * np.abs(wb).max())
    assert got.reshape(-1)[0] == 0.0  # an exact zero stays zero (a level of every scheme)
    if scheme == "nf4":  # level ±1 times s = absmax: a block's absmax entry comes back exactly
        top = np.abs(wb).argmax(-1)[..., None]
        np.testing.assert_array_equal(
            np.take_along_axis(got, top, -1), np.take_along_axis(wb, top, -1)
        )
    # relative to the block's absmax: int8 1/255, int4 1/15, nf4 0.1519
    rel = (err / absmax[..., None]).max()
    assert rel <= {"int8": 1 / 255, "int4": 1 / 15, "nf4": quant.NF4_MAX_ERROR}[scheme] * SLACK


def test_a_bf16_kernel_is_quantised_from_its_float32_value():
    w = _kernel(jax.random.key(1), (2, 3, 64)).astype(jnp.bfloat16)
    qk = quant.quantize(w, "int8")
    assert qk.dtype == "bfloat16" and qk.dequantize().dtype == jnp.bfloat16
    exact = qk.dequantize(jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(exact, np.float32),
        np.asarray(quant.quantize(w.astype(jnp.float32), "int8").dequantize()),
    )
    err = np.abs(np.asarray(exact, np.float64) - np.asarray(w, np.float64))
    assert (err <= quant.max_error(qk) * SLACK).all()
    # the cast to bf16 rounds once more: at most half a bf16 ulp of the value
    d = np.asarray(qk.dequantize(), np.float64)
    assert (np.abs(d - np.asarray(exact, np.float64)) <= np.abs(d) * 2**-8).all()


def test_block_sizes_and_bad_input():
    assert [quant.block_size(n) for n in (12, 48, 64, 96, 128, 3584, 18944)] == [
        12,
        48,
        64,
        48,
        64,
        64,
        64,
    ]
    assert quant.block_size(128, block=32) == 32
    with pytest.raises(ValueError, match=r"'int3': allowed \['int4', 'int8', 'nf4'\]"):
        quant.quantize(jnp.ones((2, 64)), "int3")
    with pytest.raises(ValueError, match="float kernel"):
        quant.quantize(jnp.ones((2, 64), jnp.int32), "int8")


def test_quantize_params_replaces_the_targets_only(params):
    q = quant.quantize_params(params, "nf4", ("q_proj", "down_proj"))
    layers = q["layers"]
    assert quant.is_quantized(layers["attn"]["q_proj"]["kernel"])
    assert quant.is_quantized(layers["mlp"]["down_proj"]["kernel"])
    assert layers["attn"]["q_proj"]["bias"] is params["layers"]["attn"]["q_proj"]["bias"]
    for group, target in (("attn", "k_proj"), ("attn", "o_proj"), ("mlp", "up_proj")):
        assert layers[group][target]["kernel"] is params["layers"][group][target]["kernel"]
    assert q["embed"] is params["embed"] and q["lm_head"] is params["lm_head"]
    # deterministic: quantising again (jitted or not) gives the same codes and scales
    again = jax.jit(lambda p: quant.quantize_params(p, "nf4", ("q_proj", "down_proj")))(params)
    for x, y in zip(jax.tree.leaves(q), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert quant.dequantize_params(params) is params
    with pytest.raises(ValueError, match="each must be one of"):
        quant.quantize_params(params, "int8", ("qkv_proj",))
    with pytest.raises(ValueError, match="already quantised"):
        quant.quantize_params(q, "int8", ("q_proj",))


def test_bytes_of_the_quantised_base_exactly(params):
    """Every projection quantised, against the same params in bf16: a kernel of N entries in
    blocks of b is N code bytes (int8) or N / 2 (4-bit) plus 4 N / b scale bytes."""
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    layers = params["layers"]
    kernels = {
        t: layers["mlp" if t in layers["mlp"] else "attn"][t]["kernel"] for t in lora.TARGETS
    }
    n_kernel = sum(k.size for k in kernels.values())
    # blocks along the last axis: q/k/v 12, o/down 64, gate/up 48
    n_scale = sum(k.size // quant.block_size(k.shape[-1]) for k in kernels.values())
    n_other = sum(x.size for x in jax.tree.leaves(params)) - n_kernel
    assert quant.nbytes(bf16) == 2 * (n_kernel + n_other)
    for scheme, code_bytes in (("int8", 1.0), ("int4", 0.5), ("nf4", 0.5)):
        q = quant.quantize_params(bf16, scheme, lora.TARGETS)
        assert quant.nbytes(q) == 2 * n_other + code_bytes * n_kernel + 4 * n_scale, scheme
        assert quant.nbytes(
            jax.eval_shape(
                functools.partial(quant.quantize_params, scheme=scheme, targets=lora.TARGETS), bf16
            )
        ) == quant.nbytes(q)


def test_bytes_of_a_quantised_7b_base():
    """Qwen2.5-7B shapes (abstract, nothing allocated): every projection in nf4 or int8 with
    blocks of 64, the embedding and head in bf16."""
    config = qwen25_config("7B")
    shapes = jax.eval_shape(
        lambda: jax.tree.map(
            lambda x: x.astype(jnp.bfloat16), init_params(config, jax.random.key(0))
        )
    )
    L, h, m = 28, 3584, 18944
    kv = 4 * 128  # 4 kv heads
    n_kernel = L * (h * h + 2 * h * kv + h * h + 3 * h * m)
    total = quant.nbytes(shapes)
    other = total - 2 * n_kernel
    got = {}
    for scheme in ("int8", "nf4"):
        q = jax.eval_shape(
            functools.partial(quant.quantize_params, scheme=scheme, targets=lora.TARGETS), shapes
        )
        got[scheme] = quant.nbytes(q)
        assert got[scheme] == other + quant.bytes_per_entry(scheme) * n_kernel
    print(
        f"Qwen2.5-7B base: bf16 {total / 2**30:.2f} GiB; projections int8 "
        f"{got['int8'] / 2**30:.2f} GiB, nf4 {got['nf4'] / 2**30:.2f} GiB "
        f"({n_kernel / 1e9:.3f} B projection entries, {other / 2**30:.2f} GiB embed/head/norms)"
    )
    assert got["nf4"] < 0.42 * total and got["int8"] < 0.6 * total


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_merge_with_a_zero_adapter_is_the_dequantised_base_exactly(params, scheme):
    q = quant.quantize_params(params, scheme, ("q_proj", "o_proj", "up_proj"))
    deq = quant.dequantize_params(q)
    # adapters on q and up only: o_proj is quantised but has no adapter (dequantised as well)
    adapters = lora.init_lora(
        CFG, q, jax.random.key(1), rank=4, alpha=8.0, targets=("q_proj", "up_proj")
    )
    for merged in (
        lora.merge(CFG, q, adapters),
        jax.jit(lambda p, a: lora.merge(CFG, p, a))(q, adapters),
        lora.merge(CFG, q, None),
    ):
        assert jax.tree.structure(merged) == jax.tree.structure(params)
        for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(deq)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # and the dequantised base is not the original one (the test would not notice otherwise)
    w, d = params["layers"]["attn"]["q_proj"]["kernel"], deq["layers"]["attn"]["q_proj"]["kernel"]
    assert (
        0
        < np.abs(np.asarray(w) - np.asarray(d)).max()
        <= quant.max_error(q["layers"]["attn"]["q_proj"]["kernel"]).max() * SLACK
    )


def _batch(vocab, n=3, s=7, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, s), np.int32)
    mask[1, :2] = 0
    tokens = (rng.integers(1, vocab, size=(n, s)) * mask).astype(np.int32)
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None).astype(np.int32)
    return tokens, positions, mask


def test_gradients_are_plain_lora_on_the_dequantised_base(params):
    """d loss / d adapters through the quantised base equals plain LoRA's on the dequantised
    base, which is the chain rule of the merged kernel's gradient (dA = s dW' Bᵀ, dB = s Aᵀ
    dW'); the quantised base is not an input of the gradient and is unchanged."""
    targets = ("q_proj", "o_proj", "down_proj")
    q = quant.quantize_params(params, "nf4", lora.TARGETS)
    deq = quant.dequantize_params(q)
    adapters = lora.init_lora(CFG, q, jax.random.key(2), rank=3, alpha=6.0, targets=targets)
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            0.05 * jax.random.normal(jax.random.key(x.size), x.shape)
            if jax.tree_util.keystr(p).endswith("['b']")
            else x
        ),
        adapters,
    )
    tokens, positions, mask = _batch(CFG.vocab_size)
    weights = jax.random.normal(jax.random.key(4), (3, 7, CFG.vocab_size)) * mask[..., None]

    def loss(base, ad):
        logits, _ = apply(CFG, lora.merge(CFG, base, ad), tokens, positions, mask)
        return jnp.sum(jax.nn.log_softmax(logits) * weights)

    codes = jax.tree.map(np.asarray, q)
    g_q = jax.jit(jax.grad(loss, argnums=1))(q, adapters)
    g_d = jax.jit(jax.grad(loss, argnums=1))(deq, adapters)
    # equal up to float32 rounding (XLA may fuse `q s + s' A B` into one fused multiply-add)
    for x, y in zip(jax.tree.leaves(g_q), jax.tree.leaves(g_d)):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, rtol=2e-4, atol=2e-4 * np.abs(y).max())
    merged = lora.merge(CFG, q, adapters)
    g_w = jax.grad(lambda p: loss(p, None))(merged)
    s = adapters.scale
    for target in targets:
        group = "mlp" if target == "down_proj" else "attn"
        a = np.asarray(adapters.layers[group][target]["a"], np.float64)
        b = np.asarray(adapters.layers[group][target]["b"], np.float64)
        gw = np.asarray(g_w["layers"][group][target]["kernel"], np.float64)
        r = a.shape[-1]
        for layer in range(CFG.num_layers):
            a2, b2 = a[layer].reshape(-1, r), b[layer].reshape(r, -1)
            gw2 = gw[layer].reshape(a2.shape[0], b2.shape[1])
            want_a = (s * gw2 @ b2.T).reshape(a[layer].shape)
            want_b = (s * a2.T @ gw2).reshape(b[layer].shape)
            got_a = np.asarray(g_q.layers[group][target]["a"][layer])
            got_b = np.asarray(g_q.layers[group][target]["b"][layer])
            assert np.abs(want_a).max() > 1e-3 and np.abs(want_b).max() > 1e-3
            np.testing.assert_allclose(got_a, want_a, rtol=2e-4, atol=2e-4 * np.abs(want_a).max())
            np.testing.assert_allclose(got_b, want_b, rtol=2e-4, atol=2e-4 * np.abs(want_b).max())
    for x, y in zip(jax.tree.leaves(q), jax.tree.leaves(codes)):
        np.testing.assert_array_equal(np.asarray(x), y)


def test_sharded_quantisation_equals_one_device(params):
    """Quantised under jit with out_shardings from `quantized_logical_axes` on a (data 2, fsdp
    2, tensor 2) mesh: the codes are laid out like the kernels, and the values equal the
    one-device ones."""
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    fn = lambda p: quant.quantize_params(p, "int8", lora.TARGETS)  # noqa: E731
    shapes = jax.eval_shape(fn, params)
    specs = quant.quantized_logical_axes(CFG, shapes)
    shardings = logical_to_sharding(specs, mesh, DEFAULT_RULES, shapes=shapes)
    sharded = jax.jit(fn, out_shardings=shardings)(params)
    plain = logical_to_sharding(logical_axes(CFG), mesh, DEFAULT_RULES, shapes=params)
    kernel_sharding = plain["layers"]["mlp"]["up_proj"]["kernel"]
    assert (
        sharded["layers"]["mlp"]["up_proj"]["kernel"].value.qvalue.sharding.spec
        == kernel_sharding.spec
    )
    for x, y in zip(jax.tree.leaves(sharded), jax.tree.leaves(fn(params))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    merged = jax.jit(lambda p: lora.merge(CFG, p, None))(sharded)
    np.testing.assert_array_equal(
        np.asarray(merged["layers"]["mlp"]["up_proj"]["kernel"]),
        np.asarray(quant.dequantize_params(fn(params))["layers"]["mlp"]["up_proj"]["kernel"]),
    )
