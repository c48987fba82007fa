"""Every shipped arithmetic recipe, in runlocal mode, learns from the shared SFT checkpoint.

Held-out accuracy (sampled at the training temperature, `eval.n` samples on `eval.size`
test prompts drawn with their own seed) must rise by >= 5 points and by more than two
standard errors of the difference; no program recompiles after the second step.
"""

import importlib.util
import os

import numpy as np
import pytest

from tests.trainers.conftest import REPO, recipe_overrides

RECIPES = [
    "grpo_arith",
    "dr_grpo_arith",
    "dapo_arith",
    "ppo_arith",
    "rloo_arith",
    "reinforce_pp_arith",
    "psr_arith",
    "nsr_arith",
    "w_reinforce_arith",
    "gspo_arith",
    "online_dpo_arith",  # DPO on pairs sampled from the current policy, labelled by the verifier
]


def load_recipe(name, arg="runlocal"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def learning_config(recipe, sft_checkpoint):
    """The recipe's runlocal config from the shared SFT checkpoint, as the learning tests run it."""
    c = load_recipe(recipe)
    c.unlock()
    for key, value in recipe_overrides(sft_checkpoint).items():
        group, field = key.split(".")
        c[group][field] = value
    c.log.progress = False
    c.checkpoint.every = 0
    return c


def assert_learned(summary, name):
    """Held-out accuracy starts in [0.2, 0.8], rises by >= 5 points and by more than two
    standard errors of the difference; nothing recompiles after step 2."""
    before, after = summary["initial_eval"], summary["final_eval"]
    assert 0.2 <= before["eval/accuracy"] <= 0.8, before
    gain = after["eval/accuracy"] - before["eval/accuracy"]
    print(
        f"{name}: held-out accuracy {before['eval/accuracy']:.3f} -> {after['eval/accuracy']:.3f}"
    )
    se = float(np.hypot(before["eval/stderr"], after["eval/stderr"]))
    assert gain >= 0.05 and gain > 2 * se, (
        name,
        before["eval/accuracy"],
        after["eval/accuracy"],
        se,
    )
    compiles = [h["compiles"] for h in summary["history"] if "compiles" in h]
    assert len(compiles) == summary["steps"]
    assert compiles[-1] == compiles[1], f"recompiled after step 2: {compiles}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_learns(recipe, tmp_path, sft_checkpoint):
    from jaxrl_llm.trainers import rl

    c = learning_config(recipe, sft_checkpoint)
    assert_learned(rl.train(c, str(tmp_path), log=lambda *a: None), recipe)
