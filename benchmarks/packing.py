"""Packed vs padded teacher-forced log-probs (forward + gradient) on a long-tailed length mix.

    python benchmarks/packing.py                       # 64 rows, defaults below
    python benchmarks/packing.py --rows=64 --max_len=512 --median=96 --budget=512

The same rows in both arms: prompt lengths uniform in [16, 64], completion lengths
log-normal (median `--median`, sigma 0.8, the tail cut at `max_len - 64`), fixed by
`--seed` before measuring. Padded: `completion_logprobs` over [N, P + T] (P and T the
longest prompt and completion, the trainer's layout). Packed: `trainers/packing.py` with
`--budget`-token packs (first fit, pack count padded to the packs needed). Both compute
`sum(logp * w)` and its gradient w.r.t. all parameters of a small Qwen2-style model (XLA
attention on CPU); the median wall time over `--repeats` calls after a warm-up call. Also
reported: the token slots each arm computes (the ratio padding costs). Figures go to
BENCHMARKS.md ("Sequence packing").

`--update` also times the trainer's update (`rl_step.train_step`, PPO-clip, token-mean, one
SGD step) on the same rows: padded = micro-batches of `--micro_rows` rows of P + T slots (the
trainer's layout with `train.microbatch_size`); packed = token-budget micro-batches of
`micro_rows * (P + T)` slots (`train.micro_tokens`, packs of `--budget`), so both arms hold
at most the same slots per micro-batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import models
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import packing, rl_step
from jaxrl_llm.trainers.state import TrainState, completion_logprobs

__all__ = ["length_mix", "main"]


def length_mix(rows: int, max_len: int, median: int, seed: int):
    """(prompt lengths, completion lengths) of the benchmark's rows."""
    rng = np.random.default_rng(seed)
    plen = rng.integers(16, 65, rows)
    clen = np.exp(rng.normal(np.log(median), 0.8, rows)).astype(int)
    return plen, np.clip(clen, 1, max_len - 64)


