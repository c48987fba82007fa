"""Train-step MFU and sampler decode bandwidth utilisation of a random Qwen2.5-shaped model.

    python benchmarks/mfu.py --size=0.5B --rows=64 --seq=1024 --new_tokens=256
    python -m benchmarks.mfu --size=tiny              # a CPU smoke run (from the repository root)

Model shapes: `jaxrl_llm.models.presets.QWEN25` (tiny, 0.5B, 1.5B, 7B, 32B).

Train step: `rl_step.train_step` (PPO-clip, token-mean, one micro-batch, AdamW), jitted with
explicit in/out shardings over all devices (pure FSDP unless --tensor), bf16 compute and fp32
params, `model.remat` on. MFU = model FLOPs / (seconds × devices × peak), model FLOPs per
token = 6 N + 12 L · heads · head_dim · S (Chowdhery et al. 2022, appendix B), N the matmul
parameters.

Options of the train step: `--micro` micro-batches (scanned, exact accumulation),
`--attention` (`model.attention`: xla | auto | cudnn | splash | pallas_gpu),
`--remat_policy` (`model.remat_policy`), and `--lora_rank r`: LoRA adapters (fp32, alpha 2r)
on all seven projections of a bf16 frozen base (`train_step(..., base)`, AdamW over the
adapters only); its MFU still counts 6 N per token (the merge-in-forward backward forms the
targeted kernels' gradients, docs/lora.md).

Decode: `rollout.generate` with greedy decoding and no stop token (every row runs the full
T steps); seconds per decode step = (generate − prefill) / (T − 1). Bandwidth utilisation =
bytes read per decode step / seconds / (devices × HBM bandwidth), bytes = the weights as the
sampler reads them (fp32 params, cast to bf16 on the fly) + the live KV cache (half full on
average). Timings are the median of `--repeats` runs after a compile run. `--decode_attention`
(`model.decode_attention`: xla | auto | pallas_gpu, the Triton decode kernel over each row's
filled slots) and `--kv_buckets` (`generate(..., kv_buckets=)`) pick the decode step's attention.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_llm import models, parallel
from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm.models import lora, presets
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl_step
from jaxrl_llm.trainers.state import TrainState

__all__ = ["PEAKS", "peak_of", "bench_train", "bench_decode", "main"]

# bf16 dense FLOP/s and HBM bytes/s per device (public spec sheets), by `device_kind` prefix.
PEAKS = {
    "NVIDIA H100": (989e12, 3.35e12),
    "NVIDIA H200": (989e12, 4.8e12),
    "NVIDIA A100": (312e12, 2.0e12),
    "TPU v5 lite": (197e12, 819e9),
    "TPU v5": (459e12, 2765e9),
    "TPU v4": (275e12, 1228e9),
}


def peak_of(device) -> tuple[float, float] | None:
    kind = getattr(device, "device_kind", "")
    for prefix, peak in PEAKS.items():
        if kind.startswith(prefix):
            return peak
    return None


def _config(size: str, remat: bool = True, **overrides):
    return presets.qwen25_config(size, remat=remat, **overrides)


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_train(
    config, mesh, rows: int, seq: int, repeats: int = 3, *, micro: int = 1, lora_rank: int = 0
) -> dict:
    """Seconds per `train_step` on `rows` sequences of `seq` tokens (half prompt, half
    completion), in `micro` micro-batches; `lora_rank > 0`: adapters on a bf16 frozen base."""
    p_len, t_len = seq // 2, seq - seq // 2
    p_shard = models.param_shardings(config, mesh)
    params = models.init_sharded_params(config, jax.random.key(0), mesh)
    base = None
    if lora_rank:
        cast = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(jnp.bfloat16), p))
        base = cast(params)
        del params
        init = functools.partial(
            models.init_lora,
            config,
            rank=lora_rank,
            alpha=2.0 * lora_rank,
            targets=tuple(lora.TARGETS),
        )
        key = jax.random.key(2)
        shapes = jax.eval_shape(init, base, key)
        specs = models.lora_logical_axes(config, shapes)
        p_shard = parallel.logical_to_sharding(specs, mesh, shapes=shapes)
        params = jax.jit(init, out_shardings=p_shard)(base, key)
    opt = optax.adamw(1e-6)
    o_shard = parallel.opt_state_shardings(opt, params, p_shard, mesh)
    rep = parallel.replicated(mesh)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        params=params,
        opt_state=jax.jit(opt.init, out_shardings=o_shard)(params),
        rng=jax.device_put(jax.random.key_data(jax.random.key(1)), rep),
        kl_coef=jax.device_put(jnp.zeros((), jnp.float32), rep),
    )
    state_shard = jax.tree.map(lambda x: x.sharding, state)
    parallel.check_batch_divides(rows, mesh, what="--rows")
    rows_sh = parallel.row_sharding(mesh)
    rng = np.random.default_rng(0)
    batch = rl_step.TrainBatch(
        prompt_tokens=rng.integers(0, config.vocab_size, (rows, p_len)).astype(np.int32),
        prompt_mask=np.ones((rows, p_len), np.int32),
        tokens=rng.integers(0, config.vocab_size, (rows, t_len)).astype(np.int32),
        mask=np.ones((rows, t_len), np.float32),
        old_logp=np.full((rows, t_len), -5.0, np.float32),
        advantages=rng.normal(size=(rows, t_len)).astype(np.float32),
    )
    batch = jax.device_put(batch, rows_sh)
    c = config_lib.base_config()
    c.unlock()
    c.rollout.max_new_tokens = t_len
    c.train.logprob_chunk = min(256, t_len)
    fn = functools.partial(
        rl_step.train_step,
        model_config=config,
        s=rl_step.LossSettings.from_config(c),
        num_micro=micro,
        optimizer=opt,
        critic_optimizer=None,
        policy_warmup=0,
    )
    in_sh = (state_shard, jax.tree.map(lambda _: rows_sh, batch))
    if base is None:
        step = jax.jit(fn, in_shardings=in_sh, out_shardings=(state_shard, rep))
    else:  # the frozen base is an argument, laid out as created
        base_sh = jax.tree.map(lambda x: x.sharding, base)
        lora_step = jax.jit(fn, in_shardings=(*in_sh, base_sh), out_shardings=(state_shard, rep))
        step = lambda st, b: lora_step(st, b, base)  # noqa: E731
    seconds = _median_time(lambda: step(state, batch)[1]["loss/total"], repeats)
    _, n = presets.param_counts(config)
    flops = rows * seq * (6 * n + 12 * config.num_layers * config.num_heads * config.head_dim * seq)
    out = {"seconds": seconds, "model_flops": flops, "tokens": rows * seq, "micro": micro}
    if lora_rank:
        out["lora_rank"] = lora_rank
        out["trainable"] = int(sum(x.size for x in jax.tree.leaves(params)))
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        out["peak_GiB"] = stats["peak_bytes_in_use"] / 2**30
    return out


def bench_decode(
    config, mesh, rows: int, prompt_len: int, new_tokens: int, repeats: int = 3, kv_buckets=0
) -> dict:
    """Seconds per decode step of `generate` (greedy, no stop: all rows run T steps)."""
    params = models.init_sharded_params(config, jax.random.key(0), mesh)
    rng = np.random.default_rng(0)
    prompts = rollout_lib.PromptBatch(
        tokens=rng.integers(0, config.vocab_size, (rows, prompt_len)).astype(np.int32),
        mask=np.ones((rows, prompt_len), np.int32),
    )
    key = jax.random.key(0)

    def run(t):
        sampling = rollout_lib.SamplingParams(max_new_tokens=t, greedy=True)
        return rollout_lib.generate(
            params, config, prompts, key, sampling, mesh=mesh, kv_buckets=kv_buckets
        ).tokens

    full = _median_time(lambda: run(new_tokens), repeats)
    prefill = _median_time(lambda: run(1), repeats)
    per_step = (full - prefill) / max(new_tokens - 1, 1)
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    kv = (
        2
        * config.num_layers
        * rows
        * (prompt_len + new_tokens)
        * config.num_kv_heads
        * config.head_dim
        * jnp.dtype(config.dtype).itemsize
    )
    return {
        "seconds_per_step": per_step,
        "bytes_per_step": weights + kv / 2,
        "tokens_per_s": rows / per_step,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5B", choices=sorted(presets.QWEN25))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--decode_rows", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--tensor", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no_remat", action="store_true", help="train step without rematerialisation"
    )
    parser.add_argument(
        "--only", choices=("train", "decode"), default=None, help="run one of the two"
    )
    parser.add_argument("--micro", type=int, default=1, help="micro-batches of the train step")
    parser.add_argument("--lora_rank", type=int, default=0, help="> 0: LoRA on a bf16 base")
    parser.add_argument("--attention", default="xla", help="model.attention of the train step")
    parser.add_argument("--remat_policy", default="full", help="model.remat_policy")
    parser.add_argument(
        "--decode_attention", default="xla", help="model.decode_attention of the decode step"
    )
    parser.add_argument("--kv_buckets", type=int, default=0, help="generate(kv_buckets=)")
    args = parser.parse_args(argv)
    config = _config(
        args.size,
        remat=not args.no_remat,
        attention=args.attention,
        remat_policy=args.remat_policy,
        decode_attention=args.decode_attention,
    )
    mesh = parallel.make_mesh({"fsdp": -1, "tensor": args.tensor})
    devices = jax.devices()
    peak = peak_of(devices[0])
    out = {
        "device": devices[0].device_kind,
        "devices": len(devices),
        "size": args.size,
        "mesh": dict(mesh.shape),
        "remat": config.remat,
    }
    if args.only in (None, "train"):
        train = out["train"] = bench_train(
            config,
            mesh,
            args.rows,
            args.seq,
            args.repeats,
            micro=args.micro,
            lora_rank=args.lora_rank,
        )
        if peak is not None:
            out["train_mfu"] = train["model_flops"] / (train["seconds"] * len(devices) * peak[0])
    if args.only in (None, "decode"):
        decode = out["decode"] = bench_decode(
            config,
            mesh,
            args.decode_rows,
            args.prompt_len,
            args.new_tokens,
            args.repeats,
            kv_buckets=args.kv_buckets,
        )
        decode.update(decode_attention=args.decode_attention, kv_buckets=args.kv_buckets)
        if peak is not None:
            out["decode_bw_util"] = decode["bytes_per_step"] / (
                decode["seconds_per_step"] * len(devices) * peak[1]
            )
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
