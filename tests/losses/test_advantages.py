"""Tests for jaxrl_llm.losses.advantages: hand values, frozen numpy references, identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl_llm.losses import advantages as A


# ---------------------------------------------------------------------- numpy references
def np_gae(r, v, m, gamma, lam, masked="carry"):
    """Textbook backward loop. carry: skip masked steps; zero: zero them and run through."""
    r, v, m = (np.asarray(a, np.float64) for a in (r, v, m))
    adv = np.zeros_like(r)
    for i in range(r.shape[0]):
        next_v, next_a = 0.0, 0.0
        for t in reversed(range(r.shape[1])):
            valid = m[i, t] > 0
            if masked == "zero":
                rt, vt = (r[i, t], v[i, t]) if valid else (0.0, 0.0)
                a = rt + gamma * next_v - vt + gamma * lam * next_a
                next_v, next_a = vt, a
            elif valid:
                a = r[i, t] + gamma * next_v - v[i, t] + gamma * lam * next_a
                next_v, next_a = v[i, t], a
            else:
                continue
            if valid:
                adv[i, t] = a
    ret = np.where(m > 0, adv + v, 0.0)
    return adv, ret


def np_whiten(x, m, ddof=1, eps=1e-8, mode="add"):
    vals = np.asarray(x, np.float64)[np.asarray(m) > 0]
    mean = vals.mean()
    var = ((vals - mean) ** 2).sum() / (len(vals) - ddof)
    scale = 1 / np.sqrt(var + eps if mode == "add" else max(var, eps))
    return np.where(np.asarray(m) > 0, (np.asarray(x) - mean) * scale, 0.0)


def np_group(r, G, scale, eps, ddof):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    batch_std = r.std(ddof=ddof)
    for start in range(0, len(r), G):
        g = r[start : start + G]
        std = g.std(ddof=ddof) if scale == "group" else batch_std
        out[start : start + G] = (g - g.mean()) / (std + eps) if scale != "none" else g - g.mean()
    return out


def np_rloo(r, G):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    for start in range(0, len(r), G):
        for i in range(start, start + G):
            others = [r[j] for j in range(start, start + G) if j != i]
            out[i] = r[i] - sum(others) / len(others)
    return out


def np_discounted(r, m, gamma):
    r, m = np.asarray(r, np.float64), np.asarray(m)
    out = np.zeros_like(r)
    for i in range(r.shape[0]):
        running = 0.0
        for t in reversed(range(r.shape[1])):
            if m[i, t] > 0:
                running = r[i, t] + gamma * running
                out[i, t] = running
    return out


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(1)
    N, T = 4, 6
    lengths = np.array([6, 3, 5, 1])
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    holes = mask.copy()
    holes[0, 2] = holes[0, 3] = 0.0  # observation tokens inside a multi-turn rollout
    holes[2, 1] = 0.0
    return dict(
        r=rng.normal(size=(N, T)).astype(np.float32),
        v=rng.normal(size=(N, T)).astype(np.float32),
        mask=mask,
        holes=holes,
    )


# ------------------------------------------------------------------------------- GAE
def test_gae_hand_computed():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 0.9, λ = 0.8
    # δ2 = 1 − 0.7 = 0.3;  δ1 = 0.9·0.7 − 0.6 = 0.03;  δ0 = 0.9·0.6 − 0.5 = 0.04
    # A2 = 0.3;  A1 = 0.03 + 0.72·0.3 = 0.246;  A0 = 0.04 + 0.72·0.246 = 0.21712
    adv, ret = A.gae(
        jnp.array([[0.0, 0.0, 1.0]]),
        jnp.array([[0.5, 0.6, 0.7]]),
        jnp.ones((1, 3)),
        gamma=0.9,
        lam=0.8,
    )
    np.testing.assert_allclose(adv, [[0.21712, 0.246, 0.3]], rtol=1e-5)
    np.testing.assert_allclose(ret, [[0.71712, 0.846, 1.0]], rtol=1e-5)


@pytest.mark.parametrize("masked", ["carry", "zero"])
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.7)])
def test_gae_matches_numpy_reference(tok, masked, gamma, lam):
    adv, ret = A.gae(tok["r"], tok["v"], tok["holes"], gamma=gamma, lam=lam, masked=masked)
    ref_adv, ref_ret = np_gae(tok["r"], tok["v"], tok["holes"], gamma, lam, masked)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_conventions_agree_on_right_padding_only(tok):
    a = A.gae(tok["r"], tok["v"], tok["mask"], gamma=0.9, lam=0.8, masked="carry")[0]
    b = A.gae(tok["r"], tok["v"], tok["mask"], gamma=0.9, lam=0.8, masked="zero")[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    a = A.gae(tok["r"], tok["v"], tok["holes"], gamma=0.9, lam=0.8, masked="carry")[0]
    b = A.gae(tok["r"], tok["v"], tok["holes"], gamma=0.9, lam=0.8, masked="zero")[0]
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_gae_gamma_lambda_one_is_monte_carlo_minus_value(tok):
    r, v, m = tok["r"], tok["v"], tok["holes"]
    adv, ret = A.gae(r, v, m, gamma=1.0, lam=1.0)
    mc = np_discounted(r, m, 1.0)  # reward-to-go over valid tokens
    np.testing.assert_allclose(adv, np.where(m > 0, mc - v, 0.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, mc, rtol=1e-5, atol=1e-5)


def test_gae_masked_call_equals_call_on_kept_tokens(tok):
    r, v, m = tok["r"], tok["v"], tok["holes"]
    adv = np.asarray(A.gae(r, v, m, gamma=0.9, lam=0.8)[0])
    for i in range(len(r)):
        keep = m[i] > 0
        kept = A.gae(
            r[i : i + 1, keep], v[i : i + 1, keep], np.ones((1, keep.sum())), gamma=0.9, lam=0.8
        )[0]
        np.testing.assert_allclose(adv[i, keep], kept[0], rtol=1e-5, atol=1e-6)
        assert np.all(adv[i, ~keep] == 0)


def test_gae_jit_vmap_bf16_and_grads(tok):
    r, v, m = tok["r"], tok["v"], tok["holes"]
    f = lambda r, v: A.gae(r, v, m, gamma=0.9, lam=0.8)[0]  # noqa: E731
    eager = f(r, v)
    np.testing.assert_allclose(jax.jit(f)(r, v), eager, rtol=1e-6, atol=1e-6)
    stacked = jax.jit(jax.vmap(f))(np.stack([r, 2 * r]), np.stack([v, v]))
    np.testing.assert_allclose(stacked[1], f(2 * r, v), rtol=1e-5, atol=1e-6)
    out = f(jnp.asarray(r, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, eager, atol=5e-2)
    check_grads(
        jax.jit(f),
        (jnp.asarray(r), jnp.asarray(v)),
        order=1,
        modes=["rev"],
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )


def test_discounted_returns(tok):
    np.testing.assert_allclose(
        A.discounted_returns(
            jnp.array([[1.0, 2.0, 3.0, 9.0]]), jnp.array([[1, 0, 1, 0]]), gamma=0.5
        ),
        [[1 + 0.5 * 3, 0.0, 3.0, 0.0]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        A.discounted_returns(tok["r"], tok["holes"], gamma=0.9),
        np_discounted(tok["r"], tok["holes"], 0.9),
        rtol=1e-5,
        atol=1e-5,
    )


# --------------------------------------------------------------------------- whitening
def test_whiten_hand_and_reference(tok):
    x = jnp.array([[1.0, 3.0, 100.0]])
    m = jnp.array([[1.0, 1.0, 0.0]])
    # mean 2, unbiased var 2 -> (x - 2)/sqrt(2)
    np.testing.assert_allclose(
        A.whiten(x, m, eps=0.0), [[-1 / np.sqrt(2), 1 / np.sqrt(2), 0.0]], rtol=1e-6
    )
    np.testing.assert_allclose(
        A.whiten(x, m, eps=0.0, shift_mean=False),
        [[2 - 1 / np.sqrt(2), 2 + 1 / np.sqrt(2), 0.0]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        A.whiten(tok["r"], tok["holes"]), np_whiten(tok["r"], tok["holes"]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        A.whiten(tok["r"], tok["holes"], ddof=0, eps_mode="max"),
        np_whiten(tok["r"], tok["holes"], ddof=0, mode="max"),
        rtol=1e-5,
        atol=1e-6,
    )
    check_grads(
        jax.jit(lambda y: A.whiten(y, tok["holes"])),
        (jnp.asarray(tok["r"]),),
        order=1,
        modes=["rev"],
        eps=1e-2,
        atol=2e-2,
        rtol=2e-2,
    )


# ----------------------------------------------------------------- sequence-level estimators
REWARDS = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0], np.float32)


def test_group_advantages_hand():
    # group [1, 0, 1, 1]: mean 0.75, unbiased std 0.5 -> [0.5, -1.5, 0.5, 0.5]
    out = A.group_advantages(jnp.array([1.0, 0.0, 1.0, 1.0]), 4, eps=0.0)
    np.testing.assert_allclose(out, [0.5, -1.5, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(
        A.group_advantages(jnp.array([1.0, 0.0, 1.0, 1.0]), 4, scale="none"),
        [0.25, -0.75, 0.25, 0.25],
        rtol=1e-6,
    )
    # equal rewards -> exactly 0 (no NaN)
    np.testing.assert_array_equal(A.group_advantages(jnp.full((4,), 0.5), 4), np.zeros(4))
    # a group of one (verl): mu 0, std 1
    np.testing.assert_allclose(
        A.group_advantages(jnp.array([0.3, 2.0]), 1, eps=0.0), [0.3, 2.0], rtol=1e-6
    )


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps, ddof", [(1e-6, 1), (1e-4, 1), (1e-9, 0)])
def test_group_advantages_reference(scale, eps, ddof):
    np.testing.assert_allclose(
        A.group_advantages(REWARDS, 4, scale=scale, eps=eps, ddof=ddof),
        np_group(REWARDS, 4, scale, eps, ddof),
        rtol=1e-5,
        atol=1e-6,
    )


def test_group_advantages_jit_bf16_grads():
    f = lambda r: A.group_advantages(r, 4)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(REWARDS), f(REWARDS), rtol=1e-6)
    stacked = jax.jit(jax.vmap(f))(np.stack([REWARDS, -REWARDS]))
    np.testing.assert_allclose(stacked[1], f(-REWARDS), rtol=1e-6, atol=1e-6)
    out = f(jnp.asarray(REWARDS, jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, f(REWARDS), atol=2e-2)
    r = jnp.asarray(REWARDS).at[4].add(0.3)  # no zero-variance group (not smooth there)
    check_grads(jax.jit(f), (r,), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_rloo_reference_and_identity():
    np.testing.assert_allclose(A.rloo(REWARDS, 4), np_rloo(REWARDS, 4), rtol=1e-5, atol=1e-6)
    G = 4
    centred = A.group_advantages(REWARDS, G, scale="none")
    np.testing.assert_allclose(A.rloo(REWARDS, G), centred * G / (G - 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(A.rloo(jnp.array([1.0, 0.0]), 2), [1.0, -1.0])
    with pytest.raises(ValueError, match="group_size >= 2"):
        A.rloo(REWARDS, 1)


def test_group_shape_errors():
    with pytest.raises(ValueError, match="multiple of group_size"):
        A.group_advantages(REWARDS, 5)
    with pytest.raises(ValueError, match="scale must be"):
        A.group_advantages(REWARDS, 4, scale="std")
    with pytest.raises(ValueError, match=r"\[N\]"):
        A.group_advantages(REWARDS.reshape(3, 4), 4)


def test_remax():
    np.testing.assert_allclose(
        A.remax(jnp.array([1.0, 0.0, 2.0]), jnp.array([0.5, 0.5, 2.0])), [0.5, -0.5, 0.0]
    )
    with pytest.raises(ValueError):
        A.remax(jnp.ones(3), jnp.ones(2))


# ----------------------------------------------------------------------------- REINFORCE++
def test_reinforce_pp_reference(tok):
    r, m = tok["r"], tok["holes"]
    ref = np_whiten(np_discounted(r, m, 0.95), m)
    np.testing.assert_allclose(A.reinforce_pp(r, m, gamma=0.95), ref, rtol=1e-5, atol=1e-5)
    ref = np_whiten(np_discounted(r, m, 1.0), m, ddof=0, mode="max")  # OpenRLHF's whitening
    np.testing.assert_allclose(
        A.reinforce_pp(r, m, gamma=1.0, ddof=0, eps_mode="max"), ref, rtol=1e-5, atol=1e-5
    )


def test_reinforce_pp_baseline_reference():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], np.float32)
    lengths = np.array([3, 2, 4, 1, 4, 2])
    m = (np.arange(4)[None] < lengths[:, None]).astype(np.float32)
    # group mean subtracted, every valid token carries r - mu, whitened over all valid tokens
    centred = rewards - np.repeat(rewards.reshape(-1, 3).mean(1), 3)
    ref = np_whiten(np.where(m > 0, centred[:, None], 0.0), m)
    np.testing.assert_allclose(A.reinforce_pp_baseline(rewards, 3, m), ref, rtol=1e-5, atol=1e-6)
    # with a per-token KL penalty in the token rewards (OpenRLHF order: baseline first, then KL)
    kl = np.random.default_rng(2).uniform(size=m.shape).astype(np.float32)
    token_rewards = A.to_token_rewards(rewards, m, kl=kl, kl_coef=0.1)
    shaped = np.asarray(A.to_token_rewards(centred, m, kl=kl, kl_coef=0.1))
    ref = np_whiten(np_discounted(shaped, m, 1.0), m)
    np.testing.assert_allclose(
        A.reinforce_pp_baseline(rewards, 3, m, token_rewards=token_rewards),
        ref,
        rtol=1e-5,
        atol=1e-5,
    )


# --------------------------------------------------------------------------- PSR / NSR
def test_psr_nsr_hand():
    r = jnp.array([1.0, 0.0, 1.0, 0.0])
    adv, w = A.psr_nsr(r, mode="psr")
    np.testing.assert_array_equal(adv, [1, 0, 1, 0])
    np.testing.assert_array_equal(w, [1, 0, 1, 0])
    adv, w = A.psr_nsr(r, mode="nsr")
    np.testing.assert_array_equal(adv, [0, -1, 0, -1])
    np.testing.assert_array_equal(w, [0, 1, 0, 1])
    adv, w = A.psr_nsr(r, mode="w_reinforce", lam=0.1)
    np.testing.assert_allclose(adv, [0.1, -1, 0.1, -1], rtol=1e-6)
    np.testing.assert_array_equal(w, [1, 1, 1, 1])
    adv, _ = A.psr_nsr(jnp.array([1.0, -1.0]), mode="w_reinforce", lam=0.5)  # {-1, 1} rewards
    np.testing.assert_allclose(adv, [0.5, -1.0])
    assert w.dtype == jnp.float32
    with pytest.raises(ValueError, match="'psr', 'nsr' or 'w_reinforce'"):
        A.psr_nsr(r, mode="pos")


# ------------------------------------------------------------------------------ helpers
def test_to_tokens_and_token_rewards():
    m = jnp.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(
        A.to_tokens(jnp.array([2.0, -1.0, 5.0]), m), [[2, 2, 0, 0], [-1, 0, -1, 0], [0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(A.last_token_index(m), [1, 2, 0])
    np.testing.assert_array_equal(
        A.to_token_rewards(jnp.array([2.0, -1.0, 5.0]), m),
        [[0, 2, 0, 0], [0, 0, -1, 0], [0, 0, 0, 0]],
    )
    kl = jnp.full((3, 4), 2.0)
    np.testing.assert_allclose(
        A.to_token_rewards(jnp.array([2.0, -1.0, 5.0]), m, kl=kl, kl_coef=0.25),
        [[-0.5, 1.5, 0, 0], [-0.5, 0, -1.5, 0], [0, 0, 0, 0]],
    )
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        A.to_tokens(jnp.ones(2), m)


def test_whiten_degenerate_masks_are_finite():
    x = jnp.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(A.whiten(x, jnp.zeros((1, 3))), np.zeros((1, 3)))
    np.testing.assert_array_equal(A.whiten(x, jnp.array([[0.0, 1.0, 0.0]])), np.zeros((1, 3)))
    g = jax.grad(lambda y: A.whiten(y, jnp.array([[0.0, 1.0, 0.0]])).sum())(x)
    assert np.all(np.isfinite(g))


def test_reinforce_pp_hand():
    # γ = 1: returns [1, 3] (= -2 + 3, 3); mean 2, unbiased var 2 -> ±1/√2
    out = A.reinforce_pp(jnp.array([[-2.0, 3.0, 7.0]]), jnp.array([[1, 1, 0]]), gamma=1.0, eps=0.0)
    np.testing.assert_allclose(out, [[-1 / np.sqrt(2), 1 / np.sqrt(2), 0.0]], rtol=1e-6)


def test_reinforce_pp_baseline_hand():
    # group [1, 0] -> centred [0.5, -0.5]; tokens [0.5, 0.5 | -0.5]; mean 1/6, unbiased var 1/3
    out = A.reinforce_pp_baseline(jnp.array([1.0, 0.0]), 2, jnp.array([[1, 1], [1, 0]]), eps=0.0)
    s = np.sqrt(3.0)
    np.testing.assert_allclose(out, [[1 / s, 1 / s], [-2 / s, 0.0]], rtol=1e-5)
