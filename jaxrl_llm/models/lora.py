"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as a
pytree beside the frozen model params: initialisation, merging, logical axes, sizes.

    adapters = init_lora(config, params, key, rank=8, alpha=16, targets=("q_proj", "v_proj"))
    merged = merge(config, params, adapters)     # W + (alpha / rank) · A @ B, per target kernel
    logits, _ = apply(config, merged, tokens, positions, mask)
    specs = lora_logical_axes(config, adapters)  # for parallel.logical_to_sharding

For a target kernel `W` of shape `[L, *in, *out]` (the stacked `layers` axis first; `in` is the
contracted part: `[embed]` for q/k/v/gate/up, `[heads, head_dim]` for o, `[mlp]` for down),

    A: [L, *in, r]      B: [L, r, *out]      W' = W + (alpha / r) · Σ_r A[..., r] B[r, ...]

so a layer computes `x W' = x W + (alpha / r) (x A) B`. A is drawn like PEFT's default
(kaiming-uniform with a = √5 over the fan-in: U(−1/√in, 1/√in)); B starts at zero, so the
initial adapted model equals the base exactly (the merge adds an exact 0.0). The scale
`alpha / r` is PEFT's plain LoRA scale (no rsLoRA).

`LoraAdapters` is a `flax.struct.dataclass`: its `layers` dict holds the trainable arrays
(`{"attn": {"q_proj": {"a", "b"}, ...}, "mlp": {...}}`, mirroring `params["layers"]`),
while `alpha` rides in the tree structure as static metadata, so optax, `jax.grad`, `vmap`
over seeds and orbax see only the arrays.

Memory (the merge-in-forward design used by the trainer): `merge` builds a merged copy of
each targeted kernel, so a forward pass holds the frozen kernels plus one merged copy of the
targeted ones, and the backward pass forms the full-size gradient `dL/dW'` of each targeted
kernel before reducing it to `dA = (alpha/r) dW' Bᵀ`, `dB = (alpha/r) Aᵀ dW'`. For all seven
projections that is about twice the layer weights at peak instead of once. The `x A B` path
(adding `(x A) B` inside each projection) needs no kernel-sized temporaries; it needs the
forward to take the adapters, and would replace `merge` behind the same adapters pytree.

QLoRA: the frozen params may hold quantised kernels (`models.quant`); `merge` dequantises them
(float32) before adding the adapters, so every caller of `merge` (the trainer's passes, the
sampler's merged copy, evaluation) sees the same dequantised base.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp

from jaxrl_llm.models import quant
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.transformer import logical_axes

__all__ = [
    "TARGETS",
    "LoraAdapters",
    "init_lora",
    "merge",
    "lora_delta",
    "lora_logical_axes",
    "lora_param_count",
    "kernel_shapes",
    "num_params",
    "check_targets",
]

# target name → (params group under `layers`, number of leading contracted kernel axes)
_TARGET_INFO = {
    "q_proj": ("attn", 1),
    "k_proj": ("attn", 1),
    "v_proj": ("attn", 1),
    "o_proj": ("attn", 2),
    "gate_proj": ("mlp", 1),
    "up_proj": ("mlp", 1),
    "down_proj": ("mlp", 1),
}
TARGETS = tuple(_TARGET_INFO)

Params = dict[str, Any]


@flax.struct.dataclass
class LoraAdapters:
    """Trainable LoRA factors (`layers`) with their static `alpha`.

    `layers[group][target] = {"a": [L, *in, r], "b": [L, r, *out]}` (float32 by default).
    """

    layers: dict
    alpha: float = flax.struct.field(pytree_node=False, default=16.0)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in TARGETS if t in self.layers.get(_TARGET_INFO[t][0], {}))

    @property
    def rank(self) -> int:
        t = self.targets[0]
        return int(self.layers[_TARGET_INFO[t][0]][t]["a"].shape[-1])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


def check_targets(targets) -> tuple[str, ...]:
    """`targets` as a tuple in the canonical order; a ValueError names unknown ones."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in _TARGET_INFO]
    if unknown or not targets:
        raise ValueError(f"LoRA targets {list(targets)}: each must be one of {list(TARGETS)}")
    return tuple(t for t in TARGETS if t in targets)


def _kernel(params_layers, target):
    group, _ = _TARGET_INFO[target]
    return params_layers[group][target]["kernel"]


def _stacked_layers(params: Params):
    layers = params["layers"]
    if isinstance(layers, (tuple, list)) or "qkv_proj" in layers.get("attn", {}):
        raise ValueError(
            "LoRA needs the stacked, unfused params (as `init_params` / `load_hf` make them); "
            "merge before `unstack_layers` / `fuse_decode_params`"
        )
    return layers


def init_lora(
    config: ModelConfig,
    params_or_shapes: Params,
    key: jax.Array,
    *,
    rank: int,
    alpha: float,
    targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    dtype=jnp.float32,
) -> LoraAdapters:
    """Adapters for `targets` of every layer: A ~ U(−1/√in, 1/√in), B = 0 (merge == base).

    `params_or_shapes`: the model params or their `jax.eval_shape` (only shapes are read), so
    this is jittable with `out_shardings` to create the adapters already sharded.
    """
    del config  # shapes come from the params; kept for a uniform signature
    targets = check_targets(targets)
    if int(rank) < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    rank = int(rank)
    layers = _stacked_layers(params_or_shapes)
    out: dict = {}
    for i, target in enumerate(targets):
        group, n_in = _TARGET_INFO[target]
        shape = tuple(_kernel(layers, target).shape)
        lead, ins, outs = shape[:1], shape[1 : 1 + n_in], shape[1 + n_in :]
        bound = 1.0 / math.sqrt(math.prod(ins))
        a = jax.random.uniform(
            jax.random.fold_in(key, i), lead + ins + (rank,), jnp.float32, -bound, bound
        )
        out.setdefault(group, {})[target] = {
            "a": a.astype(dtype),
            "b": jnp.zeros(lead + (rank,) + outs, dtype),
        }
    return LoraAdapters(layers=out, alpha=float(alpha))


def lora_delta(adapters: LoraAdapters, target: str) -> jax.Array:
    """`(alpha / r) · A @ B` of one target in the kernel's layout `[L, *in, *out]`, float32."""
    group, _ = _TARGET_INFO[target]
    ab = adapters.layers[group][target]
    a, b = ab["a"], ab["b"]
    # [L, *in, r] x [L, r, *out] -> [L, *in, *out]: contract r, batch over L
    delta = jax.lax.dot_general(
        a,
        b,
        (((a.ndim - 1,), (1,)), ((0,), (0,))),
        preferred_element_type=jnp.float32,
    )
    return adapters.scale * delta.astype(jnp.float32)


