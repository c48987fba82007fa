"""A reward function that raises, hangs past its limit or returns NaN never stops training."""

import multiprocessing

import numpy as np

from tests.trainers.conftest import small_config


def test_faulty_rewards_are_counted_and_survived(tmp_path):
    from jaxrl_llm.trainers import rl

    c = small_config(
        **{
            "task.name": "tests.trainers.faulty_rewards:make",
            "task.reward_timeout_s": 2.0,
            "task.reward_workers": 2,
            "sft.steps": 0,
            "train.steps": 2,
            "train.prompts_per_step": 8,
            "train.samples_per_prompt": 2,
            "eval.size": 8,
            "checkpoint.every": 0,
            "model.hidden_size": 32,
            "model.intermediate_size": 64,
            "model.head_dim": 8,
        }
    )
    c.task.kwargs = type(c.task.kwargs)()
    summary = rl.train(c, str(tmp_path), log=lambda *a: None)
    counters = summary["counters"]
    # Per step 16 rows: 4 raise, 4 hang, 4 NaN, 4 score 0.25 (prompt kinds 0..3 cycle).
    assert counters["reward_errors"] >= 2
    assert counters["reward_timeouts"] >= 2
    assert counters["reward_nans"] >= 2
    steps = [h for h in summary["history"] if "train/reward" in h]
    assert len(steps) == 2
    for h in steps:
        assert np.isfinite(h["train/reward"])
        assert h["train/reward"] <= 0.25 + 1e-6
    assert multiprocessing.active_children() == []  # hung workers killed, pool closed
