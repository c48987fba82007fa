"""Offline preference losses over (chosen, rejected) pairs of sequence log-probs.

Inputs are per-pair sequence log-probabilities ``[B]`` (the sum of the token
log-probs of each response under the policy, and under the frozen reference
where the loss uses one). With the implicit reward ``r(y) = β·(log π(y) −
log π_ref(y))`` and the log-ratio margin::

    h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))

the losses are (``L(x) = −log σ(x)``)::

    dpo    (1 − s)·L(βh) + s·L(−βh)                      Rafailov et al. 2023; s > 0 is cDPO
    ipo    (h − 1/(2β))²                                  Azar et al. 2023 (β is IPO's τ)
    rdpo   ((1 − ε)·L(βh) − ε·L(−βh)) / (1 − 2ε)          Chowdhury et al. 2024, flip rate ε
    hinge  max(0, 1 − βh)                                 SLiC-HF, Zhao et al. 2023 (β = 1/δ)
    simpo  L(β·log π(y_w)/|y_w| − β·log π(y_l)/|y_l| − γ) Meng et al. 2024, no reference

Each returns ``(loss, metrics)``: the loss is the mean over pairs (weighted by
an optional ``mask`` ``[B]``), ``metrics`` holds the mean implicit rewards
(``chosen_reward``, ``rejected_reward``), ``reward_margin`` (mean of chosen −
rejected reward) and ``reward_accuracy`` (fraction of pairs with chosen >
rejected reward), all float32 scalars.

Conventions: TRL's ``ipo`` divides the log-probs by the response length
before calling the loss; pass length-averaged log-probs to reproduce it. TRL's
``robust`` loss is rDPO with ``label_smoothing`` as ε.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dpo", "ipo", "rdpo", "hinge", "simpo"]


def _as_f32(mask, **arrays):
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"expected equal shapes, got {shapes}")
    shape = next(iter(shapes.values()))
    if mask is None:
        mask = jnp.ones(shape, jnp.float32)
    elif tuple(mask.shape) != shape:
        raise ValueError(f"mask must have shape {shape}, got {mask.shape}")
    return {k: v.astype(jnp.float32) for k, v in arrays.items()}, mask.astype(jnp.float32)


def _mean(x, w):
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-8)


def _finish(per_pair, chosen_reward, rejected_reward, w):
    loss = _mean(per_pair, w)
    metrics = {
        "chosen_reward": _mean(chosen_reward, w),
        "rejected_reward": _mean(rejected_reward, w),
        "reward_margin": _mean(chosen_reward - rejected_reward, w),
        "reward_accuracy": _mean((chosen_reward > rejected_reward).astype(jnp.float32), w),
    }
    return loss, metrics


def _log_ratios(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, mask):
    a, w = _as_f32(
        mask,
        chosen_logp=chosen_logp,
        rejected_logp=rejected_logp,
        ref_chosen_logp=ref_chosen_logp,
        ref_rejected_logp=ref_rejected_logp,
    )
    chosen = a["chosen_logp"] - a["ref_chosen_logp"]
    rejected = a["rejected_logp"] - a["ref_rejected_logp"]
    return chosen, rejected, w


def _check_range(name, value, low, high, high_inclusive):
    if isinstance(value, (int, float)):
        ok = low <= value <= high if high_inclusive else low <= value < high
        if not ok:
            bracket = "]" if high_inclusive else ")"
            raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value}")


def dpo(
    chosen_logp,
    rejected_logp,
    ref_chosen_logp,
    ref_rejected_logp,
    *,
    beta=0.1,
    label_smoothing=0.0,
    mask=None,
):
    """DPO sigmoid loss ``(1 − s)·(−log σ(βh)) + s·(−log σ(−βh))`` (Rafailov et al. 2023).

    ``label_smoothing = s > 0`` is conservative DPO (cDPO, Mitchell 2023), as
    TRL's ``sigmoid`` loss with ``label_smoothing``; ``s = 0`` is plain DPO.
    """
    _check_range("label_smoothing", label_smoothing, 0.0, 0.5, True)
    chosen, rejected, w = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, mask
    )
    z = beta * (chosen - rejected)
    per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(
        z
    ) - label_smoothing * jax.nn.log_sigmoid(-z)
    return _finish(per_pair, beta * chosen, beta * rejected, w)


def ipo(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, *, beta=0.1, mask=None):
    """IPO loss ``(h − 1/(2β))²`` (Azar et al. 2023, "A General Theoretical Paradigm…"; β is τ)."""
    chosen, rejected, w = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, mask
    )
    per_pair = jnp.square(chosen - rejected - 1.0 / (2.0 * beta))
    return _finish(per_pair, beta * chosen, beta * rejected, w)


def rdpo(
    chosen_logp,
    rejected_logp,
    ref_chosen_logp,
    ref_rejected_logp,
    *,
    flip_rate,
    beta=0.1,
    mask=None,
):
    """Robust DPO for labels flipped with known probability ε = ``flip_rate`` (Chowdhury et al. 2024).

    ``((1 − ε)·L(βh) − ε·L(−βh)) / (1 − 2ε)`` with ``L(x) = −log σ(x)``: an
    unbiased estimate of the clean-label DPO loss; ``ε = 0`` is DPO. Requires
    ``0 ≤ ε < 0.5``.
    """
    _check_range("flip_rate", flip_rate, 0.0, 0.5, False)
    chosen, rejected, w = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, mask
    )
    z = beta * (chosen - rejected)
    per_pair = (
        (1.0 - flip_rate) * -jax.nn.log_sigmoid(z) - flip_rate * -jax.nn.log_sigmoid(-z)
    ) / (1.0 - 2.0 * flip_rate)
    return _finish(per_pair, beta * chosen, beta * rejected, w)


def hinge(chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, *, beta=0.1, mask=None):
    """Hinge loss ``max(0, 1 − βh)`` (SLiC-HF, Zhao et al. 2023, with β = 1/δ as in TRL's ``hinge``)."""
    chosen, rejected, w = _log_ratios(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, mask
    )
    per_pair = jax.nn.relu(1.0 - beta * (chosen - rejected))
    return _finish(per_pair, beta * chosen, beta * rejected, w)


def simpo(chosen_logp_sum, chosen_len, rejected_logp_sum, rejected_len, *, beta, gamma, mask=None):
    """SimPO loss ``−log σ(β·log π(y_w)/|y_w| − β·log π(y_l)/|y_l| − γ)`` (Meng et al. 2024).

    Length-normalised implicit reward ``β·log π(y)/|y|``, target margin γ, no
    reference model. ``gamma`` is the margin in reward units; a configuration
    that gives the ratio γ/β instead (the authors' ``gamma_beta_ratio``)
    needs ``gamma = beta * gamma_beta_ratio``.

    Args:
      chosen_logp_sum, rejected_logp_sum: summed token log-probs ``[B]``.
      chosen_len, rejected_len: response lengths in tokens ``[B]`` (> 0).
    """
    a, w = _as_f32(
        mask,
        chosen_logp_sum=chosen_logp_sum,
        chosen_len=chosen_len,
        rejected_logp_sum=rejected_logp_sum,
        rejected_len=rejected_len,
    )
    chosen_reward = beta * a["chosen_logp_sum"] / jnp.maximum(a["chosen_len"], 1.0)
    rejected_reward = beta * a["rejected_logp_sum"] / jnp.maximum(a["rejected_len"], 1.0)
    per_pair = -jax.nn.log_sigmoid(chosen_reward - rejected_reward - gamma)
    return _finish(per_pair, chosen_reward, rejected_reward, w)
