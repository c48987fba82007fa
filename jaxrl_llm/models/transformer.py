"""Decoder-only transformer (Llama / Qwen2 / Qwen3) in Flax Linen, with a functional API.

Architecture (pre-norm, as in Llama, Touvron et al. 2023, and Qwen2/3):

    h_0   = Embed(tokens)
    h'    = h_l + Attn(RMSNorm(h_l))           GQA, RoPE, optional qkv bias / per-head q,k RMSNorm
    h_l+1 = h' + W_down (silu(W_gate x) * W_up x),  x = RMSNorm(h')        (SwiGLU, Shazeer 2020)
    logits = RMSNorm(h_L) @ W_head             (W_head = Embed^T when embeddings are tied)

The layers are one `nn.scan` over a leading `layers` axis of the stacked
parameters, so compile time does not grow with depth; `config.remat` wraps
the block in `nn.remat`. The stacked KV cache rides in the scan's carry and
each layer writes its new keys / values into it in place (one
`dynamic_update_slice` at `(layer, 0, index)`), so a decode step touches one
token's worth of cache per layer instead of copying the cache.

Functional entry points (everything else in the library calls these):

    params = init_params(config, key)
    logits, cache = apply(config, params, tokens, positions, mask, cache=None, *, last_only=False)
    hidden = apply_hidden(config, params, tokens, positions, mask)     # final-norm states [N, S, H]
    logits = lm_head(config, params, hidden)                           # float32 [..., V]
    cache = init_cache(config, batch, max_len, dtype=None)
    specs = logical_axes(config)
    dparams = fuse_decode_params(config, params)   # decode copy: one qkv and one gate/up matmul

Masking conventions: prompts are left-padded, `positions = clip(cumsum(mask) - 1, 0)`.
Without a cache a query attends causally (by slot) to keys whose mask is 1.
With a cache the S new tokens are written at slots `[index, index + S)`; query
`i` (slot `index + i`) attends to slots `<= index + i` whose cache mask is 1.
Fully masked query rows get a uniform (finite) attention, never NaN.
Ragged caches (continuous batching): `index` may be a per-row int32 `[N]` cursor, and
`apply(..., kv_len=k)` reads only the first `k` cache slots (the filled prefix).
A one-token step given `kv_start` (each row's valid slots are one span) attends through
`config.decode_attention` (`attention_kernels.decode_attention` on GPU).

Activations carry logical axis names (`batch`, `length`, `kv_length`, `embed`,
`mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, `layers`) through
`nn.with_logical_constraint`; they take effect when the caller runs under a mesh
and logical rules, e.g.
`with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules): jax.jit(...)`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from jaxrl_llm.models import attention_kernels
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.rope import apply_rope, rope_cos_sin
from jaxrl_llm.parallel import axes as A

__all__ = [
    "RMSNorm",
    "Attention",
    "MLP",
    "Proj",
    "Embed",
    "Block",
    "Backbone",
    "attention_mask",
    "init_params",
    "init_cache",
    "cache_logical_axes",
    "apply",
    "apply_hidden",
    "unstack_layers",
    "fuse_decode_params",
    "fused_logical_axes",
    "lm_head",
    "logical_axes",
]

Params = dict[str, Any]
_CACHE_AXES = (A.LAYERS, A.BATCH, A.KV_LENGTH, A.KV_HEADS, A.HEAD_DIM)
# What `config.remat` keeps per layer, by `config.remat_policy` (models/config.py): None
# recomputes everything; the names are the `checkpoint_name` tags in Attention and MLP.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "qkv_attn": jax.checkpoint_policies.save_only_these_names("query", "key", "value", "context"),
    "block_outputs": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}

_NEG = -1e30  # finite "minus infinity": fully masked rows soften to uniform, not NaN
_INIT_STD = 0.02


def _constrain(x, names):
    return nn.with_logical_constraint(x, names)


def _param(module: nn.Module, name: str, shape, names, init, cfg: ModelConfig):
    """A parameter annotated with logical axis names (boxed at init, plain at apply)."""
    return module.param(
        name, nn.with_logical_partitioning(init, names), shape, jnp.dtype(cfg.param_dtype)
    )


# -------------------------------------------------------------------------- masks
def attention_mask(
    mask: jax.Array, cache_mask: jax.Array | None = None, index=None, segment_ids=None
) -> jax.Array:
    """Boolean `[N, S, K]`: may query i attend to key slot j.

    No cache: `j <= i and mask[j]` (K = S), and with `segment_ids` (int `[N, S]`, packed
    rows) also `segment_ids[i] == segment_ids[j]`. With a cache whose mask already holds
    the new tokens: `j <= index + i and cache_mask[j]`, K = `cache_mask.shape[1]`
    (the cache's max_len, or a shorter `kv_len` prefix of it). `index` is a scalar
    (all rows share one slot cursor) or int32 `[N]` (row n's queries sit at slots
    `index[n] + i`).
    """
    n, s = mask.shape
    q_slot = jnp.arange(s)[:, None]
    if cache_mask is None:
        k_slot = jnp.arange(s)[None, :]
        allowed = (k_slot <= q_slot)[None] & (mask[:, None, :] > 0)
        if segment_ids is not None:
            allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
        return allowed
    k_slot = jnp.arange(cache_mask.shape[1])[None, :]
    if jnp.ndim(index) == 1:  # per-row cursors
        causal = k_slot[None] <= q_slot[None] + index[:, None, None]
        return causal & (cache_mask[:, None, :] > 0)
    return (k_slot <= q_slot + index)[None] & (cache_mask[:, None, :] > 0)


def _attention_inputs(
    cfg: ModelConfig, mask, cache_mask=None, index=None, segment_ids=None, kv_start=None
):
    """What every layer's attention reads: the XLA path's boolean `allowed [N, S, K]`, or,
    for a cache-free pass whose `cfg.attention` resolves to a fused kernel on this platform,
    that kernel's `attention_kernels.KernelLayout`, or, for a one-token step with a cache and
    `kv_start` whose `cfg.decode_attention` resolves to a kernel, an
    `attention_kernels.DecodeLayout` (row n's slots `[kv_start[n], index + 1)`)."""
    if kv_start is not None and cache_mask is not None and mask.shape[1] == 1:
        platform = jax.default_backend()
        impl = attention_kernels.resolve_decode(cfg.decode_attention, platform=platform)
        if impl != "xla":
            attention_kernels.check_platform(
                impl, platform, interpret=cfg.attention_interpret, field="decode_attention"
            )
            end = jnp.broadcast_to(jnp.asarray(index, jnp.int32) + 1, kv_start.shape)
            return attention_kernels.DecodeLayout(
                kv_start.astype(jnp.int32),
                end,
                kv_len=cache_mask.shape[1],
                interpret=cfg.attention_interpret,
            )
    if cache_mask is None and cfg.attention != "xla":
        platform = jax.default_backend()
        impl = attention_kernels.resolve(
            cfg.attention, packed=segment_ids is not None, platform=platform, dtype=cfg.dtype
        )
        if impl != "xla":
            for name in (cfg.attention, impl):
                attention_kernels.check_platform(name, platform, interpret=cfg.attention_interpret)
            return attention_kernels.make_layout(
                impl, mask, segment_ids, interpret=cfg.attention_interpret
            )
    return attention_mask(mask, cache_mask, index, segment_ids)


# ------------------------------------------------------------------------ modules
class RMSNorm(nn.Module):
    """`y = w * x / sqrt(mean(x^2) + eps)` (Zhang & Sennrich 2019), statistics in float32."""

    config: ModelConfig
    dim: int
    axis_name: str = A.EMBED

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        scale = _param(self, "scale", (self.dim,), (self.axis_name,), nn.initializers.ones, cfg)
        xf = x.astype(jnp.float32)
        y = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.rms_norm_eps)
        dtype = jnp.dtype(cfg.dtype)
        return scale.astype(dtype) * y.astype(dtype)


class Proj(nn.Module):
    """Linear map: inputs `[N, S, *in]` contracted with the leading `len(in)` kernel axes.

    `kernel` has shape `(*in, *out)`, e.g. q: `[embed, heads, head_dim]`,
    o: `[heads, head_dim, embed]` (contracts two axes); optional `bias` of shape `out`.
    """

    config: ModelConfig
    shape: tuple
    names: tuple
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        kernel = _param(
            self, "kernel", self.shape, self.names, nn.initializers.normal(_INIT_STD), cfg
        )
        n_in = x.ndim - 2  # inputs are [N, S, *in]
        y = lax.dot_general(
            x.astype(dtype),
            kernel.astype(dtype),
            ((tuple(range(2, x.ndim)), tuple(range(n_in))), ((), ())),
        )
        if self.use_bias:
            out_shape, out_names = self.shape[n_in:], self.names[n_in:]
            bias = _param(self, "bias", out_shape, out_names, nn.initializers.zeros, cfg)
            y = y + bias.astype(dtype)
        return y


class Attention(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023) with RoPE and an optional KV cache.

    `allowed` is the boolean `[N, S, K]` mask of the XLA path (scores materialised), or a
    `attention_kernels.KernelLayout` when a cache-free pass runs a fused kernel
    (`config.attention`, made by `_attention_inputs`)."""

    config: ModelConfig
    fused: bool = False  # one `qkv_proj` kernel (`fuse_decode_params`) instead of q/k/v

    @nn.compact
    def __call__(self, x, cos, sin, allowed, kv, layer, index):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h, nh, nkv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if self.fused:  # [N, S, kv_heads, groups + 2, head_dim]: a group's q heads, then k, v
            g = nh // nkv
            qkv = Proj(cfg, (h, nkv, g + 2, d), FUSED_QKV_AXES, cfg.qkv_bias, name=FUSED_QKV)(x)
            q = qkv[:, :, :, :g, :].reshape(*x.shape[:2], nh, d)
            k, v = qkv[:, :, :, g, :], qkv[:, :, :, g + 1, :]
        else:
            q = Proj(cfg, (h, nh, d), (A.EMBED, A.HEADS, A.HEAD_DIM), cfg.qkv_bias, name="q_proj")(
                x
            )
            k = Proj(
                cfg, (h, nkv, d), (A.EMBED, A.KV_HEADS, A.HEAD_DIM), cfg.qkv_bias, name="k_proj"
            )(x)
            v = Proj(
                cfg, (h, nkv, d), (A.EMBED, A.KV_HEADS, A.HEAD_DIM), cfg.qkv_bias, name="v_proj"
            )(x)
        if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim, per head, before RoPE
            q = RMSNorm(cfg, d, A.HEAD_DIM, name="q_norm")(q)
            k = RMSNorm(cfg, d, A.HEAD_DIM, name="k_norm")(k)
        q = _constrain(apply_rope(q, cos, sin), (A.BATCH, A.LENGTH, A.HEADS, A.HEAD_DIM))
        k = apply_rope(k, cos, sin)
        # names for remat policies (`REMAT_POLICIES`); identities outside `nn.remat`
        q, k = checkpoint_name(q, "query"), checkpoint_name(k, "key")
        v = checkpoint_name(v, "value")

        if kv is not None:
            # `kv` is the whole stacked cache [L, N, max_len, kv_heads, head_dim], carried
            # through the layer scan: the S new keys/values are written in place at
            # (layer, :, index), and this layer's slice is read back. (Scanning the cache
            # as per-layer input/output instead makes XLA copy all of it every step.)
            # A per-row cursor `index [N]` scatters row n's S entries to its own slots
            # `[index[n], index[n] + S)`. When `allowed` covers only a `kv_len` prefix of
            # the slots, only that prefix is read (prefix-bucketed attention).
            k_all, v_all = kv
            if jnp.ndim(index) == 1:
                rows = jnp.arange(k.shape[0])[:, None]
                slots = index[:, None] + jnp.arange(k.shape[1])[None, :]
                k_all = k_all.at[layer, rows, slots].set(k.astype(k_all.dtype), mode="drop")
                v_all = v_all.at[layer, rows, slots].set(v.astype(v_all.dtype), mode="drop")
            else:
                at = (layer, 0, index, 0, 0)
                k_all = lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), at)
                v_all = lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), at)
            k_all = _constrain(k_all, _CACHE_AXES)
            v_all = _constrain(v_all, _CACHE_AXES)
            kv = (k_all, v_all)
            if isinstance(allowed, attention_kernels.DecodeLayout):
                kv_len = allowed.kv_len
            else:
                kv_len = allowed.shape[-1]
            if kv_len < k_all.shape[2]:
                size = (1, *k_all.shape[1:2], kv_len, *k_all.shape[3:])
                at = (layer, 0, 0, 0, 0)
                k = lax.dynamic_slice(k_all, at, size)[0].astype(dtype)
                v = lax.dynamic_slice(v_all, at, size)[0].astype(dtype)
            else:
                k = lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False).astype(dtype)
                v = lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False).astype(dtype)
        k = _constrain(k, (A.BATCH, A.KV_LENGTH, A.KV_HEADS, A.HEAD_DIM))
        v = _constrain(v, (A.BATCH, A.KV_LENGTH, A.KV_HEADS, A.HEAD_DIM))

        if isinstance(allowed, attention_kernels.KernelLayout):  # fused, cache-free
            out = attention_kernels.attend(q, k, v, allowed)
        elif isinstance(allowed, attention_kernels.DecodeLayout):  # one token, a span per row
            out = attention_kernels.decode_attention(q, k, v, allowed)
        else:
            n, s = q.shape[:2]
            groups = nh // nkv
            qg = q.reshape(n, s, nkv, groups, d)
            scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
            scores = scores * (d**-0.5)
            scores = jnp.where(allowed[:, None, None, :, :], scores, _NEG)
            probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
            out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v).reshape(n, s, nh, d)
        out = checkpoint_name(_constrain(out, (A.BATCH, A.LENGTH, A.HEADS, A.HEAD_DIM)), "context")
        y = Proj(cfg, (nh, d, h), (A.HEADS, A.HEAD_DIM, A.EMBED), False, name="o_proj")(out)
        return checkpoint_name(y, "attn_out"), kv


class MLP(nn.Module):
    """SwiGLU feed-forward: `W_down (silu(W_gate x) * W_up x)`."""

    config: ModelConfig
    fused: bool = False  # one `gate_up_proj` kernel `[embed, 2, mlp]` instead of gate / up

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h, m = cfg.hidden_size, cfg.intermediate_size
        if self.fused:
            gu = Proj(cfg, (h, 2, m), FUSED_GATE_UP_AXES, False, name=FUSED_GATE_UP)(x)
            g, u = gu[:, :, 0, :], gu[:, :, 1, :]
        else:
            g = Proj(cfg, (h, m), (A.EMBED, A.MLP), False, name="gate_proj")(x)
            u = Proj(cfg, (h, m), (A.EMBED, A.MLP), False, name="up_proj")(x)
        a = _constrain(jax.nn.silu(g) * u, (A.BATCH, A.LENGTH, A.MLP))
        return checkpoint_name(
            Proj(cfg, (m, h), (A.MLP, A.EMBED), False, name="down_proj")(a), "mlp_out"
        )


class Block(nn.Module):
    """One pre-norm decoder layer, the scan body: `carry = (hidden, stacked KV cache or None)`,
    `xs = layer index` (which slice of the stacked cache is this layer's)."""

    config: ModelConfig
    fused: bool = False

    @nn.compact
    def __call__(self, carry, layer, cos, sin, allowed, index):
        cfg = self.config
        x, kv = carry
        h = RMSNorm(cfg, cfg.hidden_size, name="attn_norm")(x)
        a, kv = Attention(cfg, self.fused, name="attn")(h, cos, sin, allowed, kv, layer, index)
        x = x + a
        h = RMSNorm(cfg, cfg.hidden_size, name="mlp_norm")(x)
        x = x + MLP(cfg, self.fused, name="mlp")(h)
        x = _constrain(x, (A.BATCH, A.LENGTH, A.EMBED))
        return (x, kv), None


class Embed(nn.Module):
    """Token embedding table `[vocab, embed]`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens):
        cfg = self.config
        emb = _param(
            self,
            "embedding",
            (cfg.vocab_size, cfg.hidden_size),
            (A.VOCAB, A.EMBED),
            nn.initializers.normal(_INIT_STD),
            cfg,
        )
        return jnp.take(emb, tokens, axis=0)


class Backbone(nn.Module):
    """Embedding → scanned blocks → final RMSNorm. Returns `(hidden [N, S, H], new_kv)`."""

    config: ModelConfig
    fused: bool = False  # layers hold `fuse_decode_params` kernels

    @nn.compact
    def __call__(
        self,
        tokens,
        positions,
        mask,
        kv=None,
        cache_mask=None,
        index=None,
        segment_ids=None,
        kv_start=None,
    ):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        x = Embed(cfg, name="embed")(tokens).astype(dtype)
        x = _constrain(x, (A.BATCH, A.LENGTH, A.EMBED))
        cos, sin = rope_cos_sin(cfg, positions)
        allowed = _attention_inputs(cfg, mask, cache_mask, index, segment_ids, kv_start)

        block = Block
        if cfg.remat:
            block = nn.remat(Block, prevent_cse=False, policy=REMAT_POLICIES[cfg.remat_policy])
        layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: A.LAYERS},
        )(cfg, self.fused, name="layers")
        (x, new_kv), _ = layers(
            (x, kv), jnp.arange(cfg.num_layers, dtype=jnp.int32), cos, sin, allowed, index
        )
        x = RMSNorm(cfg, cfg.hidden_size, name="final_norm")(x)
        return x, new_kv


# -------------------------------------------------------------- functional API
_BACKBONE_KEYS = ("embed", "layers", "final_norm")


def _init_boxed(config: ModelConfig, key: jax.Array) -> Params:
    """Parameters with `nn.LogicallyPartitioned` boxes (names per axis)."""
    k_body, k_head = jax.random.split(key)
    dummy = jnp.zeros((1, 1), jnp.int32)
    # the parameters do not depend on the attention kernel: trace init with the XLA path
    backbone = Backbone(config.replace(attention="xla"))
    params = dict(backbone.init(k_body, dummy, dummy, jnp.ones_like(dummy))["params"])
    if not config.tie_embeddings:
        kernel = nn.initializers.normal(_INIT_STD)(
            k_head, (config.hidden_size, config.vocab_size), jnp.dtype(config.param_dtype)
        )
        params["lm_head"] = {"kernel": nn.LogicallyPartitioned(kernel, (A.EMBED, A.VOCAB))}
    return params


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random parameters (normal(0.02) kernels, unit norms, zero biases), a plain nested dict.

    Layout: `{"embed": {"embedding": [V, H]}, "layers": {...stacked [L, ...]},
    "final_norm": {"scale": [H]}, "lm_head": {"kernel": [H, V]}}` (no `lm_head`
    when embeddings are tied). Jittable with `config` static, so it can be
    initialised sharded: `jax.jit(init_params, static_argnums=0, out_shardings=...)`.
    The public functions here are already `jax.jit`-wrapped (config static), so
    eager calls compile once; inside an outer jit they are inlined.
    """
    shapes = nn.unbox(jax.eval_shape(functools.partial(_init_boxed, config), key))
    return _draw_params(shapes, key)


# Below this many kernel entries all kernels come from one normal draw (one
# threefry in the program: XLA compiles it in a fraction of a second, instead
# of ~0.25 s per drawn tensor); above it each kernel has its own draw, so a
# sharded init never materialises one flat vector of all parameters.
_FLAT_INIT_MAX = 1 << 26


def _draw_params(shapes: Params, key: jax.Array) -> Params:
    """Fill a pytree of `ShapeDtypeStruct`s: `scale` → 1, `bias` → 0, kernels → N(0, 0.02²)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    kinds = [jax.tree_util.keystr(path[-1:]) for path, _ in flat]
    kernels = [i for i, k in enumerate(kinds) if "scale" not in k and "bias" not in k]
    sizes = [math.prod(flat[i][1].shape) for i in kernels]
    draws = {}
    if sum(sizes) <= _FLAT_INIT_MAX:
        noise = jax.random.normal(key, (sum(sizes),), jnp.float32)
        offset = 0
        for i, n in zip(kernels, sizes):
            draws[i] = noise[offset : offset + n].reshape(flat[i][1].shape)
            offset += n
    else:
        for i in kernels:
            draws[i] = jax.random.normal(jax.random.fold_in(key, i), flat[i][1].shape, jnp.float32)
    leaves = []
    for i, ((_, sds), kind) in enumerate(zip(flat, kinds)):
        if i in draws:
            leaves.append((_INIT_STD * draws[i]).astype(sds.dtype))
        elif "scale" in kind:
            leaves.append(jnp.ones(sds.shape, sds.dtype))
        else:
            leaves.append(jnp.zeros(sds.shape, sds.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _is_box(x):
    return isinstance(x, nn.LogicallyPartitioned)


def logical_axes(config: ModelConfig) -> Params:
    """Pytree like `init_params(config, key)` whose leaves are tuples of logical axis names."""
    boxed = jax.eval_shape(functools.partial(_init_boxed, config), jax.random.key(0))
    return jax.tree.map(lambda b: tuple(b.names), boxed, is_leaf=_is_box)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: `k`, `v` `[layers, N, max_len, kv_heads, head_dim]`, `mask` `[N, max_len]`, `index` 0."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "mask": jnp.zeros((batch, max_len), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def cache_logical_axes(config: ModelConfig) -> dict:
    """Logical axis names of `init_cache(...)` (for `logical_to_sharding`)."""
    return {"k": _CACHE_AXES, "v": _CACHE_AXES, "mask": (A.BATCH, A.KV_LENGTH), "index": ()}


def _check_inputs(config, tokens, positions, mask, cache, kv_len=None, kv_start=None):
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [N, S], got shape {tokens.shape}")
    if positions.shape != tokens.shape or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens {tokens.shape}, positions {positions.shape} and mask {mask.shape} must match"
        )
    if cache is not None:
        want = (config.num_layers, tokens.shape[0])
        if tuple(cache["k"].shape[:2]) != want or cache["k"].shape[3:] != (
            config.num_kv_heads,
            config.head_dim,
        ):
            raise ValueError(
                f"cache k has shape {cache['k'].shape}; expected "
                f"[{config.num_layers}, {tokens.shape[0]}, max_len, {config.num_kv_heads}, {config.head_dim}]"
            )
        if tokens.shape[1] > cache["k"].shape[2]:
            raise ValueError(
                f"{tokens.shape[1]} new tokens exceed cache max_len {cache['k'].shape[2]}"
            )
        if jnp.ndim(cache["index"]) not in (0, 1) or (
            jnp.ndim(cache["index"]) == 1 and cache["index"].shape[0] != tokens.shape[0]
        ):
            raise ValueError(
                f"cache index has shape {jnp.shape(cache['index'])}; expected () or "
                f"({tokens.shape[0]},)"
            )
    if kv_len is not None:
        if cache is None:
            raise ValueError("kv_len needs a cache: it limits attention to cache slots")
        if not tokens.shape[1] <= kv_len <= cache["k"].shape[2]:
            raise ValueError(
                f"kv_len={kv_len} must be in [{tokens.shape[1]}, cache max_len "
                f"{cache['k'].shape[2]}]"
            )
    if kv_start is not None and (cache is None or jnp.shape(kv_start) != tokens.shape[:1]):
        raise ValueError(
            f"kv_start must be int [N] = [{tokens.shape[0]}] with a cache, got shape "
            f"{jnp.shape(kv_start)}" + ("" if cache is not None else " without a cache")
        )


def unstack_layers(params: Params) -> Params:
    """`params` with the stacked `layers` (leading axis L) split into a tuple of L per-layer trees.

    `apply` / `apply_hidden` accept either form and compute the same thing. The stacked
    form is one `scan` over layers (compile time independent of depth); inside a decode
    loop, XLA then copies each layer's weight slice out of the stack at every step, which
    costs a second pass over the layer weights when decoding is bound by reading them
    (few rows). Unstacked, the layers are unrolled and each reads its own arrays in
    place; splitting costs one copy of the layer weights (time and memory), so do it
    once outside the loop (the sampler does, for small batches).
    """
    layers = params["layers"]
    if isinstance(layers, (tuple, list)):
        return params
    n = jax.tree.leaves(layers)[0].shape[0]
    return dict(params, layers=tuple(jax.tree.map(lambda a, i=i: a[i], layers) for i in range(n)))


# Names and logical axes of the kernels that `fuse_decode_params` makes.
FUSED_QKV = "qkv_proj"  # kernel [embed, kv_heads, groups + 2, head_dim] (+ bias without embed)
FUSED_GATE_UP = "gate_up_proj"  # kernel [embed, 2, mlp]
FUSED_QKV_AXES = (A.EMBED, A.KV_HEADS, None, A.HEAD_DIM)
FUSED_GATE_UP_AXES = (A.EMBED, None, A.MLP)


def _first_layer(params: Params) -> Params:
    layers = params["layers"]
    return layers[0] if isinstance(layers, (tuple, list)) else layers


def _is_fused(params: Params) -> bool:
    return FUSED_QKV in _first_layer(params)["attn"]


def _fuse_layer(config: ModelConfig, layer: Params) -> Params:
    """One layer tree (any leading axes, e.g. the stacked `layers` axis) with fused kernels."""
    nkv, g = config.num_kv_heads, config.num_heads // config.num_kv_heads
    attn, mlp = dict(layer["attn"]), dict(layer["mlp"])
    q, k, v = (attn.pop(name) for name in ("q_proj", "k_proj", "v_proj"))

    def group(qx, kx, vx):  # q [..., heads, d] -> [..., kv_heads, groups, d]; k, v as 1 group
        qx = qx.reshape(*qx.shape[:-2], nkv, g, qx.shape[-1])
        return jnp.concatenate([qx, kx[..., None, :], vx[..., None, :]], axis=-2)

    attn[FUSED_QKV] = {"kernel": group(q["kernel"], k["kernel"], v["kernel"])}
    if config.qkv_bias:
        attn[FUSED_QKV]["bias"] = group(q["bias"], k["bias"], v["bias"])
    gate, up = mlp.pop("gate_proj"), mlp.pop("up_proj")
    mlp[FUSED_GATE_UP] = {"kernel": jnp.stack([gate["kernel"], up["kernel"]], axis=-2)}
    return dict(layer, attn=attn, mlp=mlp)


def fuse_decode_params(config: ModelConfig, params: Params) -> Params:
    """`params` with each layer's q/k/v kernels fused into one `qkv_proj` and gate/up into one
    `gate_up_proj` kernel, so a layer runs one matmul for each instead of three and two.

    Layouts (the query head of kv head `j`, group member `i`, is head `j * groups + i`, as in
    `Attention`):
      `qkv_proj.kernel [H, kv_heads, groups + 2, head_dim]`: slot `< groups` of kv head `j` is
        its group's query heads, slot `groups` its key, `groups + 1` its value; `bias`
        (qwen2) `[kv_heads, groups + 2, head_dim]` likewise;
      `gate_up_proj.kernel [H, 2, mlp]`: `[:, 0]` gate, `[:, 1]` up.
    Grouping by KV head keeps the `kv_heads` and `mlp` axes whole, so a tensor-parallel split
    of either axis still holds whole q/k/v (gate/up) pieces on each shard.

    A copy for decoding only: `apply` / `apply_hidden` recognise the fused layers (stacked or
    `unstack_layers`-unstacked, before or after fusing) and compute the same function up to
    float rounding (one matmul sums in its own order). The trainer's parameters, their names
    and checkpoints are untouched; fused params are not what `logical_axes(config)` describes
    (`fused_logical_axes` does). Already fused params are returned as they are.
    """
    if _is_fused(params):
        return params
    layers = params["layers"]
    if isinstance(layers, (tuple, list)):
        fused = tuple(_fuse_layer(config, layer) for layer in layers)
    else:
        fused = _fuse_layer(config, layers)
    return dict(params, layers=fused)


def fused_logical_axes(config: ModelConfig) -> Params:
    """`logical_axes(config)` for `fuse_decode_params(config, params)` (stacked layers)."""
    specs = logical_axes(config)
    layers = specs["layers"]
    attn, mlp = dict(layers["attn"]), dict(layers["mlp"])
    lead = attn.pop("q_proj")["kernel"][:-3]  # the stacked `layers` axis
    attn.pop("k_proj"), attn.pop("v_proj"), mlp.pop("gate_proj"), mlp.pop("up_proj")
    attn[FUSED_QKV] = {"kernel": lead + FUSED_QKV_AXES}
    if config.qkv_bias:
        attn[FUSED_QKV]["bias"] = lead + FUSED_QKV_AXES[1:]
    mlp[FUSED_GATE_UP] = {"kernel": lead + FUSED_GATE_UP_AXES}
    return dict(specs, layers=dict(layers, attn=attn, mlp=mlp))


def _backbone_unstacked(
    config, params, tokens, positions, mask, kv, cache_mask, index, segment_ids=None, kv_start=None
):
    """`Backbone` with per-layer parameter trees: the same modules, unrolled over layers."""
    if len(params["layers"]) != config.num_layers:
        raise ValueError(
            f"params hold {len(params['layers'])} unstacked layers; the config has "
            f"num_layers = {config.num_layers}"
        )
    x = Embed(config).apply({"params": params["embed"]}, tokens).astype(jnp.dtype(config.dtype))
    x = _constrain(x, (A.BATCH, A.LENGTH, A.EMBED))
    cos, sin = rope_cos_sin(config, positions)
    allowed = _attention_inputs(config, mask, cache_mask, index, segment_ids, kv_start)
    block = (
        nn.remat(Block, prevent_cse=False, policy=REMAT_POLICIES[config.remat_policy])
        if config.remat
        else Block
    )
    fused = _is_fused(params)
    for i, layer in enumerate(params["layers"]):
        (x, kv), _ = block(config, fused).apply(
            {"params": layer}, (x, kv), jnp.asarray(i, jnp.int32), cos, sin, allowed, index
        )
    x = RMSNorm(config, config.hidden_size).apply({"params": params["final_norm"]}, x)
    return x, kv


def _forward(
    config, params, tokens, positions, mask, cache, kv_len=None, segment_ids=None, kv_start=None
):
    _check_inputs(config, tokens, positions, mask, cache, kv_len, kv_start)
    body = {k: params[k] for k in _BACKBONE_KEYS}
    tokens = tokens.astype(jnp.int32)
    positions = positions.astype(jnp.int32)
    mask = mask.astype(jnp.int32)
    unstacked = isinstance(body["layers"], (tuple, list))
    if segment_ids is not None:
        if cache is not None:
            raise ValueError("segment_ids (packed rows) are for cache-free passes only")
        if segment_ids.shape != tokens.shape:
            raise ValueError(f"segment_ids {segment_ids.shape} must match tokens {tokens.shape}")
        segment_ids = segment_ids.astype(jnp.int32)
    if cache is None:
        if unstacked:
            return _backbone_unstacked(
                config, body, tokens, positions, mask, None, None, None, segment_ids
            )[0], None
        hidden, _ = Backbone(config, _is_fused(body)).apply(
            {"params": body}, tokens, positions, mask, segment_ids=segment_ids
        )
        return hidden, None
    index = jnp.asarray(cache["index"], jnp.int32)
    if index.ndim == 1:  # per-row cursors: row n's new tokens go to its own slots
        rows = jnp.arange(tokens.shape[0])[:, None]
        slots = index[:, None] + jnp.arange(tokens.shape[1])[None, :]
        cache_mask = (
            cache["mask"].at[rows, slots].set(mask.astype(cache["mask"].dtype), mode="drop")
        )
    else:
        cache_mask = lax.dynamic_update_slice(
            cache["mask"], mask.astype(cache["mask"].dtype), (0, index)
        )
    # Attention reads the first `kv_len` slots only; the mask's width tells the layers.
    attend = cache_mask if kv_len is None else cache_mask[:, :kv_len]
    kv = (cache["k"], cache["v"])
    if unstacked:
        hidden, (k, v) = _backbone_unstacked(
            config, body, tokens, positions, mask, kv, attend, index, None, kv_start
        )
    else:
        hidden, (k, v) = Backbone(config, _is_fused(body)).apply(
            {"params": body}, tokens, positions, mask, kv, attend, index, None, kv_start
        )
    new_cache = {"k": k, "v": v, "mask": cache_mask, "index": index + tokens.shape[1]}
    return hidden, new_cache


def lm_head(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """Float32 logits `hidden @ W_head` (`W_head = embedding^T` when tied); hidden `[..., H]`."""
    dtype = jnp.dtype(config.dtype)
    if config.tie_embeddings:
        w = params["embed"]["embedding"].astype(dtype)
        logits = jnp.einsum(
            "...e,ve->...v", hidden.astype(dtype), w, preferred_element_type=jnp.float32
        )
    else:
        w = params["lm_head"]["kernel"].astype(dtype)
        logits = jnp.einsum(
            "...e,ev->...v", hidden.astype(dtype), w, preferred_element_type=jnp.float32
        )
    if logits.ndim == 3:
        logits = _constrain(logits, (A.BATCH, A.LENGTH, A.VOCAB))
    return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("last_only", "kv_len"))
def apply(
    config: ModelConfig,
    params: Params,
    tokens,
    positions,
    mask,
    cache=None,
    *,
    last_only=False,
    kv_len=None,
    segment_ids=None,
    kv_start=None,
):
    """Forward pass: `(logits float32 [N, S, V] (or [N, 1, V] if last_only), new cache or None)`.

    tokens/positions/mask int32 `[N, S]` (left-padded; `positions = clip(cumsum(mask) - 1, 0)`).
    With a `cache` (from `init_cache`) the S tokens are written at slots
    `[index, index + S)`, the cache mask is set from `mask` there, and the
    returned cache has `index + S`: prefill (index 0, S = P) and decode (S = 1)
    share this path. `last_only=True` applies the head to the last position only.
    The caller keeps `index + S <= max_len` (a traced index cannot be checked;
    `dynamic_update_slice` would clamp the write).

    Ragged caches: `cache["index"]` may be an int32 `[N]` vector of per-row cursors; row
    n's S tokens then go to its slots `[index[n], index[n] + S)` and its query i attends
    to slots `<= index[n] + i` (writes past max_len are dropped). A scalar index keeps
    the shared-cursor program exactly as it was.
    `kv_len` (static int, optional): attention reads only cache slots `[0, kv_len)`, so a
    decode step costs the filled prefix, not all max_len slots; the new tokens are still
    written at their slots, and the caller keeps them (every `index + S`) `<= kv_len`.
    Equal, up to float rounding, to full attention whenever no attended slot lies past
    `kv_len`.
    `segment_ids` (int `[N, S]`, cache-free passes only): packed rows, a query attends only
    to keys of its own segment; positions restart per segment (`models.packing`).
    `kv_start` (int32 `[N]`, optional, one-token steps with a cache): the caller states that
    row n's valid cache slots are exactly `[kv_start[n], index + 1)` (no holes; the samplers'
    left-padded rows), which lets `config.decode_attention` run a kernel over that span; with
    `decode_attention` resolving to "xla" it is ignored, and a span that does not match the
    cache mask is attended as stated (the caller's promise).
    """
    hidden, new_cache = _forward(
        config, params, tokens, positions, mask, cache, kv_len, segment_ids, kv_start
    )
    if last_only:
        hidden = hidden[:, -1:, :]
    return lm_head(config, params, hidden), new_cache


@functools.partial(jax.jit, static_argnums=0)
def apply_hidden(
    config: ModelConfig, params: Params, tokens, positions, mask, segment_ids=None
) -> jax.Array:
    """Final-norm hidden states `[N, S, H]` (compute dtype), for chunked `lm_head` log-probs;
    `segment_ids` as in `apply`."""
    hidden, _ = _forward(config, params, tokens, positions, mask, None, segment_ids=segment_ids)
    return hidden
