"""Logit parity with transformers (torch, CPU) for Llama / Qwen2 / Qwen3; save_hf round trip; sharded load."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxrl_llm.models import apply, load_hf, logical_axes, save_hf  # noqa: E402
from jaxrl_llm.parallel import DEFAULT_RULES, make_mesh  # noqa: E402

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    initializer_range=0.5,
    max_position_embeddings=64,
)

HF_CONFIGS = {
    # Llama 3.1-style rope scaling, untied embeddings
    "llama": lambda: transformers.LlamaConfig(
        **TINY,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
    # qkv bias, tied embeddings
    "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=True, rope_theta=10000.0),
    # qk-norm, head_dim (12) != hidden / heads (8)
    "qwen3": lambda: transformers.Qwen3Config(
        **TINY, head_dim=12, tie_word_embeddings=False, rope_theta=1000000.0
    ),
}
LENGTHS = (9, 5, 2)
WIDTH = 9


def batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(WIDTH)[None] >= (WIDTH - np.asarray(LENGTHS))[:, None]).astype(np.int32)
    tokens = rng.integers(1, vocab, size=mask.shape).astype(np.int32) * mask
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None).astype(np.int32)
    return tokens, positions, mask


def torch_logits(model, tokens, positions, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_model(request, tmp_path_factory):
    """A randomly initialised HF model (norms and biases perturbed too), saved to a tmp folder."""
    torch.manual_seed(0)
    hf_config = HF_CONFIGS[request.param]()
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    model = model.float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    # Qwen2 is written index-sharded to exercise model.safetensors.index.json.
    shard = "20KB" if request.param == "qwen2" else "1GB"
    model.save_pretrained(path, max_shard_size=shard)
    tokens, positions, mask = batch(hf_config.vocab_size)
    return request.param, path, model, torch_logits(model, tokens, positions, mask)


def _max_err(a, b, mask):
    return float(np.abs(np.asarray(a) - np.asarray(b))[np.asarray(mask, bool)].max())


def test_logits_match_transformers(hf_model):
    name, path, _model, ref = hf_model
    config, params = load_hf(path, dtype="float32")
    assert config.architecture == name
    if name == "qwen2":
        assert (path / "model.safetensors.index.json").exists()
        assert config.tie_embeddings and config.qkv_bias and "lm_head" not in params
    if name == "qwen3":
        assert config.qk_norm and config.head_dim == 12
    if name == "llama":
        assert dict(config.rope_scaling)["rope_type"] == "llama3"
    tokens, positions, mask = batch(config.vocab_size)
    logits, _ = apply(config, params, tokens, positions, mask)
    assert _max_err(logits, ref, mask) <= 1e-4
    assert np.abs(ref).max() > 1.0  # a non-trivial comparison


def test_save_hf_round_trip(hf_model, tmp_path):
    name, path, _model, ref = hf_model
    config, params = load_hf(path, dtype="float32")
    save_hf(tmp_path, config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    tokens, positions, mask = batch(config.vocab_size)
    assert _max_err(torch_logits(reloaded, tokens, positions, mask), ref, mask) <= 1e-5
    again_config, again = load_hf(tmp_path)
    assert again_config == config
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("hf_model", ["llama"], indirect=True)
@pytest.mark.parametrize("shape", [{"fsdp": 8}, {"fsdp": 4, "tensor": 2}])
def test_sharded_load_same_logits(hf_model, shape):
    name, path, _model, ref = hf_model
    mesh = make_mesh(shape)
    config, params = load_hf(path, mesh=mesh, dtype="float32")
    specs = logical_axes(config)
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    L, H, nh, nkv, d, m, v = 2, 32, 4, 2, 8, 64, 96
    expected_shards = {
        ("layers", "attn", "q_proj", "kernel"): (L, H // fsdp, nh // tensor, d),
        ("layers", "attn", "k_proj", "kernel"): (L, H // fsdp, nkv // tensor, d),
        ("layers", "attn", "o_proj", "kernel"): (L, nh // tensor, d, H // fsdp),
        ("layers", "mlp", "down_proj", "kernel"): (L, m // tensor, H // fsdp),
        ("layers", "attn_norm", "scale"): (L, H // fsdp),
        ("embed", "embedding"): (v // tensor, H // fsdp),
        ("lm_head", "kernel"): (H // fsdp, v // tensor),
    }
    for ppath, shard_shape in expected_shards.items():
        x = params
        for k in ppath:
            x = x[k]
        assert x.sharding.mesh == mesh
        assert {s.data.shape for s in x.addressable_shards} == {shard_shape}, ppath
        assert len(x.addressable_shards) == 8
    assert specs["layers"]["attn"]["q_proj"]["kernel"] == ("layers", "embed", "heads", "head_dim")

    tokens, positions, mask = batch(config.vocab_size)
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        logits, _ = jax.jit(apply, static_argnums=0)(config, params, tokens, positions, mask)
    _, single = load_hf(path, dtype="float32")
    logits_1, _ = apply(config, single, tokens, positions, mask)
    assert _max_err(logits, logits_1, mask) <= 1e-5
    assert _max_err(logits, ref, mask) <= 1e-4


@pytest.mark.parametrize("hf_model", ["qwen3"], indirect=True)
def test_load_bf16(hf_model):
    name, path, _model, ref = hf_model
    config, params = load_hf(path, dtype="bfloat16")
    assert config.dtype == "bfloat16" and params["embed"]["embedding"].dtype == jnp.bfloat16
    tokens, positions, mask = batch(config.vocab_size)
    logits, _ = apply(config, params, tokens, positions, mask)
    assert logits.dtype == jnp.float32
    assert _max_err(logits, ref, mask) <= 0.1 * np.abs(ref).max()
