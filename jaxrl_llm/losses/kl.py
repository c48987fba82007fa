"""KL estimators, the exact KL over the vocabulary, and KL-coefficient controllers.

Two places to put a KL term against a frozen reference policy π_ref:

* **In the reward** (PPO-style RLHF, Ziegler et al. 2019 "Fine-Tuning Language
  Models from Human Preferences"; Ouyang et al. 2022): every response token gets
  the per-token penalty ``−β·kl_t`` added to its reward before advantages are
  estimated (``losses.advantages.to_token_rewards``). The anchors use the k1
  estimator here (verl ``kl_penalty="kl"``, OpenRLHF ``kl_estimator="k1"``); the
  penalty carries no gradient, it only shapes the return.
* **As a loss term** (GRPO, Shao et al. 2024 "DeepSeekMath"): the policy loss
  gets ``+β·aggregate(kl_t)`` and the gradient flows through ``logp``. The
  anchors use k3 here (verl ``kl_loss_type="low_var_kl"``, TRL GRPO, tunix).
  Note what the pathwise gradient of each estimator is in expectation under
  y ~ π: k1 gives 0, k2 gives ∇KL(π‖π_ref), k3 gives ∇KL(π_ref‖π) (the
  forward KL), since ∇k3 = (1 − π_ref/π)·∇log π.

Estimators (Schulman 2020, "Approximating KL Divergence"), with
``d = log π(y) − log π_ref(y)`` at the sampled token ``y ~ π``::

    k1  = d                       unbiased for KL(π‖π_ref), high variance, can be < 0
    k2  = d² / 2                  biased, low variance, ≥ 0
    k3  = exp(−d) + d − 1         unbiased for KL(π‖π_ref), low variance, ≥ 0
    abs = |d|                     verl's "abs" penalty

Adaptive coefficient (Ziegler et al. 2019, eq. in §2.2)::

    e    = clip(kl / target − 1, −0.2, 0.2)
    coef = coef · (1 + e · n_steps / horizon)
"""

from __future__ import annotations

from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp

__all__ = [
    "KL_KINDS",
    "kl_estimate",
    "full_kl",
    "KLControllerState",
    "FixedKLController",
    "AdaptiveKLController",
]

KL_KINDS = ("k1", "k2", "k3", "abs")


def _check_same_shape(**arrays):
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"expected equal shapes, got {shapes}")


