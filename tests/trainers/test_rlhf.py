"""RLHF against a learned reward: GRPO on the arithmetic task with the reward model as the only
reward (task weight 0) and a KL penalty to the SFT model raises held-out TRUE accuracy (the
verifier's), as the recipes' learning test asks, with the KL logged and the reward terms logged
apart. Measured (docs/reward_models.md): 0.495 -> 0.586 with KL coef 0.5; without the KL the
policy games the reward model (one 3-digit answer for every problem) and falls to 0.11."""

import json
import os

import numpy as np

from jaxrl_llm.trainers import rl
from tests.trainers.test_recipes_learn import assert_learned, learning_config


def test_grpo_against_the_learned_reward_raises_true_accuracy(
    tmp_path, sft_checkpoint, reward_model_checkpoint
):
    _, folder = reward_model_checkpoint
    c = learning_config("grpo_arith", sft_checkpoint)
    c.log.every = 1
    c.reward_model.path = folder
    c.reward_terms.task_weight = 0.0  # the reward model alone drives training
    c.algo.kl.coef = 0.5  # without it the policy games the reward model (docs/reward_models.md)
    summary = rl.train(c, str(tmp_path), log=lambda *a: None)
    assert_learned(summary, "RLHF")
    steps = [h for h in summary["history"] if "train/reward" in h]
    assert all(np.isfinite(h["train/kl"]) for h in steps)
    assert steps[-1]["train/kl"] > 0
    with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
        scalars = [json.loads(line).get("scalars", {}) for line in f]
    logged = [s for s in scalars if "reward/learned" in s]
    assert len(logged) == c.train.steps
    # the training reward is the reward model's score, not the verifier's 0/1
    assert all(s["train/reward"] == s["reward/learned"] for s in logged)
