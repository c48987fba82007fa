"""configs/grpo_hf_gsm8k.py: argument parsing, validation, and the task it builds on a generated jsonl."""
import importlib.util
import json
import os

import pytest

from jaxrl_llm.tasks import make_task
from jaxrl_llm.trainers.config import validate

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _recipe():
    spec = importlib.util.spec_from_file_location("grpo_hf_gsm8k", os.path.join(_ROOT, "configs", "grpo_hf_gsm8k.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k_recipe") / "gsm8k.jsonl"
    rows = [{"question": f"Sam has {i} pens and gets {2 * i} more. How many pens now?",
                      "answer": f"{i}+{2 * i}=<<{i}+{2 * i}={3 * i}>>{3 * i}\n#### {3 * i}"} for i in range(1, 41)]
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
