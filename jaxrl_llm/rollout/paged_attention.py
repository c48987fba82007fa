"""Paged KV layouts and one-token decode attention over them: a tested building block for
ragged / paged decode kernels. The sampler does not use it yet (docs/rollouts.md, "Paged
decode attention").

This module owns the conversions from one layer of our contiguous KV cache to the paged
layouts of three Pallas decode kernels shipped with jax, and back, and `decode_attention`,
which runs one new query token per row through one of them or through the XLA reference.
It does not own the kernels.

Our cache (`models.init_cache`, one layer): k, v `[N, max_len, kv_heads, head_dim]` and a
cache mask `[N, max_len]`. The samplers left-pad prompts inside `[0, P)` and write token t at
slot `P + t`, so a row's valid slots are not a prefix. The convention here is **valid tokens
from slot 0**: row n's keys are slots `[0, lengths[n])`. `compact(k, v, cache_mask)` brings
any row (left padding, holes) to it with a stable gather of the valid slots to the front;
attention over a set of keys does not depend on their order (RoPE was applied when they were
written), so this is exact. Every row needs `lengths >= 1` (a decode step attends at least to
its own key); a row of length 0 gives the kernels' empty-softmax value, not the reference's.

Paging: row n's `max_len` slots (rounded up to a multiple of `page_size`) are cut into
`pages_per_seq` pages of `page_size` slots; logical page j of row n is stored at physical page
`perm[n * pages_per_seq + j]` (`perm=None`: in order) and `page_indices[n, j]` names it. All
slots are paged, valid or not, so `from_*` gives back the contiguous cache bit for bit.

| `impl`       | kernel                                                    | layout          | here (CPU)                    |
|--------------|-----------------------------------------------------------|-----------------|-------------------------------|
| `xla`        | masked softmax over `[0, length)`, as `transformer.Attention` | contiguous  | the reference                 |
| `ragged_ref` | `pallas.ops.tpu.ragged_paged_attention.ref_ragged_paged_attention` | `RaggedPages` | runs (eager only: it loops over rows in Python) |
| `ragged`     | `pallas.ops.tpu.ragged_paged_attention` (Mosaic TPU)      | `RaggedPages`   | TPU only, see below           |
| `paged`      | `pallas.ops.tpu.paged_attention` (Mosaic TPU)             | `Pages`         | TPU interpret mode            |
| `gpu`        | `pallas.ops.gpu.paged_attention` (Triton)                 | `Pages`         | `interpret=True`              |
| `gpu_decode` | `pallas.ops.gpu.decode_attention.gqa` (Triton), no paging | contiguous      | `interpret=True`              |

`RaggedPages.kv_pages` is `[total_pages, page_size, 2 * kv_heads, head_dim]` with K and V
interleaved on the combined-head axis (K head h at `2h`, V head h at `2h + 1`; the kernel's
reference reads `0::2` / `1::2`); decode has one query per row, so `cu_q_lens = [0, 1, ..., N]`
and `num_seqs = [N]`. `Pages.k_pages` / `v_pages` are `[kv_heads, total_pages, page_size,
head_dim]`, shared by the TPU and the GPU paged kernels. GQA: query head `j * groups + i` reads
KV head `j` in every path. The paged kernels take no softmax scale: q is scaled by
`head_dim ** -0.5` before them (one more rounding of q in bf16). The TPU `paged` kernel casts
the K / V pages it loads to bfloat16 (`_maybe_dequantize`, also without quantization), so
with a float32 cache it equals the XLA path on the bf16-rounded cache, not on the cache.

Why `ragged` does not run on a CPU (jax 0.10.2, under `pltpu.force_tpu_interpret_mode()`):
with head_dim 16 tracing stops at `AssertionError` in the kernel's `broadcast_to_shape`
(`shape[1] % arr.shape[1] == 0`: its softmax statistics are 128 lanes wide, so head_dim must
be a multiple of 128); with head_dim 128 it traces and the TPU interpreter fails with
`AttributeError: 'ReshapeTransform' object has no attribute 'indices'` (a reshaped ref in
the kernel's DMA wait). So on a CPU its layout is tested against `ragged_ref`, the reference
shipped with the kernel; the kernel itself needs a TPU (`impl="ragged"` elsewhere raises).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

__all__ = [
    "IMPLS",
    "Pages",
    "RaggedPages",
    "compact",
    "to_pages",
    "from_pages",
    "to_ragged_pages",
    "from_ragged_pages",
    "decode_attention",
]

IMPLS = ("xla", "ragged_ref", "ragged", "paged", "gpu", "gpu_decode")
_NEG = -1e30  # as transformer._NEG: a finite "minus infinity"


@flax.struct.dataclass
class Pages:
    """The layout of `pallas.ops.tpu.paged_attention` and `pallas.ops.gpu.paged_attention`:
    `k_pages`, `v_pages [kv_heads, total_pages, page_size, head_dim]`, `lengths` int32 `[N]`,
    `page_indices` int32 `[N, pages_per_seq]`."""

    k_pages: jax.Array
    v_pages: jax.Array
    lengths: jax.Array
    page_indices: jax.Array


@flax.struct.dataclass
class RaggedPages:
    """The layout of `pallas.ops.tpu.ragged_paged_attention` for one query token per row:
    `kv_pages [total_pages, page_size, 2 * kv_heads, head_dim]` (K at even, V at odd combined
    heads), `kv_lens` int32 `[N]`, `page_indices` int32 `[N, pages_per_seq]`, `cu_q_lens`
    int32 `[N + 1]`, `num_seqs` int32 `[1]`."""

    kv_pages: jax.Array
    kv_lens: jax.Array
    page_indices: jax.Array
    cu_q_lens: jax.Array
    num_seqs: jax.Array


def _check_cache(k, v, lengths):
    if k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"k {k.shape}, v {v.shape}: want both [N, max_len, kv_heads, head_dim]")
    if lengths.shape != k.shape[:1]:
        raise ValueError(f"lengths {lengths.shape} must be [N] = [{k.shape[0]}]")


def compact(k: jax.Array, v: jax.Array, cache_mask: jax.Array):
    """`(k, v, lengths)` with each row's valid slots (`cache_mask > 0`) moved, in order, to
    `[0, length)` and its other slots after them (a stable sort of the mask, as the cuDNN
    wrapper in `models/attention_kernels.py` does). k, v `[N, max_len, kv_heads, head_dim]`."""
    if cache_mask.shape != k.shape[:2]:
        raise ValueError(f"cache_mask {cache_mask.shape} must be [N, max_len] = {k.shape[:2]}")
    valid = (cache_mask > 0).astype(jnp.int32)
    order = jnp.argsort(1 - valid, axis=1, stable=True)[:, :, None, None]
    lengths = valid.sum(axis=1).astype(jnp.int32)
    return jnp.take_along_axis(k, order, 1), jnp.take_along_axis(v, order, 1), lengths


def _pages_per_seq(max_len: int, page_size: int) -> int:
    return -(-max_len // page_size)


def _page(x, page_size, perm):
    """[N, max_len, h, d] -> physical pages [N * pps, page_size, h, d] and page_indices [N, pps]."""
    n, max_len, h, d = x.shape
    pps = _pages_per_seq(max_len, page_size)
    x = jnp.pad(x, ((0, 0), (0, pps * page_size - max_len), (0, 0), (0, 0)))
    logical = x.reshape(n * pps, page_size, h, d)
    if perm is None:
        return logical, jnp.arange(n * pps, dtype=jnp.int32).reshape(n, pps)
    perm = jnp.asarray(perm, jnp.int32)
    if perm.shape != (n * pps,):
        raise ValueError(
            f"perm {perm.shape} must be a permutation of N * pages_per_seq = {n * pps}"
        )
    return jnp.zeros_like(logical).at[perm].set(logical), perm.reshape(n, pps)


def _unpage(physical, page_indices, max_len):
    """Inverse of `_page`: physical pages [P, page_size, h, d] -> [N, max_len, h, d]."""
    n, pps = page_indices.shape
    x = physical[page_indices.reshape(-1)]
    return x.reshape(n, pps * x.shape[1], *x.shape[2:])[:, :max_len]


def to_pages(k, v, lengths, page_size: int, *, perm=None) -> Pages:
    """Our contiguous cache (valid tokens from slot 0, `lengths [N]`) as `Pages`; logical page
    j of row n at physical page `perm[n * pages_per_seq + j]` (`None`: in order)."""
    _check_cache(k, v, lengths)
    kp, indices = _page(k, page_size, perm)
    vp, _ = _page(v, page_size, perm)
    heads_first = lambda x: jnp.transpose(x, (2, 0, 1, 3))  # noqa: E731
    return Pages(heads_first(kp), heads_first(vp), lengths.astype(jnp.int32), indices)


def from_pages(pages: Pages, max_len: int):
    """`(k, v)` `[N, max_len, kv_heads, head_dim]` back from `to_pages` (exact)."""
    slots_first = lambda x: jnp.transpose(x, (1, 2, 0, 3))  # noqa: E731
    return tuple(
        _unpage(slots_first(x), pages.page_indices, max_len) for x in (pages.k_pages, pages.v_pages)
    )


def to_ragged_pages(k, v, lengths, page_size: int, *, perm=None) -> RaggedPages:
    """Our contiguous cache (valid tokens from slot 0, `lengths [N]`) as `RaggedPages` for one
    decode query per row; pages placed as in `to_pages`."""
    _check_cache(k, v, lengths)
    n, _, h, d = k.shape
    kv = jnp.stack([k, v], axis=3).reshape(n, k.shape[1], 2 * h, d)  # K_0, V_0, K_1, V_1, ...
    kv_pages, indices = _page(kv, page_size, perm)
    cu_q_lens = jnp.arange(n + 1, dtype=jnp.int32)
    num_seqs = jnp.array([n], jnp.int32)
    return RaggedPages(kv_pages, lengths.astype(jnp.int32), indices, cu_q_lens, num_seqs)


def from_ragged_pages(pages: RaggedPages, max_len: int):
    """`(k, v)` `[N, max_len, kv_heads, head_dim]` back from `to_ragged_pages` (exact)."""
    kv = _unpage(pages.kv_pages, pages.page_indices, max_len)
    return kv[:, :, 0::2], kv[:, :, 1::2]


def _xla(q, k, v, lengths):
    """transformer.Attention's XLA path for one query per row over keys `[0, length)`."""
    n, nh, d = q.shape
    nkv = k.shape[2]
    qg = q.reshape(n, nkv, nh // nkv, d)
    scores = jnp.einsum("bhgd,bkhd->bhgk", qg, k, preferred_element_type=jnp.float32) * d**-0.5
    valid = jnp.arange(k.shape[1])[None, :] < lengths[:, None]
    scores = jnp.where(valid[:, None, None, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bhgk,bkhd->bhgd", probs, v).reshape(n, nh, d)


def _divisor(n: int, options) -> int:
    return next(b for b in options if n % b == 0)


def decode_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lengths: jax.Array,
    *,
    impl: str = "xla",
    page_size: int = 16,
    perm=None,
    interpret: bool | None = None,
) -> jax.Array:
    """Attention `[N, heads, head_dim]` of one new query per row, q `[N, heads, head_dim]`,
    over that row's keys `[0, lengths[n])` of k, v `[N, max_len, kv_heads, head_dim]` (GQA:
    heads a multiple of kv_heads), scale `head_dim ** -0.5`, by `impl` (module docstring).

    The paged impls page the cache first (`page_size`, `perm` as in `to_pages`). `interpret`
    (default: when the backend is not the kernel's) runs a Pallas kernel in interpret mode.
    `ragged_ref` runs eagerly only; `ragged` needs a TPU."""
    n, nh, d = q.shape
    _check_cache(k, v, lengths)
    if k.shape[0] != n or k.shape[3] != d or nh % k.shape[2]:
        raise ValueError(f"q {q.shape}, k {k.shape}: not one-token GQA decode attention")
    if impl not in IMPLS:
        raise ValueError(f"impl = {impl!r}; allowed: {IMPLS}")
    lengths = lengths.astype(jnp.int32)
    platform = jax.default_backend()
    scale = d**-0.5
    if impl == "xla":
        return _xla(q, k, v, lengths)
    if impl in ("ragged_ref", "ragged"):
        from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa

        p = to_ragged_pages(k, v, lengths, page_size, perm=perm)
        args = (q, p.kv_pages, p.kv_lens, p.page_indices, p.cu_q_lens, p.num_seqs)
        if impl == "ragged_ref":
            return rpa.ref_ragged_paged_attention(*args, sm_scale=scale)
        if platform != "tpu":
            raise ValueError(
                "impl='ragged' needs a TPU: jax's ragged_paged_attention does not run in "
                "interpret mode (module docstring); use 'ragged_ref' to check its layout"
            )
        return rpa.ragged_paged_attention(*args, sm_scale=scale)
    if impl == "gpu_decode":
        from jax.experimental.pallas.ops.gpu import decode_attention as gda

        interpret = platform != "gpu" if interpret is None else interpret
        k_splits = _divisor(k.shape[1], (16, 8, 4, 2, 1))
        while k_splits > 1 and k.shape[1] // k_splits < 16:
            k_splits //= 2
        return gda.gqa(
            q, k, v, None, lengths, sm_scale=scale, k_splits=k_splits, interpret=interpret
        )
    pages = to_pages(k, v, lengths, page_size, perm=perm)
    pps = pages.page_indices.shape[1]
    q_scaled = q * jnp.asarray(scale, q.dtype)  # the paged kernels apply no scale
    if impl == "paged":
        from jax.experimental.pallas import tpu as pltpu
        from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

        interpret = platform != "tpu" if interpret is None else interpret
        call = lambda: paged_attention(  # noqa: E731
            q_scaled,
            pages.k_pages,
            pages.v_pages,
            pages.lengths,
            pages.page_indices,
            pages_per_compute_block=_divisor(pps, (8, 4, 2, 1)),
        )
        if not interpret:
            return call()
        with pltpu.force_tpu_interpret_mode():
            return call()
    from jax.experimental.pallas.ops.gpu import paged_attention as gpu_paged

    interpret = platform != "gpu" if interpret is None else interpret
    k_splits = _divisor(pps, (16, 8, 4, 2, 1))
    return gpu_paged.paged_attention(
        q_scaled,
        pages.k_pages,
        pages.v_pages,
        pages.page_indices,
        pages.lengths,
        pages_per_compute_block=_divisor(pps // k_splits, (8, 4, 2, 1)),
        k_splits=k_splits,
        interpret=interpret,
    )