def _rows(plen, clen, vocab, seed):
    rng = np.random.default_rng(seed + 1)
    n, p, t = len(plen), int(plen.max()), int(clen.max())
    pt, pm = np.zeros((n, p), np.int32), np.zeros((n, p), np.int32)
    tok, mask = np.zeros((n, t), np.int32), np.zeros((n, t), np.int32)
    for r in range(n):
        pt[r, p - plen[r] :], pm[r, p - plen[r] :] = rng.integers(1, vocab, plen[r]), 1
        tok[r, : clen[r]], mask[r, : clen[r]] = rng.integers(1, vocab, clen[r]), 1
    return pt, pm, tok, mask


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _update_arms(config, params, rows, *, budget, micro_rows, repeats):
    """(padded seconds, packed seconds, micro-batches each, losses) of one update."""
    import functools

    import optax

    pt, pm, tok, mask = rows
    n, p, t = pt.shape[0], pt.shape[1], tok.shape[1]
    c = config_lib.base_config()
    c.unlock()
    c.rollout.max_new_tokens = t
    settings = rl_step.LossSettings.from_config(c)
    old = np.asarray(completion_logprobs(config, params, pt, pm, tok)[0])
    adv = np.random.default_rng(3).normal(size=(n, 1)).astype(np.float32) * mask
    batch = rl_step.TrainBatch(
        prompt_tokens=jnp.asarray(pt),
        prompt_mask=jnp.asarray(pm),
        tokens=jnp.asarray(tok),
        mask=jnp.asarray(mask, jnp.float32),
        old_logp=jnp.asarray(old),
        advantages=jnp.asarray(adv),
        token_mask=jnp.asarray(mask, jnp.float32),
    )
    opt = optax.sgd(1e-3)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        kl_coef=jnp.zeros((), jnp.float32),
    )
    step = functools.partial(
        rl_step.train_step,
        model_config=config,
        s=settings,
        optimizer=opt,
        critic_optimizer=None,
        policy_warmup=0,
    )
    padded = jax.jit(functools.partial(step, num_micro=n // micro_rows))
    packed_step = jax.jit(functools.partial(step, num_micro=1))
    micro_tokens = micro_rows * (p + t)
    plan = packing.plan_micro_batches(
        pm, mask, budget=budget, packs_per_micro=max(1, micro_tokens // budget)
    )
    packs = jax.tree.map(jnp.asarray, packing.pack_micro_batches(pt, pm, tok, plan))
    with_packs = batch.replace(packs=packs)
    loss = lambda fn, b: float(fn(state, b)[1]["loss/total"])  # noqa: E731
    losses = [loss(padded, batch), loss(packed_step, with_packs)]
    t_pad = _time(lambda b: padded(state, b)[1]["loss/total"], (batch,), repeats)
    t_pack = _time(lambda b: packed_step(state, b)[1]["loss/total"], (with_packs,), repeats)
    return t_pad, t_pack, (n // micro_rows, plan.used), losses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max_len", type=int, default=512)
    ap.add_argument("--median", type=int, default=96)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--update", action="store_true", help="also time the trainer's update")
    ap.add_argument("--micro_rows", type=int, default=8, help="padded update micro-batch rows")
    args = ap.parse_args(argv)

    config = models.ModelConfig.tiny(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        architecture="qwen2",
    )
    params = models.init_params(config, jax.random.key(0))
    plen, clen = length_mix(args.rows, args.max_len, args.median, args.seed)
    pt, pm, tok, mask = _rows(plen, clen, config.vocab_size, args.seed)
    w = jnp.asarray(np.random.default_rng(2).normal(size=tok.shape), jnp.float32)

    lengths = packing.row_lengths(pm, mask)
    plan = packing.plan_packs(lengths, args.budget, max_packs=len(lengths))
    plan = packing.plan_packs(lengths, args.budget, max_packs=plan.used)
    packed = packing.pack_rows(pt, pm, tok, mask, plan)

    @jax.jit
    def padded(params, pt, pm, tok, mask):
        def loss(p):
            lp, _ = completion_logprobs(config, p, pt, pm, tok)
            return jnp.sum(jnp.where(mask > 0, lp, 0.0) * w)

        return jax.value_and_grad(loss)(params)

    @jax.jit
    def packed_fn(params, arrays):
        def loss(p):
            lp = packing.packed_completion_logprobs(config, p, packing.Packed(**arrays))
            return jnp.sum(lp * w)

        return jax.value_and_grad(loss)(params)

    packed_j = {k: jnp.asarray(v) for k, v in vars(packed).items()}
    (v_pad, _), (v_pack, _) = padded(params, pt, pm, tok, mask), packed_fn(params, packed_j)
    t_pad = _time(padded, (params, pt, pm, tok, mask), args.repeats)
    t_pack = _time(packed_fn, (params, packed_j), args.repeats)
    valid = int(lengths.sum())
    out = {
        "rows": args.rows,
        "valid_tokens": valid,
        "completion_p50_p99": [int(np.percentile(clen, 50)), int(np.percentile(clen, 99))],
        "padded_slots": int(pt.shape[0] * (pt.shape[1] + tok.shape[1])),
        "packed_slots": int(plan.used * args.budget),
        "packs": plan.used,
        "padded_s": round(t_pad, 4),
        "packed_s": round(t_pack, 4),
        "padded_tokens_per_s": round(valid / t_pad, 1),
        "packed_tokens_per_s": round(valid / t_pack, 1),
        "speedup": round(t_pad / t_pack, 2),
        "loss_padded_packed": [float(v_pad), float(v_pack)],
        "devices": str(jax.devices()[0].platform),
    }
    if args.update:
        t_pad, t_pack, micro, losses = _update_arms(
            config,
            params,
            (pt, pm, tok, mask),
            budget=args.budget,
            micro_rows=args.micro_rows,
            repeats=args.repeats,
        )
        out["update"] = {
            "micro_batches_padded_packed": list(micro),
            "padded_s": round(t_pad, 4),
            "packed_s": round(t_pack, 4),
            "padded_tokens_per_s": round(valid / t_pad, 1),
            "packed_tokens_per_s": round(valid / t_pack, 1),
            "speedup": round(t_pad / t_pack, 2),
            "loss_padded_packed": losses,
        }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
