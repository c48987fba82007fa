"""Turn-level credit assignment for multi-turn episodes: per-turn returns and their group baseline.

A multi-turn row (`rollout/multiturn.py`) holds turns `k = 0, 1, ...`: an action of the
policy followed by the environment's observation. `turn_ids [N, T]` gives each completion
token its turn (-1 past the end) and `turn_rewards [N, T]` holds each turn's reward on the
last token of its action. With `r_k` the reward of turn `k`::

    G_k = Σ_{j ≥ k} γ^{j−k} r_j                      (the return from turn k on)
    A_k = (G_k − μ_g) / (σ_g + eps)                  (scale="group"; "none": G_k − μ_g)

where `μ_g`, `σ_g` are the mean and std of the episode returns `G_0` over the row's group
of `G` episodes of the same prompt (contiguous rows, as `group_advantages`). Every policy
token of turn `k` gets `A_k`. This is GAE over turns with `λ = 1` and a value of 0,
baselined by the group: a turn is credited only with the rewards that come after it, while
the group mean removes what the prompt alone predicts (the turn-level variant of GRPO in
Zeng et al. 2025, "Reinforcing Multi-Turn Reasoning in LLM Agents via Turn-Level Credit
Assignment", with γ-discounting across turns). Identity: with one reward at the end
(`r_k = 0` for `k` before the last turn) and `γ = 1`, every turn gets the trajectory-level
GRPO advantage `group_advantages(G_0)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["per_turn_rewards", "turn_returns", "turn_advantages"]


def per_turn_rewards(turn_rewards, turn_ids):
    """`r [N, T]`: the reward of turn `k` at column `k` (the sum of `turn_rewards` over its tokens)."""
    turn_rewards = jnp.asarray(turn_rewards, jnp.float32)
    turn_ids = jnp.asarray(turn_ids, jnp.int32)
    if turn_rewards.ndim != 2 or turn_rewards.shape != turn_ids.shape:
        raise ValueError(
            f"turn_rewards {turn_rewards.shape} and turn_ids {turn_ids.shape} must both be [N, T]"
        )
    n, t = turn_ids.shape
    valid = turn_ids >= 0
    seg = jnp.where(valid, jnp.arange(n)[:, None] * t + jnp.clip(turn_ids, 0, t - 1), n * t)
    sums = jax.ops.segment_sum(
        jnp.where(valid, turn_rewards, 0.0).reshape(-1), seg.reshape(-1), num_segments=n * t + 1
    )
    return sums[: n * t].reshape(n, t)


def turn_returns(rewards, *, gamma=1.0):
    """`G [N, K]` with `G_k = r_k + γ G_{k+1}` (a reverse scan over turns)."""
    rewards = jnp.asarray(rewards, jnp.float32)

    def step(carry, r):
        g = r + gamma * carry
        return g, g

    _, g = jax.lax.scan(step, jnp.zeros(rewards.shape[0], jnp.float32), rewards.T, reverse=True)
    return g.T


def turn_advantages(
    turn_rewards, turn_ids, mask, group_size, *, gamma=1.0, scale="group", eps=1e-6, ddof=1
):
    """Token advantages `[N, T]` from per-turn returns and a group baseline (module docstring).

    Args:
      turn_rewards: `[N, T]` each turn's reward on a token of that turn (its action's last).
      turn_ids: `[N, T]` int, the turn of each token, -1 where none.
      mask: `[N, T]` the tokens that get an advantage (the policy tokens); 0 elsewhere.
      group_size: episodes per prompt `G` (contiguous rows).
      gamma: discount between turns.
      scale: "group" (divide by the group std of the episode returns) or "none".
      eps, ddof: as `group_advantages`.
    Returns:
      float32 `[N, T]`, 0 where `mask` is 0.
    """
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    r = per_turn_rewards(turn_rewards, turn_ids)
    n = r.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rows do not split into groups of {group_size}")
    g = turn_returns(r, gamma=gamma)
    episode = g[:, 0].reshape(-1, group_size)
    if group_size == 1:
        mean, std = jnp.zeros_like(episode), jnp.ones_like(episode)
    else:
        mean = jnp.mean(episode, axis=1, keepdims=True)
        std = jnp.std(episode, axis=1, keepdims=True, ddof=ddof)
    mean = jnp.broadcast_to(mean, episode.shape).reshape(n, 1)
    std = jnp.broadcast_to(std, episode.shape).reshape(n, 1)
    adv = g - mean
    if scale == "group":
        adv = adv / (std + eps)
    ids = jnp.clip(jnp.asarray(turn_ids, jnp.int32), 0, r.shape[1] - 1)
    tok = jnp.take_along_axis(adv, ids, axis=1)
    return jnp.where((jnp.asarray(mask) > 0) & (jnp.asarray(turn_ids) >= 0), tok, 0.0)
