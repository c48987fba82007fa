"""Rollout wall time inside whole GRPO steps: the static sampler, the static sampler with
prefix buckets (`rollout.kv_buckets`) and continuous batching (`rollout.continuous_slots`),
run through the real `Trainer` on the same config, seed, prompts and number of steps.

    python benchmarks/grpo_rollout.py [--steps 4] [--slots 32] [--out results.json]
    python benchmarks/grpo_rollout.py --size tiny --steps 2 --prompts 2 --samples 4 \\
        --max-new-tokens 48 --slots 3 --reward-workers 0     # the smoke test's size

Workload: `base_config(runlocal=True)` (GRPO, PPO-clip, the arithmetic task, the inline tiny
Qwen2-style model with the 100-token character vocabulary), with the SFT warm start turned
off (`sft.steps = 0`): the policy is the randomly initialised model, whose next-token
distribution at temperature 1 is close to uniform, so the stop id comes with probability about
1/V per token and the completion lengths are geometric (mean about 90 tokens here, median
about 60, p99 about 400), produced by the model itself in each step.
`rollout.max_new_tokens` (512 by default) truncates a few rows in 1000. Random completions
earn reward 0, so every GRPO advantage is 0 and the update leaves the policy unchanged: the
length distribution is the same in every step; the update still computes its full forward and
backward pass. Defaults: the recipe's 16 prompts x 8 samples per step, 4 steps per arm (about
4 minutes on the 2-core CPU).

Arms (same seed, same prompts, same steps):

- static: `rollout.continuous_slots = 0, rollout.kv_buckets = 0` (all B·G rows decode
  together until the longest one ends, each step attending over all P + T cache slots);
- static, kv buckets: `rollout.kv_buckets = --kv-buckets` (4, the continuous sampler's
  number): each step attends over the filled cache prefix rounded up to a bucket;
- continuous: `rollout.continuous_slots = --slots` (B·G / 4 by default): a row that stops
  hands its slot to the next (prompt, sample) job; 4 attention buckets.

Keys (`--static-keys`): the continuous sampler draws row r's token t with per-row keys
(`row_step_keys`), and guarantees the tokens of `generate(..., row_keys=True)`
(docs/rollouts.md). By default (`row`) the static arms set `rollout.row_keys = True`, the
static sampler's per-row keys: then all three arms draw the same completions (checked row by
row; equal up to a draw within float rounding of a category boundary). `--static-keys=step`
keeps the trainer's default keys (`fold_in(key, t)`) in the static arms: the continuous arm
then draws other completions from the same distribution.

Timing: the three trainers run in threads that take turns (`Turns`): one arm runs at a time
and their steps interleave (static step 1, buckets step 1, continuous step 1, static step 2,
...), so a shared machine's changing load weighs on the arms alike. Reported per arm, over
the steps after the first (which compiles): mean `time/rollout`, `time/logprob`,
`time/update` (the trainer's own timings) and the whole-step wall time
(`Trainer.train_one_step`); the process CPU seconds of the collect stage and of the whole
step (less sensitive to other jobs than wall time; XLA's CPU threads count in both);
rollout tokens / s (completion tokens / `time/rollout`); the decode steps per step (static:
the step's longest completion, the loop's length; continuous: the loop's own count,
`generate_continuous(..., return_stats=True)`); the ratios to the static arm; the realised
length distribution of each arm over all its steps (median, p90, p99, max, mean, fraction
truncated) and the fraction of rows whose tokens equal the static arm's. The machine's load
average is recorded before and after; every per-step figure is in the JSON (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrl_llm.trainers import rl  # noqa: E402
from jaxrl_llm.trainers.config import base_config  # noqa: E402

ARMS = ("static", "static, kv buckets", "continuous")


def make_config(args, arm: str):
    c = base_config(runlocal=True)
    c.unlock()
    c.sft.steps = 0  # the randomly initialised policy: geometric completion lengths
    c.train.steps = args.steps
    c.train.seed = args.seed
    c.sft.seed = args.seed
    c.train.prompts_per_step = args.prompts
    c.train.samples_per_prompt = args.samples
    c.rollout.max_new_tokens = args.max_new_tokens
    c.rollout.temperature = 1.0
    c.rollout.continuous_slots = args.slots if arm == "continuous" else 0
    c.rollout.kv_buckets = args.kv_buckets if arm == "static, kv buckets" else 0
    c.rollout.row_keys = args.static_keys == "row" and arm != "continuous"
    c.task.reward_workers = args.reward_workers
    if args.size == "tiny":  # for the smoke test: less to compile, a smaller prompt pool
        c.model.num_layers = 1
        c.model.hidden_size = 32
        c.model.num_heads = 2
        c.model.num_kv_heads = 1
        c.model.head_dim = 16
        c.model.intermediate_size = 64
        c.data.num_examples = 64
    c.log.progress = False
    c.log.samples = 0
    c.checkpoint.every = 0
    c.mesh.num_devices = 1
    c.lock()
    return c


class Turns:
    """Round-robin turns between the arms' threads, so one arm runs at a time and their steps
    interleave: arm 0 (set-up, step 1), arm 1 (the same), ..., arm 0 step 2, ...; an arm's
    last step keeps the turn through its final checkpoint."""

    def __init__(self, arms: int):
        self.cond = threading.Condition()
        self.turn = 0
        self.finished = [False] * arms

    def wait(self, arm: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == arm)

    def pass_on(self, arm: int, finished: bool = False) -> None:
        with self.cond:
            self.finished[arm] = self.finished[arm] or finished
            n = len(self.finished)
            nxt = [(arm + k) % n for k in range(1, n + 1) if not self.finished[(arm + k) % n]]
            self.turn = nxt[0] if nxt else -1
            self.cond.notify_all()


class _Trainer(rl.Trainer):
    """The trainer, recording each step's wall and CPU time and metrics and each rollout's
    tokens, and taking turns with the other arms (`Turns`) between its steps. Its held-out
    evaluations before and after the steps are skipped (not measured)."""

    def __init__(self, config, workdir, turns: Turns, index: int):
        super().__init__(config, workdir)
        self.turns, self.index, self.holds_turn = turns, index, False
        self.steps: list[dict] = []
        self.rollouts: list[dict] = []
        self.sampler_stats: list = []  # continuous: the loop statistics of each call
        self._collect_cpu = 0.0
        self.thread_id = None

    def train_one_step(self, state, source, step, *args, **kwargs):
        if not self.holds_turn:
            self.turns.wait(self.index)
            self.holds_turn = True
        t0, c0 = time.perf_counter(), time.process_time()
        state, m = super().train_one_step(state, source, step, *args, **kwargs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.steps.append(dict(m, wall=wall, cpu=cpu, rollout_cpu=self._collect_cpu))
        if step + 1 < self.config.train.steps:
            self.holds_turn = False
            self.turns.pass_on(self.index)
        return state, m

    def evaluate(self, params, key_seed=None):
        """Not measured here: skipped (the held-out evaluations before and after the steps)."""
        del params, key_seed
        return {"eval/accuracy": 0.0, "eval/stderr": 0.0}

    def collect(self, *args, **kwargs):
        c0 = time.process_time()
        out = super().collect(*args, **kwargs)  # its completions are decoded: the sampler is done
        self._collect_cpu = time.process_time() - c0
        return out

    def finish_rollout(self, handle):
        ro, completions = super().finish_rollout(handle)
        # the completions were just decoded from these arrays: their host copies are cached
        self.rollouts.append(
            dict(
                tokens=np.asarray(ro.tokens) * np.asarray(ro.mask),
                lengths=np.asarray(ro.mask).sum(axis=1),
                truncated=np.asarray(ro.truncated),
            )
        )
        return ro, completions

    def run_in_turn(self, results: dict) -> None:
        """Thread body: waits for the first turn, runs the training, passes the turn on; an
        exception goes to `results[index]`."""
        self.thread_id = threading.get_ident()
        self.turns.wait(self.index)
        self.holds_turn = True
        try:
            self.run(log=lambda *a, **k: None)
        except BaseException as e:  # reported by the main thread
            results[self.index] = e
        finally:
            self.turns.pass_on(self.index, finished=True)


@contextlib.contextmanager
def sampler_hooks(trainers):
    """While the arms run: the continuous sampler returning its loop statistics (computed in
    every call anyway), kept by the trainer whose thread called it."""
    lib = rl.rollout_lib
    continuous = lib.generate_continuous

    def continuous_with_stats(*args, **kwargs):
        ro, s = continuous(*args, return_stats=True, **kwargs)
        caller = [t for t in trainers if t.thread_id == threading.get_ident()]
        caller[0].sampler_stats.append(s)
        return ro

    lib.generate_continuous = continuous_with_stats
    try:
        yield
    finally:
        lib.generate_continuous = continuous


def run_arms(args, workdir: str) -> list[_Trainer]:
    """The arms' trainings, in threads taking turns step by step; returns the trainers."""
    turns = Turns(len(ARMS))
    trainers = [
        _Trainer(make_config(args, arm), os.path.join(workdir, f"arm{i}"), turns, i)
        for i, arm in enumerate(ARMS)
    ]
    results: dict = {}
    with sampler_hooks(trainers):
        threads = [threading.Thread(target=t.run_in_turn, args=(results,)) for t in trainers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for i, arm in enumerate(ARMS):
        if i in results:
            raise RuntimeError(f"arm {arm!r} failed") from results[i]
    return trainers


def length_stats(lengths: np.ndarray, truncated: np.ndarray) -> dict:
    return {
        "rows": int(lengths.size),
        "tokens": int(lengths.sum()),
        "median": float(np.median(lengths)),
        "p90": float(np.percentile(lengths, 90)),
        "p99": float(np.percentile(lengths, 99)),
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
        "truncated_frac": float(truncated.mean()),
    }


def arm_report(args, arm: str, trainer: _Trainer) -> tuple[dict, np.ndarray]:
    """An arm's report and its step rollouts' tokens [steps·N, T] (0 past each row's end)."""
    if len(trainer.rollouts) != args.steps or len(trainer.steps) != args.steps:
        raise RuntimeError(
            f"{arm}: {len(trainer.rollouts)} rollouts in {len(trainer.steps)} steps; expected "
            f"{args.steps} in {args.steps}"
        )
    rolls = trainer.rollouts
    if arm == "continuous":
        decode_steps = [int(s["steps"]) for s in jax.device_get(trainer.sampler_stats)]
    else:  # the loop runs until the step's longest row ends
        decode_steps = [int(r["lengths"].max()) for r in rolls]
    measured = trainer.steps[1:]  # the first step compiles the sampler and the update
    tokens = [int(r["lengths"].sum()) for r in rolls]
    mean = lambda key: float(np.mean([s[key] for s in measured]))  # noqa: E731
    per_step = lambda key: [s[key] for s in trainer.steps]  # noqa: E731
    report = {
        "arm": arm,
        "continuous_slots": trainer.config.rollout.continuous_slots,
        "kv_buckets": trainer.config.rollout.kv_buckets if arm != "continuous" else 4,
        "rollout_s": mean("time/rollout"),
        "logprob_s": mean("time/logprob"),
        "update_s": mean("time/update"),
        "step_s": mean("wall"),
        "rollout_cpu_s": mean("rollout_cpu"),
        "step_cpu_s": mean("cpu"),
        "rollout_tokens_per_s": float(sum(tokens[1:]) / sum(s["time/rollout"] for s in measured)),
        "decode_steps_mean": float(np.mean(decode_steps[1:])),
        "per_step": {
            "rollout_s": per_step("time/rollout"),
            "update_s": per_step("time/update"),
            "step_s": per_step("wall"),
            "rollout_cpu_s": per_step("rollout_cpu"),
            "step_cpu_s": per_step("cpu"),
            "decode_steps": decode_steps,
            "tokens": tokens,
            "reward": per_step("train/reward"),
        },
        "lengths": length_stats(
            np.concatenate([r["lengths"] for r in rolls]),
            np.concatenate([r["truncated"] for r in rolls]),
        ),
    }
    return report, np.concatenate([r["tokens"] for r in rolls])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--size", default="recipe", choices=("recipe", "tiny"), help="recipe: the runlocal model"
    )
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps per arm (the first compiles)")
    ap.add_argument("--prompts", type=int, default=16, help="train.prompts_per_step")
    ap.add_argument("--samples", type=int, default=8, help="train.samples_per_prompt")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--slots", type=int, default=0, help="continuous slots; 0: rows / 4")
    ap.add_argument("--kv-buckets", type=int, default=4)
    ap.add_argument("--static-keys", default="row", choices=("row", "step"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reward-workers", type=int, default=2, help="task.reward_workers (0: score in process)"
    )
    ap.add_argument("--out", default="", help="also write the report to this JSON file")
    args = ap.parse_args(argv)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step compiles and is not averaged)")
    rows = args.prompts * args.samples
    args.slots = args.slots or max(1, rows // 4)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = run_arms(args, tmp)
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    arms, tokens = zip(*(arm_report(args, arm, t) for arm, t in zip(ARMS, trainers)))

    static = arms[0]
    for arm, toks in zip(arms, tokens):
        same_rows = (toks == tokens[0]).all(axis=1)
        arm["rows_equal_to_static"] = float(same_rows.mean())
        arm["rollout_ratio_to_static"] = arm["rollout_s"] / static["rollout_s"]
        arm["step_ratio_to_static"] = arm["step_s"] / static["step_s"]
    same_lengths = all(a["lengths"] == static["lengths"] for a in arms)
    same_completions = all(a["rows_equal_to_static"] == 1.0 for a in arms)
    report = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {jax.device_count()} jax "
        f"device(s), backend {jax.default_backend()}, jax {jax.__version__}",
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "seconds": seconds,
        "workload": {
            "config": "base_config(runlocal=True), sft.steps = 0 (random-init policy)",
            "steps": args.steps,
            "prompts_per_step": args.prompts,
            "samples_per_prompt": args.samples,
            "rows": rows,
            "max_new_tokens": args.max_new_tokens,
            "slots": args.slots,
            "kv_buckets": args.kv_buckets,
            "static_keys": args.static_keys,
            "seed": args.seed,
        },
        "arms": list(arms),
        "same_lengths": same_lengths,
        "same_completions": same_completions,
    }

    w = report["workload"]
    print(
        f"# {report['machine']}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {seconds:.0f} s in all"
    )
    print(
        f"# GRPO, {w['rows']} rows per step ({w['prompts_per_step']} prompts x "
        f"{w['samples_per_prompt']}), T = {w['max_new_tokens']}, {w['steps']} steps per arm, "
        f"the arms' steps interleaved; means over steps 2..{w['steps']}; static keys: "
        f"{w['static_keys']}"
    )
    print(
        "| arm | rollout s | logprob s | update s | step s | rollout CPU s | step CPU s "
        "| rollout tokens/s | decode steps | rollout / static | step / static |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        name = {
            "static, kv buckets": f"static, kv_buckets={a['kv_buckets']}",
            "continuous": f"continuous, {a['continuous_slots']} slots",
        }.get(a["arm"], a["arm"])
        print(
            f"| {name} | {a['rollout_s']:.2f} | {a['logprob_s']:.2f} | {a['update_s']:.2f} | "
            f"{a['step_s']:.2f} | {a['rollout_cpu_s']:.2f} | {a['step_cpu_s']:.2f} | "
            f"{a['rollout_tokens_per_s']:.0f} | {a['decode_steps_mean']:.0f} | "
            f"{a['rollout_ratio_to_static']:.2f}x | {a['step_ratio_to_static']:.2f}x |"
        )
    print("| arm | rows | tokens | median | p90 | p99 | max | mean | truncated | rows = static |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        s = a["lengths"]
        print(
            f"| {a['arm']} | {s['rows']} | {s['tokens']} | {s['median']:.0f} | {s['p90']:.0f} | "
            f"{s['p99']:.0f} | {s['max']} | {s['mean']:.1f} | {s['truncated_frac']:.3f} | "
            f"{a['rows_equal_to_static']:.3f} |"
        )
    print(
        f"same completions in every arm: {same_completions}; same length statistics: "
        f"{same_lengths}"
        + ("" if args.static_keys == "row" else " (static arms with the trainer's step keys)")
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
