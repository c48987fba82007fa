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
  activations (remat)      L × micro_rows × S × saved × 2 (bf16) / batch shards, `saved` the
                           values per token and layer the remat policy keeps (`remat_policy`):
                             full           H (the layer input)
                             block_outputs  H + 2 H (attention and MLP outputs)
                             qkv_attn       H + (2 heads + 2 kv_heads) head_dim / tensor
                             dots           H + ((heads + 2 kv_heads) head_dim + 2 H + 2 I) / tensor
                           + micro_rows × chunk × V × 4 (one fp32 logits chunk) / batch shards,
                             with vocabulary blocks (`vocab_block` < V, `train.vocab_block`)
                             2 × micro_rows × chunk × vocab_block × 4 (two live blocks)
                           + with `attention = "xla"`, one layer's fp32 scores in the backward
                             recompute: micro_rows × heads / tensor × S² × 4 / batch shards
                             (fused kernels keep none)
                           with a packed update (`micro_tokens`, `train.micro_tokens`): a
                           micro-batch is micro_tokens tokens in packs of `pack_budget`:
                           micro_rows × S becomes micro_tokens, the logits chunk is one per
                           pack (packs × chunk × V × 4) and the scores are per pack
                           (packs × heads / tensor × pack_budget² × 4), all / batch shards
  with LoRA (`Workload.lora_rank > 0`; docs/lora.md): params = the frozen base (param_bytes)
                           + adapters (lora_bytes); grads, Adam and the reference cover the
                           adapters only; `lora_merge` = the merge-in-forward temporaries, a
                           merged copy (param_bytes) and an fp32 gradient of each targeted kernel
  with QLoRA (`Workload.lora_quantize`): the targeted kernels of the base at
                           `quant.bytes_per_entry` (codes + fp32 scale per block of 64: int8
                           1.0625, nf4 / int4 0.5625 bytes per entry), the rest at param_bytes

Time per step (Kaplan et al. 2020; Chowdhery et al. 2022 for the attention term):
  model FLOPs / token      6 N + 12 L n_heads d_head S      (update: forward + backward;
                                                            × `pack_fill`, S = pack_budget
                                                            with a packed update)
                           2 N + 4 L n_heads d_head S       (reference log-probs: forward;
                                                            × `pack_fill` with packed passes)
  compute time             FLOPs / (chips × peak × MFU)
  decode step              max(HBM: (W / tensor + KV_local) / HBM_BW,
                               link: W / tensor × (fsdp − 1) / fsdp / link_BW)
                           / bandwidth efficiency;  W = param bytes as the trainer holds them
                           (the sampler reuses the trainer's params: FSDP-sharded weights are
                           all-gathered at every decode step); the last column prices a
                           bf16 sampler copy split over `tensor` only (HBM term, W = 2 N / tensor)
N counts matmul parameters (embedding counted once, as the tied / untied LM head).

    python -m jaxrl_llm.tools.plan --fits     # which sizes fit one H200 / v5e-8 / v5p-8

`fit_rows` tries each mesh of a single host (`SINGLE_HOST`) for a size and a mode (full
fine-tuning with fp32 params and Adam, LoRA on a bf16 base, or QLoRA on an nf4 one) and keeps
the smallest total per device; `FIT_WORKLOAD` is one GRPO step of 64 rows x 1024 tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping

import jax

