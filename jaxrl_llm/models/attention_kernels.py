"""Fused attention for the cache-free (teacher-forced) passes: cuDNN flash attention, the TPU
Pallas splash kernel and the GPU Pallas (Triton) flash kernel behind one call, chosen by
`ModelConfig.attention` (docs/scaling.md, "Fused attention"); and the GPU Pallas (Triton)
decode kernel for the samplers' one-token steps, chosen by `ModelConfig.decode_attention`
(docs/rollouts.md, "Decode attention kernel").

This module owns the wrappers, not the kernels: it lays our rows out the way each kernel
wants them and brings the result back, so that on every valid position (mask 1) the output
equals `transformer.Attention`'s XLA path (query i attends to keys j <= i with mask[j] = 1,
and with `segment_ids` only to keys of its own segment). Positions with mask 0 are
outputs nobody reads; the wrappers return zeros there (cuDNN) or whatever the kernel computed
(Pallas), never NaN.

| `attention` | serves                                  | kernel                                   |
|-------------|-----------------------------------------|------------------------------------------|
| `xla`       | everything (the default)                | scores materialised, `transformer.py`     |
| `auto`      | cudnn on GPU (bf16 / fp16), splash on TPU, xla otherwise | as below                |
| `cudnn`     | unpacked rows on GPU, bf16 / fp16       | `jax.nn.dot_product_attention(implementation="cudnn")` |
| `splash`    | TPU, packed or not                      | `pallas.ops.tpu.splash_attention`        |
| `pallas_gpu`| GPU, packed or not, any float dtype     | `pallas.ops.gpu.attention.mha` (Triton)  |

`cudnn` (and `auto` on GPU) with `segment_ids` runs `pallas_gpu`: the public cuDNN API takes
sequence lengths, not segment ids.

Layouts:
* cuDNN assumes right padding (valid tokens in slots `[0, length)`). Each row's valid tokens
  are gathered to the front in order (a stable sort of the mask: left padding, right padding,
  both, or holes), attended with `is_causal=True` and the row's length, and scattered back.
  Causal order among the gathered tokens is causal order among the valid slots, so this is
  exact. GQA: the function takes fewer K/V heads than query heads; nothing is repeated.
* Pallas kernels take segment ids: padding is folded into them (`segment = -1` on mask-0
  slots, real segment ids must be >= 0), so a valid query never sees a pad key and a pad
  query always sees at least itself (no fully masked row). The length is padded inside the
  wrapper to the kernels' block multiple (128 for splash; 32 up to 128 tokens, else 128, for
  the Triton kernel) with pad slots at the end, which causality keeps out of every real row.
  Splash handles GQA natively (`make_splash_mha` with fewer K/V heads); the Triton kernel
  needs equal head counts, so K/V are repeated per query group there (one [N, S, heads, d]
  copy per layer, still no [S, S] scores).

Decoding (`ModelConfig.decode_attention`, `DECODE_ATTENTION_NAMES`): a sampler's one-token
step attends over its KV cache through `decode_attention`, the Triton decode kernel of
`pallas.ops.gpu.decode_attention` (its kernel body, under our own `pallas_call`), when the
caller states each row's valid slots as one contiguous span `[start, end)` (the samplers'
left-padded layout; `transformer.apply(..., kv_start=)`). The kernel reads only the key blocks
before `end`, so a row's step costs its filled prefix, not the cache's length. The call is laid
out on our cache as it is, `[N, K, kv_heads, d]` (no transposed copy: `gqa` would swap the
cache's axes in every layer of every step); K is padded to a multiple of 16 slots, the
kernel's smallest key block, only where it is not one already (a copy).

`interpret=True` (`ModelConfig.attention_interpret`) runs the Pallas kernels in interpret
mode and cuDNN's layout code with `implementation="xla"`, so every path runs on a CPU (the
tests); without it a kernel on a platform that cannot run it is a `ValueError` at trace time
(and the trainer refuses it before compiling, `trainers/config.py`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxrl_llm.models.config import ATTENTION_NAMES, DECODE_ATTENTION_NAMES
from jaxrl_llm.parallel import axes as A

__all__ = [
    "ATTENTION_NAMES",
    "DECODE_ATTENTION_NAMES",
    "KernelLayout",
    "DecodeLayout",
    "resolve",
    "resolve_decode",
    "check_platform",
    "runnable",
    "make_layout",
    "attend",
    "cudnn_attention",
    "splash_attention",
    "pallas_gpu_attention",
    "decode_attention",
]

_PLATFORMS = {"cudnn": ("gpu",), "pallas_gpu": ("gpu",), "splash": ("tpu",)}
_CUDNN_DTYPES = ("bfloat16", "float16")


def resolve(name: str, *, packed: bool, platform: str, dtype: str = "bfloat16") -> str:
    """The kernel that `attention = name` runs: "xla", "cudnn", "splash" or "pallas_gpu".

    `auto`: on GPU cudnn when `dtype` is bf16 / fp16 and xla for fp32 (cuDNN's flash kernel
    has no fp32), splash on TPU, xla elsewhere. A packed pass (`segment_ids`) asked to run
    cudnn (explicitly or through `auto`) runs pallas_gpu."""
    if name not in ATTENTION_NAMES:
        raise ValueError(f"attention = {name!r}; allowed: {ATTENTION_NAMES}")
    if name == "auto":
        if platform == "gpu":
            name = "cudnn" if dtype in _CUDNN_DTYPES else "xla"
        elif platform == "tpu":
            name = "splash"
        else:
            name = "xla"
    if name == "cudnn" and packed:
        name = "pallas_gpu"
    return name


def resolve_decode(name: str, *, platform: str) -> str:
    """The kernel that `decode_attention = name` runs: "xla" or "pallas_gpu" (`auto`: the
    Triton decode kernel on GPU, xla elsewhere)."""
    if name not in DECODE_ATTENTION_NAMES:
        raise ValueError(f"decode_attention = {name!r}; allowed: {DECODE_ATTENTION_NAMES}")
    if name == "auto":
        return "pallas_gpu" if platform == "gpu" else "xla"
    return name


def runnable(platform: str) -> tuple[str, ...]:
    """The `ATTENTION_NAMES` that run on `platform` without interpret mode."""
    return tuple(n for n in ATTENTION_NAMES if platform in _PLATFORMS.get(n, (platform,)))


def check_platform(
    name: str, platform: str, *, interpret: bool = False, field: str = "attention"
) -> None:
    """`ValueError` (one line) if `field = name` (`attention` or `decode_attention`) cannot run
    on `platform` (`jax.default_backend()`)."""
    if name not in ATTENTION_NAMES:
        raise ValueError(f"{field} = {name!r}; allowed: {ATTENTION_NAMES}")
    wants = _PLATFORMS.get(name)
    if wants and platform not in wants and not interpret:
        raise ValueError(
            f"{field} = {name!r} needs a {'/'.join(w.upper() for w in wants)} backend, but "
            f"jax runs on {platform!r}; use 'auto' or 'xla' (or attention_interpret=True to "
            "test the kernel in interpret mode)"
        )


@flax.struct.dataclass
class KernelLayout:
    """What a fused attention needs besides q / k / v, computed once per pass (`make_layout`)
    and passed to every layer where the XLA path passes its boolean `allowed [N, S, S]`.

    `mask [N, S]` int32; cuDNN: `order` / `inverse [N, S]` (gather valid slots to the front
    and back), `lengths [N]`; Pallas: `segments [N, S_pad]` (padding folded in, the length
    rounded up to the kernel's block multiple)."""

    mask: jax.Array
    order: jax.Array | None = None
    inverse: jax.Array | None = None
    lengths: jax.Array | None = None
    segments: jax.Array | None = None
    impl: str = flax.struct.field(pytree_node=False, default="xla")
    interpret: bool = flax.struct.field(pytree_node=False, default=False)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _padded_length(impl: str, s: int) -> int:
    if impl == "splash":
        return _round_up(s, 128)
    return _round_up(s, 32) if s <= 128 else _round_up(s, 128)


def make_layout(
    impl: str, mask: jax.Array, segment_ids: jax.Array | None = None, *, interpret: bool = False
) -> KernelLayout:
    """The `KernelLayout` of kernel `impl` (a `resolve` result other than "xla") for rows
    `mask [N, S]` and optional packed `segment_ids [N, S]` (>= 0 where mask is 1)."""
    mask = mask.astype(jnp.int32)
    n, s = mask.shape
    if impl == "cudnn":
        if segment_ids is not None:
            raise ValueError("cuDNN attention takes no segment_ids; packed rows run pallas_gpu")
        # stable: valid slots first in their order, then the pad slots in theirs
        order = jnp.argsort(1 - mask, axis=1, stable=True).astype(jnp.int32)
        inverse = jnp.argsort(order, axis=1).astype(jnp.int32)
        # a fully padded row gets length 1 (its first slot attends to itself; masked below)
        lengths = jnp.maximum(mask.sum(axis=1), 1).astype(jnp.int32)
        return KernelLayout(mask, order, inverse, lengths, impl=impl, interpret=interpret)
    if impl not in ("splash", "pallas_gpu"):
        raise ValueError(f"no kernel layout for attention implementation {impl!r}")
    seg = jnp.zeros_like(mask) if segment_ids is None else segment_ids.astype(jnp.int32)
    seg = jnp.where(mask > 0, seg, -1)
    s_pad = _padded_length(impl, s)
    seg = jnp.pad(seg, ((0, 0), (0, s_pad - s)), constant_values=-1)
    return KernelLayout(mask, segments=seg, impl=impl, interpret=interpret)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, layout: KernelLayout) -> jax.Array:
    """Causal GQA attention `[N, S, heads, d]` of q `[N, S, heads, d]` over k / v
    `[N, S, kv_heads, d]` by `layout.impl`, scale `d ** -0.5`, in q's dtype."""
    n, s, nh, d = q.shape
    nkv = k.shape[2]
    if k.shape != (n, s, nkv, d) or v.shape != k.shape or nh % nkv:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: not causal GQA self-attention")
    if layout.impl == "cudnn":
        out = cudnn_attention(
            q,
            k,
            v,
            layout.order,
            layout.inverse,
            layout.lengths,
            layout.mask,
            implementation="xla" if layout.interpret else "cudnn",
        )
    elif layout.impl in ("splash", "pallas_gpu"):
        kernel = splash_attention if layout.impl == "splash" else pallas_gpu_attention
        out = _per_row_shard(
            lambda q, k, v, seg: kernel(q, k, v, seg, interpret=layout.interpret),
            q,
            k,
            v,
            layout.segments,
        )
    else:
        raise ValueError(f"attention implementation {layout.impl!r} has no fused kernel")
    return out.astype(q.dtype)


