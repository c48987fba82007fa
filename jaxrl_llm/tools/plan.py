"""A scaling plan on paper: bytes per device and step time of a GRPO step for a mesh.

    python -m jaxrl_llm.tools.plan            # the tables of docs/scaling.md

Bytes per device come from the real shardings: the model's logical axes, the rules
(`axes.DEFAULT_RULES` unless given) and the divisibility rule, applied to each
parameter's shard shape on a mesh of the given axis sizes (no devices needed).

Memory (per device):
  params, grads            param_bytes × |shard|       (grads: the fp32 accumulator of the step)
  Adam (mu, nu)            2 × param_bytes × |shard|
  reference policy         ref_bytes × |shard|
  KV cache                 2 (k, v) × L × rows × (P + T) × kv_heads × head_dim × 2 (bf16) / shards
  activations (remat)      L × micro_rows × S × H × 2 (bf16 layer inputs) / batch shards
                           + micro_rows × chunk × V × 4 (one fp32 logits chunk) / batch shards
  with LoRA (`Workload.lora_rank > 0`; docs/lora.md): params = the frozen base (param_bytes)
                           + adapters (lora_bytes); grads, Adam and the reference cover the
                           adapters only; `lora_merge` = the merge-in-forward temporaries, a
                           merged copy (param_bytes) and an fp32 gradient of each targeted kernel

Time per step (Kaplan et al. 2020; Chowdhery et al. 2022 for the attention term):
  model FLOPs / token      6 N + 12 L n_heads d_head S      (update: forward + backward)
                           2 N + 4 L n_heads d_head S       (reference log-probs: forward)
  compute time             FLOPs / (chips × peak × MFU)
  decode step              max(HBM: (W / tensor + KV_local) / HBM_BW,
                               link: W / tensor × (fsdp − 1) / fsdp / link_BW)
                           / bandwidth efficiency;  W = param bytes as the trainer holds them
                           (the sampler reuses the trainer's params: FSDP-sharded weights are
                           all-gathered at every decode step); the last column prices a
                           bf16 sampler copy split over `tensor` only (HBM term, W = 2 N / tensor)
N counts matmul parameters (embedding counted once, as the tied / untied LM head).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping

import jax

from jaxrl_llm import models
from jaxrl_llm.models.presets import QWEN25, param_counts, qwen25_config
from jaxrl_llm.parallel import axes as A

__all__ = [
    "Hardware",
    "HARDWARE",
    "Workload",
    "PLAN_SIZES",
    "QWEN25",
    "qwen25_config",
    "param_counts",
    "device_bytes",
    "step_time",
    "plan_rows",
    "main",
]


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Per-chip figures (public spec sheets): bf16 dense peak, HBM, HBM and link bandwidth."""

    name: str
    chips: int
    peak_flops: float  # bf16 dense FLOP/s per chip
    hbm_bytes: float
    hbm_bw: float  # bytes/s
    link_bw: float  # bytes/s per chip for all-gathers (ICI / NVLink, one direction)


