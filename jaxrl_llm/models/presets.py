"""Named model shapes (Qwen2.5 dense sizes and a tiny smoke shape) and parameter counts.

    config = qwen25_config("1.5B")                      # bf16 compute, fp32 params
    config = qwen25_config("0.5B", remat=True, dtype="float32")
    total, matmul = param_counts(config)

One table for every tool that needs a model of a given size without its
weights: the scaling plan (`jaxrl_llm.tools.plan`), the MFU benchmark
(`benchmarks/mfu.py`) and the sampler benchmark (`benchmarks/sampler.py`).
The Qwen2.5 entries are the fields of the released HF `config.json` files
(Qwen2.5-0.5B / -1.5B / -7B / -32B); `tiny` has the same architecture at a
size a CPU runs in seconds.
"""

from __future__ import annotations

import math

import jax

from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.transformer import init_params

__all__ = [
    "QWEN25",
    "QWEN25_COMMON",
    "SHAPE_FIELDS",
    "qwen25_config",
    "model_config_fields",
    "param_counts",
]

# Fields shared by every Qwen2.5 size (architecture qwen2: q/k/v biases, SwiGLU, RMSNorm).
QWEN25_COMMON = dict(
    model_type="qwen2", rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768
)

# Per-size fields, HF `config.json` names.
QWEN25 = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        tie_word_embeddings=True,
    ),
    "0.5B": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "1.5B": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7B": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "32B": dict(
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}


def qwen25_config(size: str, **overrides) -> ModelConfig:
    """`ModelConfig` of a Qwen2.5 size; bf16 compute unless `overrides` say otherwise.

    `overrides` replace `ModelConfig` fields (e.g. `remat=True`, `dtype="float32"`).
    """
    if size not in QWEN25:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(QWEN25)}")
    return ModelConfig.from_hf(
        dict(QWEN25_COMMON, **QWEN25[size]), **{"dtype": "bfloat16", **overrides}
    )


# The `ModelConfig` fields that make up a shape (what `model_config_fields` returns).
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
)


def model_config_fields(size: str) -> dict:
    """The shape of a size as `ModelConfig` keyword arguments (`SHAPE_FIELDS`), for callers
    that build their own `ModelConfig` around it (e.g. benchmarks/sampler.py)."""
    config = qwen25_config(size)
    return {name: getattr(config, name) for name in SHAPE_FIELDS}


def param_counts(config: ModelConfig) -> tuple[int, int]:
    """(all parameters, matmul parameters) of `init_params(config, ·)`, from shapes only.

    Matmul parameters leave out norm scales and biases, and count the embedding
    once (as the tied or untied LM head): the N of the 6 N D FLOP count.
    """
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    vectors = sum(
        math.prod(x.shape)
        for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]
        if "scale" in jax.tree_util.keystr(path) or "bias" in jax.tree_util.keystr(path)
    )
    embed = config.vocab_size * config.hidden_size
    matmul = total - vectors - (0 if config.tie_embeddings else embed)
    return total, matmul
