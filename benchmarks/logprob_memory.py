"""Peak temporary memory and time of token log-probs + entropies + their gradient, by head path.

    python benchmarks/logprob_memory.py                      # Qwen2.5-0.5B head, 2048 tokens
    python benchmarks/logprob_memory.py --tokens=2048 --time_tokens=256 --blocks=4096,8192,16384

The LM head of Qwen2.5-0.5B: D = 896, V = 151936, tied embeddings (`W = embedding`, [V, D]).
Three paths compute `sum(log_softmax(h W^T / T)[target]) + sum(entropy)` and its gradient
w.r.t. h and W:

  plain         the trainer's default: one [N, S, V] float32 logits tensor
                (`completion_logprobs(..., chunk=0)`)
  seq-chunk C   the trainer's `train.logprob_chunk = C`: C positions at a time under
                `jax.checkpoint` ([N, C, V] float32 per chunk)
  vocab-block B `models.blocked_head` (`completion_logprobs(..., vocab_block=B)`): online
                log-sum-exp over B columns, custom VJP; [N·S, B] float32 per block

Memory: `temp_size_in_bytes` of `jax.jit(f).lower(shapes).compile().memory_analysis()`, from
abstract shapes only (nothing is allocated), at `--tokens` rows (N·S). Time: median wall time
of the compiled forward + gradient over `--repeats` calls after one warm-up call, at
`--time_tokens` rows (running the plain path at 2048 tokens needs ~9 GiB of temporaries), with
random float32 inputs. Figures go to BENCHMARKS.md ("Memory-lean log-probs").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.entropy import token_entropy
from jaxrl_llm.models.blocked_head import blocked_token_logprobs
from jaxrl_llm.rollout import token_logprobs

__all__ = ["make_loss", "temp_bytes", "time_grad", "main"]

ROWS = 8  # N; S = tokens / N
TEMPERATURE = 0.7


def _plain_head(h, w, targets):
    logits = jnp.einsum("nse,ve->nsv", h, w, preferred_element_type=jnp.float32)
    return token_logprobs(logits, targets, TEMPERATURE), token_entropy(logits / TEMPERATURE)


def make_loss(kind: str, size: int):
    """`loss(h, w, targets)` for kind `plain`, `seq-chunk` (size = positions) or `vocab-block`."""
    if kind == "plain":
        head = _plain_head
    elif kind == "seq-chunk":
        chunked = jax.checkpoint(_plain_head)

        def head(h, w, targets):
            parts = [
                chunked(h[:, s : s + size], w, targets[:, s : s + size])
                for s in range(0, h.shape[1], size)
            ]
            return tuple(jnp.concatenate(p, axis=1) for p in zip(*parts))
    elif kind == "vocab-block":

        def head(h, w, targets):
            return blocked_token_logprobs(
                h, w, targets, TEMPERATURE, vocab_block=size, with_entropy=True, w_layout="vd"
            )
    else:
        raise ValueError(f"kind={kind!r} is not one of ['plain', 'seq-chunk', 'vocab-block']")

    def loss(h, w, targets):
        lp, ent = head(h, w, targets)
        return jnp.sum(lp) + jnp.sum(ent)

    return loss


def _shapes(tokens, hidden, vocab, dtype):
    return (
        jax.ShapeDtypeStruct((ROWS, tokens // ROWS, hidden), dtype),
        jax.ShapeDtypeStruct((vocab, hidden), dtype),
        jax.ShapeDtypeStruct((ROWS, tokens // ROWS), jnp.int32),
    )


def temp_bytes(fn, shapes) -> int:
    """Temporary bytes of the compiled program (arguments and outputs not included)."""
    return jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def time_grad(loss, shapes, repeats: int) -> float:
    """Median seconds of one compiled forward + gradient (w.r.t. h and W) call."""
    h_s, w_s, t_s = shapes
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    h = jax.random.normal(k[0], h_s.shape, h_s.dtype)
    w = (0.05 * jax.random.normal(k[1], w_s.shape)).astype(w_s.dtype)
    targets = jax.random.randint(k[2], t_s.shape, 0, w_s.shape[0])
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    jax.block_until_ready(step(h, w, targets))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(h, w, targets))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--tokens", type=int, default=2048, help="N·S for the memory figures")
    parser.add_argument("--time_tokens", type=int, default=256, help="N·S for the timings; 0: none")
    parser.add_argument("--seq_chunk", type=int, default=32, help="positions per sequence chunk")
    parser.add_argument("--blocks", default="4096,8192,16384", help="vocab_block values")
    parser.add_argument("--dtype", default="float32", help="dtype of h and W")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    variants = [("plain", 0), ("seq-chunk", args.seq_chunk)]
    variants += [("vocab-block", int(b)) for b in args.blocks.split(",") if b]

    mem_shapes = _shapes(args.tokens, args.hidden, args.vocab, dtype)
    time_shapes = _shapes(args.time_tokens, args.hidden, args.vocab, dtype)
    full = args.tokens * args.vocab * 4
    print(
        f"device {jax.devices()[0].device_kind}, h/W {dtype.name}, D={args.hidden}, "
        f"V={args.vocab}, memory at N·S={args.tokens} (one [N·S, V] float32 = {full / 2**20:.0f} "
        f"MiB), time at N·S={args.time_tokens}"
    )
    header = "| path | size | temp MiB, fwd | temp MiB, fwd+grad | s, fwd+grad |"
    print(header + "\n|---|---:|---:|---:|---:|")
    rows = []
    for kind, size in variants:
        loss = make_loss(kind, size)
        fwd = temp_bytes(loss, mem_shapes)
        grad = temp_bytes(jax.grad(loss, argnums=(0, 1)), mem_shapes)
        secs = time_grad(loss, time_shapes, args.repeats) if args.time_tokens else float("nan")
        rows.append(dict(path=kind, size=size, temp_fwd=fwd, temp_grad=grad, seconds=secs))
        print(
            f"| {kind} | {size or '-'} | {fwd / 2**20:,.0f} | {grad / 2**20:,.0f} | {secs:.2f} |",
            flush=True,
        )
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
