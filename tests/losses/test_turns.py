"""Turn-level returns and advantages against a numpy reference; the identity with GRPO."""

import jax
import numpy as np
import pytest

from jaxrl_llm.losses import group_advantages
from jaxrl_llm.losses.turns import per_turn_rewards, turn_advantages, turn_returns


def _episodes(rng, rows, t, max_turns=3):
    """Random interleaved rows: turns of 1-3 policy tokens then 0-2 observation tokens."""
    turn_ids = np.full((rows, t), -1, np.int32)
    policy = np.zeros((rows, t), np.float32)
    rewards = np.zeros((rows, t), np.float32)
    per_turn = np.zeros((rows, t), np.float32)
    for r in range(rows):
        c = 0
        for k in range(rng.integers(1, max_turns + 1)):
            a, o = rng.integers(1, 4), rng.integers(0, 3)
            if c + a + o > t:
                break
            turn_ids[r, c : c + a + o] = k
            policy[r, c : c + a] = 1
            per_turn[r, k] = rng.normal()
            rewards[r, c + a - 1] = per_turn[r, k]
            c += a + o
    return turn_ids, policy, rewards, per_turn


def _reference(per_turn, turn_ids, policy, group, gamma, scale, eps=1e-6):
    rows, t = per_turn.shape
    g = np.zeros_like(per_turn)
    for r in range(rows):
        acc = 0.0
        for k in reversed(range(t)):
            acc = per_turn[r, k] + gamma * acc
            g[r, k] = acc
    ep = g[:, 0].reshape(-1, group)
    mean = np.repeat(ep.mean(1), group)[:, None]
    std = np.repeat(ep.std(1, ddof=1), group)[:, None]
    adv = g - mean
    if scale == "group":
        adv = adv / (std + eps)
    out = np.zeros((rows, t), np.float32)
    for r in range(rows):
        for i in range(t):
            if policy[r, i] > 0 and turn_ids[r, i] >= 0:
                out[r, i] = adv[r, turn_ids[r, i]]
    return out


@pytest.mark.parametrize("gamma,scale", [(1.0, "group"), (0.9, "group"), (0.5, "none")])
def test_turn_advantages_match_numpy(gamma, scale):
    rng = np.random.default_rng(0)
    turn_ids, policy, rewards, per_turn = _episodes(rng, 8, 16)
    np.testing.assert_allclose(per_turn_rewards(rewards, turn_ids), per_turn, atol=1e-6)
    got = turn_advantages(rewards, turn_ids, policy, 4, gamma=gamma, scale=scale)
    want = _reference(per_turn, turn_ids, policy, 4, gamma, scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    jitted = jax.jit(turn_advantages, static_argnums=3, static_argnames=("gamma", "scale"))
    np.testing.assert_allclose(
        jitted(rewards, turn_ids, policy, 4, gamma=gamma, scale=scale), want, atol=1e-5
    )


def test_terminal_reward_with_gamma_one_is_grpo_on_every_turn():
    rng = np.random.default_rng(1)
    turn_ids, policy, _, _ = _episodes(rng, 8, 16)
    episode = rng.normal(size=8).astype(np.float32)
    rewards = np.zeros_like(policy)
    last = np.array([np.flatnonzero(p)[-1] for p in policy])
    rewards[np.arange(8), last] = episode
    got = np.asarray(turn_advantages(rewards, turn_ids, policy, 4))
    grpo = np.asarray(group_advantages(episode, 4))
    np.testing.assert_allclose(got, grpo[:, None] * policy, rtol=1e-5, atol=1e-6)


def test_later_turns_get_only_later_rewards():
    r = np.array([[1.0, 2.0, 4.0]], np.float32)
    np.testing.assert_allclose(turn_returns(r, gamma=0.5), [[1 + 1 + 1.0, 2 + 2.0, 4.0]])


def test_bad_shapes_and_scale_fail():
    with pytest.raises(ValueError, match="must both be"):
        per_turn_rewards(np.zeros((2, 3)), np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match="scale"):
        turn_advantages(np.zeros((2, 3)), np.zeros((2, 3), np.int32), np.ones((2, 3)), 2, scale="b")
    with pytest.raises(ValueError, match="groups"):
        turn_advantages(np.zeros((3, 3)), np.zeros((3, 3), np.int32), np.ones((3, 3)), 2)
