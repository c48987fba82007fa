"""Reward-model trainer: last-token readout under any padding, checkpoint round trip, the
jitted update, a length-only scorer at chance, and a CPU run that learns the synthetic task."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.tasks.preference_data import ArithPreferenceTask, pairwise_accuracy
from jaxrl_llm.trainers import reward_model as rm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = models.build_builtin_tokenizer(str(tmp_path_factory.mktemp("tok")))
    return models.load_tokenizer(path)


def _tiny(tokenizer, **kw):
    base = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        qkv_bias=True,
        architecture="qwen2",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    base.update(kw)
    return models.ModelConfig(**base)


def test_last_valid_index():
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(rm.last_valid_index(mask), [1, 3, 2, 0])


def test_reward_is_read_at_the_last_valid_token_whatever_the_padding(tokenizer):
    config = _tiny(tokenizer)
    params = models.init_value_params(config, jax.random.PRNGKey(0))
    score = rm.make_score_fn(config)
    p_ids = [1] + list(tokenizer.encode("12+34=", add_special_tokens=False))
    c_ids = list(tokenizer.encode("46", add_special_tokens=False)) + [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id

    def row(ids, width, left):
        padding = [pad] * (width - len(ids))
        toks = padding + ids if left else ids + padding
        m = [0] * len(padding) + [1] * len(ids) if left else [1] * len(ids) + [0] * len(padding)
        return jnp.array([toks]), jnp.array([m])

    # reference: the unpadded sequence; the value at its last position
    full = jnp.array([p_ids + c_ids])
    pos = jnp.arange(full.shape[1])[None]
    ref = models.apply_value(config, params, full, pos, jnp.ones_like(full))[0, -1]
    layouts = [
        (row(p_ids, len(p_ids), True), row(c_ids, len(c_ids), False)),  # no padding
        (row(p_ids, 12, True), row(c_ids, 7, False)),  # RL layout: left | right
        (row(p_ids, 12, True), row(c_ids, 7, True)),  # completion left-padded too
        (row(p_ids, 9, False), row(c_ids, 7, False)),  # prompt right-padded (a hole inside)
    ]
    for (pt, pm), (ct, cm) in layouts:
        np.testing.assert_allclose(score(params, pt, pm, ct, cm)[0], ref, rtol=1e-4, atol=1e-5)
    # a different completion changes the reward (the readout is not at a pad slot)
    ct2, cm2 = row(list(tokenizer.encode("47", add_special_tokens=False)) + [2], 7, False)
    pt, pm = row(p_ids, 12, True)
    assert abs(float(score(params, pt, pm, ct2, cm2)[0]) - float(ref)) > 1e-6


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip(tokenizer, tmp_path, tie):
    config = _tiny(tokenizer, tie_embeddings=tie)
    params = models.init_value_params(config, jax.random.PRNGKey(1))
    params["value_head"]["bias"] = jnp.asarray(0.25, jnp.float32)
    rm.save_reward_model(tmp_path, config, params, tokenizer=tokenizer, meta={"note": "x"})
    assert {"config.json", "model.safetensors", rm.HEAD_FILE, rm.META_FILE} <= set(
        os.listdir(tmp_path)
    )
    assert json.loads((tmp_path / rm.META_FILE).read_text())["note"] == "x"
    config2, params2 = rm.load_reward_model(tmp_path)
    assert config2.hidden_size == config.hidden_size and config2.tie_embeddings == tie
    assert set(params2) == {"embed", "layers", "final_norm", "value_head"}
    pairs = ArithPreferenceTask().pairs("test", 8, 0)
    b = rm.encode_pairs(tokenizer, pairs, (8, 16), 5)
    a = rm.make_score_fn(config)(
        params, b.prompt_tokens, b.prompt_mask, b.chosen_tokens, b.chosen_mask
    )
    c = rm.make_score_fn(config2)(
        params2, b.prompt_tokens, b.prompt_mask, b.chosen_tokens, b.chosen_mask
    )
    np.testing.assert_allclose(a, c, rtol=1e-6)
    assert models.load_tokenizer(str(tmp_path)).encode("12") == tokenizer.encode("12")
    with pytest.raises(ValueError, match="not a reward-model folder"):
        rm.load_reward_model(tmp_path / "nothing")


def test_update_is_one_program_with_donated_state(tokenizer):
    config = _tiny(tokenizer)
    params = models.init_value_params(config, jax.random.PRNGKey(2))
    opt = rm.make_optimizer(steps=10, lr=1e-3, warmup_steps=1)
    update = rm.make_update(config, opt)
    batch = rm.encode_pairs(tokenizer, ArithPreferenceTask().pairs("train", 16, 0), (8,), 5)
    state = rm.RewardModelState(jnp.zeros((), jnp.int32), params, opt.init(params))
    old_leaf = state.params["value_head"]["kernel"]
    state, m1 = update(state, batch.take(np.arange(8)))
    assert old_leaf.is_deleted()  # donated
    state, m2 = update(state, batch.take(np.arange(8, 16)))
    assert update._cache_size() == 1
    assert int(state.step) == 2
    assert {"loss", "accuracy", "margin_mean", "grad_norm"} <= set(m2)
    assert np.isfinite(float(m1["loss"])) and float(m1["loss"]) == pytest.approx(np.log(2), abs=0.1)


@pytest.mark.parametrize("same_length_fraction", [0.5, 0.25])  # the recipe's and runlocal's
def test_length_only_scorer_is_at_chance_on_the_heldout_split(tokenizer, same_length_fraction):
    task = ArithPreferenceTask(same_length_fraction=same_length_fraction)
    pairs = task.pairs("test", 512, 12345)
    b = rm.encode_pairs(tokenizer, pairs, (8,), 5)
    length = {"chosen": b.chosen_mask.sum(1), "rejected": b.rejected_mask.sum(1)}  # tokens
    acc = pairwise_accuracy(length["chosen"], length["rejected"])
    assert acc == pytest.approx(0.5, abs=0.01), acc
    assert pairwise_accuracy(-length["chosen"], -length["rejected"]) == pytest.approx(0.5, abs=0.01)


def test_reward_model_learns_the_synthetic_preferences(reward_model_checkpoint):
    """Untrained: ≈ 0.5 held-out accuracy; after a CPU-sized run: ≥ 0.85 (docs/reward_models.md)."""
    summary, folder = reward_model_checkpoint
    print("\n".join(summary["log"]), summary)
    assert abs(summary["heldout_accuracy_before"] - 0.5) < 0.12, summary
    assert summary["heldout_accuracy_after"] >= 0.85, summary
    # the checkpoint scores like the trained model
    config, params = rm.load_reward_model(folder)
    meta = json.loads(open(os.path.join(folder, rm.META_FILE)).read())
    assert meta["heldout_accuracy"] == pytest.approx(summary["heldout_accuracy_after"])
    assert config.hidden_size == 128 and config.num_layers == 2
