"""Online DPO as an advantage estimator: pair selection by hand, and the identity that makes it
DPO — the policy gradient of its advantages (reinforce, seq-mean-token-sum, its sample weights)
equals the gradient of the (c)DPO loss of `losses.preference.dpo` on the selected pairs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.losses import aggregation, online_dpo, policy, preference, registry


def test_select_pairs_by_hand():
    rewards = jnp.array([0.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.2, 0.2, -1.0, 3.0, 3.0, 0.0])
    chosen, rejected, valid = online_dpo.select_pairs(rewards, 3)
    np.testing.assert_array_equal(chosen, [1, 3, 6, 9])  # first of the ties
    np.testing.assert_array_equal(rejected, [0, 3, 8, 11])
    np.testing.assert_array_equal(valid, [True, False, True, True])


def test_weights_and_unpaired_rows():
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    seq = jnp.array([-3.0, -2.0, -1.0, -4.0, -2.0, -5.0, -1.0, -1.0])
    ref = jnp.array([-2.0, -2.5, -1.0, -4.0, -2.5, -4.0, -1.0, -1.0])
    adv, weight = online_dpo.online_dpo(rewards, seq, ref, 2, beta=0.5)
    # group 0: chosen 0 (delta -1), rejected 1 (delta 0.5): h = -1.5
    w0 = 0.5 / (1 + np.exp(-0.5 * 1.5))  # beta * sigmoid(-beta h)
    # group 2: chosen 5 (delta -1), rejected 4 (delta 0.5)
    np.testing.assert_allclose(adv, [2 * w0, -2 * w0, 0, 0, -2 * w0, 2 * w0, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(weight, [1, 1, 0, 0, 1, 1, 0, 0])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("group_size", [2, 4])
def test_policy_gradient_equals_the_dpo_gradient(label_smoothing, group_size):
    rng = np.random.default_rng(group_size)
    n, t, vocab, beta = 8 * group_size, 5, 7, 0.3
    tokens = jnp.asarray(rng.integers(0, vocab, (n, t)))
    lengths = rng.integers(1, t + 1, n)
    mask = jnp.asarray(np.arange(t)[None] < lengths[:, None], jnp.float32)
    rewards = jnp.asarray(rng.integers(0, 3, n).astype(np.float32))
    rewards = rewards.at[:group_size].set(1.0)  # one group without a pair
    ref_logits = jnp.asarray(rng.normal(size=(n, t, vocab)), jnp.float32)
    theta = jnp.asarray(rng.normal(size=(n, t, vocab)), jnp.float32)

    def token_logp(th):
        lp = jax.nn.log_softmax(th, axis=-1)
        return jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0] * mask

    ref_logp = token_logp(ref_logits)
    old_logp = token_logp(theta)
    adv, _, weight = registry.compute_advantages(
        "online_dpo",
        rewards=rewards,
        mask=mask,
        group_size=group_size,
        old_logp=old_logp,
        ref_logp=ref_logp,
        dpo_beta=beta,
        dpo_label_smoothing=label_smoothing,
    )
    loss_mask = mask * weight[:, None]

    def rl_loss(th):
        loss, _ = policy.reinforce(
            token_logp(th), old_logp, adv, loss_mask, agg="seq-mean-token-sum"
        )
        return loss

    chosen, rejected, valid = online_dpo.select_pairs(rewards, group_size)
    assert 0 < int(valid.sum()) < n // group_size

    def dpo_loss(th):
        seq = jnp.sum(token_logp(th), axis=1)
        ref = jnp.sum(ref_logp, axis=1)
        loss, _ = preference.dpo(
            seq[chosen],
            seq[rejected],
            ref[chosen],
            ref[rejected],
            beta=beta,
            label_smoothing=label_smoothing,
            mask=valid,
        )
        return loss

    g_rl, g_dpo = jax.grad(rl_loss)(theta), jax.grad(dpo_loss)(theta)
    assert float(jnp.abs(g_dpo).max()) > 1e-3
    np.testing.assert_allclose(g_rl, g_dpo, atol=1e-6)
    # the normaliser is the 2P rows of weight 1
    assert float(aggregation.global_counts(loss_mask)[1]) == 2 * int(valid.sum())


def test_needs_logps():
    with pytest.raises(ValueError, match="needs `old_logp` and `ref_logp`"):
        registry.compute_advantages(
            "online_dpo", rewards=jnp.zeros(4), mask=jnp.ones((4, 3)), group_size=2
        )
