"""Where a decode step's time goes: the parts of one jaxrl_llm sampler step, timed alternately.

    python benchmarks/sampler_profile.py --model a --batch 16

Parts (each jitted alone, best of `--reps` rounds, rounds interleaved so all
parts see the same machine load):
- step: one full decode step as the sampler runs it (per-step time of
  `generate`, from a 33-token minus a 1-token call);
- backbone+cache: `models.apply` without the LM head over a KV cache, inside
  a `fori_loop` (so the cache is carried and updated in place as in the sampler);
- lm_head: the [N, H] x [H, V] logits matmul;
- sample: the untruncated draw (`sample_tokens`), token_logprobs, greedy arg-max.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from sampler import MODELS  # noqa: E402

from jaxrl_llm import models  # noqa: E402
from jaxrl_llm.rollout import SamplingParams, generate, pad_prompts, token_logprobs  # noqa: E402
from jaxrl_llm.rollout.sampling import argmax_first, sample_tokens  # noqa: E402

STEPS = 16


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="a", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    n = args.batch
    config = models.ModelConfig(
        **MODELS[args.model],
        rope_theta=1e6,
        tie_embeddings=True,
        qkv_bias=True,
        architecture="qwen2",
    )
    params = jax.jit(models.init_params, static_argnums=0)(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = pad_prompts(
        [list(rng.integers(1, config.vocab_size, 128)) for _ in range(n)], bucket_lengths=(128,)
    )

    def gen(t):
        return lambda: generate(params, config, prompts, jax.random.key(0), SamplingParams(t))

    @jax.jit
    def backbone(params):
        cache = models.init_cache(config, n, 128 + 256)
        cache["index"] = jnp.asarray(128, jnp.int32)

        def body(t, carry):
            cache, tok = carry
            pos = jnp.full((n, 1), 128, jnp.int32) + t
            hidden, cache = models.transformer._forward(
                config, params, tok[:, None], pos, jnp.ones((n, 1), jnp.int32), cache
            )
            return cache, (hidden[:, 0, 0] > 0).astype(jnp.int32)

        return jax.lax.fori_loop(0, STEPS, body, (cache, jnp.zeros((n,), jnp.int32)))[1]

    hidden = jnp.ones((n, 1, config.hidden_size), jnp.float32)
    logits = jax.random.normal(jax.random.key(1), (n, config.vocab_size))
    head = jax.jit(lambda p, h: models.lm_head(config, p, h))
    sample = jax.jit(lambda k, x: sample_tokens(k, x, 1.0, 1.0, 0.0, truncate=False))
    logp = jax.jit(lambda x, t: token_logprobs(x, t, 1.0))
    greedy = jax.jit(argmax_first)
    targets = jnp.zeros((n,), jnp.int32)

    parts = {
        "generate 1 token": (gen(1), 1),
        "generate 33 tokens": (gen(33), 1),
        "backbone+cache (per step)": (lambda: backbone(params), STEPS),
        "lm_head": (lambda: head(params, hidden), 1),
        "sample (untruncated)": (lambda: sample(jax.random.key(2), logits), 1),
        "token_logprobs": (lambda: logp(logits, targets), 1),
        "greedy argmax": (lambda: greedy(logits), 1),
    }
    for fn, _ in parts.values():
        jax.block_until_ready(fn())
    best = {k: float("inf") for k in parts}
    for _ in range(args.reps):
        for name, (fn, div) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], (time.perf_counter() - t0) / div)
    step = (best["generate 33 tokens"] - best["generate 1 token"]) / 32
    print(f"model {args.model}, batch {n}, {os.cpu_count()} CPUs")
    print(f"| part | ms |\n|---|---|\n| decode step (from generate) | {step * 1e3:.2f} |")
    for name in list(parts)[2:]:
        print(f"| {name} | {best[name] * 1e3:.2f} |")


if __name__ == "__main__":
    main()
