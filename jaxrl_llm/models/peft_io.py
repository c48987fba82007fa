"""LoRA adapters in PEFT's file layout, and merged HF export.

    save_peft(path, config, adapters)          # adapter_config.json + adapter_model.safetensors
    adapters = load_peft(path, config)          # back into a `LoraAdapters`
    save_merged_hf(path, config, params, adapters)   # a plain HF folder with W + (alpha/r) A B

PEFT's layout (what `peft.PeftModel.from_pretrained(model, path)` reads), per layer i and
target t (`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`):

| PEFT tensor                                                   | ours                       |
|---------------------------------------------------------------|----------------------------|
| base_model.model.model.layers.i.self_attn.t.lora_A.weight [r, in]  | a[i] [*in, r], reshaped, transposed |
| base_model.model.model.layers.i.self_attn.t.lora_B.weight [out, r] | b[i] [r, *out], reshaped, transposed |

`in` / `out` flatten our multi-axis kernel shapes in row-major order, as `hf_io` flattens the
kernels themselves, so PEFT's merge `W += (lora_alpha / r) · B_hf @ A_hf` is ours transposed.
`adapter_config.json` holds `peft_type = "LORA"`, `r`, `lora_alpha`, `target_modules`, no
dropout, no bias, no rsLoRA / DoRA; loading refuses configs that use per-module ranks, rsLoRA,
DoRA, layer subsets, bias training or regex targets (named in the error).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.hf_io import (
    _ST_DTYPES,
    _write_safetensors,
    hf_tensor_specs,
    read_safetensors_header,
    save_hf,
)
from jaxrl_llm.models.lora import _TARGET_INFO, LoraAdapters, check_targets, kernel_shapes, merge

__all__ = ["save_peft", "load_peft", "save_merged_hf", "peft_tensor_names", "ADAPTER_CONFIG"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def peft_tensor_names(config: ModelConfig, target: str) -> tuple[str, str]:
    """(lora_A, lora_B) tensor names of `target` with `{i}` for the layer."""
    group, _ = _TARGET_INFO[target]
    hf_name = hf_tensor_specs(config)[("layers", group, target, "kernel")][0]
    module = _PREFIX + hf_name.removesuffix(".weight")
    return module + ".lora_A.weight", module + ".lora_B.weight"


def save_peft(
    path: str | os.PathLike,
    config: ModelConfig,
    adapters: LoraAdapters,
    *,
    base_model_name_or_path: str | None = None,
) -> None:
    """Write `adapters` as a PEFT LoRA adapter folder (weights first, config last, each through
    a temporary name). Rank, alpha and targets come from `adapters`."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = {}
    for target in adapters.targets:
        group, _ = _TARGET_INFO[target]
        ab = jax.device_get(adapters.layers[group][target])
        a, b = np.asarray(ab["a"]), np.asarray(ab["b"])
        name_a, name_b = peft_tensor_names(config, target)
        r = a.shape[-1]
        for i in range(config.num_layers):
            tensors[name_a.format(i=i)] = np.ascontiguousarray(a[i].reshape(-1, r).T)
            tensors[name_b.format(i=i)] = np.ascontiguousarray(b[i].reshape(r, -1).T)
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapters.rank,
        "lora_alpha": adapters.alpha,
        "target_modules": list(adapters.targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "base_model_name_or_path": base_model_name_or_path,
    }
    weights = os.path.join(path, ADAPTER_WEIGHTS)
    _write_safetensors(weights + ".tmp", tensors)
    os.replace(weights + ".tmp", weights)
    cfg_path = os.path.join(path, ADAPTER_CONFIG)
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(cfg_path + ".tmp", cfg_path)


def _read_tensors(file: str) -> dict[str, np.ndarray]:
    header, offset = read_safetensors_header(file)
    raw = np.memmap(file, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = np.array(
            raw[offset + begin : offset + end]
            .view(_ST_DTYPES[info["dtype"]])
            .reshape(info["shape"])
        )
    return out


def load_peft(path: str | os.PathLike, config: ModelConfig, *, dtype=jnp.float32) -> LoraAdapters:
    """A PEFT LoRA adapter folder as `LoraAdapters` for the model `config` (arrays in `dtype`).

    Raises ValueError for what the library cannot represent (see the module docstring) and for
    missing, unexpected or misshapen tensors.
    """
    path = os.fspath(path)
    with open(os.path.join(path, ADAPTER_CONFIG)) as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r}; only LORA is supported")
    unsupported = {
        "use_rslora": bool(cfg.get("use_rslora")),
        "use_dora": bool(cfg.get("use_dora")),
        "rank_pattern": bool(cfg.get("rank_pattern")),
        "alpha_pattern": bool(cfg.get("alpha_pattern")),
        "layers_to_transform": cfg.get("layers_to_transform") is not None,
        "bias": cfg.get("bias", "none") != "none",
        "modules_to_save": bool(cfg.get("modules_to_save")),
        "target_modules (a regex)": isinstance(cfg.get("target_modules"), str),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(
            f"{path}: adapter_config.json uses {bad}, which LoRA here does not support"
        )
    targets = check_targets(cfg["target_modules"])
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    tensors = _read_tensors(os.path.join(path, ADAPTER_WEIGHTS))
    expected: set[str] = set()
    layers: dict = {}
    kernels = kernel_shapes(config)
    for target in targets:
        group, _ = _TARGET_INFO[target]
        ins, outs = kernels[target]
        name_a, name_b = peft_tensor_names(config, target)
        a_list, b_list = [], []
        for i in range(config.num_layers):
            na, nb = name_a.format(i=i), name_b.format(i=i)
            expected.update((na, nb))
            if na not in tensors or nb not in tensors:
                raise ValueError(f"{path}: adapter lacks {na if na not in tensors else nb}")
            ta, tb = tensors[na], tensors[nb]
            if ta.shape != (rank, int(np.prod(ins))) or tb.shape != (int(np.prod(outs)), rank):
                raise ValueError(
                    f"{path}: {na} {ta.shape} / {nb} {tb.shape}; expected "
                    f"{(rank, int(np.prod(ins)))} / {(int(np.prod(outs)), rank)}"
                )
            a_list.append(ta.T.reshape(ins + (rank,)))
            b_list.append(tb.T.reshape((rank,) + outs))
        layers.setdefault(group, {})[target] = {
            "a": jnp.asarray(np.stack(a_list).astype(np.float32), dtype),
            "b": jnp.asarray(np.stack(b_list).astype(np.float32), dtype),
        }
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise ValueError(f"{path}: unexpected adapter tensors {unexpected[:8]}")
    return LoraAdapters(layers=layers, alpha=alpha)


def save_merged_hf(
    path: str | os.PathLike, config: ModelConfig, params: dict, adapters: LoraAdapters | None
) -> None:
    """`save_hf` of the merged model `W + (alpha / r) A B`: a plain HF folder, no PEFT needed."""
    save_hf(path, config, jax.device_get(merge(config, params, adapters)))
