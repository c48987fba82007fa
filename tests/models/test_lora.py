"""LoRA adapters: zero-B identity, hand-merged updates, gradients (analytic x·A·B form and finite
differences), PEFT file round trip, and parity with transformers (merged save_hf, and PEFT
itself when installed)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_llm.models import ModelConfig, apply, init_params, load_hf, lora, peft_io
from jaxrl_llm.models.hf_io import read_safetensors_header
from jaxrl_llm.parallel import DEFAULT_RULES, logical_to_sharding, make_mesh

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=12,  # != hidden / heads, so o_proj's two input axes matter
    intermediate_size=48,
    qkv_bias=True,
    qk_norm=True,
    tie_embeddings=False,
    max_position_embeddings=64,
)


def _batch(vocab, n=3, s=7, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([s, s - 2, 2][:n])
    mask = (np.arange(s)[None] >= (s - lengths)[:, None]).astype(np.int32)
    tokens = (rng.integers(1, vocab, size=(n, s)) * mask).astype(np.int32)
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None).astype(np.int32)
    return tokens, positions, mask


def _randomise_b(adapters, key, std=0.05):
    """Adapters with non-zero B (a trained-looking adapter)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(adapters)
    out = []
    for i, (path, x) in enumerate(leaves):
        if jax.tree_util.keystr(path).endswith("['b']"):
            x = std * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def test_zero_b_is_the_base_model_exactly(params):
    adapters = lora.init_lora(CFG, params, jax.random.key(1), rank=4, alpha=8, targets=lora.TARGETS)
    assert adapters.targets == lora.TARGETS and adapters.rank == 4 and adapters.scale == 2.0
    # A is PEFT's kaiming-uniform: bounded by 1/sqrt(fan_in) and not degenerate
    a = np.asarray(adapters.layers["attn"]["o_proj"]["a"])
    assert a.shape == (2, 4, 12, 4) and np.abs(a).max() <= 1 / np.sqrt(48) and a.std() > 0.05
    merged = lora.merge(CFG, params, adapters)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    tokens, positions, mask = _batch(CFG.vocab_size)
    base, _ = apply(CFG, params, tokens, positions, mask)
    got, _ = jax.jit(lambda p, ad: apply(CFG, lora.merge(CFG, p, ad), tokens, positions, mask))(
        params, adapters
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(base))
    assert lora.merge(CFG, params, None) is params


def test_rank1_update_equals_the_hand_merged_kernel(params):
    adapters = lora.init_lora(
        CFG, params, jax.random.key(1), rank=1, alpha=3.0, targets=("o_proj", "down_proj", "q_proj")
    )
    rng = np.random.default_rng(0)
    vals = {}
    layers = {}
    for group, target in (("attn", "o_proj"), ("mlp", "down_proj"), ("attn", "q_proj")):
        ab = adapters.layers[group][target]
        a = rng.normal(size=ab["a"].shape).astype(np.float32)
        b = rng.normal(size=ab["b"].shape).astype(np.float32)
        vals[target] = (a, b)
        layers.setdefault(group, {})[target] = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    adapters = lora.LoraAdapters(layers=layers, alpha=3.0)
    merged = lora.merge(CFG, params, adapters)
    for group, target in (("attn", "o_proj"), ("mlp", "down_proj"), ("attn", "q_proj")):
        w = np.asarray(params["layers"][group][target]["kernel"])
        a, b = vals[target]
        for layer in range(CFG.num_layers):
            # torch-style 2-D view: [in, out] with in/out flattened row-major
            w2 = w[layer].reshape(a[layer].size, -1)
            outer = np.outer(a[layer].reshape(-1), b[layer].reshape(-1))
            want = (w2 + 3.0 * outer).reshape(w[layer].shape)
            got = np.asarray(merged["layers"][group][target]["kernel"][layer])
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # untargeted kernels are untouched
    np.testing.assert_array_equal(
        np.asarray(merged["layers"]["attn"]["k_proj"]["kernel"]),
        np.asarray(params["layers"]["attn"]["k_proj"]["kernel"]),
    )


def _loss(config, params, adapters, tokens, positions, mask, weights):
    logits, _ = apply(config, lora.merge(config, params, adapters), tokens, positions, mask)
    return jnp.sum(jax.nn.log_softmax(logits) * weights)


