"""Model forward: KV-cache decode == full pass, last_only, dtypes, padding, Qwen3 shapes, value head."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.models import (
    ModelConfig,
    apply,
    apply_hidden,
    apply_value,
    init_cache,
    init_params,
    init_value_params,
    lm_head,
    logical_axes,
    value_logical_axes,
)
from jaxrl_llm.models.rope import rope_inv_freq

CONFIGS = {
    "llama": ModelConfig.tiny(),
    # Qwen3-style: per-head q/k RMSNorm, head_dim (24) != hidden / heads (16).
    "qwen3": ModelConfig.tiny(architecture="qwen3", qk_norm=True, head_dim=24),
    # Qwen2-style: q/k/v biases, tied embeddings.
    "qwen2": ModelConfig.tiny(architecture="qwen2", qkv_bias=True, tie_embeddings=True),
}


def _perturb(params, key, scale=0.3):
    """Random (non-zero) biases and norm scales so every parameter matters."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    )


def left_padded(lengths, width, vocab, seed=0):
    """Left-padded random tokens, mask and HF positions `clip(cumsum(mask) - 1, 0)`."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    tokens = rng.integers(1, vocab, size=(n, width)).astype(np.int32)
    mask = (np.arange(width)[None] >= (width - np.asarray(lengths))[:, None]).astype(np.int32)
    tokens = tokens * mask  # pad id 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)
    return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)


N, P, STEPS = 3, 6, 4  # one batch shape shared by the tests (compiled once per config)
LENGTHS = (6, 3, 1)  # prompt lengths, left-padded to P


def shared_batch(vocab, seed=0):
    """Left-padded prompts [N, P] followed by STEPS valid tokens: tokens, positions, mask [N, P+STEPS]."""
    full_tokens, _, _ = left_padded([l + STEPS for l in LENGTHS], P + STEPS, vocab, seed)
    p_mask = (np.arange(P)[None] >= (P - np.asarray(LENGTHS))[:, None]).astype(np.int32)
    mask = jnp.asarray(np.concatenate([p_mask, np.ones((N, STEPS), np.int32)], axis=1))
    positions = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0)
    return full_tokens * mask, positions, mask


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    config = CONFIGS[request.param]
    params = _perturb(init_params(config, jax.random.key(0)), jax.random.key(1), scale=0.05)
    tokens, positions, mask = shared_batch(config.vocab_size)
    full_logits, no_cache = apply(config, params, tokens, positions, mask)
    assert no_cache is None and full_logits.shape == (N, P + STEPS, config.vocab_size)
    return config, params, (tokens, positions, mask), full_logits


def test_cache_decode_equals_full_forward(model):
    """Prefill (index 0, S = P) then S = 1 steps through one code path == one full pass."""
    config, params, (tokens, positions, mask), full_logits = model
    cache = init_cache(config, N, P + STEPS + 2)
    step_logits, cache = apply(config, params, tokens[:, :P], positions[:, :P], mask[:, :P], cache)
    got = [step_logits]
    for t in range(P, P + STEPS):
        logits_t, cache = apply(
            config, params, tokens[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1], cache
        )
        got.append(logits_t)
        if t == P:
            compiled = apply._cache_size()
    assert apply._cache_size() == compiled  # the cache index is traced: decode never recompiles
    got = jnp.concatenate(got, axis=1)
    assert int(cache["index"]) == P + STEPS
    np.testing.assert_array_equal(np.asarray(cache["mask"][:, : P + STEPS]), np.asarray(mask))
    assert not np.asarray(cache["mask"][:, P + STEPS :]).any()
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(
        np.asarray(got)[valid], np.asarray(full_logits)[valid], atol=1e-5, rtol=0
    )
    assert np.isfinite(np.asarray(got)).all() and np.isfinite(np.asarray(full_logits)).all()


def test_last_only_is_last_column(model):
    config, params, (tokens, positions, mask), full = model
    last, _ = apply(config, params, tokens, positions, mask, last_only=True)
    assert last.shape == (N, 1, config.vocab_size)
    np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1:]), atol=1e-6, rtol=0)
    # prefill with a cache and last_only: the prompt's last column, cache filled
    prompt = (tokens[:, :P], positions[:, :P], mask[:, :P])
    last_c, cache = apply(
        config, params, *prompt, init_cache(config, N, P + STEPS + 2), last_only=True
    )
    np.testing.assert_allclose(
        np.asarray(last_c), np.asarray(full[:, P - 1 : P]), atol=1e-5, rtol=0
    )
    assert int(cache["index"]) == P


def test_lm_head_on_hidden_matches_apply(model):
    config, params, (tokens, positions, mask), full = model
    hidden = apply_hidden(config, params, tokens, positions, mask)
    assert hidden.shape == (N, P + STEPS, config.hidden_size)
    chunks = [lm_head(config, params, hidden[:, i : i + 5]) for i in (0, 5)]
    np.testing.assert_allclose(
        np.asarray(jnp.concatenate(chunks, 1)), np.asarray(full), atol=1e-6, rtol=0
    )


def test_causal_and_padding_invariance(model):
    """Changing a future token or a pad token's id leaves earlier valid logits unchanged."""
    config, params, (tokens, positions, mask), base = model
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % config.vocab_size)  # future token
    changed = changed.at[2, 0].set(7)  # a pad slot
    out, _ = apply(config, params, changed, positions, mask)
    valid = np.asarray(mask, bool).copy()
    valid[:, -1] = False
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(base)[valid], atol=1e-6, rtol=0)
    assert np.abs(np.asarray(out)[:, -1] - np.asarray(base)[:, -1]).max() > 1e-3


