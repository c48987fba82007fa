"""Fused decode weights: `fuse_decode_params` layout, fused forward = unfused forward,
`generate(..., fused=True)` = `generate(...)` (greedy tokens exactly, log-probs to 1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.models.transformer import fused_logical_axes
from jaxrl_llm.rollout import SamplingParams, fuse_decode_params, generate, pad_prompts

CONFIGS = {
    "llama": models.ModelConfig.tiny(),  # GQA: 4 query heads on 2 KV heads
    "qwen2": models.ModelConfig.tiny(architecture="qwen2", qkv_bias=True, tie_embeddings=True),
    "qwen3": models.ModelConfig.tiny(architecture="qwen3", qk_norm=True, head_dim=24),
    "mqa": models.ModelConfig.tiny(num_heads=4, num_kv_heads=1, vocab_size=32),
}


def _params(config, seed=0, scale=4.0):
    """Random params with non-trivial biases and norm scales (not zeros / ones); `scale`
    sharpens the next-token distributions."""
    p = models.init_params(config, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(
        tree,
        [x * scale + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)],
    )


def test_fused_layout_and_axes():
    config = CONFIGS["qwen2"]
    p = _params(config)
    f = fuse_decode_params(config, p)
    attn, mlp = p["layers"]["attn"], p["layers"]["mlp"]
    qkv, gu = f["layers"]["attn"]["qkv_proj"], f["layers"]["mlp"]["gate_up_proj"]
    g = config.num_heads // config.num_kv_heads
    assert set(f["layers"]["attn"]) == {"qkv_proj", "o_proj"}
    assert set(f["layers"]["mlp"]) == {"gate_up_proj", "down_proj"}
    for j in range(config.num_kv_heads):
        for i in range(g):  # query head j * g + i is member i of KV head j's group
            np.testing.assert_array_equal(
                qkv["kernel"][:, :, j, i], attn["q_proj"]["kernel"][:, :, j * g + i]
            )
            np.testing.assert_array_equal(
                qkv["bias"][:, j, i], attn["q_proj"]["bias"][:, j * g + i]
            )
        np.testing.assert_array_equal(qkv["kernel"][:, :, j, g], attn["k_proj"]["kernel"][:, :, j])
        np.testing.assert_array_equal(
            qkv["kernel"][:, :, j, g + 1], attn["v_proj"]["kernel"][:, :, j]
        )
        np.testing.assert_array_equal(qkv["bias"][:, j, g + 1], attn["v_proj"]["bias"][:, j])
    np.testing.assert_array_equal(gu["kernel"][:, :, 0], mlp["gate_proj"]["kernel"])
    np.testing.assert_array_equal(gu["kernel"][:, :, 1], mlp["up_proj"]["kernel"])
    # the caller's tree is untouched; fusing twice is a no-op; the axes pytree matches
    assert "q_proj" in p["layers"]["attn"]
    assert fuse_decode_params(config, f) is f
    specs = fused_logical_axes(config)
    shapes = jax.tree.map(jnp.shape, f)
    assert jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(
        shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    jax.tree.map(
        lambda names, shape: len(names) == len(shape) or pytest.fail(f"{names} vs {shape}"),
        specs,
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_forward_equals_unfused(name):
    """Logits of the fused params (stacked, unstacked) = unfused within 1e-5, with padding."""
    config = CONFIGS[name]
    p = _params(config, scale=1.0)
    tokens = jax.random.randint(jax.random.key(2), (3, 7), 0, config.vocab_size)
    mask = jnp.ones_like(tokens).at[0, :3].set(0).at[2, :1].set(0)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    want, _ = models.apply(config, p, tokens, positions, mask)
    for fused in (
        fuse_decode_params(config, p),
        fuse_decode_params(config, models.unstack_layers(p)),
    ):
        got, _ = models.apply(config, fused, tokens, positions, mask)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert float(jnp.abs(want).max()) > 1.0  # the comparison is not between near-zeros


@pytest.fixture(scope="module")
def qwen2_setup():
    config = CONFIGS["qwen2"].replace(vocab_size=96)
    prompts = pad_prompts(
        [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [19]],
        bucket_lengths=(8,),
        pad_id=0,
    )
    return config, _params(config), prompts


def test_generate_fused_greedy_same_tokens(qwen2_setup):
    """Greedy, stacked layers (the scan), a stop token: the same tokens and masks; the
    log-probs within 1e-5 (the fused matmul sums in its own order)."""
    config, p, prompts = qwen2_setup
    sp = SamplingParams(max_new_tokens=10, greedy=True, stop_token_ids=(3,), n=2)
    kw = dict(unstack_layers=False)
    base = generate(p, config, prompts, jax.random.key(0), sp, **kw)
    fused = generate(p, config, prompts, jax.random.key(0), sp, fused=True, **kw)
    np.testing.assert_array_equal(fused.tokens, base.tokens)
    np.testing.assert_array_equal(fused.mask, base.mask)
    np.testing.assert_array_equal(fused.truncated, base.truncated)
    np.testing.assert_allclose(fused.sampler_logp, base.sampler_logp, atol=1e-5)


def test_generate_fused_sampled_same_tokens(qwen2_setup):
    """Sampled (temperature 1, unstacked layers): the same key gives the same tokens here.
    A draw could flip only if its uniform fell within ~1e-6 (the logit rounding) of a
    category boundary; the log-probs agree within 1e-5."""
    config, p, prompts = qwen2_setup
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, n=2)
    base = generate(p, config, prompts, jax.random.key(4), sp)
    fused = generate(p, config, prompts, jax.random.key(4), sp, fused=True)
    # already fused params are used as they are
    prefused = generate(fuse_decode_params(config, p), config, prompts, jax.random.key(4), sp)
    np.testing.assert_array_equal(fused.tokens, base.tokens)
    np.testing.assert_array_equal(prefused.tokens, base.tokens)
    np.testing.assert_allclose(fused.sampler_logp, base.sampler_logp, atol=1e-5)
    assert len(np.unique(np.asarray(base.tokens))) > 5  # really sampled, not one token


def test_generate_fused_on_a_mesh(qwen2_setup):
    """FSDP/tensor-sharded trainer params fused inside the program, and params fused once and
    placed by `fused_logical_axes`: the single-device greedy tokens on a 2x2x2 mesh."""
    from jaxrl_llm.parallel import axes as A
    from jaxrl_llm.parallel.mesh import make_mesh

    config, p, prompts = qwen2_setup
    sp = SamplingParams(max_new_tokens=6, greedy=True, n=2)
    base = generate(p, config, prompts, jax.random.key(0), sp, unstack_layers=False)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    kw = dict(mesh=mesh, rules=A.DEFAULT_RULES, unstack_layers=False)
    sharded = jax.device_put(p, A.logical_to_sharding(models.logical_axes(config), mesh, shapes=p))
    got = generate(sharded, config, prompts, jax.random.key(0), sp, fused=True, **kw)
    np.testing.assert_array_equal(got.tokens, base.tokens)
    f = fuse_decode_params(config, p)
    f = jax.device_put(f, A.logical_to_sharding(fused_logical_axes(config), mesh, shapes=f))
    qkv = f["layers"]["attn"]["qkv_proj"]["kernel"]  # [layers, embed, kv_heads, g + 2, d]
    assert qkv.addressable_shards[0].data.shape[1:3] == (config.hidden_size // 2, 1)
    got = generate(f, config, prompts, jax.random.key(0), sp, **kw)
    np.testing.assert_array_equal(got.tokens, base.tokens)
    np.testing.assert_allclose(got.sampler_logp, base.sampler_logp, atol=1e-5)
