"""The named model shapes: Qwen2.5 sizes match the released checkpoints."""

import pytest

from jaxrl_llm.models import presets


def test_qwen25_parameter_counts_match_the_released_checkpoints():
    # Totals of the released safetensors (embedding + tied or untied head, q/k/v biases).
    assert presets.param_counts(presets.qwen25_config("0.5B"))[0] == 494_032_768
    assert presets.param_counts(presets.qwen25_config("1.5B"))[0] == 1_543_714_304
    assert presets.param_counts(presets.qwen25_config("7B"))[0] == 7_615_616_512


def test_matmul_count_leaves_out_vectors_and_counts_the_embedding_once():
    config = presets.qwen25_config("tiny")  # tied: the embedding is the LM head
    total, matmul = presets.param_counts(config)
    layers, h, m, heads, kv, d = 2, 64, 128, 4, 2, 16
    per_layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * m
    assert matmul == layers * per_layer + 256 * h
    vectors = layers * (2 * h + (heads + 2 * kv) * d) + h  # two norms + q/k/v biases; final norm
    assert total == matmul + vectors


def test_overrides_and_unknown_size():
    config = presets.qwen25_config("0.5B", remat=True, dtype="float32")
    assert (config.remat, config.dtype, config.architecture) == (True, "float32", "qwen2")
    assert presets.qwen25_config("0.5B").dtype == "bfloat16"
    with pytest.raises(ValueError, match="known: "):
        presets.qwen25_config("3B")


def test_model_config_fields_rebuild_the_same_shape():
    fields = presets.model_config_fields("0.5B")
    assert fields == dict(
        vocab_size=151936,
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=4864,
    )
    config = presets.qwen25_config("0.5B")
    rebuilt = type(config)(**fields, tie_embeddings=True, qkv_bias=True, architecture="qwen2")
    assert presets.param_counts(rebuilt) == presets.param_counts(config)