def test_padding_never_nan_and_remat_grads():
    """A fully padded row gives finite logits and gradients; remat changes nothing."""
    config = CONFIGS["llama"]
    params = init_params(config, jax.random.key(3))
    tokens = jnp.zeros((2, 4), jnp.int32).at[1, 2:].set(jnp.array([5, 6]))
    mask = jnp.array([[0, 0, 0, 0], [0, 0, 1, 1]], jnp.int32)
    positions = jnp.clip(jnp.cumsum(mask, 1) - 1, 0)
    logits, cache = apply(config, params, tokens, positions, mask, init_cache(config, 2, 6))
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(cache["k"])).all()

    def loss(c, p):
        return (apply(c, p, tokens, positions, mask)[0] * mask[..., None]).std()

    g0 = jax.jit(jax.grad(functools.partial(loss, config)))(params)
    g1 = jax.jit(jax.grad(functools.partial(loss, config.replace(remat=True))))(params)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    assert np.abs(np.asarray(g0["layers"]["attn"]["q_proj"]["kernel"])).max() > 0


def test_bf16_compute_gives_float32_logits():
    config = CONFIGS["llama"]
    params = init_params(config, jax.random.key(4))
    tokens, positions, mask = shared_batch(config.vocab_size, seed=4)
    ref, _ = apply(config, params, tokens, positions, mask)
    bf16 = config.replace(dtype="bfloat16")
    out, _ = apply(bf16, params, tokens, positions, mask)
    assert out.dtype == jnp.float32
    valid = np.asarray(mask, bool)
    err = np.abs(np.asarray(out) - np.asarray(ref))[valid].max()
    assert 0 < err < 0.05 * np.abs(np.asarray(ref)).max() + 1e-2
    # bf16 parameters storage with bf16 KV cache
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out16, cache = apply(
        bf16.replace(param_dtype="bfloat16"),
        p16,
        tokens,
        positions,
        mask,
        init_cache(bf16, N, P + STEPS),
    )
    assert out16.dtype == jnp.float32 and cache["k"].dtype == jnp.bfloat16


def test_param_shapes_and_logical_axes():
    config = CONFIGS["qwen3"]
    params = init_params(config, jax.random.key(0))
    specs = logical_axes(config)
    assert jax.tree.structure(params) == jax.tree.structure(
        specs, is_leaf=lambda x: isinstance(x, tuple)
    )
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for _path, x in flat:
        assert not hasattr(x, "names")  # unboxed plain arrays
    layer = params["layers"]["attn"]
    L, H, nh, nkv, d = 2, 64, 4, 2, 24
    assert layer["q_proj"]["kernel"].shape == (L, H, nh, d)
    assert layer["k_proj"]["kernel"].shape == (L, H, nkv, d)
    assert layer["o_proj"]["kernel"].shape == (L, nh, d, H)
    assert layer["q_norm"]["scale"].shape == (L, d)
    assert specs["layers"]["attn"]["q_proj"]["kernel"] == ("layers", "embed", "heads", "head_dim")
    assert specs["layers"]["attn"]["k_norm"]["scale"] == ("layers", "head_dim")
    assert specs["embed"]["embedding"] == ("vocab", "embed")
    assert specs["lm_head"]["kernel"] == ("embed", "vocab")
    assert "lm_head" not in init_params(CONFIGS["qwen2"], jax.random.key(0))
    assert (
        CONFIGS["qwen2"].tie_embeddings
        and "bias" in init_params(CONFIGS["qwen2"], jax.random.key(0))["layers"]["attn"]["q_proj"]
    )
    # layers are initialised independently
    k = layer["q_proj"]["kernel"]
    assert not np.allclose(np.asarray(k[0]), np.asarray(k[1]))


