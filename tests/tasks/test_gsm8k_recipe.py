"""configs/grpo_hf_gsm8k.py: argument parsing, validation, and the task it builds on a generated jsonl."""

import importlib.util
import json
import os

import pytest

from jaxrl_llm.tasks import make_task
from jaxrl_llm.trainers.config import validate

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _recipe():
    spec = importlib.util.spec_from_file_location(
        "grpo_hf_gsm8k", os.path.join(_ROOT, "configs", "grpo_hf_gsm8k.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k_recipe") / "gsm8k.jsonl"
    rows = [
        {
            "question": f"Sam has {i} pens and gets {2 * i} more. How many pens now?",
            "answer": f"{i}+{2 * i}=<<{i}+{2 * i}={3 * i}>>{3 * i}\n#### {3 * i}",
        }
        for i in range(1, 41)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_arguments_and_validation(data_file):
    recipe = _recipe()
    c = recipe.get_config(f"/models/tiny,data={data_file},runlocal")
    validate(c)
    assert c.model.hf_path == c.tokenizer.path == "/models/tiny"
    assert c.task.name == "gsm8k" and c.task.kwargs.path == data_file
    assert c.train.steps == 2 and c.rollout.max_new_tokens == 16 and c.sft.steps == 0
    full = recipe.get_config("/models/big")
    validate(full, num_devices=8)
    assert full.task.kwargs.path == "openai/gsm8k" and full.rollout.max_new_tokens == 512
    with pytest.raises(ValueError, match="needs an argument"):
        recipe.get_config(None)
    with pytest.raises(ValueError, match="unknown option"):
        recipe.get_config("/m,lr=3")


def test_task_from_recipe_scores_its_sft_targets(data_file):
    c = _recipe().get_config(f"/models/tiny,data={data_file},runlocal")
    task = make_task(c.task.name, **c.task.kwargs.to_dict())
    train, test = task.examples("train", None, 0), task.examples("test", c.eval.size, c.eval.seed)
    assert len(test) >= 1 and not {e.id for e in train} & {e.id for e in test}
    for e in train + test:
        assert e.prompt.startswith("Question: Sam has ") and e.prompt.endswith("\nAnswer:")
        assert task.reward(task.sft_target(e), e) == 1.0
        assert task.reward(" I think 0.", e) == 0.0


def _tiny_hf_folder(path):
    """A random tiny Qwen2 checkpoint with the built-in character tokenizer, as an HF folder."""
    import jax

    from jaxrl_llm import models

    models.build_builtin_tokenizer(path)
    tok = models.load_tokenizer(path)
    config = models.ModelConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        qkv_bias=True,
        architecture="qwen2",
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    models.save_hf(path, config, jax.device_get(models.init_params(config, jax.random.key(0))))
    return path


def test_runlocal_trains_two_steps_on_a_tiny_random_hf_model(tmp_path, data_file):
    from jaxrl_llm.trainers import rl

    model_dir = _tiny_hf_folder(str(tmp_path / "tiny_hf"))
    c = _recipe().get_config(f"{model_dir},data={data_file},runlocal")
    c.unlock()
    c.log.progress = False
    # The recipe's KL term needs reference log-probs, whose program in trainers/rl_step.py
    # (RLPrograms._logp) takes the TrainBatch sharding pytree as out_shardings and fails;
    # drop this override once that is fixed.
    c.algo.kl.coef = 0.0
    summary = rl.train(c, str(tmp_path / "run"), log=lambda *a: None)
    steps = [h for h in summary["history"] if "train/reward" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        assert 0.0 <= h["train/reward"] <= 1.0
    assert "eval/accuracy" in summary["history"][0]
