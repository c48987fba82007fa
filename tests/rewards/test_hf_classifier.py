"""An HF `*ForSequenceClassification` folder is a reward model: its scores through
`rewards.model` (and `LearnedReward` on a `Rollout`) equal transformers' logits on the same
right-padded batch; a classifier with several labels and a folder that is neither kind are
refused in one line."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm.rewards import learned
from jaxrl_llm.rewards import model as rm_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, PAD = 64, 0


def _save(path, num_labels=1):
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        num_labels=num_labels,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a score head that is not near zero
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf_rm") / "classifier")
    return _save(path), path


def _batch(rng, rows=5, p=6, t=7):
    """Prompts of full length p (no padding) and right-padded completions, as the RL layout."""
    prompt = rng.integers(1, VOCAB, (rows, p))
    lengths = rng.integers(1, t + 1, rows)
    comp_mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    comp = rng.integers(1, VOCAB, (rows, t)) * comp_mask
    return prompt, comp, comp_mask


def test_scores_equal_transformers(classifier):
    model, path = classifier
    rng = np.random.default_rng(0)
    prompt, comp, comp_mask = _batch(rng)
    with torch.no_grad():
        ids = torch.tensor(np.concatenate([prompt, comp], 1))
        attn = torch.tensor(np.concatenate([np.ones_like(prompt), comp_mask], 1))
        want = model(input_ids=ids, attention_mask=attn).logits[:, 0].numpy()
    config, params = rm_model.load_reward_model(path)
    score = rm_model.make_score_fn(config)
    got = score(
        params,
        jnp.asarray(prompt),
        jnp.ones(prompt.shape, jnp.int32),
        jnp.asarray(comp),
        jnp.asarray(comp_mask),
    )
    assert np.std(want) > 0.1  # the rows score differently
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)

    reward = learned.LearnedReward(path, vocab={str(i): i for i in range(VOCAB)})
    ro = rollout_lib.Rollout(
        prompt_tokens=jnp.asarray(prompt),
        prompt_mask=jnp.ones(prompt.shape, jnp.int32),
        tokens=jnp.asarray(comp),
        mask=jnp.asarray(comp_mask),
        sampler_logp=jnp.zeros(comp.shape, jnp.float32),
        group_id=jnp.arange(comp.shape[0], dtype=jnp.int32),
        truncated=jnp.zeros(comp.shape[0], bool),
    )
    np.testing.assert_allclose(reward.rewards(ro), want, rtol=1e-4, atol=1e-4)


def test_several_labels_and_other_folders_are_refused(tmp_path):
    _save(str(tmp_path / "two"), num_labels=2)
    with pytest.raises(ValueError, match="with 2 labels; a reward model has one"):
        rm_model.load_reward_model(str(tmp_path / "two"))
    (tmp_path / "lm").mkdir()
    with open(tmp_path / "lm" / "config.json", "w") as f:
        json.dump({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, f)
    with pytest.raises(ValueError, match="nor an HF \\*ForSequenceClassification folder"):
        rm_model.load_reward_model(str(tmp_path / "lm"))
    with pytest.raises(ValueError, match="is not an HF \\*ForSequenceClassification"):
        learned.check_folder(str(tmp_path / "lm"))
