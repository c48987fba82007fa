"""Kernels per compiled decode step, unfused vs fused q/k/v and gate/up weights (a CPU proxy
for the kernel-launch count that bounds decoding on a GPU; see BENCHMARKS.md).

    python benchmarks/decode_kernels.py                       # Qwen2.5-0.5B shape, batch 1 and 64
    python benchmarks/decode_kernels.py --batches 1,64 --layouts stacked,unstacked --dtype float32

One decode step as the sampler's loop runs it (`models.apply` of one token per row over a
KV cache of `--cache-len` slots, then a greedy `argmax_first` and `token_logprobs`) is
lowered and compiled from abstract shapes (`jax.ShapeDtypeStruct`s: no weights are made)
for the backend jax runs on. The weights enter the step as the sampler holds them: stacked
(one `scan` over layers) or unstacked (unrolled; what `generate` picks for <= 8 rows), and
unfused or already fused (`fuse_decode_params`; `generate(..., fused=True)` fuses once
per call, outside the step).

What is counted, in `compiled.as_text()` (the optimised HLO module): the instructions that
run, starting from the ENTRY computation; a `while` whose backend config carries a known
trip count (the layer scan) counts its body and condition that many times (its condition
once more); `call` / `conditional` computations are entered; a `fusion` is one kernel and is
not entered. Columns: `fusion` instructions; `dot` (matmuls left outside a fusion);
`custom-call` (library calls, e.g. oneDNN / cuBLAS matmuls); `kernels` = every counted
instruction except the free ones (parameter, constant, tuple, get-tuple-element, bitcast,
while / call / conditional themselves, and the bookkeeping ops `after-all`,
`opt-barrier`, `partition-id`, `replica-id`).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter

import jax
import jax.numpy as jnp

from jaxrl_llm import models
from jaxrl_llm.models.presets import qwen25_config
from jaxrl_llm.models.transformer import fuse_decode_params
from jaxrl_llm.rollout.logprobs import token_logprobs
from jaxrl_llm.rollout.sampling import argmax_first

FREE = {
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "bitcast",
    "while",
    "call",
    "conditional",
    "after-all",
    "opt-barrier",
    "partition-id",
    "replica-id",
}
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(")


def parse_hlo(text: str) -> tuple[dict[str, list[str]], str]:
    """{computation name: its instruction lines}, and the ENTRY computation's name."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and "=" not in line.split("{")[0].split("->")[0].split("(")[0]:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
        elif line.strip() == "}":
            current = None
        else:
            comps[current].append(line)
    return comps, entry


def count_kernels(text: str) -> Counter:
    """Executed instructions per opcode for one run of the ENTRY computation (see module doc)."""
    comps, entry = parse_hlo(text)
    total: Counter = Counter()

    def visit(name: str, times: int):
        for line in comps[name]:
            m = _INSTR.match(line)
            if not m:
                continue
            op = m.group(1)
            total[op] += times
            if op == "while":
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                n = int(trip.group(1)) if trip else 1
                visit(re.search(r"body=%?([\w.\-]+)", line).group(1), times * n)
                visit(re.search(r"condition=%?([\w.\-]+)", line).group(1), times * (n + 1))
            elif op == "call":
                visit(re.search(r"to_apply=%?([\w.\-]+)", line).group(1), times)
            elif op == "conditional":
                branches = re.search(r"branch_computations=\{([^}]*)\}", line)
                names = (
                    branches.group(1).split(",")
                    if branches
                    else re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", line)
                )
                for b in names:  # an upper bound: every branch counted
                    visit(b.strip().lstrip("%"), times)

    visit(entry, 1)
    return total


def decode_step(config):
    def step(params, cache, prev, pos):
        ones = jnp.ones_like(prev)[:, None]
        logits, cache = models.apply(config, params, prev[:, None], pos[:, None], ones, cache)
        tok = argmax_first(logits[:, 0, :])
        return tok, token_logprobs(logits[:, 0, :], tok, 1.0), cache

    return jax.jit(step, donate_argnums=(1,))


def abstract_params(config, layout: str, fused: bool):
    def make():
        p = models.init_params(config, jax.random.key(0))
        if layout == "unstacked":
            p = models.unstack_layers(p)
        return fuse_decode_params(config, p) if fused else p

    return jax.eval_shape(make)


def measure(config, batch: int, layout: str, fused: bool, cache_len: int) -> dict:
    params = abstract_params(config, layout, fused)
    cache = jax.eval_shape(lambda: models.init_cache(config, batch, cache_len))
    rows = jax.ShapeDtypeStruct((batch,), jnp.int32)
    t0 = time.perf_counter()
    compiled = decode_step(config).lower(params, cache, rows, rows).compile()
    seconds = time.perf_counter() - t0
    c = count_kernels(compiled.as_text())
    kernels = sum(n for op, n in c.items() if op not in FREE)
    return dict(
        batch=batch,
        layout=layout,
        fused=fused,
        kernels=kernels,
        fusion=c["fusion"],
        dot=c["dot"],
        custom_call=c["custom-call"],
        other=kernels - c["fusion"] - c["dot"] - c["custom-call"],
        compile_s=round(seconds, 1),
        other_ops={
            op: n
            for op, n in sorted(c.items())
            if op not in FREE and op not in ("fusion", "dot", "custom-call")
        },
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="0.5B", help="a models.presets Qwen2.5 size")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument(
        "--layouts",
        default="sampler",
        help="comma list of stacked / unstacked, or 'sampler': what generate picks "
        "by default (unstacked at <= 8 rows, else stacked)",
    )
    ap.add_argument("--cache-len", type=int, default=384, help="KV slots (P + T)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()

    config = qwen25_config(args.size, dtype=args.dtype)
    print(
        f"# Qwen2.5-{args.size} shape ({config.num_layers} layers), compute {args.dtype}, "
        f"cache {args.cache_len} slots, backend {jax.default_backend()}, jax {jax.__version__}"
    )
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        if args.layouts == "sampler":
            layouts = ["unstacked" if batch <= 8 else "stacked"]
        else:
            layouts = args.layouts.split(",")
        for layout in layouts:
            for fused in (False, True):
                rows.append(measure(config, batch, layout, fused, args.cache_len))
                print("  ", rows[-1], flush=True)

    print(
        "\n| batch | layers | weights | kernels / step | fusion | dot | custom-call | other "
        "| per layer (kernels / L) | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['layout']} | {'fused' if r['fused'] else 'unfused'} "
            f"| {r['kernels']} | {r['fusion']} | {r['dot']} | {r['custom_call']} | {r['other']} "
            f"| {r['kernels'] / config.num_layers:.1f} | {r['compile_s']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