def _per_row_shard(fn, *rows, heads=None):
    """`fn(*rows)` run on each device's rows under the current mesh and logical rules.

    A Pallas kernel is one custom call that XLA's SPMD partitioner cannot split: left to it,
    its operands would be gathered whole onto every device. The rows (leading axis) are split
    as the logical `batch` axis is (`with_logical_constraint` rules). `heads` (optional, one
    entry per argument: the index of its head axis, or None) also keeps the heads split as
    the logical `kv_heads` axis is, when `heads` maps to the same mesh axes and they divide
    every head count (query group `j` stays with KV head `j`); other mesh axes are gathered
    for the call. Outside a mesh or without rules, `fn(*rows)` as it is. cuDNN's attention
    carries its own partitioning rule.
    """
    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return fn(*rows)
    row_axes = _dividing(mesh, A.logical_to_spec((A.BATCH,), rules, mesh)[0], rows[0].shape[0])
    head_axes = ()
    if heads is not None:
        kv, q = (A.logical_to_spec((name,), rules, mesh)[0] for name in (A.KV_HEADS, A.HEADS))
        sizes = [x.shape[h] for x, h in zip(rows, heads) if h is not None]
        if kv == q:
            head_axes = _dividing(mesh, kv, *sizes, taken=row_axes)
    if not any(mesh.shape[a] > 1 for a in row_axes + head_axes):
        return fn(*rows)

    def spec(x, head):
        dims = [None] * x.ndim
        dims[0] = row_axes or None
        if head is not None and head_axes:
            dims[head] = head_axes
        return P(*dims)

    heads = heads or (None,) * len(rows)
    in_specs = tuple(spec(x, h) for x, h in zip(rows, heads))
    return jax.shard_map(fn, in_specs=in_specs, out_specs=in_specs[0], check_vma=False)(*rows)