from jaxrl_llm import models
from jaxrl_llm.models import quant
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
    "fit_rows",
    "FIT_SIZES",
    "FIT_WORKLOAD",
    "SINGLE_HOST",
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
    vocab_block: int = 8192  # train.vocab_block: LM-head columns per block; 0: the whole V
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
    lora_quantize: str = ""  # QLoRA: the targeted base kernels as int8 / int4 / nf4
    remat_policy: str = "full"  # model.remat_policy: what the update keeps per layer
    attention: str = "xla"  # "xla": scores materialise; "fused": cudnn / splash keep none
    pack_fill: float = 1.0  # train.pack_budget: valid share of the P + T slots in the passes
    pack_budget: int = 0  # train.pack_budget: tokens per pack (with micro_tokens)
    micro_tokens: int = 0  # train.micro_tokens: the update packed, micro-batches by tokens

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
    if work.lora_quantize and not work.lora_rank:
        raise ValueError(
            f"Workload.lora_quantize = {work.lora_quantize!r} needs lora_rank > 0 (a QLoRA base)"
        )
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
    if work.micro_tokens:  # packed update: `micro` packs of `seq` = pack_budget tokens
        if not work.pack_budget or work.micro_tokens % work.pack_budget:
            raise ValueError(
                f"Workload.micro_tokens = {work.micro_tokens} needs pack_budget > 0 dividing "
                f"it (pack_budget = {work.pack_budget})"
            )
        micro, seq = max(work.micro_tokens // work.pack_budget // batch, 1), work.pack_budget
    else:
        micro, seq = max(work.micro_rows // batch, 1), work.seq
    if 0 < work.vocab_block < config.vocab_size:  # two live [rows, chunk, block] blocks
        logits = 2 * micro * work.logprob_chunk * work.vocab_block * 4
    else:
        logits = micro * work.logprob_chunk * config.vocab_size * 4
    act = config.num_layers * micro * seq * _saved_per_token(config, work, mesh) * 2 + logits
    if work.attention == "xla":
        heads = max(config.num_heads // mesh.shape[A.TENSOR], 1)
        act += micro * heads * seq**2 * 4
    kv = 2 * _shard_elems(kv_shape, kv_spec, mesh) * work.kv_bytes
    if work.lora_rank:
        ad = adapter_elems * work.lora_bytes
        base = elems * work.param_bytes
        if work.lora_quantize:
            base -= merged_elems * (work.param_bytes - quant.bytes_per_entry(work.lora_quantize))
        return {
            "params": base + ad,
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


def _saved_per_token(config, work: Workload, mesh: _Mesh) -> float:
    """Values per token and layer the update keeps for the backward pass (module docstring)."""
    h, t = config.hidden_size, mesh.shape[A.TENSOR]
    qkv = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
    saved = {
        "full": h,
        "block_outputs": 3 * h,
        "qkv_attn": h + (qkv + config.num_heads * config.head_dim) / t,
        "dots": h + (qkv + 2 * h + 2 * config.intermediate_size) / t,
    }
    if work.remat_policy not in saved:
        raise ValueError(f"Workload.remat_policy = {work.remat_policy!r}; allowed {sorted(saved)}")
    return saved[work.remat_policy]


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
    update = 6 * n + 12 * attn
    if work.micro_tokens:  # the update on packed rows: valid tokens, attention within packs
        update = work.pack_fill * (6 * n + 12 * attn * work.pack_budget / work.seq)
    flops = tokens * (update + work.pack_fill * (2 * n + 4 * attn))
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


# One host: a GPU, a v5e-8 (8 chips x 16 GiB), a v5p-8 (4 chips x 95 GiB).
SINGLE_HOST = {
    "1xH200": Hardware("1×H200 141GB", 1, 989e12, 141e9, 4.8e12, 450e9),
    "v5e-8": Hardware("TPU v5e-8", 8, 197e12, 16 * 2**30, 819e9, 200e9),
    "v5p-8": Hardware("TPU v5p-8 (4 chips)", 4, 459e12, 95 * 2**30, 2765e9, 600e9),
}
CANDIDATES[1] = [(1, 1, 1)]
CANDIDATES[4] = [(1, 4, 1), (4, 1, 1), (1, 2, 2), (2, 2, 1), (1, 1, 4)]
FIT_SIZES = ("0.5B", "1.5B", "7B", "32B")
FIT_WORKLOAD = Workload(prompts=8, group=8, prompt_len=256, new_tokens=768, micro_rows=8)
FIT_MODES = {
    "full fine-tuning (fp32 params, Adam, reference)": dict(param_bytes=4, ref_bytes=4),
    "LoRA r16, all projections (bf16 base)": dict(param_bytes=2, lora_rank=16),
    "QLoRA r16, all projections (nf4 base)": dict(param_bytes=2, lora_rank=16, lora_quantize="nf4"),
}


def fit_rows(size: str, work: Workload = FIT_WORKLOAD, hardware=None):
    """Per single-host hardware: the mesh with the least bytes per device for `work`, its
    total GiB per device, and whether it fits (<= 90 % of HBM)."""
    config = qwen25_config(size)
    out = []
    for key, hw in (hardware or SINGLE_HOST).items():
        best = None
        for sizes in CANDIDATES[hw.chips]:
            if work.micro_rows % (sizes[0] * sizes[1]):
                continue
            total = sum(device_bytes(config, sizes, work).values())
            if best is None or total < best[1]:
                best = (sizes, total)
        out.append(
            dict(
                hardware=key,
                mesh=best[0],
                total=best[1] / 2**30,
                fits=best[1] <= 0.9 * hw.hbm_bytes,
            )
        )
    return out


def print_fits():
    w = FIT_WORKLOAD
    print(
        f"One GRPO step of {w.rows} rows x {w.seq} tokens (P={w.prompt_len}, T={w.new_tokens}), "
        f"micro-batches of {w.micro_rows} rows, remat policy {w.remat_policy!r}, attention "
        f"{w.attention!r}; the mesh with the least GiB per device; fits = <= 90 % of HBM\n"
    )
    print("| model | mode | " + " | ".join(SINGLE_HOST) + " |")
    print("|---|---|" + "---|" * len(SINGLE_HOST))
    for size in FIT_SIZES:
        for mode, kw in FIT_MODES.items():
            rows = fit_rows(size, dataclasses.replace(w, **kw))
            cells = [
                f"{'yes' if r['fits'] else 'no'}: {r['total']:.1f} GiB {r['mesh']}" for r in rows
            ]
            print(f"| Qwen2.5-{size} | {mode} | " + " | ".join(cells) + " |")
    print(
        "\nActivations (GiB per device) of the update by remat policy and attention, "
        "Qwen2.5-1.5B on one H200, the same step:\n"
    )
    print("| remat policy | xla attention | fused attention |")
    print("|---|---|---|")
    config = qwen25_config("1.5B")
    for policy in ("full", "block_outputs", "qkv_attn", "dots"):
        cells = [
            device_bytes(
                config, (1, 1, 1), dataclasses.replace(w, remat_policy=policy, attention=a)
            )["activations"]
            / 2**30
            for a in ("xla", "fused")
        ]
        print(f"| {policy} | {cells[0]:.2f} | {cells[1]:.2f} |")


def main(argv=None):
    import sys  # pylint: disable=g-import-not-at-top

    if "--fits" in (sys.argv[1:] if argv is None else argv):
        print_fits()
        return
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
