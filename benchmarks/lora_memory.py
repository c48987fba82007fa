"""Compiled memory of one RL train step, full fine-tuning vs LoRA, from abstract shapes only.

    python -m benchmarks.lora_memory --size=0.5B --rows=8 --prompt=64 --new_tokens=448
    python -m benchmarks.lora_memory --size=7B --rows=64 --prompt=128 --new_tokens=896 --micro=8

Nothing is allocated: the state and batch are `ShapeDtypeStruct`s, the step
(`rl_step.train_step`: PPO-clip, token-mean, `--micro` micro-batches, AdamW, `model.remat` on, bf16
compute) is lowered and compiled for the local backend, and XLA's `memory_analysis()` gives
the bytes of the arguments (params, optimiser state, batch; with LoRA also the frozen base),
the outputs and the temporaries. Full fine-tuning holds fp32 params and AdamW moments; LoRA
holds the base in `--base_dtype` (bf16 by default) and fp32 adapters with their moments,
merged inside the step (`models.lora.merge`). Figures are the compiler's estimate for this
backend (the CPU figure is a proxy for a GPU's), not a measured peak.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import optax

from jaxrl_llm.models import init_params, lora
from jaxrl_llm.models.presets import qwen25_config
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl_step
from jaxrl_llm.trainers.state import TrainState


def _abstract_state(params, optimizer):
    sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    return TrainState(
        step=sds((), jnp.int32),
        params=params,
        opt_state=jax.eval_shape(optimizer.init, params),
        rng=sds((2,), jnp.uint32),
        kl_coef=sds((), jnp.float32),
    )


def _batch(rows, prompt, new_tokens):
    sds = jax.ShapeDtypeStruct
    i32, f32 = jnp.int32, jnp.float32
    return rl_step.TrainBatch(
        prompt_tokens=sds((rows, prompt), i32),
        prompt_mask=sds((rows, prompt), i32),
        tokens=sds((rows, new_tokens), i32),
        mask=sds((rows, new_tokens), f32),
        old_logp=sds((rows, new_tokens), f32),
        advantages=sds((rows, new_tokens), f32),
    )


def measure(size, rows, prompt, new_tokens, rank, targets, base_dtype, logprob_chunk, micro):
    c = config_lib.base_config()
    c.unlock()
    c.rollout.max_new_tokens = new_tokens
    c.train.logprob_chunk = logprob_chunk
    settings = rl_step.LossSettings.from_config(c)
    optimizer = optax.adamw(1e-5)
    batch = _batch(rows, prompt, new_tokens)
    out = {}
    for mode in ("full", "lora"):
        dtype = "float32" if mode == "full" else base_dtype
        mc = qwen25_config(size, remat=True, dtype="bfloat16", param_dtype=dtype)
        params = jax.eval_shape(functools.partial(init_params, mc), jax.random.key(0))
        base = None
        if mode == "lora":
            base = params
            params = jax.eval_shape(
                functools.partial(
                    lora.init_lora,
                    mc,
                    key=jax.random.key(0),
                    rank=rank,
                    alpha=2 * rank,
                    targets=targets,
                ),
                base,
            )
        step = functools.partial(
            rl_step.train_step,
            model_config=mc,
            s=settings,
            num_micro=micro,
            optimizer=optimizer,
            critic_optimizer=None,
            policy_warmup=0,
        )
        state = _abstract_state(params, optimizer)
        compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch, base).compile()
        m = compiled.memory_analysis()
        out[mode] = {
            "argument_GiB": m.argument_size_in_bytes / 2**30,
            "output_GiB": m.output_size_in_bytes / 2**30,
            "temp_GiB": m.temp_size_in_bytes / 2**30,
            "alias_GiB": m.alias_size_in_bytes / 2**30,
            "trainable": int(sum(x.size for x in jax.tree.leaves(params))),
        }
        out[mode]["total_GiB"] = (
            out[mode]["argument_GiB"]
            + out[mode]["output_GiB"]
            - out[mode]["alias_GiB"]
            + out[mode]["temp_GiB"]
        )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="0.5B")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=448)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default=",".join(lora.TARGETS))
    p.add_argument("--base_dtype", default="bfloat16")
    p.add_argument("--logprob_chunk", type=int, default=128)
    p.add_argument("--micro", type=int, default=1, help="micro-batches (scanned) per update")
    a = p.parse_args()
    res = measure(
        a.size,
        a.rows,
        a.prompt,
        a.new_tokens,
        a.rank,
        tuple(a.targets.split(",")),
        a.base_dtype,
        a.logprob_chunk,
        a.micro,
    )
    print(json.dumps({"args": vars(a), "backend": jax.default_backend(), **res}, indent=1))


if __name__ == "__main__":
    main()
