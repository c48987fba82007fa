"""Decoder-only transformer (Llama / Qwen2 / Qwen3), value model, HF IO and tokenizers."""

from jaxrl_llm.models.blocked_head import blocked_token_logprobs, lm_head_logprobs
from jaxrl_llm.models.build import build_model_config, build_tokenizer
from jaxrl_llm.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from jaxrl_llm.models.hf_io import load_hf, read_tensor, save_hf
from jaxrl_llm.models.lora import LoraAdapters, init_lora, lora_logical_axes
from jaxrl_llm.models.lora import merge as merge_lora
from jaxrl_llm.models.peft_io import load_peft, save_merged_hf, save_peft
from jaxrl_llm.models.sharding import init_sharded_params, param_shardings
from jaxrl_llm.models.tokenizer import (
    build_builtin_tokenizer,
    chat_prompt,
    check_tokenizer_fits,
    load_tokenizer,
)
from jaxrl_llm.models.transformer import (
    apply,
    apply_hidden,
    cache_logical_axes,
    init_cache,
    init_params,
    lm_head,
    logical_axes,
    unstack_layers,
)
from jaxrl_llm.models.value import (
    apply_value,
    init_value_head,
    init_value_params,
    value_logical_axes,
)

__all__ = [
    "ModelConfig",
    "SUPPORTED_ARCHITECTURES",
    "apply",
    "apply_hidden",
    "apply_value",
    "build_builtin_tokenizer",
    "chat_prompt",
    "check_tokenizer_fits",
    "load_hf",
    "read_tensor",
    "load_tokenizer",
    "save_hf",
    "cache_logical_axes",
    "init_cache",
    "init_params",
    "init_value_head",
    "init_value_params",
    "lm_head",
    "logical_axes",
    "unstack_layers",
    "value_logical_axes",
    # model-aware shardings (models/sharding.py)
    "init_sharded_params",
    "param_shardings",
    # a run's tokenizer and model config from its config groups (models/build.py)
    "build_tokenizer",
    "build_model_config",
    # log-probs over vocabulary blocks, no [N, T, V] logits (models/blocked_head.py)
    "blocked_token_logprobs",
    "lm_head_logprobs",
    # LoRA adapters beside the frozen params, PEFT files (models/lora.py, models/peft_io.py)
    "LoraAdapters",
    "init_lora",
    "merge_lora",
    "lora_logical_axes",
    "save_peft",
    "load_peft",
    "save_merged_hf",
]
