"""Drawing the next token: temperature, top-k, top-p, min-p, greedy.

All truncations are expressed as one per-row threshold on the scaled logits
`z = logits / temperature`: a token is kept iff `z_i >= tau`, with

    tau = max(tau_k, tau_p, tau_min_p)
    tau_k     = k-th largest z                       (top-k; Fan et al. 2018)
    tau_p     = z of the last token of the nucleus   (top-p; Holtzman et al. 2020)
    tau_min_p = max(z) + log(min_p)                  (min-p; Nguyen et al. 2024)

This is the HF transformers warper order (temperature -> top-k -> top-p on the
top-k survivors -> min-p); tokens tied with the threshold are all kept, as in
HF's top-k. The nucleus is the shortest prefix of the descending order whose
mass reaches top_p (a token is kept iff the mass strictly before it is
< top_p).

Cost: nothing here sorts the full vocabulary on the common paths.
- No truncation (the default): one fused pass over [N, V] (exp, compare,
  block sums) and a draw by inverse CDF (below); no Gumbel noise, so only N
  random numbers per step instead of N·V.
- top-k (static k): `top_k_values(z, k)` (exact, block pre-filter, no full
  sort), and top-p is then exact inside those k.
- top-p without top-k: `top_k_values(z, TOP_P_CANDIDATES)`; if every row's nucleus
  ends inside those candidates (usual for trained models) that is exact; else
  an exact bisection over the float order (32 passes, no sort) runs for that
  step (`lax.cond`, so it costs only when needed). The
  sampler picks the untruncated fast path (`truncate=False`) once per call
  when top_p == 1 and min_p == 0, so the common case pays for no threshold.
- Greedy: `argmax_first`, two vectorised reductions.

Inverse-CDF draw: with weights w_i = exp(z_i - max z)·[z_i >= tau] and one
uniform u per row, the token is the first i with cumsum(w)_i > u·sum(w). The
cumulative sum is taken in two levels (block sums over `_BLOCK` tokens, then
inside the chosen block), so it touches V + V/_BLOCK + _BLOCK numbers per row.
P(i) = w_i / sum(w) exactly, up to float32 rounding of the sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "TOP_P_CANDIDATES",
    "argmax_first",
    "top_k_values",
    "truncation_threshold",
    "sample_from_weights",
    "sample_tokens",
]

TOP_P_CANDIDATES = 256  # static candidate cap for the top-p fast path
_BLOCK = 256  # block size of the two-level inverse CDF
_TOPK_BLOCK = 64  # block size of the top-k pre-filter


def _first_above(cum: jax.Array, target: jax.Array) -> jax.Array:
    """Index of the first entry of the non-decreasing `cum` [..., K] that is > target [...].

    Clamped to the last index with a positive increment, so float rounding of
    `target` past the total never lands on a zero-weight entry.
    """
    idx = jnp.sum(cum <= target[..., None], axis=-1)
    last_positive = jnp.sum(cum < cum[..., -1:], axis=-1)
    return jnp.minimum(idx, last_positive).astype(jnp.int32)


def sample_from_weights(key: jax.Array, weights: jax.Array) -> jax.Array:
    """Draw i with probability weights[r, i] / sum_i weights[r, i], per row.

    Args:
      key: PRNG key (the N uniforms are `uniform(key, (N,))`), or a vector of N typed
        keys (`jax.random.key`), one per row: row r's uniform is `uniform(key[r], ())`,
        so its draw does not depend on the other rows (per-row keys).
      weights: float32 [N, V], non-negative, each row with a positive sum.
    Returns:
      int32 [N].
    """
    if weights.ndim != 2:
        raise ValueError(f"sample_from_weights: weights must be [N, V], got {weights.shape}")
    n, v = weights.shape
    block = min(_BLOCK, v)
    pad = (-v) % block
    if pad:
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    blocks = weights.reshape(n, -1, block)  # [N, nb, C]
    block_cum = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [N, nb]
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1:
        u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(key)
    else:
        u = jax.random.uniform(key, (n,), jnp.float32)
    target = u * block_cum[:, -1]
    b = _first_above(block_cum, target)  # [N]
    before = jnp.where(
        b > 0, jnp.take_along_axis(block_cum, jnp.maximum(b - 1, 0)[:, None], axis=-1)[:, 0], 0.0
    )
    inner = jnp.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0, :]  # [N, C]
    i = _first_above(jnp.cumsum(inner, axis=-1), target - before)
    return b * block + i


def _nucleus_cut(sorted_z: jax.Array, log_norm: jax.Array, top_p: jax.Array):
    """Top-p threshold from the descending candidates `sorted_z` [N, K].

    `log_norm` [N, 1] is the log-normaliser of the distribution the nucleus is
    taken over. Returns `(tau [N, 1], complete [N])`; `complete` says the
    nucleus ends inside the K candidates (always true when they are the whole
    support).
    """
    q = jnp.exp(sorted_z - log_norm)
    cum = jnp.cumsum(q, axis=-1)
    before = jnp.concatenate([jnp.zeros_like(cum[:, :1]), cum[:, :-1]], axis=-1)
    n_keep = jnp.sum(before < top_p, axis=-1)  # >= 1 since before[:, 0] = 0 < top_p
    tau = jnp.take_along_axis(sorted_z, (n_keep - 1)[:, None], axis=-1)
    return tau, cum[:, -1] >= top_p


def top_k_values(z: jax.Array, k: int) -> jax.Array:
    """The k largest entries of each row of z [N, V], descending, exactly, without a full sort.

    Block pre-filter: split V into blocks of `_TOPK_BLOCK`; the k blocks with
    the largest maxima contain the k largest entries (a block holding one of
    them has max >= the k-th largest value, and at most k blocks can, since
    each holds a distinct such entry; with ties the k-th value is still
    exact). So `lax.top_k` runs over N x (V / C) block maxima and then over the
    k·C gathered candidates instead of over V (XLA's CPU top-k over a 150k
    vocabulary costs ~100 ms per row).
    """
    n, v = z.shape
    block = _TOPK_BLOCK
    if k * block >= v // 2:
        return jax.lax.top_k(z, k)[0]
    pad = (-v) % block
    if pad:
        z = jnp.pad(z, ((0, 0), (0, pad)), constant_values=-jnp.inf)
    blocks = z.reshape(n, -1, block)
    _, chosen = jax.lax.top_k(jnp.max(blocks, axis=-1), k)  # [N, k]
    cand = jnp.take_along_axis(blocks, chosen[:, :, None], axis=1).reshape(n, k * block)
    return jax.lax.top_k(cand, k)[0]


def _descending(z: jax.Array, k: int) -> jax.Array:
    return top_k_values(z, k)


def _ordered_key(x: jax.Array) -> jax.Array:
    """float32 -> int32 with the same order (flip the magnitude bits of negatives)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _from_key(key: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ 0x7FFFFFFF, key), jnp.float32)


