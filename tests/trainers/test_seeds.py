"""Vmapped seeds (`trainers/seeds.py`): S seeds as one program = S separate runs.

Each seed's metrics, evaluations and final parameters must equal those of a plain `Trainer`
run with that `train.seed` (rewards and accuracies exactly: the same tokens are sampled;
losses and parameters to float rounding), every seed writes a complete run directory, and a
group killed between its seeds' checkpoint saves resumes to the same result.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl
from jaxrl_llm.trainers import seeds as seeds_lib
from tests.trainers.conftest import REPO, recipe_overrides, small_config

SEEDS = (0, 3)
STEPS = 3
EXACT = ("train/reward", "train/accuracy", "train/response_length")
CLOSE = ("train/loss/total", "train/grad_norm", "train/entropy", "train/kl")

VARIANTS = {
    # GRPO with a k3 KL in the loss (reference log-probs), 2 minibatches of 2 micro-batches
    "grpo_kl": {"algo.kl.coef": 0.05, "train.minibatch_size": 16, "train.microbatch_size": 8},
    # PPO: critic + GAE, adaptive KL in the reward, recomputed old log-probs, 2 epochs
    "ppo": {
        "algo.advantage": "gae",
        "critic.enabled": True,
        "algo.kl.coef": 0.02,
        "algo.kl.placement": "reward",
        "algo.kl.target": 0.01,
        "algo.recompute_old_logp": True,
        "train.num_epochs": 2,
        "train.minibatch_size": 16,
        "algo.lam": 0.95,
    },
    # LoRA: per-seed adapters (the seed axis) on one shared frozen base; KL to the base
    "lora": {
        "model.lora_rank": 4,
        "model.lora_targets": ("q_proj", "o_proj", "up_proj"),
        "optim.lr": 1e-3,
        "algo.kl.coef": 0.05,
    },
}


def _config(sft, variant):
    return small_config(
        **recipe_overrides(sft),
        **{
            "train.steps": STEPS,
            "train.prompts_per_step": 8,
            "train.samples_per_prompt": 4,
            "eval.size": 16,
            "task.reward_workers": 1,
            "checkpoint.every": 1,
            "checkpoint.keep": 10,
            "log.samples": 0,
        },
        **VARIANTS[variant],
    )


def _quiet(*args, **kwargs):
    del args, kwargs


def _train_history(summary):
    return {h["step"]: h for h in summary["history"] if "train/reward" in h}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def runs(request, sft_checkpoint, tmp_path_factory):
    """(config, vmapped summaries + state + workdirs, separate summaries + states)."""
    c = _config(sft_checkpoint, request.param)
    root = tmp_path_factory.mktemp(f"seeds_{request.param}")
    workdirs = [str(root / f"vmapped_seed{s}") for s in SEEDS]
    trainer = seeds_lib.SeedsTrainer(c, workdirs, SEEDS)
    vmapped = trainer.run(log=_quiet)
    separate, states = [], []
    for s in SEEDS:
        t = rl.Trainer(seeds_lib.seed_config(c, s), str(root / f"separate_seed{s}"))
        separate.append(t.run(log=_quiet))
        states.append(t.state)
    return dict(
        config=c,
        vmapped=vmapped,
        state=trainer.state,
        workdirs=workdirs,
        separate=separate,
        separate_states=states,
    )


def test_vmapped_seeds_equal_separate_runs(runs):
    for s, (vm, sep) in enumerate(zip(runs["vmapped"], runs["separate"])):
        hv, hs = _train_history(vm), _train_history(sep)
        assert sorted(hv) == sorted(hs) == list(range(1, STEPS + 1))
        for step in hv:
            for k in EXACT:
                assert hv[step][k] == hs[step][k], (SEEDS[s], step, k)
            for k in CLOSE:
                if k in hs[step]:
                    np.testing.assert_allclose(
                        hv[step][k],
                        hs[step][k],
                        rtol=2e-4,
                        atol=1e-6,
                        err_msg=f"seed {SEEDS[s]} step {step} {k}",
                    )
        for which in ("initial_eval", "final_eval"):
            assert vm[which]["eval/accuracy"] == sep[which]["eval/accuracy"], (SEEDS[s], which)
        assert vm["counters"] == sep["counters"]
        mine = jax.tree.map(lambda x, s=s: np.asarray(x[s]), runs["state"].params)
        theirs = jax.tree.map(np.asarray, runs["separate_states"][s].params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), mine, theirs
        )
        assert float(runs["state"].kl_coef[s]) == pytest.approx(
            float(runs["separate_states"][s].kl_coef), rel=1e-4
        )
    # the seeds really differ (different prompts and samples), so the comparison means something
    a, b = (_train_history(v) for v in runs["vmapped"])
    assert any(a[t]["train/reward"] != b[t]["train/reward"] for t in a)


def test_each_seed_writes_a_complete_run_directory(runs):
    for s, workdir in zip(SEEDS, runs["workdirs"]):
        names = os.listdir(workdir)
        assert any(n.startswith("events.out.tfevents") for n in names), names
        done = json.load(open(os.path.join(workdir, "done.json")))
        assert done["steps"] == STEPS and done["final_eval"]["eval/accuracy"] >= 0
        assert sorted(
            int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()
        ) == list(range(1, STEPS + 1))
        with open(os.path.join(workdir, "config.json")) as f:  # provenance with the seed's config
            assert json.load(f)["train"]["seed"] == s


def test_group_killed_between_saves_resumes_to_the_same_result(runs, tmp_path):
    """Seed 0 saved step 2, seed 1 did not: the group resumes from step 1 (seed 0's step 2 is
    dropped) and ends where the uninterrupted group ended."""
    dirs = [str(tmp_path / os.path.basename(w)) for w in runs["workdirs"]]
    for src, dst in zip(runs["workdirs"], dirs):
        shutil.copytree(src, dst)
        os.remove(os.path.join(dst, "done.json"))
    ck = [os.path.join(d, "checkpoints") for d in dirs]
    shutil.rmtree(os.path.join(ck[0], str(STEPS)))
    for step in (2, STEPS):
        shutil.rmtree(os.path.join(ck[1], str(step)))
    lines = []
    resumed = seeds_lib.SeedsTrainer(runs["config"], dirs, SEEDS).run(log=lines.append)
    assert f"resumed {len(SEEDS)} seeds from step 1" in lines
    for vm, again in zip(runs["vmapped"], resumed):
        hv, ha = _train_history(vm), _train_history(again)
        assert sorted(ha) == list(range(1, STEPS + 1))
        for step in hv:
            for k in EXACT + CLOSE:
                if k in hv[step]:
                    assert ha[step][k] == hv[step][k], (step, k)
        assert again["final_eval"] == vm["final_eval"]


def test_a_learned_reward_in_vmapped_seeds_equals_separate_runs(
    sft_checkpoint, reward_model_checkpoint, tmp_path
):
    """RLHF terms (reward model, batch-normalised, plus half the task reward) are scored per
    seed in the vmapped collect: each seed's rewards and reward terms equal its separate run."""
    _, folder = reward_model_checkpoint
    c = _config(sft_checkpoint, "grpo_kl")
    c.train.steps = 2
    c.checkpoint.every = 0
    c.reward_model.path = folder
    c.reward_model.normalize = "batch"
    c.reward_terms.task_weight = 0.5
    dirs = [str(tmp_path / f"vmapped_seed{s}") for s in SEEDS]
    seeds_lib.SeedsTrainer(c, dirs, SEEDS).run(log=_quiet)

    def logged(workdir):  # step -> the step's scalars that carry the reward terms
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        return {r["step"]: r["scalars"] for r in rows if "reward/learned" in r.get("scalars", {})}

    for s, workdir in zip(SEEDS, dirs):
        separate = str(tmp_path / f"separate{s}")
        rl.Trainer(seeds_lib.seed_config(c, s), separate).run(log=_quiet)
        mv, ms = logged(workdir), logged(separate)
        assert sorted(mv) == sorted(ms) == [1, 2]
        for step in mv:
            assert mv[step]["train/accuracy"] == ms[step]["train/accuracy"], (s, step)
            # per-row rewards reach the update through the advantages: a seed scored without
            # the reward model (or normalised over all seeds) has another loss and gradient
            keys = ("train/reward", "reward/learned", "reward/task", "train/loss/policy")
            for k in (*keys, "train/grad_norm"):
                np.testing.assert_allclose(mv[step][k], ms[step][k], rtol=1e-4, atol=1e-6)
            # batch-normalised, the learned term has mean 0: the mean reward is half the task's
            assert mv[step]["reward/learned"] != 0.0
            np.testing.assert_allclose(mv[step]["train/reward"], 0.5 * mv[step]["reward/task"])


