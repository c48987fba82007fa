"""Vocabulary-blocked LM-head log-probs: token log-probs and entropies, no `[N, S, V]` tensor.

The plain path builds `z = (h @ W) / T` for the whole vocabulary and takes
`log_softmax(z)[target]`. Here `z` is built `vocab_block` columns at a time inside a
`lax.scan`, with an online log-sum-exp (Milakov & Gimelshein 2018, "Online normalizer
calculation for softmax"; the same recurrence as flash attention and the Liger /
Apple "cut cross-entropy" kernels), and a `jax.custom_vjp` whose backward recomputes
each block's logits, so neither pass holds more than one `[N·S, vocab_block]` block:

    z_v  = float32(h · W[:, v]) / T
    m    = max_v z_v,   s = Σ_v exp(z_v − m),   a = Σ_v exp(z_v − m) (z_v − m)
    logp = z_target − lse,          lse = m + log s
    H    = lse − Σ_v p_v z_v = log s − a / s                 (as `losses.entropy.token_entropy`)

Per block b, with m' = max(m, max_v∈b z_v) and c = exp(m − m'):

    s ← c·s + Σ_b exp(z − m')
    a ← c·(a + (m − m')·s) + Σ_b exp(z − m')(z − m')
    m ← m'

Backward, with p_v = exp(z_v − lse) recomputed per block and upstream cotangents
(g_logp, g_H):

    ∂logp/∂z_v = 1[v = target] − p_v,      ∂H/∂z_v = −p_v (log p_v + H)
    dz = (g_logp (onehot − p) − g_H p (log p + H)) / T
    dh += dz · W_bᵀ  (float32, summed over blocks),   dW_b = hᵀ · dz  (each column once)

Blocks: block i reads columns `[start_i, start_i + vocab_block)` with
`start_i = min(i·vocab_block, V − vocab_block)`. When V is not a multiple of the block,
the last block re-reads the tail of the one before; exactly those columns get logit
−inf (as if the last block were padded with −inf logits) and zero gradient, and no
padded copy of W is made.

The temperature is a constant of the computation (no gradient flows to it).

Why in `models/`: the model owns the LM head (which matrix, the tied `[V, D]` or untied
`[D, V]` layout, the compute dtype); `lm_head_logprobs` is the model-aware entry, and
`blocked_token_logprobs` the array-level function it calls. The module is not named
`lm_head.py` because importing a submodule `models.lm_head` would replace the function
`models.lm_head` on the package.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["blocked_token_logprobs", "lm_head_logprobs"]

_LAYOUTS = ("dv", "vd")


def _vocab_size(w, layout):
    return w.shape[1] if layout == "dv" else w.shape[0]


def _block_logits(h, w, t, i, *, block, layout, compute_dtype):
    """Block i: (z [M, block] float32 with −inf on re-read columns, start, valid [block])."""
    vocab = _vocab_size(w, layout)
    lo = i * block
    start = jnp.minimum(lo, vocab - block)
    axis = 1 if layout == "dv" else 0
    wb = lax.dynamic_slice_in_dim(w, start, block, axis=axis).astype(compute_dtype)
    spec = "md,dv->mv" if layout == "dv" else "md,vd->mv"
    logits = jnp.einsum(spec, h.astype(compute_dtype), wb, preferred_element_type=jnp.float32)
    valid = start + jnp.arange(block) >= lo
    z = jnp.where(valid, logits.astype(jnp.float32) / t[:, None], -jnp.inf)
    return z, wb, start, valid


def _target_hit(targets, i, start, block):
    """Whether each row's target lies in block i (not re-read), and its index in the block."""
    local = targets - start
    hit = (targets >= i * block) & (local < block)
    return hit, jnp.clip(local, 0, block - 1)


