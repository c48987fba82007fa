"""Paged decode attention (`jaxrl_llm/rollout/paged_attention.py`) against the XLA path on the
device: asserted parity, timings recorded.

    python benchmarks/paged_attention_parity.py               # on a GPU (benchmarks/gpu.sh)
    python benchmarks/paged_attention_parity.py --cpu_smoke   # tiny shapes, interpret mode

Inputs: one decode step of a Qwen2.5-0.5B layer (14 query heads over 2 KV heads, head_dim 64),
`--rows` rows of ragged lengths drawn uniformly in [1, max_len] over a `--max_len`-slot cache
(valid tokens from slot 0), pages of 16 slots scattered by a random permutation, bfloat16.
Kernels: on a GPU the Pallas paged kernel (`gpu`) and the Pallas decode kernel over the
contiguous cache (`gpu_decode`); on a TPU the ragged paged kernel (`ragged`) and the paged
kernel (`paged`). Asserted: each kernel's max error against a float32 evaluation of the XLA
path is at most `max(2 * the bf16 XLA path's own error, 2e-2)`. Timings (median of 10 after
a compile, one jitted `decode_attention` call; for the paged kernels that includes paging the
contiguous cache, so it is an upper bound on the kernel's own time) are recorded, not
asserted. Prints one JSON object; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.rollout import paged_attention as pa

__all__ = ["main"]


def _median_ms(fn, *args, reps=10):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def _jitted(impl, page_size, perm, interpret):
    """One jitted `decode_attention` (paging included for the paged kernels)."""
    if impl in ("xla", "gpu_decode"):
        perm = None

    def run(q, k, v, n):
        return pa.decode_attention(
            q, k, v, n, impl=impl, page_size=page_size, perm=perm, interpret=interpret
        )

    return jax.jit(run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max_len", type=int, default=1280)
    parser.add_argument("--page_size", type=int, default=16)
    parser.add_argument("--cpu_smoke", action="store_true")
    args = parser.parse_args(argv)
    platform = jax.default_backend()
    rows, max_len, interpret = args.rows, args.max_len, None
    if args.cpu_smoke:
        rows, max_len, interpret = 3, 64, True
    impls = {"gpu": ("gpu", "gpu_decode"), "tpu": ("ragged", "paged")}.get(
        platform, ("gpu", "gpu_decode") if args.cpu_smoke else ()
    )
    heads, kv_heads, d = 14, 2, 64
    rng = np.random.default_rng(0)
    q32 = rng.standard_normal((rows, heads, d)).astype(np.float32)
    k32 = rng.standard_normal((rows, max_len, kv_heads, d)).astype(np.float32)
    v32 = rng.standard_normal((rows, max_len, kv_heads, d)).astype(np.float32)
    lengths = jnp.asarray(rng.integers(1, max_len + 1, size=rows), jnp.int32)
    perm = rng.permutation(rows * -(-max_len // args.page_size))
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q32, k32, v32)]
    exact = pa.decode_attention(*[x.astype(jnp.float32) for x in bf], lengths)
    xla_bf16 = pa.decode_attention(*bf, lengths).astype(jnp.float32)
    xla_err = float(jnp.abs(xla_bf16 - exact).max())
    bound = max(2 * xla_err, 2e-2)
    result = {
        "device": str(jax.devices()[0]),
        "shape": {"rows": rows, "max_len": max_len, "heads": heads, "kv_heads": kv_heads, "d": d},
        "page_size": args.page_size,
        "bound": bound,
        "xla_bf16_err": xla_err,
        "ms": {"xla": _median_ms(_jitted("xla", args.page_size, None, interpret), *bf, lengths)},
        "err": {},
        "failed": [],
    }
    for impl in impls:
        try:
            fn = _jitted(impl, args.page_size, perm, interpret)
            out = fn(*bf, lengths).astype(jnp.float32)
            err = float(jnp.abs(out - exact).max())
            result["err"][impl] = err
            if not err <= bound:
                result["failed"].append(f"{impl}: max error {err:.3g} > {bound:.3g}")
            result["ms"][impl] = _median_ms(fn, *bf, lengths)
        except Exception as e:  # a kernel that does not compile here is a failed check
            result["failed"].append(f"{impl}: {type(e).__name__}: {str(e)[:300]}")
    if not impls:
        result["failed"].append(f"no paged decode kernel runs on {platform!r} (GPU or TPU)")
    print(json.dumps(result, indent=1))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
