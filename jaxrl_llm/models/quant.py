"""Quantised frozen kernels for QLoRA-style LoRA (Dettmers et al. 2023, "QLoRA: Efficient
Finetuning of Quantized LLMs"): this module owns quantising chosen projection kernels of a params
pytree, dequantising them, their logical axes and their byte count.

    qbase = quantize_params(params, "nf4", targets=("q_proj", "v_proj"))  # others untouched
    w = dequantize(qbase["layers"]["attn"]["q_proj"]["kernel"])          # the kernel's dtype
    full = dequantize_params(qbase)                                      # every kernel dense
    specs = quantized_logical_axes(config, qbase)  # for parallel.logical_to_sharding
    nbytes(qbase)                                  # stored bytes, 4-bit codes packed

The codec is Google's qwix (`qwix.quantize` / `qwix.dequantize` on a plain array, giving a
`qwix.QArray`: codes `qvalue` of the kernel's shape and float32 `scale`s): symmetric absmax
scaling, one scale per block of `block` (default 64, QLoRA's) consecutive entries along the
kernel's last axis (contiguous in our row-major `[L, *in, *out]` layout), per layer and per
every other axis. Per block of absmax `m`,

    int8: q = round(w / s) in [-128, 127], s = m / 127.5;   |w − q s| ≤ s / 2 = m / 255
    int4: q = round(w / s) in [-8, 7],     s = m / 7.5;     |w − q s| ≤ s / 2 = m / 15
    nf4:  q = the nearest of QLoRA's 16 NormalFloat levels to w / s, s = m;
          |w − level_q s| ≤ s · 0.1519 (half the widest gap between levels, [−1, −0.6962])

computed in float32 (the kernel is upcast first, so a bf16 kernel's codes are those of its
exact float32 value); `dequantize` forms `q s` in float32 and casts once to the kernel's dtype.
No double quantisation of the scales: they stay float32 (4 / block bytes per entry).

A quantised kernel is a `QuantizedKernel`, a `flax.struct.dataclass` holding the `QArray`
(its arrays are the leaves: jit, `device_put` and sharding trees see the codes and scales) and
the original dtype as static metadata. Checkpoints never hold it: a LoRA run checkpoints
adapters only, and the base is quantised again, deterministically, from the weights it was
read from (HF folder, SFT warm start) at every start.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import qwix

__all__ = [
    "SCHEMES",
    "BLOCK",
    "NF4_MAX_ERROR",
    "QuantizedKernel",
    "quantize",
    "dequantize",
    "is_quantized",
    "quantize_params",
    "dequantize_params",
    "map_quantized",
    "quantized_logical_axes",
    "block_size",
    "nbytes",
    "bytes_per_entry",
    "max_error",
]

# scheme name (config.model.lora_quantize) → qwix qtype
SCHEMES = {"int8": jnp.int8, "int4": jnp.int4, "nf4": "nf4"}
BLOCK = 64
_BITS = {"int8": 8, "int4": 4, "nf4": 4}
# half the widest gap between neighbouring NF4 levels (between −1 and −0.6961928)
NF4_MAX_ERROR = (1.0 - 0.6961928009986877) / 2
_GROUPS = ("attn", "mlp")

Params = dict[str, Any]


@flax.struct.dataclass
class QuantizedKernel:
    """A kernel stored as qwix codes and float32 block scales; `dtype` is the original's."""

    value: qwix.QArray
    dtype: str = flax.struct.field(pytree_node=False, default="float32")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.qvalue.shape)

    @property
    def scheme(self) -> str:
        qtype = self.value.qtype
        return next(k for k, v in SCHEMES.items() if v is qtype or v == qtype)

    @property
    def block(self) -> int:
        return self.shape[-1] // self.value.scale.shape[-1]

    def dequantize(self, dtype=None) -> jax.Array:
        """`q s` in float32, cast to `dtype` (default: the original kernel's dtype)."""
        return qwix.dequantize(self.value).astype(dtype or self.dtype)


def block_size(n: int, block: int = BLOCK) -> int:
    """The block along an axis of length `n`: the largest divisor of `n` that is <= `block`."""
    return max(d for d in range(1, min(n, block) + 1) if n % d == 0)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"quantisation scheme {scheme!r}: allowed {sorted(SCHEMES)}")


def quantize(kernel: jax.Array, scheme: str, *, block: int = BLOCK) -> QuantizedKernel:
    """A stacked kernel `[L, ..., n]` quantised per layer with blocks of `block_size(n, block)`
    along its last axis (every other axis per channel). One layer at a time (`lax.map`): NF4's
    nearest-level search holds 16 float32 distances per entry of one layer only."""
    _check_scheme(scheme)
    if kernel.ndim < 2 or not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise ValueError(
            f"quantize wants a float kernel [L, ..., n], got {kernel.dtype} {kernel.shape}"
        )
    tile = block_size(kernel.shape[-1], block)
    last = kernel.ndim - 2  # the last axis of one layer

    def one_layer(w):
        return qwix.quantize(
            w.astype(jnp.float32),
            SCHEMES[scheme],
            channelwise_axes=tuple(range(last)),
            tiled_axes={last: tile},
            scale_dtype=jnp.float32,
        )

    return QuantizedKernel(value=jax.lax.map(one_layer, kernel), dtype=jnp.dtype(kernel.dtype).name)


