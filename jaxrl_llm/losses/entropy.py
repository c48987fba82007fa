"""Token entropy of the policy and the entropy bonus.

``H(π_t) = −Σ_v π_t(v) log π_t(v)``, computed from logits in float32 as
``logsumexp(l) − Σ_v softmax(l)_v · l_v`` (no log of a probability, so it is
stable for peaked distributions and vocabularies with ``−inf`` logits).

The bonus term added to the loss is ``−coef · aggregate(H, mask, agg)``
(maximising entropy; Williams & Peng 1991, Mnih et al. 2016 A3C, the PPO
paper's ``c2·S``). "The Entropy Mechanism of RL for Reasoning LMs"
(Cui et al. 2025) and "RL for Reasoning in LLMs with One Training Example"
(Wang et al. 2025) discuss when it helps RLVR.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.aggregation import aggregate

__all__ = ["token_entropy", "entropy_bonus"]


def token_entropy(logits):
    """Entropy of ``softmax(logits)`` over the last axis, in float32.

    Args:
      logits: ``[..., V]`` in any float dtype (apply the sampling temperature
        first if the entropy of the sampling distribution is wanted). ``−inf``
        entries (banned tokens) contribute 0.

    Returns:
      ``[...]`` float32, in ``[0, log V]``.
    """
    if logits.ndim < 1:
        raise ValueError(f"logits must be [..., V], got shape {logits.shape}")
    logits = logits.astype(jnp.float32)
    finite = jnp.isfinite(logits)
    # Shift by the max first so that lse and Σ p·l stay O(log V) and their
    # difference does not cancel catastrophically for large logits.
    shift = jax.lax.stop_gradient(
        jnp.max(jnp.where(finite, logits, -jnp.inf), axis=-1, keepdims=True)
    )
    shifted = logits - jnp.where(jnp.isfinite(shift), shift, 0.0)
    lse = jax.nn.logsumexp(shifted, axis=-1, keepdims=True)
    p = jnp.exp(shifted - lse)
    p_l = jnp.where(finite, p * jnp.where(finite, shifted, 0.0), 0.0)
    return jnp.squeeze(lse, -1) - jnp.sum(p_l, axis=-1)


def entropy_bonus(
    entropy, mask, coef, agg="token-mean", *, num_tokens=None, num_seqs=None, norm_constant=None
):
    """Entropy-bonus loss term ``−coef · aggregate(entropy, mask, agg)``.

    Args:
      entropy: per-token entropy ``[N, T]`` (e.g. from :func:`token_entropy`).
      mask: ``[N, T]`` validity (or weights).
      coef: bonus coefficient (a float or a traced scalar); 0 switches it off.
      agg: the aggregation mode, as in ``losses.aggregation.aggregate``
        (``token-mean``, ``token-sum``, ``seq-mean-token-mean``,
        ``seq-mean-token-sum``, ``seq-mean-token-sum-norm``).
      num_tokens, num_seqs, norm_constant: global normalisers passed to
        ``aggregate`` (for micro-batches of a larger minibatch).

    Returns:
      Scalar float32 loss contribution (negative when the entropy is positive).
    """
    if entropy.shape != mask.shape:
        raise ValueError(
            f"entropy and mask must have equal shapes, got {entropy.shape} and {mask.shape}"
        )
    h = aggregate(
        entropy.astype(jnp.float32),
        mask,
        agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        norm_constant=norm_constant,
    )
    return -jnp.asarray(coef, jnp.float32) * h