def test_rope_llama3_inv_freq_hand_computed():
    """llama3 scaling with L=16, low=1, high=4, factor 8, head_dim 8, theta 10000."""
    config = ModelConfig.tiny(
        head_dim=8,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )
    inv = np.array([1.0, 0.1, 0.01, 0.001])  # 10000^(-2i/8)
    wavelen = 2 * np.pi / inv  # 6.28, 62.8, 628, 6283
    # thresholds L/high = 4, L/low = 16: the first is smoothed, the rest divided by the factor
    s0 = (16 / wavelen[0] - 1.0) / (4.0 - 1.0)
    expected = np.array([(1 - s0) * 1.0 / 8 + s0 * 1.0, 0.1 / 8, 0.01 / 8, 0.001 / 8])
    np.testing.assert_allclose(rope_inv_freq(config), expected, rtol=1e-6)
    config = config.replace(
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    )
    # thresholds: high-freq wavelen < 16 kept; 16 <= wavelen <= 64 smoothed; > 64 divided
    s = (64 / wavelen[1] - 1.0) / (4.0 - 1.0)
    expected = np.array([1.0, (1 - s) * 0.1 / 8 + s * 0.1, 0.01 / 8, 0.001 / 8])
    np.testing.assert_allclose(rope_inv_freq(config), expected, rtol=1e-6)
    linear = ModelConfig.tiny(head_dim=8, rope_scaling={"rope_type": "linear", "factor": 2.0})
    np.testing.assert_allclose(rope_inv_freq(linear), inv / 2.0, rtol=1e-6)


def test_value_model_from_policy():
    config = CONFIGS["llama"]
    policy = init_params(config, jax.random.key(0))
    vparams = init_value_params(config, jax.random.key(1), policy_params=policy)
    assert set(vparams) == {"embed", "layers", "final_norm", "value_head"}
    for a, b in zip(jax.tree.leaves(vparams["layers"]), jax.tree.leaves(policy["layers"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    specs = value_logical_axes(config)
    assert jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(
        vparams
    )
    tokens, positions, mask = shared_batch(config.vocab_size, seed=6)
    values = apply_value(config, vparams, tokens, positions, mask)
    assert values.shape == (N, P + STEPS) and values.dtype == jnp.float32
    hidden = apply_hidden(config, policy, tokens, positions, mask)
    head = vparams["value_head"]
    expected = np.asarray(hidden) @ np.asarray(head["kernel"]) + float(head["bias"])
    np.testing.assert_allclose(np.asarray(values), expected, atol=1e-5)
    fresh = init_value_params(config, jax.random.key(1))
    assert not np.allclose(
        np.asarray(fresh["embed"]["embedding"]), np.asarray(policy["embed"]["embedding"])
    )


def test_shape_errors():
    config = CONFIGS["llama"]
    params = init_params(config, jax.random.key(0))
    t = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="must match"):
        apply(config, params, t, t[:, :2], t)
    with pytest.raises(ValueError, match="cache k has shape"):
        apply(config, params, t, t, t, init_cache(config, 3, 8))
    with pytest.raises(ValueError, match="exceed cache max_len"):
        apply(config, params, t, t, t, init_cache(config, 2, 2))
    with pytest.raises(ValueError, match="supported"):
        ModelConfig.tiny(architecture="gpt2")
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig.tiny(num_kv_heads=3)
    assert hash(ModelConfig.tiny()) == hash(ModelConfig.tiny())


def test_unstacked_layers_compute_the_same(model):
    """`unstack_layers`: per-layer parameter trees, layers unrolled = the stacked scan, with and
    without a KV cache (prefill, then decode steps); the wrong layer count is refused."""
    from jaxrl_llm.models import unstack_layers

    config, params, (tokens, positions, mask), full_logits = model
    split = unstack_layers(params)
    assert len(split["layers"]) == config.num_layers and unstack_layers(split) is split
    q_stack = params["layers"]["attn"]["q_proj"]["kernel"]
    for i, layer in enumerate(split["layers"]):
        np.testing.assert_array_equal(layer["attn"]["q_proj"]["kernel"], q_stack[i])
    logits, _ = apply(config, split, tokens, positions, mask)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full_logits), atol=1e-5, rtol=0)
    caches = [init_cache(config, N, P + STEPS), init_cache(config, N, P + STEPS)]
    for t0, t1 in [(0, P)] + [(t, t + 1) for t in range(P, P + STEPS)]:
        outs = [
            apply(config, p, tokens[:, t0:t1], positions[:, t0:t1], mask[:, t0:t1], c)
            for p, c in zip((params, split), caches)
        ]
        (want, _), (got, _) = outs
        caches = [c for _, c in outs]
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    for name in ("k", "v", "mask"):
        np.testing.assert_allclose(
            np.asarray(caches[1][name]), np.asarray(caches[0][name]), atol=1e-5, rtol=0
        )
    short = dict(split, layers=split["layers"][:-1])
    with pytest.raises(ValueError, match="unstacked layers"):
        apply(config, short, tokens, positions, mask)
