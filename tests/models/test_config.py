"""ModelConfig.from_hf on hand-written transformers v4 / v5 config.json files; to_hf_dict round trip."""

import json

import jax
import pytest

from jaxrl_llm.models import ModelConfig

V4_LLAMA = {  # transformers 4.4x layout: rope_theta and rope_scaling at the top level
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
}
V5_QWEN3 = {  # transformers 5 layout: everything rope in rope_parameters
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "eos_token_id": 151645,
    "dtype": "bfloat16",
}
V4_QWEN2_OLD_TYPE = {  # old "type" key and no head_dim
    "model_type": "qwen2",
    "vocab_size": 1000,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "linear", "factor": 2.0},
}


def test_from_hf_v4_llama(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(V4_LLAMA))
    config = ModelConfig.from_hf(tmp_path)
    assert (
        config
        == ModelConfig.from_hf(str(tmp_path / "config.json"))
        == ModelConfig.from_hf(V4_LLAMA)
    )
    assert (config.vocab_size, config.hidden_size, config.num_layers) == (128256, 2048, 16)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (32, 8, 64)
    assert config.rope_theta == 500000.0 and config.tie_embeddings
    assert config.rope_scaling == (
        ("factor", 32.0),
        ("high_freq_factor", 4.0),
        ("low_freq_factor", 1.0),
        ("original_max_position_embeddings", 8192),
        ("rope_type", "llama3"),
    )
    assert not config.qkv_bias and not config.qk_norm
    assert config.bos_token_id == 128000 and config.eos_token_id == 128001
    hash(config)  # static under jit


def test_from_hf_v5_qwen3_and_old_type_key():
    config = ModelConfig.from_hf(V5_QWEN3)
    assert config.architecture == "qwen3" and config.qk_norm and not config.qkv_bias
    assert config.head_dim == 128 != config.hidden_size // config.num_heads
    assert config.rope_theta == 1000000.0 and config.rope_scaling is None
    qwen2 = ModelConfig.from_hf(V4_QWEN2_OLD_TYPE)
    assert qwen2.qkv_bias and qwen2.head_dim == 16
    assert qwen2.rope_scaling == (("factor", 2.0), ("rope_type", "linear"))


@pytest.mark.parametrize("hf", [V4_LLAMA, V5_QWEN3, V4_QWEN2_OLD_TYPE])
def test_to_hf_dict_round_trip(hf):
    config = ModelConfig.from_hf(hf)
    assert ModelConfig.from_hf(config.to_hf_dict()) == config
    # the v4 reading of our dict (top-level rope keys only) agrees too
    v4_view = {k: v for k, v in config.to_hf_dict().items() if k != "rope_parameters"}
    assert ModelConfig.from_hf(v4_view) == config


def test_config_errors():
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*supported.*llama.*qwen2.*qwen3"):
        ModelConfig.from_hf({**V4_LLAMA, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_type='yarn' is not supported"):
        ModelConfig.from_hf({**V4_LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        ModelConfig.from_hf({**V4_LLAMA, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="dtype='float8'"):
        ModelConfig.tiny(dtype="float8")
    with pytest.raises(ValueError, match="lacks keys"):
        ModelConfig.tiny(rope_scaling={"rope_type": "llama3", "factor": 8.0})
    assert jax.jit(lambda x, c: x * c.hidden_size, static_argnums=1)(2, ModelConfig.tiny()) == 128
