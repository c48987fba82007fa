"""The data options reach the trainer: dynamic sampling filters groups, rollout replay feeds
stored groups with their behaviour log-probs, the curriculum and overlong shaping run."""

import numpy as np

from tests.trainers.conftest import recipe_overrides, small_config


def _run(tmp_path, sft, **overrides):
    from jaxrl_llm.trainers import rl

    c = small_config(
        **{
            **recipe_overrides(sft),
            "train.steps": 3,
            "train.prompts_per_step": 8,
            "eval.size": 8,
            "checkpoint.every": 0,
            **overrides,
        }
    )
    return rl.train(c, str(tmp_path), log=lambda *a: None)


def _steps(summary):
    return [h for h in summary["history"] if "train/reward" in h]


def test_dynamic_sampling_keeps_only_informative_groups(tmp_path, sft_checkpoint, monkeypatch):
    from jaxrl_llm.trainers import rl

    seen = []
    original = rl_step_advantages = rl.rl_step.compute_advantages

    def spy(config, rollout, rewards, *args, **kwargs):
        seen.append(np.asarray(rewards).reshape(-1, config.train.samples_per_prompt))
        return original(config, rollout, rewards, *args, **kwargs)

    monkeypatch.setattr(rl.rl_step, "compute_advantages", spy)
    del rl_step_advantages
    _run(tmp_path, sft_checkpoint, **{"data.dynamic_sampling": True, "data.max_attempts": 6})
    assert len(seen) == 3
    for groups in seen:
        assert groups.shape == (8, 8)
        # enough informative groups exist at ~30 % accuracy: none with all-equal rewards
        assert np.all(groups.max(axis=1) > groups.min(axis=1)), groups


def test_replay_curriculum_and_overlong_shaping_run(tmp_path, sft_checkpoint):
    summary = _run(
        tmp_path,
        sft_checkpoint,
        **{"data.replay_fraction": 0.25, "data.curriculum": "ucb", "data.overlong_buffer": 2},
    )
    steps = _steps(summary)
    assert len(steps) == 3
    for h in steps:
        assert np.isfinite(h["train/loss/total"])
    # 2 of 8 groups come from the buffer once it holds groups (after the first step)
    assert [h["data/replayed_groups"] for h in steps] == [0.0, 2.0, 2.0]


def test_replay_run_resumes_exactly(tmp_path, sft_checkpoint):
    """The replay buffer is part of the checkpoint: a 4-step run cut back to its step-2
    checkpoint (as if killed there) and resumed = the uninterrupted run (same replayed groups,
    same losses), bit for bit."""
    import shutil

    keys = (
        "train/reward",
        "train/loss/total",
        "train/grad_norm",
        "train/entropy",
        "data/replayed_groups",
    )
    opts = {
        "data.replay_fraction": 0.25,
        "checkpoint.every": 1,
        "checkpoint.keep": 10,
        "train.steps": 4,
    }
    straight = _steps(_run(tmp_path, sft_checkpoint, **opts))
    assert [h["data/replayed_groups"] for h in straight] == [0.0, 2.0, 2.0, 2.0]
    ckpt = tmp_path / "checkpoints"
    for step in (3, 4):
        shutil.rmtree(ckpt / str(step))
    resumed = _steps(_run(tmp_path, sft_checkpoint, **opts))
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]
    for want, got in zip(straight, resumed):
        for k in keys:
            assert got[k] == want[k], (want["step"], k, got[k], want[k])