def merge(config: ModelConfig, params: Params, adapters: LoraAdapters | None) -> Params:
    """`params` with each targeted kernel replaced by `W + (alpha / r) · A @ B`.

    Pure and jittable; differentiable w.r.t. the adapters (and the params). The sum is formed
    in float32 and cast to the kernel's dtype; with B = 0 it returns the kernels bit for bit.
    `adapters=None` returns `params` itself (dequantised, for a QLoRA base). Untargeted
    parameters are the same arrays.

    A QLoRA base (`models.quant.quantize_params`): a quantised kernel `W` is dequantised in
    float32 first (`W = q s`, then `+ (alpha / r) A B`, one cast), so with B = 0 the merge is
    the dequantised base exactly; quantised kernels without an adapter are dequantised too.
    """
    del config
    if adapters is None:
        return quant.dequantize_params(params)
    layers = _stacked_layers(params)
    new_layers = dict(layers)
    for target in adapters.targets:
        group, n_in = _TARGET_INFO[target]
        kernel = _kernel(layers, target)
        ab = adapters.layers[group][target]
        a_shape, b_shape = tuple(ab["a"].shape), tuple(ab["b"].shape)
        want_a = tuple(kernel.shape[: 1 + n_in])
        want_b = tuple(kernel.shape[1 + n_in :])
        if a_shape[:-1] != want_a or b_shape[0] != a_shape[0] or b_shape[2:] != want_b:
            raise ValueError(
                f"LoRA {target}: A {a_shape}, B {b_shape} do not fit the kernel "
                f"{tuple(kernel.shape)} (want A [{want_a}, r], B [L, r, {want_b}])"
            )
        w0 = quant.dequantize(kernel, jnp.float32).astype(jnp.float32)
        w = (w0 + lora_delta(adapters, target)).astype(kernel.dtype)
        sub = dict(new_layers[group])
        sub[target] = dict(sub[target], kernel=w)
        new_layers[group] = sub
    return quant.dequantize_params(dict(params, layers=new_layers))


def lora_logical_axes(config: ModelConfig, adapters: LoraAdapters) -> LoraAdapters:
    """Logical axis names of `adapters` (a `LoraAdapters` of name tuples): A like the kernel's
    `layers` and input axes, B like its `layers` and output axes; the rank axis is unnamed
    (replicated)."""
    kernel_specs = logical_axes(config)["layers"]
    out: dict = {}
    for target in adapters.targets:
        group, n_in = _TARGET_INFO[target]
        names = tuple(kernel_specs[group][target]["kernel"])
        out.setdefault(group, {})[target] = {
            "a": names[: 1 + n_in] + (None,),
            "b": names[:1] + (None,) + names[1 + n_in :],
        }
    return LoraAdapters(layers=out, alpha=adapters.alpha)


def num_params(adapters: LoraAdapters) -> int:
    """Number of trainable adapter entries."""
    return int(sum(x.size for x in jax.tree.leaves(adapters)))


def kernel_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per-layer `(in, out)` axis shapes of each target's kernel (`kernel = [*in, *out]`)."""
    c = config
    h, m = c.hidden_size, c.intermediate_size
    nh, nkv, d = c.num_heads, c.num_kv_heads, c.head_dim
    return {
        "q_proj": ((h,), (nh, d)),
        "k_proj": ((h,), (nkv, d)),
        "v_proj": ((h,), (nkv, d)),
        "o_proj": ((nh, d), (h,)),
        "gate_proj": ((h,), (m,)),
        "up_proj": ((h,), (m,)),
        "down_proj": ((m,), (h,)),
    }


def lora_param_count(config: ModelConfig, *, rank: int, targets) -> int:
    """Adapter entries for `targets` at `rank` without building anything:
    `L · Σ_targets r · (in + out)`."""
    shapes = kernel_shapes(config)
    per_layer = sum(
        rank * (math.prod(shapes[t][0]) + math.prod(shapes[t][1])) for t in check_targets(targets)
    )
    return int(config.num_layers * per_layer)
