"""`ModelConfig`: the static description of a decoder-only transformer.

The config is a frozen, hashable dataclass, so it can be a static argument of
`jax.jit`. It covers the Llama, Qwen2 and Qwen3 families:

| option          | Llama            | Qwen2          | Qwen3                  |
|-----------------|------------------|----------------|------------------------|
| `qkv_bias`      | no               | yes            | no                     |
| `qk_norm`       | no               | no             | yes (RMSNorm per head) |
| `head_dim`      | hidden / heads   | hidden / heads | free                   |
| `rope_scaling`  | `llama3` (3.1+)  | none           | none                   |

`ModelConfig.from_hf` reads a Hugging Face `config.json` written by
transformers v4 (`rope_theta` + `rope_scaling`) or v5 (`rope_parameters`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ModelConfig",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_ROPE_TYPES",
    "SUPPORTED_DTYPES",
    "ATTENTION_NAMES",
    "DECODE_ATTENTION_NAMES",
]

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
# What a rematerialised layer keeps from its forward pass (`transformer.REMAT_POLICIES`):
# "full" nothing (recompute the layer), "dots" every matmul output without a batch dimension,
# "qkv_attn" the named q / k / v projections and the attention context, "block_outputs" the
# named attention and MLP outputs.
REMAT_POLICY_NAMES = ("full", "dots", "qkv_attn", "block_outputs")
# How the cache-free (teacher-forced) passes compute attention (`models/attention_kernels.py`,
# docs/scaling.md "Fused attention"): "xla" materialises the scores (the only path with a KV
# cache), "auto" picks cudnn on GPU (bf16 / fp16), splash on TPU, xla elsewhere; "cudnn",
# "splash" and "pallas_gpu" (Triton flash attention with segment ids) name a kernel.
ATTENTION_NAMES = ("xla", "auto", "cudnn", "splash", "pallas_gpu")
# How a sampler's one-token decode step attends over its KV cache
# (`attention_kernels.decode_attention`, docs/rollouts.md "Decode attention kernel"): "xla"
# masks all read slots (the reference, the default), "pallas_gpu" runs the Triton decode
# kernel over each row's filled slots only, "auto" picks pallas_gpu on GPU and xla elsewhere.
DECODE_ATTENTION_NAMES = ("xla", "auto", "pallas_gpu")

# HF `architectures` entries accepted for each model_type.
_HF_ARCHITECTURE_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# Keys each rope type needs (besides rope_type / rope_theta).
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _normalize_rope_scaling(rope_scaling: Any) -> tuple | None:
    """Turn a rope-scaling dict (or tuple of items) into a sorted, hashable tuple.

    Returns None for no scaling (absent, or `rope_type == "default"`). The
    `type` key of old HF configs is read as `rope_type`; `rope_theta` is dropped
    (it lives in `ModelConfig.rope_theta`).
    """
    if rope_scaling is None:
        return None
    items = dict(rope_scaling)
    rope_type = items.pop("rope_type", None) or items.pop("type", None) or "default"
    items.pop("type", None)
    items.pop("rope_theta", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope_scaling rope_type={rope_type!r} is not supported; "
            f"supported: {SUPPORTED_ROPE_TYPES}"
        )
    if rope_type == "default":
        return None
    missing = [k for k in _ROPE_KEYS[rope_type] if k not in items]
    if missing:
        raise ValueError(f"rope_scaling of type {rope_type!r} lacks keys {missing}")
    kept = {k: float(items[k]) for k in _ROPE_KEYS[rope_type]}
    if "original_max_position_embeddings" in kept:
        kept["original_max_position_embeddings"] = int(kept["original_max_position_embeddings"])
    return tuple(sorted({"rope_type": rope_type, **kept}.items()))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static hyper-parameters of a decoder-only transformer (hashable).

    `dtype` is the compute dtype, `param_dtype` the storage dtype of the
    parameters (both strings such as "float32" or "bfloat16"). Logits and
    log-probs are always float32. `rope_scaling` is None or a sorted tuple of
    `(key, value)` items, e.g. `(("factor", 8.0), ..., ("rope_type", "llama3"))`.
    `attention` (one of `ATTENTION_NAMES`) picks the kernel of the cache-free passes;
    `decode_attention` (one of `DECODE_ATTENTION_NAMES`) picks the kernel of the samplers'
    one-token decode steps. `attention_interpret=True` runs the Pallas kernels in interpret
    mode and the cuDNN layout through XLA, so that any platform (a test's CPU) can run them,
    slowly.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "full"
    max_position_embeddings: int = 2048
    architecture: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    attention: str = "xla"
    attention_interpret: bool = False
    decode_attention: str = "xla"

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"ModelConfig.architecture={self.architecture!r} is not supported; "
                f"supported: {SUPPORTED_ARCHITECTURES}"
            )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if value not in SUPPORTED_DTYPES:
                raise ValueError(f"ModelConfig.{name}={value!r}; allowed: {SUPPORTED_DTYPES}")
        if self.remat_policy not in REMAT_POLICY_NAMES:
            raise ValueError(
                f"ModelConfig.remat_policy={self.remat_policy!r}; allowed: {REMAT_POLICY_NAMES}"
            )
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(
                f"ModelConfig.attention={self.attention!r}; allowed: {ATTENTION_NAMES}"
            )
        if self.decode_attention not in DECODE_ATTENTION_NAMES:
            raise ValueError(
                f"ModelConfig.decode_attention={self.decode_attention!r}; allowed: "
                f"{DECODE_ATTENTION_NAMES}"
            )
        if (
            self.attention == "cudnn"
            and self.dtype not in ("bfloat16", "float16")
            and not self.attention_interpret
        ):
            raise ValueError(
                f"ModelConfig.attention='cudnn' needs dtype bfloat16 or float16, not "
                f"{self.dtype!r} (cuDNN flash attention has no float32); use 'auto' or 'xla'"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
        ):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even (RoPE)")
        # Canonicalise rope_scaling to a hashable tuple (accepts a dict too).
        object.__setattr__(self, "rope_scaling", _normalize_rope_scaling(self.rope_scaling))

    # ------------------------------------------------------------------ helpers
    @property
    def rope_scaling_dict(self) -> dict | None:
        """`rope_scaling` as a dict (or None)."""
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **overrides) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **overrides)

    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """A tiny model that compiles in seconds on CPU (tests, laptop runs)."""
        fields = dict(
            vocab_size=64,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            intermediate_size=128,
            rope_theta=10000.0,
            max_position_embeddings=512,
        )
        fields.update(overrides)
        return cls(**fields)

    # ----------------------------------------------------------------- HF json
    @classmethod
    def from_hf(
        cls, path_or_dict: str | os.PathLike | Mapping[str, Any], **overrides
    ) -> ModelConfig:
        """Build a config from an HF `config.json` (a folder, a file, or a dict).

        Reads transformers v4 (`rope_theta`, `rope_scaling`) and v5
        (`rope_parameters` holding `rope_theta` and the scaling) alike.
        `overrides` (e.g. `dtype="bfloat16"`, `remat=True`) replace fields.
        """
        if isinstance(path_or_dict, Mapping):
            hf = dict(path_or_dict)
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.exists(path):
                raise FileNotFoundError(f"no HF config.json at {path}")
            with open(path) as f:
                hf = json.load(f)
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"HF model_type={model_type!r} (architectures={hf.get('architectures')}) is not "
                f"supported; supported model_type values: {SUPPORTED_ARCHITECTURES} "
                f"({', '.join(_HF_ARCHITECTURE_CLASSES.values())})"
            )
        archs = hf.get("architectures") or []
        wanted = _HF_ARCHITECTURE_CLASSES[model_type]
        if archs and wanted not in archs:
            raise ValueError(
                f"HF architectures={archs} are not supported; supported: "
                f"{list(_HF_ARCHITECTURE_CLASSES.values())}"
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"HF hidden_act={act!r} is not supported; supported: ('silu',)")
        if hf.get("mlp_bias", False):
            raise ValueError("HF mlp_bias=True is not supported; supported: mlp_bias=False")
        if model_type in ("llama", "qwen3") and hf.get("attention_bias", False):
            raise ValueError(
                f"HF {model_type} attention_bias=True (bias on q/k/v/o) is not supported; supported: False"
            )
        if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window", False):
            raise ValueError("HF use_sliding_window=True is not supported; supported: False")

        # Rope: v5 keeps everything in rope_parameters, v4 splits theta/scaling.
        rope_params = hf.get("rope_parameters")
        if rope_params:
            rope_theta = rope_params.get("rope_theta", hf.get("rope_theta", 10000.0))
            rope_scaling = rope_params
        else:
            rope_theta = hf.get("rope_theta", 10000.0)
            rope_scaling = hf.get("rope_scaling")

        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = hf.get("head_dim") or hidden // num_heads

        def _token(name):
            value = hf.get(name)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            return None if value is None else int(value)

        fields = dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            intermediate_size=int(hf["intermediate_size"]),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=(model_type == "qwen2"),
            qk_norm=(model_type == "qwen3"),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            architecture=model_type,
            bos_token_id=_token("bos_token_id"),
            eos_token_id=_token("eos_token_id"),
            pad_token_id=_token("pad_token_id"),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict:
        """An HF `config.json` dict (transformers v5 layout, `rope_parameters`).

        transformers v4.x also reads it: `rope_theta` and `rope_scaling` are
        written at the top level as well.
        """
        rope_parameters = {"rope_type": "default", "rope_theta": float(self.rope_theta)}
        if self.rope_scaling is not None:
            rope_parameters.update(dict(self.rope_scaling))
        scaling = None if self.rope_scaling is None else dict(self.rope_scaling)
        hf = {
            "architectures": [_HF_ARCHITECTURE_CLASSES[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": float(self.rope_theta),
            "rope_scaling": scaling,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
        }
        if self.architecture == "llama":
            hf["attention_bias"] = False
            hf["mlp_bias"] = False
        else:
            hf["use_sliding_window"] = False
            hf["sliding_window"] = None
        if self.architecture == "qwen3":
            hf["attention_bias"] = False
        if (self.architecture == "qwen2") != self.qkv_bias:
            raise ValueError(
                f"architecture={self.architecture!r} with qkv_bias={self.qkv_bias}: in HF only qwen2 "
                "has q/k/v biases (and always has them)"
            )
        if self.architecture == "qwen3" and not self.qk_norm:
            raise ValueError("architecture='qwen3' requires qk_norm=True (HF Qwen3 always has it)")
        if self.architecture in ("llama", "qwen2") and self.qk_norm:
            raise ValueError(f"architecture={self.architecture!r} has no qk_norm; use 'qwen3'")
        return hf
