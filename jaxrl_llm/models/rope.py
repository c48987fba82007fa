"""Rotary position embeddings (Su et al. 2021, RoFormer) in the HF `rotate_half` layout.

Frequencies `f_i = theta^(-2i/d)`, `i < d/2`, optionally rescaled (`linear`,
or Llama 3.1's `llama3` band-wise scaling); a head vector x at position p becomes
`x * cos(p f) + rotate_half(x) * sin(p f)` with `f` duplicated to length d and
`rotate_half([x1, x2]) = [-x2, x1]` (the two halves, not interleaved pairs).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.models.config import ModelConfig

__all__ = ["rope_inv_freq", "rope_cos_sin", "apply_rope"]


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies `theta^(-2i/d)`, i < d/2 (Su et al. 2021, RoFormer), float32.

    Scaling: `linear` divides all by `factor`; `llama3` (Llama 3.1) divides the
    low frequencies (wavelength > L/low_freq_factor, L the original context) by
    `factor`, keeps high frequencies and interpolates smoothly in between:
    `(1 - s) * f / factor + s * f`, `s = (L / wavelen - low) / (high - low)`.
    Computed in float32 like transformers does.
    """
    d = config.head_dim
    exponents = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)
    inv = (1.0 / np.float32(config.rope_theta) ** exponents).astype(np.float32)
    scaling = config.rope_scaling_dict
    if scaling is None:
        return inv
    kind = scaling["rope_type"]
    factor = np.float32(scaling["factor"])
    if kind == "linear":
        return (inv / factor).astype(np.float32)
    if kind == "llama3":
        low, high = np.float32(scaling["low_freq_factor"]), np.float32(scaling["high_freq_factor"])
        old_len = np.float32(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"rope_type={kind!r} is not supported")


def rope_cos_sin(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of `positions * inv_freq`, duplicated to head_dim (HF layout). float32 [N, S, D]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(config))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """`x * cos + rotate_half(x) * sin`, rotate_half(x) = [-x2, x1] (HF convention).

    x: [N, S, heads, D]; cos, sin: [N, S, D]. Computed in float32, cast back.
    """
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
