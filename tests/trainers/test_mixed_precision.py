"""Mixed precision: bf16 compute with fp32 parameters and Adam state (`model.dtype =
bfloat16`, `model.param_dtype = float32`: the fp32 master copy) tracks fp32 training over 20
steps; pure bf16 (`param_dtype = bfloat16` too: no master copy) does not.

The run: 20 AdamW steps (the trainer's `make_optimizer`, constant lr 3e-5, clip 1.0) of the
teacher-forced NLL (`completion_logprobs`) of 16 fixed rows, a tiny Qwen2-style model.
Tolerance, one for both modes: every step's loss within 0.01 nats of the fp32 run and the
final parameters within 2e-3 relative (L2). A bf16 ULP is 2^-8 ≈ 3.9e-3 relative, so updates
below about lr / weight ≈ 2e-3 round away when the parameters themselves are bf16; measured
while writing the test: master copy 4e-4 nats / 1.9e-4, pure bf16 0.15 nats / 8.8e-3.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxrl_llm import models
from jaxrl_llm.trainers.state import completion_logprobs, make_optimizer

STEPS, LOSS_TOL, PARAM_TOL = 20, 0.01, 2e-3


def _train(dtype, param_dtype):
    cfg = models.ModelConfig.tiny(
        vocab_size=96, hidden_size=128, intermediate_size=256, dtype=dtype, param_dtype=param_dtype
    )
    params = models.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(1, 96, (16, 8)), jnp.int32)
    tokens = jnp.asarray(rng.integers(1, 96, (16, 16)), jnp.int32)
    optim = ml_collections.ConfigDict(
        dict(
            lr=3e-5,
            warmup_steps=0,
            schedule="constant",
            clip_norm=1.0,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.0,
        )
    )
    opt = make_optimizer(optim, STEPS)
    state = opt.init(params)

    def loss(p):
        lp, _ = completion_logprobs(cfg, p, prompts, jnp.ones_like(prompts), tokens)
        return -jnp.mean(lp)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    losses = []
    for _ in range(STEPS):
        params, state, value = step(params, state)
        losses.append(float(value))
    flat = np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(params)])
    return np.asarray(losses), flat


@pytest.fixture(scope="module")
def fp32():
    return _train("float32", "float32")


def _gaps(run, ref):
    (losses, flat), (ref_losses, ref_flat) = run, ref
    return (
        float(np.abs(losses - ref_losses).max()),
        float(np.linalg.norm(flat - ref_flat) / np.linalg.norm(ref_flat)),
    )


def test_bf16_compute_with_an_fp32_master_copy_tracks_fp32(fp32):
    loss_gap, param_gap = _gaps(_train("bfloat16", "float32"), fp32)
    assert fp32[0][0] - fp32[0][-1] > 0.1  # the fp32 run really trains
    assert loss_gap < LOSS_TOL and param_gap < PARAM_TOL, (loss_gap, param_gap)


def test_pure_bf16_without_a_master_copy_fails_the_same_tolerance(fp32):
    pure = _train("bfloat16", "bfloat16")
    loss_gap, param_gap = _gaps(pure, fp32)
    assert loss_gap > LOSS_TOL and param_gap > PARAM_TOL, (loss_gap, param_gap)
    # the lost updates show as training that stalls: less than half of fp32's loss drop
    assert pure[0][0] - pure[0][-1] < 0.5 * (fp32[0][0] - fp32[0][-1])