def kl_estimate(logp, ref_logp, kind="k3", clamp=None, *, log_ratio_clamp=None):
    """Per-token KL(π‖π_ref) estimate from sampled-token log-probs, in float32.

    With ``d = logp − ref_logp`` (after the optional ``log_ratio_clamp``)::

        k1 = d;  k2 = d²/2;  k3 = exp(−d) + d − 1;  abs = |d|

    Args:
      logp: log π(y_t) of the sampled tokens, any shape (usually ``[N, T]``).
      ref_logp: log π_ref(y_t), same shape.
      kind: one of ``"k1"``, ``"k2"``, ``"k3"``, ``"abs"``.
      clamp: ``None`` (default, the papers' plain estimator) or a positive
        float ``c``: the result is clipped to ``[−c, c]``. verl's
        ``low_var_kl`` and OpenRLHF's k3 use ``c = 10``; TRL uses none.
      log_ratio_clamp: ``None`` (default) or a positive float ``c``: ``d`` is
        clipped to ``[−c, c]`` before the estimator (so before ``exp`` for k3).
        verl's ``low_var_kl`` uses ``c = 20``; TRL and OpenRLHF use none.

    Returns:
      Float32 array with the shape of ``logp``. Padding positions are not
      masked here; aggregate with ``losses.aggregation.aggregate``.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    d = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
    if log_ratio_clamp is not None:
        d = jnp.clip(d, -log_ratio_clamp, log_ratio_clamp)
    if kind == "k1":
        kl = d
    elif kind == "k2":
        kl = 0.5 * jnp.square(d)
    elif kind == "k3":
        # expm1 keeps precision when d is small: exp(−d) − 1 + d.
        kl = jnp.expm1(-d) + d
    else:
        kl = jnp.abs(d)
    if clamp is not None:
        kl = jnp.clip(kl, -clamp, clamp)
    return kl


def _kl_from_logits(logits, ref_logits):
    """Σ_v p_v (log p_v − log q_v) over the last axis, float32, via logsumexp."""
    logits = logits.astype(jnp.float32)
    ref_logits = ref_logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    ref_lse = jax.nn.logsumexp(ref_logits, axis=-1, keepdims=True)
    p = jnp.exp(logits - lse)
    # log p − log q = (l − lse) − (r − ref_lse); zero-probability entries
    # (e.g. −inf logits of banned tokens) give 0, with finite gradients.
    keep = p > 0
    log_ratio = jnp.where(keep, (logits - lse) - (ref_logits - ref_lse), 0.0)
    kl = jnp.sum(jnp.where(keep, p * log_ratio, 0.0), axis=-1)
    # Rounding can leave tiny negatives where π = π_ref; KL is ≥ 0 exactly.
    return jnp.maximum(kl, 0.0)


def full_kl(logits, ref_logits, mask, *, chunk_size=None):
    """Exact per-token KL(π‖π_ref) = Σ_v π(v) (log π(v) − log π_ref(v)), float32.

    Both distributions are the softmax of the given logits (apply any
    temperature before calling). Positions where ``mask`` is 0 are set to 0.

    Args:
      logits: policy logits ``[N, T, V]`` (any float dtype).
      ref_logits: reference logits ``[N, T, V]``.
      mask: ``[N, T]`` validity (bool or float; > 0 is valid).
      chunk_size: ``None`` (one fused pass) or a divisor of ``T``: the KL is
        computed over ``T / chunk_size`` sequence chunks with ``lax.map``, so
        no float32 ``[N, T, V]`` temporary exists beyond one
        ``[N, chunk_size, V]`` chunk.

    Returns:
      ``[N, T]`` float32, ≥ 0.
    """
    if logits.ndim != 3 or logits.shape != ref_logits.shape:
        raise ValueError(
            f"logits and ref_logits must both be [N, T, V], got {logits.shape} and {ref_logits.shape}"
        )
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"mask must be [N, T] = {logits.shape[:2]}, got {mask.shape}")
    n, t, _ = logits.shape
    if chunk_size is None or chunk_size >= t:
        kl = _kl_from_logits(logits, ref_logits)
    else:
        if t % chunk_size:
            raise ValueError(f"chunk_size must divide T = {t}, got {chunk_size}")

        def one_chunk(i):
            start = i * chunk_size
            l = jax.lax.dynamic_slice_in_dim(logits, start, chunk_size, axis=1)
            r = jax.lax.dynamic_slice_in_dim(ref_logits, start, chunk_size, axis=1)
            return _kl_from_logits(l, r)

        chunks = jax.lax.map(one_chunk, jnp.arange(t // chunk_size))  # [C, N, c]
        kl = jnp.moveaxis(chunks, 0, 1).reshape(n, t)
    return jnp.where(mask > 0, kl, 0.0)


@flax.struct.dataclass
class KLControllerState:
    """State of a KL-coefficient controller: the current coefficient β (float32 scalar)."""

    coef: jax.Array


class FixedKLController(NamedTuple):
    """A constant KL coefficient, with the same ``init`` / ``update`` as the adaptive one.

    ``state = ctl.init(); state = ctl.update(state, kl, n_steps)`` leaves
    ``state.coef == coef``. Hashable, so it can be a static argument of ``jit``.
    """

    coef: float

    def init(self) -> KLControllerState:
        return KLControllerState(coef=jnp.asarray(self.coef, jnp.float32))

    def update(self, state: KLControllerState, kl, n_steps) -> KLControllerState:
        del kl, n_steps
        return state


class AdaptiveKLController(NamedTuple):
    """Adaptive KL coefficient of Ziegler et al. 2019 (also verl / TRL PPO)::

        e    = clip(kl / target − 1, −0.2, 0.2)
        coef = coef · (1 + e · n_steps / horizon)

    ``kl`` is the measured mean KL of the last batch (the anchors feed the
    per-sequence sum of the k1 penalty, averaged over sequences), ``n_steps``
    is the number of samples (or steps) since the last update. Both may be
    traced values; the controller itself is a hashable static.
    """

    init_coef: float
    target: float
    horizon: float

    def init(self) -> KLControllerState:
        return KLControllerState(coef=jnp.asarray(self.init_coef, jnp.float32))

    def update(self, state: KLControllerState, kl, n_steps) -> KLControllerState:
        e = jnp.clip(jnp.asarray(kl, jnp.float32) / self.target - 1.0, -0.2, 0.2)
        coef = state.coef * (1.0 + e * jnp.asarray(n_steps, jnp.float32) / self.horizon)
        return state.replace(coef=coef)
