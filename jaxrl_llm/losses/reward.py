"""Reward-model losses over scalar rewards of (chosen, rejected) pairs.

The Bradley–Terry model (Bradley & Terry 1952) says that a rater prefers y_w to
y_l with probability ``σ(r(x, y_w) − r(x, y_l))``; a reward model is fit by
maximising the likelihood of the observed preferences (Ouyang et al. 2022,
InstructGPT, eq. 1; Stiennon et al. 2020)::

    z    = r_w − r_l − m                         m: an optional per-pair margin
    loss = mean_pairs[ −(1 − s)·log σ(z) − s·log σ(−z) ]

``m`` is Llama 2's margin (Touvron et al. 2023, eq. 2): a larger margin for
pairs rated as clearly better (a margin of 0 is the plain BT loss). ``s`` is
label smoothing: the target preference probability is 1 − s instead of 1, as
for a label flipped with probability s (the form of cDPO's label smoothing);
s = 0 with a margin column is the loss of TRL's RewardTrainer and OpenRLHF's
pairwise loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["bradley_terry"]


def bradley_terry(
    chosen_rewards,
    rejected_rewards,
    *,
    margin=None,
    label_smoothing=0.0,
    mask=None,
):
    """Bradley–Terry pairwise loss ``−(1 − s)·log σ(r_w − r_l − m) − s·log σ(−(r_w − r_l − m))``.

    Args:
      chosen_rewards, rejected_rewards: ``[B]`` scalar rewards of the preferred and the
        dispreferred completion of each pair.
      margin: ``None`` (no margin), a scalar or ``[B]``: subtracted from the reward
        difference inside the sigmoid (Llama 2's margin loss).
      label_smoothing: ``s`` in ``[0, 0.5]``; 0 is the plain loss.
      mask: optional ``[B]`` pair weights (0 drops a pair); the loss is the weighted mean.

    Returns:
      ``(loss, metrics)``: ``loss`` a float32 scalar; ``metrics`` float32 scalars
      ``accuracy`` (fraction of pairs with r_w > r_l, ties count 0), ``margin_mean``
      (mean r_w − r_l), ``chosen_mean``, ``rejected_mean``.
    """
    chosen = jnp.asarray(chosen_rewards)
    rejected = jnp.asarray(rejected_rewards)
    if chosen.ndim != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"expected chosen and rejected rewards of the same shape [B], got "
            f"{chosen.shape} and {rejected.shape}"
        )
    if isinstance(label_smoothing, (int, float)) and not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    w = jnp.ones(chosen.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    if w.shape != chosen.shape:
        raise ValueError(f"mask must have shape {chosen.shape}, got {w.shape}")
    chosen = chosen.astype(jnp.float32)
    rejected = rejected.astype(jnp.float32)
    diff = chosen - rejected
    z = (
        diff
        if margin is None
        else diff - jnp.broadcast_to(jnp.asarray(margin, jnp.float32), diff.shape)
    )
    per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(
        z
    ) - label_smoothing * jax.nn.log_sigmoid(-z)

    def mean(x):
        return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-8)

    metrics = {
        "accuracy": mean((diff > 0).astype(jnp.float32)),
        "margin_mean": mean(diff),
        "chosen_mean": mean(chosen),
        "rejected_mean": mean(rejected),
    }
    return mean(per_pair), metrics