def _forward(h, w, targets, t, block, layout, compute_dtype, with_entropy):
    m_rows = h.shape[0]
    num_blocks = -(-_vocab_size(w, layout) // block)
    f32 = jnp.float32

    def step(carry, i):
        m, s, a, picked = carry
        z, _, start, valid = _block_logits(
            h, w, t, i, block=block, layout=layout, compute_dtype=compute_dtype
        )
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        c = jnp.exp(m - m_new)
        shifted = z - m_new[:, None]
        e = jnp.exp(shifted)  # 0 on re-read columns
        s_new = c * s + jnp.sum(e, axis=-1)
        if with_entropy:
            prev = jnp.where(s > 0, (m - m_new) * s, 0.0)  # s = 0 (m = −inf) before block 0
            a = c * (a + prev) + jnp.sum(jnp.where(valid, e * shifted, 0.0), axis=-1)
        hit, local = _target_hit(targets, i, start, block)
        z_t = jnp.take_along_axis(z, local[:, None], axis=-1)[:, 0]
        picked = jnp.where(hit, z_t, picked)
        return (m_new, s_new, a, picked), None

    init = (
        jnp.full((m_rows,), -jnp.inf, f32),
        jnp.zeros((m_rows,), f32),
        jnp.zeros((m_rows,), f32),
        jnp.zeros((m_rows,), f32),
    )
    (m, s, a, picked), _ = lax.scan(step, init, jnp.arange(num_blocks))
    log_s = jnp.log(s)
    lse = m + log_s
    ent = log_s - a / s if with_entropy else jnp.zeros_like(lse)
    return picked - lse, ent, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _blocked(h, w, targets, t, block, layout, compute_dtype, with_entropy):
    lp, ent, _ = _forward(h, w, targets, t, block, layout, compute_dtype, with_entropy)
    return lp, ent


def _blocked_fwd(h, w, targets, t, block, layout, compute_dtype, with_entropy):
    lp, ent, lse = _forward(h, w, targets, t, block, layout, compute_dtype, with_entropy)
    return (lp, ent), (h, w, targets, t, lse, ent)


def _blocked_bwd(block, layout, compute_dtype, with_entropy, res, cotangents):
    h, w, targets, t, lse, ent = res
    g_lp, g_ent = cotangents
    num_blocks = -(-_vocab_size(w, layout) // block)
    h32 = h.astype(compute_dtype).astype(jnp.float32)

    def step(carry, i):
        dh, dw = carry
        z, wb, start, valid = _block_logits(
            h, w, t, i, block=block, layout=layout, compute_dtype=compute_dtype
        )
        log_p = z - lse[:, None]  # −inf on re-read columns
        p = jnp.exp(log_p)
        hit, local = _target_hit(targets, i, start, block)
        onehot = hit[:, None] & (jnp.arange(block)[None, :] == local[:, None])
        dz = g_lp[:, None] * (onehot.astype(jnp.float32) - p)
        if with_entropy:
            dz = dz - g_ent[:, None] * p * jnp.where(valid, log_p + ent[:, None], 0.0)
        dz = dz / t[:, None]
        wb32 = wb.astype(jnp.float32)
        if layout == "dv":
            dh = dh + jnp.einsum("mv,dv->md", dz, wb32)
            dwb = jnp.einsum("md,mv->dv", h32, dz).astype(w.dtype)
            old = lax.dynamic_slice_in_dim(dw, start, block, axis=1)
            dw = lax.dynamic_update_slice_in_dim(dw, old + dwb, start, axis=1)
        else:
            dh = dh + jnp.einsum("mv,vd->md", dz, wb32)
            dwb = jnp.einsum("md,mv->vd", h32, dz).astype(w.dtype)
            old = lax.dynamic_slice_in_dim(dw, start, block, axis=0)
            dw = lax.dynamic_update_slice_in_dim(dw, old + dwb, start, axis=0)
        return (dh, dw), None

    init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros_like(w))
    (dh, dw), _ = lax.scan(step, init, jnp.arange(num_blocks))
    return dh.astype(h.dtype), dw, None, jnp.zeros_like(t)


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_token_logprobs(
    h,
    w,
    targets,
    temperature=1.0,
    *,
    vocab_block: int,
    with_entropy: bool = False,
    w_layout: str = "dv",
    compute_dtype=None,
):
    """`log_softmax(h @ W / T)[target]` (and the entropy), vocabulary block by block.

    Args:
      h: final hidden states `[..., D]` (any float dtype).
      w: the LM-head matrix, `[D, V]` (`w_layout="dv"`, an untied `lm_head.kernel`) or
        `[V, D]` (`w_layout="vd"`, a tied `embed.embedding`).
      targets: int `[...]`, the tokens whose log-probs are wanted.
      temperature: a scalar or an array of shape `targets.shape`, > 0 (no gradient).
      vocab_block: columns per block, > 0 (clipped to V).
      with_entropy: also return the entropy of `softmax(h @ W / T)`; otherwise zeros.
      compute_dtype: dtype `h` and each block of `w` are cast to before the matmul
        (accumulation is float32); default: the promoted dtype of `h` and `w`.
    Returns:
      `(logp, entropy)`, float32 `[...]` each. Gradients flow to `h` and `w` (in their
      dtypes), computed block by block as well.
    """
    if w_layout not in _LAYOUTS:
        raise ValueError(f"w_layout={w_layout!r} is not one of {list(_LAYOUTS)}")
    if h.ndim < 1 or w.ndim != 2:
        raise ValueError(f"h must be [..., D] and w 2-D, got {h.shape} and {w.shape}")
    d = w.shape[0] if w_layout == "dv" else w.shape[1]
    if h.shape[-1] != d:
        raise ValueError(f"h.shape[-1]={h.shape[-1]} does not match w {w.shape} ({w_layout})")
    if h.shape[:-1] != targets.shape:
        raise ValueError(f"h.shape[:-1]={h.shape[:-1]} must equal targets.shape={targets.shape}")
    if int(vocab_block) <= 0:
        raise ValueError(f"vocab_block must be > 0, got {vocab_block}")
    block = min(int(vocab_block), _vocab_size(w, w_layout))
    compute_dtype = jnp.dtype(compute_dtype or jnp.promote_types(h.dtype, w.dtype))
    t = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), targets.shape)
    lead = targets.shape
    lp, ent = _blocked(
        h.reshape(-1, d),
        w,
        targets.reshape(-1).astype(jnp.int32),
        lax.stop_gradient(t).reshape(-1),
        block,
        w_layout,
        compute_dtype,
        bool(with_entropy),
    )
    return lp.reshape(lead), ent.reshape(lead)


def lm_head_logprobs(
    config, params, hidden, targets, temperature=1.0, *, vocab_block: int, with_entropy=False
):
    """Token log-probs (and entropies) of the model's LM head, `vocab_block` columns at a time.

    The blocked counterpart of `token_logprobs(lm_head(config, params, hidden), targets, T)`
    (and `token_entropy(logits / T)`): the same head matrix (the tied embedding when
    `config.tie_embeddings`), cast to `config.dtype` with float32 accumulation.
    Returns `(logp, entropy)`, float32 `[...]`.
    """
    if config.tie_embeddings:
        w, layout = params["embed"]["embedding"], "vd"
    else:
        w, layout = params["lm_head"]["kernel"], "dv"
    return blocked_token_logprobs(
        hidden,
        w,
        targets,
        temperature,
        vocab_block=vocab_block,
        with_entropy=with_entropy,
        w_layout=layout,
        compute_dtype=config.dtype,
    )