def is_quantized(x) -> bool:
    return isinstance(x, QuantizedKernel)


def dequantize(x, dtype=None):
    """A `QuantizedKernel` dequantised (to its original dtype unless `dtype`); arrays as given."""
    return x.dequantize(dtype) if is_quantized(x) else x


def map_quantized(fn, params: Params) -> Params:
    """`params` with `fn(k)` in place of each `QuantizedKernel` `k`; other leaves untouched."""
    return jax.tree.map(lambda x: fn(x) if is_quantized(x) else x, params, is_leaf=is_quantized)


def dequantize_params(params: Params) -> Params:
    """Every quantised kernel dequantised to its dtype; `params` itself when none is."""
    if not any(is_quantized(x) for x in jax.tree.leaves(params, is_leaf=is_quantized)):
        return params
    return map_quantized(lambda k: k.dequantize(), params)


def _kernel_paths(params: Params, targets) -> list[tuple[str, str]]:
    layers = params["layers"]
    if isinstance(layers, (tuple, list)):
        raise ValueError("quantize_params needs the stacked params (as init_params / load_hf)")
    found = {t: g for g in _GROUPS for t in layers.get(g, {})}
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in found or "kernel" not in layers[found[t]][t]]
    if unknown or not targets:
        raise ValueError(f"quantize targets {list(targets)}: each must be one of {sorted(found)}")
    return [(found[t], t) for t in targets]


def quantize_params(params: Params, scheme: str, targets, *, block: int = BLOCK) -> Params:
    """`params` with the kernels of `targets` (e.g. `("q_proj", "down_proj")`, every layer)
    replaced by `QuantizedKernel`s; embeddings, norms, biases, the head and other kernels are
    the same arrays. Deterministic; jittable (the trainer jits it with out_shardings)."""
    _check_scheme(scheme)
    layers = dict(params["layers"])
    for group, target in _kernel_paths(params, targets):
        sub = dict(layers[group])
        kernel = sub[target]["kernel"]
        if is_quantized(kernel):
            raise ValueError(f"{group}.{target}.kernel is already quantised ({kernel.scheme})")
        sub[target] = dict(sub[target], kernel=quantize(kernel, scheme, block=block))
        layers[group] = sub
    return dict(params, layers=layers)


def quantized_logical_axes(config, qparams: Params) -> Params:
    """Logical axis names of `qparams` (a tree like it): the model's for plain leaves, and for a
    quantised kernel its names on both the codes and the scales (the divisibility rule of
    `logical_to_sharding(..., shapes=...)` replicates a scale axis a mesh axis does not divide)."""
    from jaxrl_llm.models.transformer import logical_axes  # pylint: disable=g-import-not-at-top

    names = logical_axes(config)

    def put(name, x):
        if not is_quantized(x):
            return name
        q = qwix.QArray(qvalue=name, scale=name, zero_point=None, qtype=x.value.qtype)
        return QuantizedKernel(value=q, dtype=x.dtype)

    flat, treedef = jax.tree_util.tree_flatten(names, is_leaf=lambda x: isinstance(x, tuple))
    leaves = treedef.flatten_up_to(qparams)
    return jax.tree_util.tree_unflatten(treedef, [put(n, x) for n, x in zip(flat, leaves)])


def _leaf_bytes(x) -> int:
    dt = jnp.dtype(x.dtype)
    bits = jnp.iinfo(dt).bits if jnp.issubdtype(dt, jnp.integer) else dt.itemsize * 8
    return math.ceil(math.prod(x.shape) * bits / 8)


def nbytes(params) -> int:
    """Stored bytes of a (possibly quantised) params tree, arrays or `ShapeDtypeStruct`s:
    4-bit codes count half a byte (as XLA's compiled memory analysis counts an int4 / uint4
    buffer; `jax.Array.nbytes`, and this CPU runtime's buffers, count one byte)."""
    return int(sum(_leaf_bytes(x) for x in jax.tree.leaves(params)))


def bytes_per_entry(scheme: str, block: int = BLOCK) -> float:
    """Bytes per kernel entry when every quantised axis divides by `block`: code + scale."""
    _check_scheme(scheme)
    return _BITS[scheme] / 8 + 4 / block


def max_error(qk: QuantizedKernel) -> np.ndarray:
    """The bound on |w − dequantize(qk)| per block (float32, shaped like the scales), from the
    scheme: s / 2 for int8 / int4 (round to nearest), s · NF4_MAX_ERROR for nf4."""
    scale = np.asarray(qk.value.scale, np.float32)
    return scale * (NF4_MAX_ERROR if qk.scheme == "nf4" else 0.5)
