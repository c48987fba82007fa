"""`token_logprobs`: the one log-probability function of sampler and trainer.

    logp_t = log_softmax(logits_t / temperature)[target_t]
           = z_t[target_t] - logsumexp(z_t),      z_t = float32(logits_t) / temperature

The sampler records it at the drawn token *before* any top-k / top-p / min-p
truncation, and the trainer recomputes it with this same function on
teacher-forced logits, so the on-policy importance ratio
exp(logp_train - logp_sampler) is 1 up to the float error of the two forward
passes (Schulman et al. 2017, PPO; the "sampling temperature" correction is
the same one verl and OpenRLHF apply to logits before their log-probs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["token_logprobs"]


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature=1.0) -> jax.Array:
    """float32 `log_softmax(logits / temperature)` gathered at `targets`.

    Args:
      logits: [..., V] (any float dtype; computed in float32).
      targets: int [...] (same leading shape as `logits`).
      temperature: a scalar (Python float or traced) or an array of shape
        `targets.shape` (one temperature per position), > 0.
    Returns:
      float32 [...].
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"token_logprobs: logits.shape[:-1]={logits.shape[:-1]} must equal "
            f"targets.shape={targets.shape}"
        )
    temperature = jnp.asarray(temperature, jnp.float32)
    if temperature.ndim:
        if temperature.shape != targets.shape:
            raise ValueError(
                f"token_logprobs: temperature must be a scalar or have shape {targets.shape}, "
                f"got {temperature.shape}"
            )
        temperature = temperature[..., None]
    z = logits.astype(jnp.float32) / temperature
    z_max = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    log_norm = jnp.log(jnp.sum(jnp.exp(z - z_max), axis=-1)) + z_max[..., 0]
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - log_norm
