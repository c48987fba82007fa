"""Partial rollouts vs one synchronous rollout per step: the collect stage's wall time for the
same number of trained groups, on long-tailed completion lengths, side by side in one run.

    python benchmarks/partial_rollouts.py                  # defaults below, a few minutes on 2 cores
    python benchmarks/partial_rollouts.py --size tiny --steps 3 --prompts-per-step 2 --n 2 \\
        --max-new 32 --median 3 --budget 8

Workload, fixed before anything is measured: a stream of random prompts (lengths uniform in
[P/2, P], left-padded to P = `--prompt-len`), `--n` samples each; every (prompt, sample) job's
completion length is fixed once from the log-normal of `benchmarks/long_tail.py` (median
`--median`, p99 = 8x the median, clipped to [1, `--max-new`]) and imposed as a per-row limit
(`generate(max_tokens=)` / `start_rows(max_tokens=)`; no stop ids, temperature 1). Each step
trains on `--prompts-per-step` finished groups (B groups of G = `--n` rows).

- sync: today's collect stage: each step one `generate` call over the step's B·G rows, which
  decodes until the batch's longest row ends (`rollout.partial_budget = 0`).
- partial: the trainer's own `PartialPool` (`rollout.partial_budget = --budget`): rounds of
  `continue_rows` on B groups, at most K tokens per row per round; groups that finish train,
  the others are paused and continued in the next step (the prompt and prefix are prefilled
  again in each round: the pool keeps no KV cache across rounds).

Both arms produce `--steps` batches of B·G finished rows from the same stream (the partial
arm trains the groups in the order they finish, so its batches are not the sync arm's: the
tokens it trains are counted from its own batches). Reported per arm: wall time for all
steps, trained tokens / s, decode steps (the sum over calls of each call's longest decode);
for the partial arm also the rounds, the mean and max staleness of trained tokens (step minus
the version that drew them) and the tokens still in flight at the end. The update is the
same batch size in both arms and is not run: the difference is the rollout time per step.

Timing: one warm-up pass of each arm (compiles: partial compiles one program per prefix width,
`ceil(max_new / K) + 1` at most), then `--reps` rounds of both arms interleaved, best kept.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from types import SimpleNamespace

import jax
import numpy as np

from jaxrl_llm import models
from jaxrl_llm.rollout import PromptBatch, SamplingParams, generate
from jaxrl_llm.rollout import partial as partial_lib
from jaxrl_llm.trainers import partial_rollouts

try:
    from benchmarks.long_tail import SIZES, make_lengths, make_prompts
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from long_tail import SIZES, make_lengths, make_prompts


class Stream:
    """The prompt stream: example i is (prompt row i, its G fixed lengths)."""

    def __init__(self, prompts: PromptBatch, lengths: np.ndarray, n: int):
        self.prompts, self.lengths, self.n, self.cursor = prompts, lengths, n, 0

    def next(self, k: int) -> list[int]:
        if self.cursor + k > self.prompts.tokens.shape[0]:
            raise RuntimeError("benchmark stream exhausted: raise the stream size")
        out = list(range(self.cursor, self.cursor + k))
        self.cursor += k
        return out

    def batch(self, examples) -> PromptBatch:
        idx = np.asarray(examples)
        return PromptBatch(tokens=self.prompts.tokens[idx], mask=self.prompts.mask[idx])

    def limits(self, examples) -> np.ndarray:
        return np.concatenate([self.lengths[i * self.n : (i + 1) * self.n] for i in examples])


def run_sync(params, config, stream: Stream, sp, steps: int, b: int, key, kv_buckets=0) -> dict:
    tokens = decode_steps = 0
    for step in range(steps):
        ex = stream.next(b)
        limits = stream.limits(ex)
        r = generate(
            params,
            config,
            stream.batch(ex),
            jax.random.fold_in(key, step),
            sp,
            max_tokens=limits,
            kv_buckets=kv_buckets,
        )
        got = np.asarray(jax.device_get(r.mask)).sum(axis=1)
        if not np.array_equal(got, np.minimum(limits, sp.max_new_tokens)):
            raise RuntimeError("sync arm did not produce the fixed lengths")
        tokens += int(got.sum())
        decode_steps += int(got.max())
    return {"trained_tokens": tokens, "decode_steps": decode_steps}


def run_partial(
    params, config, stream: Stream, sp, steps: int, b: int, budget: int, key, kv_buckets=0
) -> dict:
    """`steps` collect stages of the trainer's `PartialPool`, its rows started with the
    stream's fixed per-row limits."""
    trainer = SimpleNamespace(
        config=SimpleNamespace(train=SimpleNamespace(prompts_per_step=b)),
        sampling=sp,
        model_config=config,
        prompt_batch=stream.batch,
        sampler_params=lambda p: p,
    )
    pending: list[list[int]] = []  # the examples of each `start_rows` call, in order

    def start_rows(prompts, k, n, t_max):
        return partial_lib.start_rows(
            prompts, k, n, t_max, max_tokens=stream.limits(pending.pop(0))
        )

    source = SimpleNamespace(next=lambda k: pending.append(stream.next(k)) or pending[-1])
    pool = partial_rollouts.PartialPool(sp.n, budget, kv_buckets)
    tokens, rounds, decode_steps, stale = 0, 0, 0, []
    original = partial_rollouts.start_rows
    partial_rollouts.start_rows = start_rows
    try:
        for step in range(steps):
            _, rows, m = pool.collect(trainer, params, source, step, jax.random.fold_in(key, step))
            if not (rows.finished.all() and np.array_equal(rows.length, rows.limits)):
                raise RuntimeError("partial arm trained an unfinished row")
            tokens += int(rows.length.sum())
            rounds += int(m["rollout/partial_rounds"])
            valid = rows.versions >= 0
            stale.append((step - rows.versions)[valid])
    finally:
        partial_rollouts.start_rows = original
    decode_steps = rounds * budget  # an upper bound: a round ends early when all its rows do
    in_flight = sum(int(g.rows.length.sum()) for g in pool.paused + pool.ready)
    stale = np.concatenate(stale)
    return {
        "trained_tokens": tokens,
        "decode_steps": decode_steps,
        "rounds": rounds,
        "staleness_mean": float(stale.mean()),
        "staleness_max": int(stale.max()),
        "tokens_in_flight_at_end": in_flight,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--median", type=float, default=24.0)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the report to this file")
    ap.add_argument(
        "--kv-buckets", type=int, default=0, help="rollout.kv_buckets of both arms' decode"
    )
    args = ap.parse_args(argv)
    if min(args.prompts_per_step, args.n, args.steps, args.budget, args.max_new) < 1:
        raise SystemExit("--prompts-per-step, --n, --steps, --budget, --max-new must be >= 1")

    config = models.ModelConfig.tiny(**SIZES[args.size])
    params = models.init_params(config, jax.random.key(args.seed))
    b, g = args.prompts_per_step, args.n
    # the partial pool starts at most b fresh prompts per round; rounds per step are bounded
    count = b * args.steps * (-(-args.max_new // args.budget) + 2)
    prompts = make_prompts(count, args.prompt_len, config.vocab_size, args.seed)
    lengths = make_lengths(count * g, args.median, args.max_new, args.seed)
    sp = SamplingParams(max_new_tokens=args.max_new, n=g, temperature=1.0)
    key = jax.random.key(args.seed + 2)

    def sync():
        stream = Stream(prompts, lengths, g)
        return run_sync(params, config, stream, sp, args.steps, b, key, args.kv_buckets)

    def partial():
        stream = Stream(prompts, lengths, g)
        return run_partial(
            params, config, stream, sp, args.steps, b, args.budget, key, args.kv_buckets
        )

    arms = {"sync": sync, "partial": partial}
    outs = {name: fn() for name, fn in arms.items()}  # warm-up: compiles
    best = dict.fromkeys(arms, math.inf)
    for _ in range(args.reps):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    report = {
        "machine": f"{platform.machine()} CPU, {jax.device_count()} jax device(s), "
        f"backend {jax.default_backend()}, jax {jax.__version__}",
        "workload": {
            "model": args.size,
            "steps": args.steps,
            "prompts_per_step": b,
            "n": g,
            "prompt_len": args.prompt_len,
            "max_new_tokens": args.max_new,
            "budget": args.budget,
            "kv_buckets": args.kv_buckets,
            "length_median": float(np.median(lengths)),
            "length_p99": float(np.percentile(lengths, 99)),
            "length_max": int(lengths.max()),
        },
        "arms": [
            dict(
                arm=name,
                seconds=best[name],
                seconds_per_step=best[name] / args.steps,
                trained_tokens_per_s=outs[name]["trained_tokens"] / best[name],
                **outs[name],
            )
            for name in arms
        ],
        "speedup": best["sync"] / best["partial"],
    }
    w = report["workload"]
    print(report["machine"])
    print(
        f"{args.size} model; {args.steps} steps x {b} groups x {g} rows; prompt {args.prompt_len}, "
        f"max_new {args.max_new}; lengths median {w['length_median']:.0f}, p99 "
        f"{w['length_p99']:.0f}, max {w['length_max']}; partial budget K = {args.budget}"
    )
    for a in report["arms"]:
        extra = (
            f", rounds {a['rounds']}, staleness mean {a['staleness_mean']:.2f} max "
            f"{a['staleness_max']}, in flight at end {a['tokens_in_flight_at_end']} tokens"
            if a["arm"] == "partial"
            else ""
        )
        print(
            f"{a['arm']:8s} {a['seconds']:7.2f} s ({a['seconds_per_step']:.2f} s/step), "
            f"{a['trained_tokens_per_s']:8.1f} trained tokens/s, decode steps "
            f"{a['decode_steps']}{extra}"
        )
    print(f"partial / sync collect speed-up: {report['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
