"""Online DPO: the DPO loss on pairs sampled from the current policy, as an advantage estimator.

Guo et al. 2024 ("Direct Language Model Alignment from Online AI Feedback"); Xiong et al. 2024
(iterative DPO, best-vs-worst of n). Each step samples `G >= 2` completions per prompt from
the current policy; the reward (verifier, learned reward model, judge or their combination)
picks the pair: chosen = the highest reward of the group, rejected = the lowest (the first
such row when several tie); a group whose rewards are all equal gives no pair. The loss is
(c)DPO on those pairs with the reference the trainer keeps (`state.ref_params`):

    h_p = [log π(c) − log π_ref(c)] − [log π(r) − log π_ref(r)]           (summed over tokens)
    L   = (1/P) Σ_p −(1 − ε) log σ(β h_p) − ε log σ(−β h_p)

The estimator turns it into sequence advantages with exactly the DPO gradient: with
`w_p = β [(1 − ε) σ(−β h_p) − ε σ(β h_p)] = −∂L_p/∂h_p` (no gradient through it),

    A_c = 2 w_p,   A_r = −2 w_p,   every other row: sample weight 0

and the plain policy gradient `−Σ_i A_i log π(y_i)` aggregated `seq-mean-token-sum` (which
divides by the 2P rows of weight 1) has the gradient `(1/P) Σ_p ∂L_p/∂h_p ∇h_p = ∇L`. The
identity holds where `old_logp` are the trainer's log-probs of the current parameters, i.e.
for the first update of a step (`algo.recompute_old_logp = True`, or the sampler's log-probs
at temperature 1, equal to them up to numerics); later minibatches / epochs of the same step
use those same weights (with `ppo_clip`, under its ratio clip). `trainers.config` requires
`policy_loss` in (reinforce, ppo_clip) and `aggregation = seq-mean-token-sum` (declared
in its registration, checked by `registry.check_config`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.registration import register_advantage

__all__ = ["select_pairs", "online_dpo_weights", "online_dpo"]


def select_pairs(rewards, group_size: int):
    """Chosen / rejected row per group: `(chosen [B] int32, rejected [B] int32, valid [B] bool)`.

    rewards: `[N]`, contiguous groups of `group_size` (N = B·G). Chosen is the first row with
    the group's highest reward, rejected the first with the lowest; `valid` is max > min.
    """
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    offset = jnp.arange(r.shape[0], dtype=jnp.int32) * group_size
    chosen = jnp.argmax(r, axis=1).astype(jnp.int32) + offset
    rejected = jnp.argmin(r, axis=1).astype(jnp.int32) + offset
    return chosen, rejected, jnp.max(r, axis=1) > jnp.min(r, axis=1)


def online_dpo_weights(h, *, beta: float, label_smoothing: float = 0.0):
    """`−∂L/∂h` of the (c)DPO loss at the pairs' log-ratio margins `h` `[P]`."""
    eps = label_smoothing
    return beta * ((1.0 - eps) * jax.nn.sigmoid(-beta * h) - eps * jax.nn.sigmoid(beta * h))


def online_dpo(rewards, seq_logp, seq_ref_logp, group_size: int, *, beta, label_smoothing=0.0):
    """Sequence advantages and sample weights, both `[N]` float32 (module doc).

    seq_logp, seq_ref_logp: `[N]` summed completion log-probs of the policy and the reference.
    """
    n = rewards.shape[0]
    if not isinstance(group_size, int) or group_size < 2 or n % group_size:
        raise ValueError(f"online_dpo needs a group_size >= 2 dividing N = {n}, got {group_size!r}")
    chosen, rejected, valid = select_pairs(rewards, group_size)
    delta = jnp.asarray(seq_logp, jnp.float32) - jnp.asarray(seq_ref_logp, jnp.float32)
    h = delta[chosen] - delta[rejected]
    w = jax.lax.stop_gradient(online_dpo_weights(h, beta=beta, label_smoothing=label_smoothing))
    w = jnp.where(valid, w, 0.0)
    advantages = jnp.zeros((n,), jnp.float32).at[chosen].add(2 * w).at[rejected].add(-2 * w)
    keep = valid.astype(jnp.float32)
    weight = jnp.zeros((n,), jnp.float32).at[chosen].add(keep).at[rejected].add(keep)
    return advantages, weight


@register_advantage(
    "online_dpo",
    min_group=2,
    needs_logps=True,
    hparams={"dpo_beta": 0.1, "dpo_label_smoothing": 0.0},
    requires={"aggregation": ("seq-mean-token-sum",), "policy_loss": ("reinforce", "ppo_clip")},
)
def _online_dpo_entry(*, rewards, mask, group_size, old_logp, ref_logp, dpo_beta, **kw):
    seq = jnp.sum(old_logp * mask, axis=-1)
    ref = jnp.sum(ref_logp * mask, axis=-1)
    adv, weight = online_dpo(
        rewards,
        seq,
        ref,
        group_size,
        beta=dpo_beta,
        label_smoothing=kw["dpo_label_smoothing"],
    )
    return adv, None, weight