def test_gradients_train_only_adapters_and_match_the_analytic_form(params):
    targets = ("q_proj", "o_proj", "up_proj", "down_proj")
    adapters = lora.init_lora(CFG, params, jax.random.key(2), rank=3, alpha=6.0, targets=targets)
    adapters = _randomise_b(adapters, jax.random.key(3))
    tokens, positions, mask = _batch(CFG.vocab_size)
    weights = jax.random.normal(jax.random.key(4), (3, 7, CFG.vocab_size)) * mask[..., None]
    loss = jax.jit(lambda p, ad: _loss(CFG, p, ad, tokens, positions, mask, weights))

    g_ad = jax.grad(loss, argnums=1)(params, adapters)
    # analytic: with W' = W + s A B,  dL/dA = s dL/dW' Bᵀ,  dL/dB = s Aᵀ dL/dW'
    merged = lora.merge(CFG, params, adapters)
    g_w = jax.grad(lambda p: loss(p, None))(merged)
    s = adapters.scale
    for target in targets:
        group = "attn" if target in ("q_proj", "o_proj") else "mlp"
        a = np.asarray(adapters.layers[group][target]["a"], np.float64)
        b = np.asarray(adapters.layers[group][target]["b"], np.float64)
        gw = np.asarray(g_w["layers"][group][target]["kernel"], np.float64)
        for layer in range(CFG.num_layers):
            r = a.shape[-1]
            a2, b2 = a[layer].reshape(-1, r), b[layer].reshape(r, -1)
            gw2 = gw[layer].reshape(a2.shape[0], b2.shape[1])
            want_a = (s * gw2 @ b2.T).reshape(a[layer].shape)
            want_b = (s * a2.T @ gw2).reshape(b[layer].shape)
            got_a = np.asarray(g_ad.layers[group][target]["a"][layer])
            got_b = np.asarray(g_ad.layers[group][target]["b"][layer])
            assert np.abs(want_a).max() > 1e-3 and np.abs(want_b).max() > 1e-3
            np.testing.assert_allclose(got_a, want_a, rtol=2e-4, atol=2e-4 * np.abs(want_a).max())
            np.testing.assert_allclose(got_b, want_b, rtol=2e-4, atol=2e-4 * np.abs(want_b).max())

    # a directional finite difference agrees with the gradient
    direction = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(5), x.shape, x.dtype), adapters
    )
    f = lambda t: float(loss(params, jax.tree.map(lambda x, d: x + t * d, adapters, direction)))
    h = 3e-3  # fourth-order central difference (float32 loss)
    fd = (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)
    an = sum(
        float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(g_ad), jax.tree.leaves(direction))
    )
    assert abs(an) > 1.0
    assert abs(fd - an) <= 2e-2 * abs(an)

    # one optax step over the adapters only: the frozen params are the same arrays, bit for bit
    base_before = jax.tree.map(np.asarray, params)
    opt = optax.adamw(1e-2, weight_decay=0.0)
    opt_state = opt.init(adapters)
    assert {x.shape for x in jax.tree.leaves(opt_state) if x.ndim} <= {
        x.shape for x in jax.tree.leaves(adapters)
    }
    updates, opt_state = opt.update(g_ad, opt_state, adapters)
    new_adapters = optax.apply_updates(adapters, updates)
    for x, y in zip(jax.tree.leaves(new_adapters), jax.tree.leaves(adapters)):
        assert not np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(base_before)):
        np.testing.assert_array_equal(np.asarray(x), y)
    assert float(loss(params, new_adapters)) < float(loss(params, adapters))