def _nucleus_bisect(z: jax.Array, log_norm: jax.Array, top_p) -> jax.Array:
    """Exact top-p threshold [N, 1] by bisection over the float32 order, no sort.

    With f(t) = mass of the tokens with z > t (non-increasing), a token is in
    the nucleus iff f(z_i) < top_p. Bisection keeps f(lo) >= top_p > f(hi)
    over the int32 keys of the floats; after 32 halvings lo and hi are
    adjacent floats, so the nucleus is exactly {z >= hi}. 32 fused passes over
    [N, V] instead of a sort (XLA's CPU sort of 16 x 150k floats takes ~1.5 s).
    """
    probs = jnp.exp(z - log_norm)
    lo = _ordered_key(jnp.min(z, axis=-1)) - 1
    hi = _ordered_key(jnp.max(z, axis=-1))

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)
        mass = jnp.sum(jnp.where(z > _from_key(mid)[:, None], probs, 0.0), axis=-1)
        above = mass >= top_p
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return _from_key(hi)[:, None]


def truncation_threshold(z: jax.Array, top_p, min_p, *, top_k: int = 0) -> jax.Array:
    """Per-row threshold tau [N, 1] on scaled logits z [N, V] (module docstring)."""
    if z.ndim != 2:
        raise ValueError(f"truncation_threshold: z must be [N, V], got {z.shape}")
    n, v = z.shape
    top_p = jnp.asarray(top_p, jnp.float32)
    min_p = jnp.asarray(min_p, jnp.float32)
    z_max = jnp.max(z, axis=-1, keepdims=True)
    tau = z_max + jnp.log(min_p)  # -inf when min_p == 0
    neg_inf = jnp.full((n, 1), -jnp.inf, jnp.float32)

    if top_k and top_k < v:
        cand = _descending(z, top_k)  # [N, k], exact support of the top-k distribution
        tau = jnp.maximum(tau, cand[:, -1:])
        log_norm = jax.nn.logsumexp(cand, axis=-1, keepdims=True)
        tau_p, _ = _nucleus_cut(cand, log_norm, top_p)
        tau = jnp.maximum(tau, jnp.where(top_p < 1.0, tau_p, neg_inf))
        return tau

    def nucleus(z):
        log_norm = jax.nn.logsumexp(z, axis=-1, keepdims=True)
        cap = min(TOP_P_CANDIDATES, v)
        tau_c, complete = _nucleus_cut(_descending(z, cap), log_norm, top_p)
        if cap == v:
            return tau_c
        return jax.lax.cond(
            jnp.all(complete), lambda z: tau_c, lambda z: _nucleus_bisect(z, log_norm, top_p), z
        )

    tau_p = jax.lax.cond(top_p < 1.0, nucleus, lambda z: neg_inf, z)
    return jnp.maximum(tau, tau_p)


def argmax_first(x: jax.Array) -> jax.Array:
    """`argmax` over the last axis (first index on ties) as two vectorised reductions.

    Same result as `jnp.argmax` for non-NaN input; on CPU the (value, index)
    pair reduction of `jnp.argmax` is about 3x slower over a 150k vocabulary.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1).astype(jnp.int32)


def sample_tokens(
    key: jax.Array,
    logits: jax.Array,
    temperature=1.0,
    top_p=1.0,
    min_p=0.0,
    *,
    top_k: int = 0,
    greedy: bool = False,
    truncate: bool = True,
) -> jax.Array:
    """Next tokens int32 [N] from logits [N, V].

    `key` is one PRNG key or N typed keys, one per row (`sample_from_weights`).
    `greedy`, `top_k` and `truncate` are static; `temperature`, `top_p`,
    `min_p` may be traced scalars. Greedy is the arg-max of the logits (first
    index on ties, as torch.argmax in HF `generate`). `truncate=False` skips
    the top-p / min-p thresholds (the caller knows top_p == 1 and min_p == 0;
    the sampler decides this once per call, not once per token).
    """
    if logits.ndim != 2:
        raise ValueError(f"sample_tokens: logits must be [N, V], got {logits.shape}")
    if greedy:
        return argmax_first(logits)
    z = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    z_max = jnp.max(z, axis=-1, keepdims=True)
    if not truncate and not top_k:
        return sample_from_weights(key, jnp.exp(z - z_max))
    tau = truncation_threshold(z, top_p, min_p, top_k=top_k)
    weights = jnp.where(z >= tau, jnp.exp(z - z_max), 0.0)
    return sample_from_weights(key, weights)
