"""Building a run's tokenizer and model config from the `tokenizer` and `model` config groups.

`config.tokenizer.path = "builtin"` builds the character tokenizer into the run folder; any
other value is a local HF tokenizer folder. `config.model.hf_path` reads an HF `config.json`;
empty means the inline tiny model described by the `model` group, sized to the tokenizer.
"""

from __future__ import annotations

import os

from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.tokenizer import build_builtin_tokenizer, load_tokenizer

__all__ = ["build_tokenizer", "build_model_config"]


def build_tokenizer(path: str, workdir: str):
    """The tokenizer at `path`, or the built-in one (built once into `<workdir>/tokenizer`)."""
    if path == "builtin":
        path = workdir_lib.tokenizer_dir(workdir)
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            build_builtin_tokenizer(path)
    return load_tokenizer(path)


def build_model_config(m, tokenizer) -> ModelConfig:
    """The `ModelConfig` of the `model` config group `m` (an HF folder, or the inline model;
    a group without `remat` means no remat)."""
    if m.hf_path:
        return ModelConfig.from_hf(
            m.hf_path,
            dtype=m.dtype,
            param_dtype=m.param_dtype,
            remat=m.get("remat", False),
            remat_policy=m.get("remat_policy", "full"),
            attention=m.get("attention", "xla"),
            decode_attention=m.get("decode_attention", "xla"),
        )
    return ModelConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        intermediate_size=m.intermediate_size,
        rope_theta=m.rope_theta,
        tie_embeddings=m.tie_embeddings,
        qkv_bias=m.architecture == "qwen2",
        qk_norm=m.architecture == "qwen3",
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.get("remat", False),
        remat_policy=m.get("remat_policy", "full"),
        attention=m.get("attention", "xla"),
        decode_attention=m.get("decode_attention", "xla"),
        architecture=m.architecture,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