def _dividing(mesh, spec, *sizes, taken=()) -> tuple[str, ...]:
    """The mesh axes of one `PartitionSpec` entry that split every one of `sizes` in turn
    (an axis that does not divide what is left is not split over), skipping `taken` ones."""
    names = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    left, kept = list(sizes), []
    for name in names:
        if name in taken:
            continue
        if all(n % mesh.shape[name] == 0 for n in left):
            kept.append(name)
            left = [n // mesh.shape[name] for n in left]
    return tuple(kept)


# --------------------------------------------------------------------------- cuDNN
def cudnn_attention(q, k, v, order, inverse, lengths, mask, *, implementation="cudnn"):
    """Left- (or any-) padded rows through the right-padding API of
    `jax.nn.dot_product_attention`: gather each row's valid slots to the front (`order`),
    attend causally over `lengths`, scatter back (`inverse`), zero the mask-0 slots.
    `implementation="xla"` runs the very same layout code without cuDNN (the CPU test)."""

    def gather(x, idx):
        return jnp.take_along_axis(x, idx[:, :, None, None], axis=1)

    out = jax.nn.dot_product_attention(
        gather(q, order),
        gather(k, order),
        gather(v, order),
        scale=q.shape[-1] ** -0.5,
        is_causal=True,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    out = gather(out, inverse)
    return jnp.where(mask[:, :, None, None] > 0, out, jnp.zeros((), out.dtype))


# ------------------------------------------------------------------ Pallas: splash (TPU)
def _splash_kernel(num_heads: int, s_pad: int, interpret: bool):
    # imported when first used: Pallas TPU modules stay out of every other program
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    block = next(b for b in (512, 256, 128) if s_pad % b == 0)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = sm.MultiHeadMask([sm.CausalMask((s_pad, s_pad)) for _ in range(num_heads)])
    # Built in every trace, never cached: the kernel holds its mask tables as arrays, which a
    # kernel kept from an earlier trace would leak into this one (an UnexpectedTracerError
    # under flax's scan). Building costs a numpy pass over (S_pad / block)^2 mask blocks.
    kernel = sk.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)
    return kernel, sk


def splash_attention(q, k, v, segments, *, interpret=False):
    """The TPU splash kernel, vmapped over rows; `segments [N, S_pad]` from `make_layout`
    (padding folded in). GQA natively: q head `j * groups + i` reads K/V head `j`."""
    n, s, nh, d = q.shape
    s_pad = segments.shape[1]
    kernel, sk = _splash_kernel(nh, s_pad, interpret)

    def heads_first(x):  # [N, S, h, d] -> [N, h, S_pad, d]
        x = jnp.pad(x, ((0, 0), (0, s_pad - s), (0, 0), (0, 0)))
        return jnp.swapaxes(x, 1, 2)

    q = q * jnp.asarray(d**-0.5, q.dtype)  # splash applies no scale

    def one_row(qr, kr, vr, seg):
        return kernel(qr, kr, vr, segment_ids=sk.SegmentIds(seg, seg))

    out = jax.vmap(one_row)(heads_first(q), heads_first(k), heads_first(v), segments)
    return jnp.swapaxes(out, 1, 2)[:, :s]


# ----------------------------------------------------------- Pallas: Triton flash (GPU)
def pallas_gpu_attention(q, k, v, segments, *, interpret=False):
    """`jax.experimental.pallas.ops.gpu.attention.mha` (causal, segment ids, custom VJP);
    `segments [N, S_pad]` from `make_layout`. The kernel wants as many K/V heads as query
    heads: K/V are repeated per group (q head `j * groups + i` reads K/V head `j`)."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    n, s, nh, d = q.shape
    s_pad = segments.shape[1]
    groups = nh // k.shape[2]
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    pad = ((0, 0), (0, s_pad - s), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
    fwd, bwd = min(128, s_pad), min(32, s_pad)
    sizes = gpu_attention.BlockSizes(
        block_q=fwd,
        block_k=fwd,
        block_q_dkv=bwd,
        block_kv_dkv=bwd,
        block_q_dq=bwd,
        block_kv_dq=bwd,
    )
    out = gpu_attention.mha(
        q,
        k,
        v,
        segments,
        sm_scale=d**-0.5,
        causal=True,
        block_sizes=sizes,
        interpret=interpret,
    )
    return out[:, :s]


# -------------------------------------------------------- Pallas: Triton decode (GPU)
@flax.struct.dataclass
class DecodeLayout:
    """What `decode_attention` needs besides q / k / v, made once per decode step
    (`transformer._attention_inputs`) and passed to every layer: row n attends to cache slots
    `[start[n], end[n])` (int32 `[N]`) of the first `kv_len` slots it reads."""

    start: jax.Array
    end: jax.Array
    kv_len: int = flax.struct.field(pytree_node=False, default=0)
    interpret: bool = flax.struct.field(pytree_node=False, default=False)


_DECODE_BLOCK = 16  # the kernel's smallest key block (and its head block, `block_h`)


def _decode_tiling(kv_len: int) -> tuple[int, int]:
    """(k_splits, block_k) for `kv_len` slots (a multiple of 16): up to 16 splits of at least
    16 slots each, run in parallel; each split loops over key blocks of a power of two
    (at most 128) that divides it."""
    splits = next(
        s for s in (16, 8, 4, 2, 1) if kv_len % s == 0 and (kv_len // s) % _DECODE_BLOCK == 0
    )
    per_split = kv_len // splits
    block_k = next(b for b in (128, 64, 32, 16) if per_split % b == 0)
    return splits, block_k


def decode_attention(q, k, v, layout: DecodeLayout) -> jax.Array:
    """One-token GQA attention `[N, 1, heads, d]` of q `[N, 1, heads, d]` over the cache
    slots k / v `[N, K, kv_heads, d]` in `[layout.start[n], layout.end[n])`, scale
    `d ** -0.5`, in q's dtype: the Triton decode kernel, rows split over the mesh's batch
    axes and heads as the cache's KV heads are (`_per_row_shard`)."""
    n, s, nh, d = q.shape
    nkv = k.shape[2]
    if s != 1 or k.shape[0] != n or k.shape[3] != d or v.shape != k.shape or nh % nkv:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: not one-token GQA decoding")
    pad = -k.shape[1] % _DECODE_BLOCK
    if pad:
        k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (k, v))

    def rows(q, k, v, start, end):
        return _triton_decode(q, k, v, start, end, interpret=layout.interpret)

    start = layout.start.astype(jnp.int32)
    end = layout.end.astype(jnp.int32)
    # heads split as the cache's KV heads are (a tensor-parallel cache is never gathered)
    out = _per_row_shard(rows, q, k, v, start, end, heads=(2, 2, 2, None, None))
    return out.astype(q.dtype)


