"""Long-tailed completion lengths: static batches (`generate`) vs continuous batching
(`generate_continuous`), tokens/s and rows/s side by side in one run, plus the CPU proxy
of the decode step (kernels per compiled step, KV slots read).

    python benchmarks/long_tail.py                       # defaults below, ~1-2 minutes on 2 cores
    python benchmarks/long_tail.py --prompts 8 --n 2 --slots 4 --max-new 32 --median 4 --size tiny

Workload, fixed before anything is measured: `--prompts` random prompts (lengths uniform in
[P/2, P], left-padded to P = `--prompt-len`), `--n` samples each, so R = prompts·n jobs.
Each job's completion length is fixed once from a log-normal with median `--median` and
sigma = ln(8) / z_0.99, so p99 = 8x the median (stratified quantiles, shuffled by
`--seed`; `make_lengths`), clipped to [1, `--max-new`]. Both arms sample (temperature 1, no stop ids) with those lengths imposed
as per-row limits (`max_tokens`): each arm produces exactly the same (prompt, sample) set
with exactly the same lengths, which the script checks.

- static: today's `generate`, `--slots` rows in flight: the jobs in order, in batches of
  `slots / n` prompts (`slots` rows), each batch decoding until its longest row ends.
- static, buckets: the same batches with `generate(..., kv_buckets=--buckets)`: each decode
  step attends over the filled cache prefix rounded up to a bucket (`rollout.kv_buckets`).
- continuous: `generate_continuous(..., slots=--slots, kv_buckets=--buckets)`: a row that
  ends hands its slot to the next job inside the same compiled loop; each decode step
  reads only a bucketed prefix of the cache.

Timing: one warm-up call of each arm (compiles), then `--reps` rounds, each timing the
static then the continuous arm (interleaved, so a shared machine's load hits both), best kept;
`tokens/s` = tokens produced (the sum of the fixed lengths) / wall time, prefill included.

CPU proxy (`--proxy`, on by default): one decode step of the model as each sampler runs it
(one token per row, `slots` rows, a `P + T`-slot cache; then a draw and its log-prob),
compiled from abstract shapes, kernels counted as in `benchmarks/decode_kernels.py`:
static = shared cursor, attention over all `P + T` slots; continuous = per-row cursors
with the smallest and the largest bucket; each with unfused and fused weights.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import models
from jaxrl_llm.models.transformer import fuse_decode_params
from jaxrl_llm.rollout import PromptBatch, SamplingParams, generate
from jaxrl_llm.rollout.continuous import generate_continuous, kv_buckets_for
from jaxrl_llm.rollout.logprobs import token_logprobs
from jaxrl_llm.rollout.sampling import argmax_first

Z99 = 2.3263478740408408  # standard normal 0.99 quantile

SIZES = {
    "tiny": dict(
        vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
    ),
    "small": dict(
        vocab_size=2048,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=1024,
    ),
}


def make_lengths(jobs: int, median: float, max_new: int, seed: int) -> np.ndarray:
    """Log-normal completion lengths (p99 = 8x median), clipped to [1, max_new].

    Stratified, not drawn: job i of the sorted set takes the log-normal's quantile
    (i + 0.5) / jobs, so even a few hundred jobs have the distribution's median and p99;
    the seed only shuffles which job gets which length.
    """
    sigma = math.log(8.0) / Z99
    normal = statistics.NormalDist()
    z = np.array([normal.inv_cdf((i + 0.5) / jobs) for i in range(jobs)])
    raw = np.exp(math.log(median) + sigma * z)
    lengths = np.clip(np.round(raw), 1, max_new).astype(np.int32)
    return np.random.default_rng(seed).permutation(lengths)


def make_prompts(count: int, prompt_len: int, vocab: int, seed: int) -> PromptBatch:
    rng = np.random.default_rng(seed + 1)
    tokens = np.zeros((count, prompt_len), np.int32)
    mask = np.zeros((count, prompt_len), np.int32)
    for i in range(count):
        k = int(rng.integers(max(1, prompt_len // 2), prompt_len + 1))
        tokens[i, prompt_len - k :] = rng.integers(1, vocab, k)
        mask[i, prompt_len - k :] = 1
    return PromptBatch(tokens=tokens, mask=mask)


def _block(x):
    return jax.block_until_ready(x)


def run_static(params, config, prompts, key, sp, lengths, slots, buckets=0):
    """Today's `generate` in batches of `slots` rows (`kv_buckets=buckets`); returns the
    lengths it produced."""
    per = slots // sp.n
    out = []
    for start in range(0, prompts.tokens.shape[0], per):
        batch = PromptBatch(
            tokens=prompts.tokens[start : start + per], mask=prompts.mask[start : start + per]
        )
        rows = slice(start * sp.n, (start + per) * sp.n)
        r = generate(
            params,
            config,
            batch,
            jax.random.fold_in(key, start),
            sp,
            max_tokens=lengths[rows],
            kv_buckets=buckets,
        )
        out.append(r.mask.sum(axis=1))
    return np.asarray(_block(jnp.concatenate(out)))


def run_continuous(params, config, prompts, key, sp, lengths, slots, buckets):
    r, stats = generate_continuous(
        params,
        config,
        prompts,
        key,
        sp,
        slots=slots,
        kv_buckets=buckets,
        max_tokens=lengths,
        return_stats=True,
    )
    _block(r.tokens)
    return np.asarray(r.mask.sum(axis=1)), {k: int(v) for k, v in stats.items()}


def timed(fns, reps):
    """Best wall time of each of `fns` over `reps` rounds, the arms interleaved in every
    round (a shared machine's load then weighs on both alike); one warm-up call each."""
    outs = [fn() for fn in fns]  # warm-up: compiles
    best = [math.inf] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best, outs


def proxy(config, slots: int, max_len: int, kv_lens, fused_options=(False, True)) -> list[dict]:
    """Kernels per compiled decode step (`decode_kernels.count_kernels`), per variant."""
    try:
        from benchmarks.decode_kernels import FREE, count_kernels
    except ImportError:  # run as a script: benchmarks/ itself is on the path
        from decode_kernels import FREE, count_kernels

    def step(kv_len, params, cache, prev, pos):
        ones = jnp.ones_like(prev)[:, None]
        logits, cache = models.apply(
            config, params, prev[:, None], pos[:, None], ones, cache, kv_len=kv_len
        )
        tok = argmax_first(logits[:, 0, :])
        return tok, token_logprobs(logits[:, 0, :], tok, 1.0), cache

    rows = jax.ShapeDtypeStruct((slots,), jnp.int32)
    out = []
    for fused in fused_options:

        def make(fused=fused):
            p = models.unstack_layers(models.init_params(config, jax.random.key(0)))
            return fuse_decode_params(config, p) if fused else p

        params = jax.eval_shape(make)
        for name, vector, kv_len in [("static (shared cursor, full)", False, None)] + [
            (f"continuous (per-row cursors, kv_len {k})", True, k) for k in kv_lens
        ]:

            def init(vector=vector):
                c = models.init_cache(config, slots, max_len)
                return dict(c, index=jnp.zeros((slots,), jnp.int32)) if vector else c

            cache = jax.eval_shape(init)
            fn = jax.jit(lambda *a, kv_len=kv_len: step(kv_len, *a), donate_argnums=(1,))
            compiled = fn.lower(params, cache, rows, rows).compile()
            c = count_kernels(compiled.as_text())
            out.append(
                dict(
                    step=name,
                    weights="fused" if fused else "unfused",
                    kernels=sum(v for op, v in c.items() if op not in FREE),
                    kv_slots_read=kv_len or max_len,
                )
            )
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--median", type=float, default=24.0)
    ap.add_argument("--buckets", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-proxy", dest="proxy", action="store_false")
    ap.add_argument("--json", default=None, help="also write the report to this file")
    args = ap.parse_args(argv)
    if args.slots % args.n or args.prompts % (args.slots // args.n):
        raise SystemExit("--slots must be a multiple of --n, and --prompts of --slots / --n")

    config = models.ModelConfig.tiny(**SIZES[args.size])
    params = models.init_params(config, jax.random.key(args.seed))
    prompts = make_prompts(args.prompts, args.prompt_len, config.vocab_size, args.seed)
    jobs = args.prompts * args.n
    lengths = make_lengths(jobs, args.median, args.max_new, args.seed)
    sp = SamplingParams(max_new_tokens=args.max_new, n=args.n, temperature=1.0)
    key = jax.random.key(args.seed + 2)
    tokens = int(lengths.sum())

    (s_time, b_time, c_time), (s_len, b_len, (c_len, stats)) = timed(
        [
            lambda: run_static(params, config, prompts, key, sp, lengths, args.slots),
            lambda: run_static(params, config, prompts, key, sp, lengths, args.slots, args.buckets),
            lambda: run_continuous(
                params, config, prompts, key, sp, lengths, args.slots, args.buckets
            ),
        ],
        args.reps,
    )
    if not all(np.array_equal(x, lengths) for x in (s_len, b_len, c_len)):
        raise RuntimeError("an arm did not produce the fixed lengths")
    per = args.slots // args.n
    static_steps = int(
        sum(lengths[i * args.n : (i + per) * args.n].max() for i in range(0, args.prompts, per))
    )
    buckets = kv_buckets_for(args.prompt_len, args.max_new, args.buckets)
    report = {
        "machine": f"{platform.machine()} CPU, {jax.device_count()} jax device(s), "
        f"backend {jax.default_backend()}, jax {jax.__version__}",
        "workload": {
            "model": args.size,
            "jobs": jobs,
            "prompts": args.prompts,
            "n": args.n,
            "slots": args.slots,
            "prompt_len": args.prompt_len,
            "max_new_tokens": args.max_new,
            "tokens": tokens,
            "length_median": float(np.median(lengths)),
            "length_mean": float(lengths.mean()),
            "length_p99": float(np.percentile(lengths, 99)),
            "length_max": int(lengths.max()),
            "kv_buckets": list(buckets),
        },
        "arms": [
            {
                "arm": "static",
                "seconds": s_time,
                "tokens_per_s": tokens / s_time,
                "rows_per_s": jobs / s_time,
                "decode_steps": static_steps,
                "slot_utilisation": tokens / (static_steps * args.slots),
            },
            {
                "arm": "static, kv buckets",
                "seconds": b_time,
                "tokens_per_s": tokens / b_time,
                "rows_per_s": jobs / b_time,
                "decode_steps": static_steps,
                "slot_utilisation": tokens / (static_steps * args.slots),
            },
            {
                "arm": "continuous",
                "seconds": c_time,
                "tokens_per_s": tokens / c_time,
                "rows_per_s": jobs / c_time,
                "decode_steps": stats["steps"],
                "slot_utilisation": stats["busy_slot_steps"] / (stats["steps"] * args.slots),
            },
        ],
        "speedup": s_time / c_time,
        "refills": stats["refills"],
    }
    if args.proxy:
        report["proxy"] = proxy(
            config, args.slots, args.prompt_len + args.max_new, (buckets[0], buckets[-1])
        )

    w = report["workload"]
    print(f"# {report['machine']}")
    print(
        f"# model {args.size}, {jobs} jobs ({args.prompts} prompts x {args.n}), {args.slots} "
        f"slots, P={args.prompt_len}, T={args.max_new}; lengths median {w['length_median']:.0f}, "
        f"mean {w['length_mean']:.1f}, p99 {w['length_p99']:.0f}, max {w['length_max']}; "
        f"{tokens} tokens; buckets {w['kv_buckets']}"
    )
    print("| arm | seconds | tokens/s | rows/s | decode steps | slot utilisation |")
    print("|---|---|---|---|---|---|")
    for a in report["arms"]:
        print(
            f"| {a['arm']} | {a['seconds']:.2f} | {a['tokens_per_s']:.0f} | "
            f"{a['rows_per_s']:.1f} | {a['decode_steps']} | {a['slot_utilisation']:.2f} |"
        )
    print(
        f"speedup (static s / continuous s): {report['speedup']:.2f}x; refills {stats['refills']}"
    )
    if args.proxy:
        print("| decode step | weights | kernels / step | KV slots read per row |")
        print("|---|---|---|---|")
        for p in report["proxy"]:
            print(f"| {p['step']} | {p['weights']} | {p['kernels']} | {p['kv_slots_read']} |")
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