def test_unsupported_options_fail_before_compiling(sft_checkpoint, tmp_path):
    c = _config(sft_checkpoint, "grpo_kl")
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(config_lib.ConfigError, match="2 seeds .* but 1 workdirs"):
        seeds_lib.SeedsTrainer(c, dirs[:1], [0, 1])
    with pytest.raises(config_lib.ConfigError, match="must be distinct"):
        seeds_lib.SeedsTrainer(c, dirs, [1, 1])
    c.data.dynamic_sampling = True
    with pytest.raises(config_lib.ConfigError, match="dynamic_sampling"):
        seeds_lib.SeedsTrainer(c, dirs, [0, 1])
    c.data.dynamic_sampling = False
    c.data.replay_fraction = 0.25
    with pytest.raises(config_lib.ConfigError, match="replay_fraction"):
        seeds_lib.SeedsTrainer(c, dirs, [0, 1])
    # The CLI routes --seeds / --workdirs to the vmapped trainer (and its config check).
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxrl_llm.main",
            "--config=configs/grpo_arith.py:runlocal",
            "--seeds=0,1",
            f"--workdirs={dirs[0]}",
            f"--workdirs={dirs[1]}",
            "--config.data.dynamic_sampling=True",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "config error" in out.stderr and "vmapped seeds" in out.stderr


def test_a_seed_directory_resumes_as_a_plain_run(runs, tmp_path):
    """A vmapped seed's checkpoints are a plain run's: `Trainer` resumes one and finishes it."""
    s = 1
    workdir = str(tmp_path / "plain")
    shutil.copytree(runs["workdirs"][s], workdir)
    os.remove(os.path.join(workdir, "done.json"))
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))
    lines = []
    again = rl.Trainer(seeds_lib.seed_config(runs["config"], SEEDS[s]), workdir).run(
        log=lines.append
    )
    assert f"resumed from step {STEPS - 1}" in " ".join(lines)
    hv, ha = _train_history(runs["vmapped"][s]), _train_history(again)
    for k in EXACT:
        assert ha[STEPS][k] == hv[STEPS][k], k
    np.testing.assert_allclose(
        ha[STEPS]["train/loss/total"], hv[STEPS]["train/loss/total"], rtol=2e-4, atol=1e-6
    )
    assert again["final_eval"]["eval/accuracy"] == runs["vmapped"][s]["final_eval"]["eval/accuracy"]