def test_logical_axes_and_param_count(params):
    adapters = lora.init_lora(CFG, params, jax.random.key(1), rank=4, alpha=8, targets=lora.TARGETS)
    specs = lora.lora_logical_axes(CFG, adapters)
    assert specs.layers["attn"]["q_proj"] == {
        "a": ("layers", "embed", None),
        "b": ("layers", None, "heads", "head_dim"),
    }
    assert specs.layers["attn"]["o_proj"] == {
        "a": ("layers", "heads", "head_dim", None),
        "b": ("layers", None, "embed"),
    }
    assert specs.layers["mlp"]["down_proj"] == {
        "a": ("layers", "mlp", None),
        "b": ("layers", None, "embed"),
    }
    n = lora.num_params(adapters)
    assert n == lora.lora_param_count(CFG, rank=4, targets=lora.TARGETS)
    q, kv, h, m = 4 * 12, 2 * 12, 32, 48
    assert n == 2 * 4 * ((h + q) * 2 + (h + kv) * 2 + (h + m) * 3)
    # sharded: A follows the kernel's input axes, B its output axes
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    shard = logical_to_sharding(specs, mesh, DEFAULT_RULES, shapes=adapters)
    placed = jax.device_put(adapters, shard)
    a = placed.layers["attn"]["q_proj"]["a"]
    b = placed.layers["attn"]["q_proj"]["b"]
    assert a.addressable_shards[0].data.shape == (2, 32 // 4, 4)
    assert b.addressable_shards[0].data.shape == (2, 4, 4 // 2, 12)
    merged = jax.jit(lora.merge, static_argnums=0)(CFG, params, placed)
    np.testing.assert_allclose(
        np.asarray(merged["layers"]["attn"]["q_proj"]["kernel"]),
        np.asarray(params["layers"]["attn"]["q_proj"]["kernel"]),
    )
    with pytest.raises(ValueError, match="must be one of"):
        lora.init_lora(CFG, params, jax.random.key(1), rank=4, alpha=8, targets=("qkv",))


def test_peft_files_round_trip(params, tmp_path):
    adapters = lora.init_lora(
        CFG, params, jax.random.key(1), rank=3, alpha=5.0, targets=("k_proj", "o_proj", "gate_proj")
    )
    adapters = _randomise_b(adapters, jax.random.key(2))
    peft_io.save_peft(tmp_path, CFG, adapters)
    header, _ = read_safetensors_header(str(tmp_path / "adapter_model.safetensors"))
    name = "base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"
    assert header[name]["shape"] == [3, 4 * 12]
    name = "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"
    assert header[name]["shape"] == [48, 3]
    back = peft_io.load_peft(tmp_path, CFG)
    assert back.alpha == 5.0 and back.targets == adapters.targets and back.rank == 3
    assert jax.tree.structure(back) == jax.tree.structure(adapters)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(adapters)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ parity with transformers
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_qwen3(tmp_path_factory):
    """A random tiny Qwen3 (qk-norm, head_dim 12 != 32 / 4) saved by transformers."""
    from tests.models.test_hf_parity import TINY

    torch.manual_seed(0)
    hf_config = transformers.Qwen3Config(
        **TINY, head_dim=12, tie_word_embeddings=False, rope_theta=1000000.0
    )
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    model = model.float().eval()
    path = tmp_path_factory.mktemp("hf_qwen3")
    model.save_pretrained(path)
    config, base = load_hf(path, dtype="float32")
    adapters = lora.init_lora(
        config, base, jax.random.key(7), rank=4, alpha=8.0, targets=lora.TARGETS
    )
    adapters = _randomise_b(adapters, jax.random.key(8), std=0.3)
    tokens, positions, mask = _batch(config.vocab_size, s=9)
    ours, _ = apply(config, lora.merge(config, base, adapters), tokens, positions, mask)
    plain, _ = apply(config, base, tokens, positions, mask)
    # the adapter moves the logits well beyond the comparison tolerance
    assert float(np.abs(np.asarray(ours) - np.asarray(plain))[mask > 0].max()) > 0.05
    return path, config, base, adapters, (tokens, positions, mask), np.asarray(ours)


def _torch_logits(model, tokens, positions, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def _max_err(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[np.asarray(mask, bool)].max())


def test_merged_save_hf_reloads_in_transformers_with_the_same_logits(hf_qwen3, tmp_path):
    _, config, base, adapters, (tokens, positions, mask), ours = hf_qwen3
    peft_io.save_merged_hf(tmp_path, config, base, adapters)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    assert _max_err(_torch_logits(model, tokens, positions, mask), ours, mask) <= 1e-4


def test_peft_loads_the_adapter_with_the_same_logits(hf_qwen3, tmp_path):
    peft = pytest.importorskip("peft")
    path, config, _base, adapters, (tokens, positions, mask), ours = hf_qwen3
    peft_io.save_peft(tmp_path, config, adapters)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    model = peft.PeftModel.from_pretrained(model, str(tmp_path)).eval()
    assert _max_err(_torch_logits(model, tokens, positions, mask), ours, mask) <= 1e-4
