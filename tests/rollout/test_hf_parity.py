"""Greedy decoding equals transformers `generate(do_sample=False)` token for token.

Tiny random Llama / Qwen2 / Qwen3 models are written as HF folders by the
test, read back with `models.load_hf`, and both sides decode the same
left-padded batch of prompts of different lengths.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxrl_llm import models  # noqa: E402
from jaxrl_llm.rollout import SamplingParams, generate, pad_prompts  # noqa: E402

TINY = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    initializer_range=0.3,
    max_position_embeddings=64,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
)
HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        **TINY, tie_word_embeddings=False, rope_theta=10000.0
    ),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=True, rope_theta=10000.0),
    "qwen3": lambda: transformers.Qwen3Config(
        **TINY, head_dim=12, tie_word_embeddings=False, rope_theta=1000000.0
    ),
}
PROMPTS = [[5, 17, 99, 3, 42, 8, 61], [7, 7, 23], [110], [64, 1, 2, 90, 12]]
T = 10


@pytest.mark.parametrize("family", sorted(HF_CONFIGS))
def test_greedy_matches_transformers_generate(family, tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[family]()).float().eval()
    model.save_pretrained(tmp_path)
    prompts = pad_prompts(PROMPTS, bucket_lengths=(8,), pad_id=0)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(prompts.tokens, dtype=torch.long),
            attention_mask=torch.tensor(prompts.mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=T,
            min_new_tokens=T,
            eos_token_id=None,
            pad_token_id=0,
        )
    want = out[:, prompts.tokens.shape[1] :].numpy()
    assert want.shape == (len(PROMPTS), T)
    assert len(np.unique(want)) > 3  # not a degenerate constant continuation

    config, params = models.load_hf(tmp_path)
    assert config.architecture == family
    rollout = generate(params, config, prompts, jax.random.key(0), SamplingParams(T, greedy=True))
    np.testing.assert_array_equal(np.asarray(rollout.tokens), want)
    np.testing.assert_array_equal(np.asarray(rollout.mask), 1)