def _triton_decode(q, k, v, start, end, *, interpret):
    """`pallas.ops.gpu.decode_attention.attn_forward_kernel` on grid (head blocks, key
    splits, rows, kv heads): each program attends one block of a KV head's query group to
    one split of that head's keys, read in place from `[N, K, kv_heads, d]`; the splits'
    partial softmax sums are merged here (flash-decoding)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pl_triton
    from jax.experimental.pallas.ops.gpu import decode_attention as gda

    n, _, nh, d = q.shape
    kv_len, nkv = k.shape[1], k.shape[2]
    groups = nh // nkv
    splits, block_k = _decode_tiling(kv_len)
    per_split = kv_len // splits
    head_blocks = -(-groups // _DECODE_BLOCK)
    kernel = functools.partial(
        gda.attn_forward_kernel,
        sm_scale=d**-0.5,
        block_k=block_k,
        block_h=_DECODE_BLOCK,
        num_heads=groups,
    )
    f32 = jnp.float32
    # grid (i, j, b, h): the kernel reads program ids 0 and 1 as its head block and split
    o, l, m = pl.pallas_call(
        kernel,
        grid=(head_blocks, splits, n, nkv),
        in_specs=[
            pl.BlockSpec((None, None, _DECODE_BLOCK, d), lambda i, j, b, h: (b, h, i, 0)),
            pl.BlockSpec((None, None, per_split, None, d), lambda i, j, b, h: (b, j, 0, h, 0)),
            pl.BlockSpec((None, None, per_split, None, d), lambda i, j, b, h: (b, j, 0, h, 0)),
            pl.BlockSpec((None,), lambda i, j, b, h: (b,)),
            pl.BlockSpec((None,), lambda i, j, b, h: (b,)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, _DECODE_BLOCK, d), lambda i, j, b, h: (b, h, j, i, 0)),
            pl.BlockSpec((None, None, None, _DECODE_BLOCK), lambda i, j, b, h: (b, h, j, i)),
            pl.BlockSpec((None, None, None, _DECODE_BLOCK), lambda i, j, b, h: (b, h, j, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((n, nkv, splits, groups, d), f32),  # unnormalised output
            jax.ShapeDtypeStruct((n, nkv, splits, groups), f32),  # softmax denominators
            jax.ShapeDtypeStruct((n, nkv, splits, groups), f32),  # running maxima
        ],
        # Triton, as jax's own wrapper (without these parameters a GPU lowers Mosaic GPU)
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="decode_attention",
    )(
        q.reshape(n, nkv, groups, d),
        k.reshape(n, splits, per_split, nkv, d),
        v.reshape(n, splits, per_split, nkv, d),
        start,
        end,
    )
    # A split with no valid key keeps m = float32 min and l = 0: its weight exp(min - max) is
    # 0. The barrier is jax's own `gqa`'s, which reports wrong values after compilation
    # without it.
    top = jax.lax.optimization_barrier(m.max(axis=2, keepdims=True))
    weight = jnp.exp(m - top)
    denom = (l * weight).sum(axis=2)
    denom = jnp.where(denom > 0, denom, 1.0)  # a row without keys (start >= end): zeros
    out = (o * weight[..., None]).sum(axis=2) / denom[..., None]
    return out.reshape(n, 1, nh, d)
