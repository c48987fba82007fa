"""Value-function losses: PPO's clipped regression loss and HL-Gauss classification.

Clipped value loss (Schulman et al. 2017 PPO as implemented in openai/baselines;
"Secrets of RLHF in LLMs Part I: PPO", Zheng et al. 2023)::

    v_clip = old_v + clip(v − old_v, −ε, ε)
    ℓ_t    = ½ · max((v_t − R_t)², (v_clip_t − R_t)²)

HL-Gauss (Imani & White 2018; Farebrother et al. 2024, "Stop Regressing:
Training Value Functions via Classification for Scalable Deep RL"): the value
head outputs logits over ``num_bins`` bins of ``[v_min, v_max]``; the target
scalar ``y`` becomes the histogram of a Gaussian ``N(y, σ²)`` on the bins,
``p_i = (Φ((e_{i+1} − y)/σ) − Φ((e_i − y)/σ)) / (Φ((e_K − y)/σ) − Φ((e_0 − y)/σ))``
with bin edges ``e_0 < … < e_K``; the loss is the cross-entropy to that
histogram and the value read out is ``Σ_i softmax(logits)_i · c_i`` over bin
centres ``c_i``. The paper recommends ``σ = 0.75 · bin width``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.aggregation import aggregate

__all__ = [
    "clipped_value_loss",
    "hl_gauss_targets",
    "hl_gauss_loss",
    "hl_gauss_readout",
    "hl_gauss_bin_centres",
]


def _masked_mean(x, mask):
    w = mask.astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-8)


def clipped_value_loss(
    values,
    old_values,
    returns,
    mask,
    *,
    clip=0.2,
    agg="token-mean",
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
):
    """PPO clipped value loss ``½·max((v − R)², (clip(v, v_old ± ε) − R)²)``, aggregated.

    Args:
      values: current value predictions ``[N, T]``.
      old_values: the predictions when the rollout was scored ``[N, T]``.
      returns: regression targets ``R`` (e.g. GAE returns) ``[N, T]``.
      mask: ``[N, T]`` validity (or weights).
      clip: ε of the value clip (verl ``cliprange_value`` 0.5, OpenRLHF
        ``value_clip`` 0.2, TRL ``cliprange_value`` 0.2); ``None`` gives the
        plain ``½(v − R)²``.
      agg, num_tokens, num_seqs, norm_constant: as in
        ``losses.aggregation.aggregate``.

    Returns:
      ``(loss, metrics)``: scalar float32 loss and a flat dict with
      ``vf_clip_frac`` (fraction of valid tokens where the clipped branch is
      the larger one), ``value_mean``, ``return_mean``. The metrics are
      weighted means over this call's ``mask`` (not the global counts), so a
      micro-batch's metric times its share of the tokens sums to the
      minibatch value.
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError(
            "values, old_values, returns and mask must have equal shapes, got "
            f"{values.shape}, {old_values.shape}, {returns.shape}, {mask.shape}"
        )
    v = values.astype(jnp.float32)
    v_old = old_values.astype(jnp.float32)
    ret = returns.astype(jnp.float32)
    unclipped = jnp.square(v - ret)
    if clip is None:
        per_token = 0.5 * unclipped
        clip_frac = jnp.zeros((), jnp.float32)
    else:
        v_clipped = v_old + jnp.clip(v - v_old, -clip, clip)
        clipped = jnp.square(v_clipped - ret)
        per_token = 0.5 * jnp.maximum(unclipped, clipped)
        clip_frac = _masked_mean((clipped > unclipped).astype(jnp.float32), mask)
    loss = aggregate(
        per_token, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_constant=norm_constant
    )
    metrics = {
        "vf_clip_frac": clip_frac,
        "value_mean": _masked_mean(v, mask),
        "return_mean": _masked_mean(ret, mask),
    }
    return loss, metrics


