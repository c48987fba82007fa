"""Kill -9 mid-run and mid-checkpoint-save; resume from the last complete checkpoint with the
same subsequent metrics as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

from jaxrl_llm.checkpoint import KILL_IN_SAVE_ENV
from tests.trainers.conftest import REPO

STEPS = 5
KEYS = ("train/reward", "train/accuracy", "train/loss/total", "train/grad_norm", "train/entropy")


def _cmd(workdir, sft):
    model_dir, tok_dir = sft
    return [
        sys.executable,
        "-m",
        "jaxrl_llm.main",
        "--config=configs/grpo_arith.py:runlocal",
        f"--workdir={workdir}",
        f"--config.model.init_checkpoint={model_dir}",
        f"--config.tokenizer.path={tok_dir}",
        f"--config.train.steps={STEPS}",
        "--config.train.prompts_per_step=8",
        "--config.train.samples_per_prompt=4",
        "--config.checkpoint.every=1",
        "--config.checkpoint.keep=10",
        "--config.eval.size=16",
        "--config.log.progress=False",
        "--config.task.reward_workers=1",
        "--config.mesh.num_devices=1",
    ]


def _env(**extra):
    env = dict(os.environ)
    env.pop(KILL_IN_SAVE_ENV, None)
    env.update(extra)
    return env


def _history(workdir):
    with open(os.path.join(workdir, "done.json")) as f:
        hist = json.load(f)["history"]
    return {h["step"]: h for h in hist if "train/reward" in h}


def test_kill_and_resume_gives_the_same_metrics(tmp_path, sft_checkpoint):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    subprocess.run(
        _cmd(ref_dir, sft_checkpoint),
        cwd=REPO,
        env=_env(),
        check=True,
        timeout=900,
        capture_output=True,
    )
    reference = _history(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))

    # 1. A real SIGKILL from outside, once the step-2 checkpoint is complete.
    proc = subprocess.Popen(
        _cmd(run_dir, sft_checkpoint),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = run_dir / "checkpoints"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if (ckpt / "2" / "meta").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "done.json").exists()

    # 2. Resume, and die inside the save of step 4 (deterministic fault-injection hook).
    out = subprocess.run(
        _cmd(run_dir, sft_checkpoint),
        cwd=REPO,
        env=_env(**{KILL_IN_SAVE_ENV: "4"}),
        timeout=900,
        capture_output=True,
        text=True,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    partial = [p for p in os.listdir(ckpt) if p.startswith("4") and p != "4"]
    assert partial, f"no partial save of step 4 in {os.listdir(ckpt)}"
    assert not (ckpt / "4").exists()

    # 3. Resume again: the partial save is ignored, the run restarts from step 3.
    out = subprocess.run(
        _cmd(run_dir, sft_checkpoint),
        cwd=REPO,
        env=_env(),
        timeout=900,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step 3" in out.stdout
    resumed = _history(run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for k in KEYS:
            assert resumed[step][k] == reference[step][k], (
                step,
                k,
                resumed[step][k],
                reference[step][k],
            )
