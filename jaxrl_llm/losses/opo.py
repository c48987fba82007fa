"""OPO: the length-weighted group baseline.

Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline". Under the paper's assumption
that the squared norm of a completion's policy gradient grows with its length, the baseline
that minimises the gradient variance within a group is the length-weighted mean reward:

    b_g = Σ_{j ∈ g} l_j r_j / Σ_{j ∈ g} l_j,      A_i = r_i − b_g(i)

with l_j the number of completion tokens of sample j. With equal lengths it is the group
mean, i.e. Dr. GRPO's `r − μ_g`. The paper pairs it with exact on-policy training (one update
per batch) and no std normalisation. A group of zero-length completions gets advantage 0.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.losses.registration import register_advantage

__all__ = ["opo"]


def opo(rewards, lengths, group_size):
    """Advantages ``r_i − Σ_j l_j r_j / Σ_j l_j`` over contiguous groups of ``group_size``.

    rewards, lengths: ``[N]`` (lengths in tokens). Returns ``[N]`` float32.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    lengths = jnp.asarray(lengths, jnp.float32)
    if rewards.ndim != 1 or lengths.shape != rewards.shape:
        raise ValueError(f"expected rewards and lengths [N], got {rewards.shape}, {lengths.shape}")
    if not isinstance(group_size, int) or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"group_size must be a positive int dividing N = {rewards.shape[0]}, got {group_size!r}"
        )
    r, l = rewards.reshape(-1, group_size), lengths.reshape(-1, group_size)
    total = jnp.sum(l, axis=1, keepdims=True)
    ok = total > 0
    baseline = jnp.where(ok, jnp.sum(l * r, axis=1, keepdims=True) / jnp.where(ok, total, 1.0), r)
    return (r - baseline).reshape(-1)


@register_advantage("opo", min_group=2)
def _opo_entry(*, rewards, mask, group_size, **_):
    return opo(rewards, jnp.sum(mask, axis=-1), group_size), None, None
