"""Asynchronous rollouts (`rollout.async_steps`): equal to a lagged synchronous run bit for bit,
resume reproduces the uninterrupted run, the queue file can be lost, the async recipe learns."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import checkpoint as ckpt_lib
from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl, seeds
from tests.trainers.conftest import recipe_overrides, small_config
from tests.trainers.test_recipes_learn import assert_learned, learning_config

KEYS = ("train/reward", "train/accuracy", "train/loss/total", "train/grad_norm", "train/entropy")
QUIET = dict(log=lambda *a: None)


def _config(sft, **overrides):
    return small_config(
        **recipe_overrides(sft),
        **{
            "train.steps": 4,
            "train.prompts_per_step": 8,
            "train.samples_per_prompt": 4,
            "eval.size": 16,
            "checkpoint.every": 0,
            "task.reward_workers": 1,
            **overrides,
        },
    )


class LaggedTrainer(rl.Trainer):
    """Synchronous, but the collect stage of step t samples with the parameters of step t - 1
    (step 0 with the initial ones): what `async_steps = 1` promises to equal."""

    previous = None

    def collect(self, state, source, step, counters):
        lagged = state if self.previous is None else state.replace(params=self.previous)
        self.previous = jax.tree.map(jnp.copy, state.params)  # the update donates state
        return super().collect(lagged, source, step, counters)


def _history(summary):
    return {h["step"]: h for h in summary["history"] if "train/reward" in h}


def _assert_same_run(a, b, state_a, state_b):
    ha, hb = _history(a), _history(b)
    assert sorted(ha) == sorted(hb) == list(range(1, len(ha) + 1))
    for step in ha:
        for k in KEYS:
            assert ha[step][k] == hb[step][k], (step, k, ha[step][k], hb[step][k])
    assert a["final_eval"] == b["final_eval"]
    for x, y in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_one_step_async_equals_a_lagged_synchronous_run(tmp_path, sft_checkpoint):
    sync = LaggedTrainer(_config(sft_checkpoint), str(tmp_path / "lagged"))
    lagged = sync.run(**QUIET)
    asyn = rl.Trainer(_config(sft_checkpoint, **{"rollout.async_steps": 1}), str(tmp_path / "a"))
    summary = asyn.run(**QUIET)
    _assert_same_run(lagged, summary, sync.state, asyn.state)
    # ... and not equal to the synchronous run: the lag changes the numbers.
    plain = rl.Trainer(_config(sft_checkpoint), str(tmp_path / "sync"))
    plain_summary = plain.run(**QUIET)
    for k in KEYS:  # step 0 samples with the initial parameters in both
        assert _history(plain_summary)[1][k] == _history(summary)[1][k], k
    assert any(
        _history(plain_summary)[s]["train/loss/total"] != _history(summary)[s]["train/loss/total"]
        for s in (2, 3, 4)
    )


class Killed(Exception):
    pass


def _run_killed_after(config, workdir, step, monkeypatch):
    save = ckpt_lib.Checkpointer.save

    def save_then_die(self, s, state, meta):
        save(self, s, state, meta)
        if s == step:
            raise Killed(s)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_then_die)
    with pytest.raises(Killed):
        rl.Trainer(config, workdir).run(**QUIET)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)


@pytest.fixture(scope="module")
def async2_reference(sft_checkpoint, tmp_path_factory):
    """(config, trainer, summary, workdir) of an uninterrupted 5-step `async_steps = 2` run
    that logs every step and checkpoints every step (shared by the resume and staleness tests)."""
    c = _config(
        sft_checkpoint,
        **{"rollout.async_steps": 2, "checkpoint.every": 1, "train.steps": 5, "log.every": 1},
    )
    workdir = str(tmp_path_factory.mktemp("async_ref"))
    trainer = rl.Trainer(c, workdir)
    return c, trainer, trainer.run(**QUIET), workdir


def test_async_resume_reproduces_the_uninterrupted_run(tmp_path, async2_reference, monkeypatch):
    c, ref, reference, _ = async2_reference

    killed = str(tmp_path / "killed")
    _run_killed_after(c, killed, 2, monkeypatch)
    assert os.path.exists(workdir_lib.pending_rollouts_file(killed, 2))
    lost = str(tmp_path / "lost")  # the same killed run (deterministic), for the lost-file case
    shutil.copytree(killed, lost)
    resumed = rl.Trainer(c, killed)
    summary = resumed.run(**QUIET)
    _assert_same_run(reference, summary, ref.state, resumed.state)
    assert "async_pending_lost" not in summary["counters"]

    # A lost queue file: the run resamples the queued steps with the restored parameters,
    # counts it, and finishes.
    os.remove(workdir_lib.pending_rollouts_file(lost, 2))
    summary = rl.Trainer(c, lost).run(**QUIET)
    assert summary["counters"]["async_pending_lost"] == 1
    assert sorted(_history(summary)) == [1, 2, 3, 4, 5]


def test_staleness_is_logged(async2_reference):
    workdir = async2_reference[3]
    with open(workdir_lib.path(workdir, workdir_lib.METRICS_JSONL)) as f:
        rows = [json.loads(line) for line in f]
    staleness = [
        r["scalars"]["rollout/staleness"]
        for r in rows
        if "rollout/staleness" in r.get("scalars", {})
    ]
    # steps 0 and 1 were sampled with the initial params, every later step 2 updates behind
    assert staleness == [0.0, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.dynamic_sampling": True}, "rollout.async_steps = 1 does not combine"),
        ({"data.replay_fraction": 0.25}, "rollout.async_steps = 1 does not combine"),
        ({"rollout.async_steps": 9}, "config.rollout.async_steps = 9"),
    ],
)
def test_bad_async_configs_fail_before_building(overrides, message):
    c = small_config(**{"rollout.async_steps": 1, **overrides})
    with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")):
        config_lib.validate(c)


def test_vmapped_seeds_refuse_async(tmp_path):
    c = small_config(**{"rollout.async_steps": 1})
    with pytest.raises(config_lib.ConfigError, match="cannot run as vmapped seeds"):
        seeds.SeedsTrainer(c, [str(tmp_path / "a"), str(tmp_path / "b")], [0, 1])


def test_async_grpo_recipe_learns(tmp_path, sft_checkpoint):
    """The recipes' learning test with `async_steps = 1` (tests/trainers/test_recipes_learn.py)."""
    c = learning_config("grpo_arith", sft_checkpoint)
    c.rollout.async_steps = 1
    assert_learned(rl.train(c, str(tmp_path), **QUIET), "async grpo")
