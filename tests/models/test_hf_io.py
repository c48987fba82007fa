"""load_hf errors (each with its message), bf16 save, and the safetensors layout of save_hf."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxrl_llm.models import ModelConfig, init_params, load_hf, save_hf

CONFIG = ModelConfig.tiny(
    vocab_size=32,
    hidden_size=16,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    intermediate_size=24,
    num_layers=2,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    params = init_params(CONFIG, jax.random.key(0))
    save_hf(path, CONFIG, params)
    return path, params


def _copy(saved, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(saved[0], dst)
    return dst


def test_saved_layout_is_torch_layout(saved):
    path, params = saved
    tensors = load_file(str(path / "model.safetensors"))  # independent reader
    q = np.asarray(params["layers"]["attn"]["q_proj"]["kernel"])  # [L, H, nh, d]
    np.testing.assert_array_equal(
        tensors["model.layers.1.self_attn.q_proj.weight"], q[1].reshape(16, 16).T
    )
    o = np.asarray(params["layers"]["attn"]["o_proj"]["kernel"])  # [L, nh, d, H]
    np.testing.assert_array_equal(
        tensors["model.layers.0.self_attn.o_proj.weight"], o[0].reshape(16, 16).T
    )
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (8, 16)
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (16, 24)
    assert tensors["lm_head.weight"].shape == (32, 16)
    assert len(tensors) == 3 + 2 * 9
    hf = json.loads((path / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]


def test_unsupported_architecture(saved, tmp_path):
    path = _copy(saved, tmp_path)
    hf = json.loads((path / "config.json").read_text())
    hf.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(
        ValueError, match=r"model_type='mistral'.*supported.*'llama', 'qwen2', 'qwen3'"
    ):
        load_hf(path)


def test_missing_unexpected_and_mismatched_tensors(saved, tmp_path):
    path = _copy(saved, tmp_path)
    file = str(path / "model.safetensors")
    original = load_file(file)

    tensors = dict(original)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        load_hf(path)

    tensors = dict(original, **{"model.layers.0.extra.weight": np.zeros(3, np.float32)})
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected tensors \['model.layers.0.extra.weight'\]"):
        load_hf(path)

    tensors = dict(original, **{"model.norm.weight": np.zeros(17, np.float32)})
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(17,\).*expects \(16,\)"):
        load_hf(path)

    # benign extras are ignored: rotary inv_freq buffers of old checkpoints
    tensors = dict(
        original, **{"model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(4, np.float32)}
    )
    save_file(tensors, file, metadata={"format": "pt"})
    config, params = load_hf(path)
    np.testing.assert_array_equal(
        np.asarray(params["final_norm"]["scale"]), np.asarray(saved[1]["final_norm"]["scale"])
    )

    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf(path)


def test_bf16_save_and_load(saved, tmp_path):
    _, params = saved
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    save_hf(tmp_path, CONFIG.replace(param_dtype="bfloat16"), p16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    config, loaded = load_hf(tmp_path)  # dtype from the checkpoint
    assert config.param_dtype == "bfloat16" and config.dtype == "bfloat16"
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(p16)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    _, as32 = load_hf(tmp_path, dtype="float32")
    assert as32["embed"]["embedding"].dtype == jnp.float32