def hl_gauss_bin_centres(v_min, v_max, num_bins):
    """Centres of ``num_bins`` equal bins of ``[v_min, v_max]``, float32 ``[num_bins]``."""
    edges = jnp.linspace(v_min, v_max, num_bins + 1, dtype=jnp.float32)
    return 0.5 * (edges[:-1] + edges[1:])


def _check_support(v_min, v_max, num_bins):
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    if not v_max > v_min:
        raise ValueError(f"v_max must be > v_min, got v_min={v_min}, v_max={v_max}")


def _check_num_bins(logits, num_bins):
    if num_bins is not None and logits.shape[-1] != num_bins:
        raise ValueError(
            f"logits.shape[-1] must equal num_bins={num_bins}, got logits shape {logits.shape}"
        )


def hl_gauss_targets(target, *, v_min, v_max, num_bins, sigma=None):
    """HL-Gauss histogram targets ``[..., num_bins]`` for scalar targets ``[...]``.

    ``p_i = (Φ((e_{i+1} − y)/σ) − Φ((e_i − y)/σ)) / (Φ((v_max − y)/σ) − Φ((v_min − y)/σ))``
    with ``y`` clipped to ``[v_min, v_max]`` (Farebrother et al. 2024, §3.1).

    Args:
      target: scalar regression targets, any shape.
      v_min, v_max: the support (Python floats).
      num_bins: number of bins (a static Python int).
      sigma: Gaussian width; ``None`` uses the paper's ``0.75 · (v_max − v_min) / num_bins``.

    Returns:
      float32 probabilities summing to 1 over the last axis.
    """
    _check_support(v_min, v_max, num_bins)
    if sigma is None:
        sigma = 0.75 * (v_max - v_min) / num_bins
    y = jnp.clip(jnp.asarray(target, jnp.float32), v_min, v_max)[..., None]
    edges = jnp.linspace(v_min, v_max, num_bins + 1, dtype=jnp.float32)
    cdf = 0.5 * (1.0 + jax.scipy.special.erf((edges - y) / (jnp.sqrt(2.0) * sigma)))
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / (cdf[..., -1:] - cdf[..., :1])


def hl_gauss_loss(logits, target, *, v_min, v_max, num_bins=None, sigma=None):
    """Cross-entropy between ``softmax(logits)`` and the HL-Gauss targets of ``target``.

    ``ℓ = −Σ_i p_i(target) · log_softmax(logits)_i`` per element; the number of
    bins is ``logits.shape[-1]``. Aggregate the result over tokens with
    ``losses.aggregation.aggregate``.

    Args:
      logits: value-head logits ``[..., num_bins]`` (any float dtype).
      target: scalar targets ``[...]``; no gradient flows into them.
      v_min, v_max, sigma: as in :func:`hl_gauss_targets`.
      num_bins: optional; when given it must equal ``logits.shape[-1]``.

    Returns:
      float32 ``[...]`` per-element cross-entropy.
    """
    _check_num_bins(logits, num_bins)
    if logits.shape[:-1] != jnp.shape(target):
        raise ValueError(
            f"logits must be target.shape + (num_bins,), got {logits.shape} and {jnp.shape(target)}"
        )
    probs = hl_gauss_targets(
        jax.lax.stop_gradient(target),
        v_min=v_min,
        v_max=v_max,
        num_bins=logits.shape[-1],
        sigma=sigma,
    )
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(probs * log_q, axis=-1)


def hl_gauss_readout(logits, *, v_min, v_max, num_bins=None):
    """Scalar value ``Σ_i softmax(logits)_i · c_i`` over the bin centres ``c_i``, float32 ``[...]``.

    ``num_bins`` is optional; when given it must equal ``logits.shape[-1]``.
    """
    _check_num_bins(logits, num_bins)
    num_bins = logits.shape[-1]
    _check_support(v_min, v_max, num_bins)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(probs * hl_gauss_bin_centres(v_min, v_max, num_bins), axis=-1)