HARDWARE = {
    "v5e-64": Hardware("TPU v5e-64", 64, 197e12, 16 * 2**30, 819e9, 200e9),
    "v5p-128": Hardware("TPU v5p-128 (64 chips)", 64, 459e12, 95 * 2**30, 2765e9, 600e9),
    "8xH100": Hardware("8×H100 SXM 80GB", 8, 989e12, 80e9, 3.35e12, 450e9),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One GRPO step: B prompts × G samples, prompt bucket P, T new tokens."""

    prompts: int = 64
    group: int = 8
    prompt_len: int = 512
    new_tokens: int = 1536
    micro_rows: int = 64  # rows per micro-batch of the update (whole mesh)
    logprob_chunk: int = 256
    param_bytes: int = 4  # fp32 master params (and grads, Adam moments)
    ref_bytes: int = 4  # the reference is a copy of the policy at its dtype
    kv_bytes: int = 2
    lora_rank: int = 0  # > 0: LoRA adapters on a frozen base of `param_bytes`
    lora_targets: tuple = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    lora_bytes: int = 4  # fp32 adapters (and their grads, Adam moments, reference copy)

    @property
    def rows(self):
        return self.prompts * self.group

    @property
    def seq(self):
        return self.prompt_len + self.new_tokens


# The Qwen2.5 sizes the plan tabulates (shapes: `models.presets.QWEN25`).
PLAN_SIZES = ("1.5B", "7B", "32B")


@dataclasses.dataclass(frozen=True)
class _Mesh:
    """Stands in for a `Mesh` in `logical_to_spec`, which reads only `.shape`."""

    shape: Mapping[str, int]


def _mesh(sizes) -> _Mesh:
    return _Mesh(dict(zip(A.MESH_AXES, sizes)))


def _shard_elems(shape, spec, mesh: _Mesh) -> int:
    n = 1
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        n *= dim // math.prod(mesh.shape[a] for a in axes)
    return n


def device_bytes(config, sizes, work: Workload, rules=None) -> dict[str, float]:
    """Bytes per device of each resident item under `rules` on a mesh of `sizes` (d, f, t)."""
    mesh = _mesh(sizes)
    shapes = jax.eval_shape(lambda: models.init_params(config, jax.random.key(0)))
    names = models.logical_axes(config)
    flat_names = jax.tree_util.tree_flatten(names, is_leaf=lambda x: isinstance(x, tuple))[0]
    root = logging.getLogger(A.__name__)
    level = root.level
    root.setLevel(logging.ERROR)  # the divisibility warnings are expected here
    try:
        elems = sum(
            _shard_elems(x.shape, A.logical_to_spec(n, rules, mesh, x.shape), mesh)
            for x, n in zip(jax.tree.leaves(shapes), flat_names)
        )
        kv_shape = (config.num_layers, work.rows, work.seq, config.num_kv_heads, config.head_dim)
        kv_spec = A.logical_to_spec(
            (A.LAYERS, A.BATCH, A.KV_LENGTH, A.KV_HEADS, A.HEAD_DIM), rules, mesh, kv_shape
        )
        if work.lora_rank:
            adapter_elems, merged_elems = _lora_shard_elems(config, work, mesh, rules)
    finally:
        root.setLevel(level)
    batch = math.prod(mesh.shape[a] for a in (A.DATA, A.FSDP))
    micro = max(work.micro_rows // batch, 1)
    act = (
        config.num_layers * micro * work.seq * config.hidden_size * 2
        + micro * work.logprob_chunk * config.vocab_size * 4
    )
    kv = 2 * _shard_elems(kv_shape, kv_spec, mesh) * work.kv_bytes
    if work.lora_rank:
        ad = adapter_elems * work.lora_bytes
        return {
            "params": elems * work.param_bytes + ad,
            "grads": ad,
            "adam": 2 * ad,
            "reference": ad,
            "kv_cache": kv,
            "activations": act,
            "lora_merge": merged_elems * (work.param_bytes + 4),
        }
    return {
        "params": elems * work.param_bytes,
        "grads": elems * work.param_bytes,
        "adam": 2 * elems * work.param_bytes,
        "reference": elems * work.ref_bytes,
        "kv_cache": kv,
        "activations": act,
    }


def _lora_shard_elems(config, work: Workload, mesh: _Mesh, rules) -> tuple[int, int]:
    """(adapter entries, targeted kernel entries) per device under `rules`."""
    shapes = jax.eval_shape(lambda: models.init_params(config, jax.random.key(0)))
    adapters = jax.eval_shape(
        lambda p: models.init_lora(
            config, p, jax.random.key(0), rank=work.lora_rank, alpha=1.0, targets=work.lora_targets
        ),
        shapes,
    )
    names = models.lora_logical_axes(config, adapters)
    flat = jax.tree_util.tree_flatten(names, is_leaf=lambda x: isinstance(x, tuple))[0]
    ad = sum(
        _shard_elems(x.shape, A.logical_to_spec(n, rules, mesh, x.shape), mesh)
        for x, n in zip(jax.tree.leaves(adapters), flat)
    )
    specs = models.logical_axes(config)["layers"]
    merged = 0
    for group in ("attn", "mlp"):
        for target, sub in shapes["layers"][group].items():
            if target in adapters.targets:
                x, n = sub["kernel"], specs[group][target]["kernel"]
                merged += _shard_elems(x.shape, A.logical_to_spec(n, rules, mesh, x.shape), mesh)
    return ad, merged


def step_time(
    config, sizes, hw: Hardware, work: Workload, *, mfu: float = 0.4, bw_eff: float = 0.6
) -> dict[str, float]:
    """Seconds per GRPO step: update + reference forward (compute) + decode (bandwidth)."""
    _, n = param_counts(config)
    attn = config.num_layers * config.num_heads * config.head_dim * work.seq
    tokens = work.rows * work.seq
    flops = tokens * ((6 * n + 12 * attn) + (2 * n + 4 * attn))
    compute = flops / (hw.chips * hw.peak_flops * mfu)
    d, f, t = sizes
    w = (
        (n + config.vocab_size * config.hidden_size * (0 if config.tie_embeddings else 1))
        * work.param_bytes
        / t
    )
    kv_full = device_bytes(config, sizes, work)["kv_cache"]
    hbm = (w + kv_full / 2) / hw.hbm_bw  # the cache is half full on average
    link = w * (f - 1) / f / hw.link_bw
    decode_step = max(hbm, link) / bw_eff
    prefill = 2 * n * work.prompts * work.prompt_len / (hw.chips * hw.peak_flops * mfu)
    sample = decode_step * work.new_tokens + prefill
    # Alternative: a bf16 sampler copy split over `tensor` only (no per-step all-gather).
    w_tp = param_counts(config)[0] * 2 / t
    sample_tp = (w_tp + kv_full / 2) / hw.hbm_bw / bw_eff * work.new_tokens + prefill
    return {
        "update+ref": compute,
        "sample": sample,
        "total": compute + sample,
        "sample_tp_copy": sample_tp,
        "tp_copy_bytes": w_tp,
        "model_flops": flops,
    }


def plan_rows(size: str, hw_key: str, candidates, work: Workload = Workload()):
    """One row per candidate mesh: GiB per device by item, fit, seconds per step."""
    config = qwen25_config(size)
    hw = HARDWARE[hw_key]
    rows = []
    for sizes in candidates:
        if math.prod(sizes) != hw.chips or work.prompts % (sizes[0] * sizes[1]):
            continue
        b = device_bytes(config, sizes, work)
        total = sum(b.values())
        t = step_time(config, sizes, hw, work)
        rows.append(
            dict(
                mesh=sizes,
                **{k: v / 2**30 for k, v in b.items()},
                total=total / 2**30,
                fits=total <= 0.9 * hw.hbm_bytes,
                **{f"t_{k}": v for k, v in t.items()},
            )
        )
    return rows


CANDIDATES = {
    64: [(1, 64, 1), (4, 16, 1), (1, 32, 2), (1, 16, 4), (4, 4, 4), (2, 8, 4), (1, 8, 8)],
    8: [(1, 8, 1), (8, 1, 1), (1, 4, 2), (1, 2, 4), (2, 2, 2), (1, 1, 8)],
}


def main():
    work = Workload()
    print(
        f"GRPO step: B={work.prompts} prompts × G={work.group} = {work.rows} rows, "
        f"P={work.prompt_len}, T={work.new_tokens}; fp32 params/grads/Adam, fp32 reference, "
        f"bf16 KV cache; MFU 40 %, bandwidth efficiency 60 %\n"
    )
    for size in PLAN_SIZES:
        total, matmul = param_counts(qwen25_config(size))
        print(
            f"### Qwen2.5-{size}: {total / 1e9:.2f} B parameters ({matmul / 1e9:.2f} B in matmuls)\n"
        )
        print(
            "| hardware | mesh (d,f,t) | params | grads | Adam | ref | KV | act | total GiB/dev | "
            "fits | update+ref s | sample s | step s | sample s, bf16 TP copy (+GiB) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for hw_key, hw in HARDWARE.items():
            for r in plan_rows(size, hw_key, CANDIDATES[hw.chips], work):
                print(
                    f"| {hw_key} | {r['mesh']} | {r['params']:.2f} | {r['grads']:.2f} | "
                    f"{r['adam']:.2f} | {r['reference']:.2f} | {r['kv_cache']:.2f} | "
                    f"{r['activations']:.2f} | {r['total']:.2f} | {'yes' if r['fits'] else 'no'} | "
                    f"{r['t_update+ref']:.1f} | {r['t_sample']:.1f} | {r['t_total']:.1f} | "
                    f"{r['t_sample_tp_copy']:.1f} (+{r['t_tp_copy_bytes'] / 2**30:.2f}) |"
                )
        print()


if __name__ == "__main__":
    main()
