"""Synchronous vs asynchronous rollouts on the arithmetic GRPO recipe: wall time and learning.

    python benchmarks/async_rollouts.py [--seeds=0,1,2] [--async_steps=1] [--steps=N]
        [--sft_dir=MODEL --tokenizer_dir=TOK] [--out=results.json]

For each seed, the `grpo_arith:runlocal` recipe runs twice from one SFT checkpoint (built
once here with the test suite's pinned SFT settings unless given): `rollout.async_steps = 0`
and `= k`. Printed per run: held-out accuracy before / after, training seconds (without the
evaluations) and seconds per step; then the paired per-seed difference of the final accuracy
(async minus sync) with its mean and standard deviation, and the wall-time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrl_llm.trainers import rl  # noqa: E402
from jaxrl_llm.trainers.config import base_config  # noqa: E402

SFT = {
    "sft.steps": 2500,
    "sft.batch_size": 32,
    "sft.lr": 1e-3,
    "sft.warmup_steps": 20,
    "sft.seed": 0,
    "sft.flawed_fraction": 0.4,
}


def _config(overrides):
    c = base_config(runlocal=True)
    c.unlock()
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-mean"
    for key, value in overrides.items():
        group, field = key.split(".")
        c[group][field] = value
    c.log.progress = False
    c.checkpoint.every = 0
    c.mesh.num_devices = 1
    return c


def build_sft(workdir):
    trainer = rl.Trainer(_config({"train.steps": 1, **SFT}), workdir)
    trainer.initial_params(log=lambda *a: None)
    return os.path.join(workdir, "sft"), os.path.join(workdir, "tokenizer")


def run(model_dir, tok_dir, seed, async_steps, steps, workdir):
    overrides = {
        "model.init_checkpoint": model_dir,
        "tokenizer.path": tok_dir,
        "train.seed": seed,
        "rollout.async_steps": async_steps,
    }
    if steps:
        overrides["train.steps"] = steps
    c = _config(overrides)
    t0 = time.time()
    summary = rl.train(c, workdir, log=lambda *a: None)
    return {
        "seed": seed,
        "async_steps": async_steps,
        "before": summary["initial_eval"]["eval/accuracy"],
        "after": summary["final_eval"]["eval/accuracy"],
        "stderr_after": summary["final_eval"]["eval/stderr"],
        "train_seconds": summary["seconds"],
        "seconds_per_step": summary["seconds"] / c.train.steps,
        "wall_seconds": time.time() - t0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--async_steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="0: the recipe's train.steps")
    p.add_argument("--sft_dir", default="")
    p.add_argument("--tokenizer_dir", default="")
    p.add_argument("--out", default="")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, tok_dir = a.sft_dir, a.tokenizer_dir
        if not model_dir:
            model_dir, tok_dir = build_sft(os.path.join(tmp, "sft_run"))
        rows = []
        for seed in seeds:
            for k in (0, a.async_steps):
                r = run(model_dir, tok_dir, seed, k, a.steps, os.path.join(tmp, f"s{seed}_k{k}"))
                rows.append(r)
                print(
                    f"seed {seed} async_steps {k}: accuracy {r['before']:.3f} -> {r['after']:.3f}"
                    f" (± {r['stderr_after']:.3f}), {r['train_seconds']:.1f} s training "
                    f"({r['seconds_per_step']:.2f} s/step)",
                    flush=True,
                )
    by = {(r["seed"], r["async_steps"]): r for r in rows}
    diff = np.array([by[s, a.async_steps]["after"] - by[s, 0]["after"] for s in seeds])
    ratio = np.mean(
        [by[s, 0]["train_seconds"] / by[s, a.async_steps]["train_seconds"] for s in seeds]
    )
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
    print(
        f"paired final-accuracy difference (async - sync) per seed: {np.round(diff, 3).tolist()}; "
        f"mean {diff.mean():+.3f}, sd {sd:.3f}"
    )
    print(f"training time sync / async: {ratio:.2f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(
                {"runs": rows, "paired_diff": diff.tolist(), "time_ratio": ratio}, f, indent=1
            )


if __name__ == "__main__":
    main()
