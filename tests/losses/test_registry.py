"""Tests for jaxrl_llm.losses.registry: names, errors, parity with the functions, exact micro-batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.losses import advantages as A
from jaxrl_llm.losses import policy as P
from jaxrl_llm.losses import registry
from jaxrl_llm.losses.aggregation import global_counts

ADV_NAMES = [
    "gae",
    "grpo",
    "dr_grpo",
    "lite_ppo",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "psr",
    "nsr",
    "w_reinforce",
]
LOSS_NAMES = ["ppo_clip", "reinforce", "gspo", "cispo", "clip_cov", "kl_cov"]
AGG_NAMES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
G = 3


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    N, T = 6, 8
    lengths = np.array([8, 2, 5, 3, 7, 1])  # rows 0-2 hold 15 tokens, rows 3-5 hold 11
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    rewards = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], np.float32)
    logp = np.log(rng.uniform(0.05, 0.95, size=(N, T))).astype(np.float32)
    old = (logp + rng.normal(scale=0.3, size=(N, T))).astype(np.float32)
    return dict(
        mask=mask,
        rewards=rewards,
        logp=logp,
        old=old,
        values=rng.normal(size=(N, T)).astype(np.float32),
        token_rewards=np.asarray(
            A.to_token_rewards(rewards, mask, kl=rng.uniform(size=(N, T)), kl_coef=0.05)
        ),
        greedy=np.repeat(np.array([0.5, 1.0], np.float32), G),
        entropy=rng.uniform(0, 3, size=(N, T)).astype(np.float32),
    )


def test_names_are_the_contract():
    """The names INTERFACES.md promises are registered (new entries may follow them)."""
    assert list(registry.ADVANTAGES)[: len(ADV_NAMES)] == ADV_NAMES
    assert list(registry.POLICY_LOSSES)[: len(LOSS_NAMES)] == LOSS_NAMES
    assert list(registry.AGGREGATIONS) == AGG_NAMES


def test_entries_declare_what_they_need():
    adv, loss = registry.ADVANTAGES, registry.POLICY_LOSS_SPECS
    assert adv["gae"].needs_critic and not adv["grpo"].needs_critic
    assert adv["remax"].needs_greedy
    assert [n for n in ADV_NAMES if adv[n].min_group == 2] == [
        "grpo",
        "dr_grpo",
        "lite_ppo",
        "rloo",
        "reinforce_pp_baseline",
    ]
    assert dict(adv["w_reinforce"].hparams) == {"w_lambda": 0.1}
    assert not loss["reinforce"].ratio_based and loss["ppo_clip"].ratio_based
    assert [n for n in LOSS_NAMES if loss[n].batch_stats] == ["clip_cov", "kl_cov"]


def test_a_registered_name_cannot_be_taken_twice():
    from jaxrl_llm.losses.registration import register_advantage

    with pytest.raises(ValueError, match="registered twice"):
        register_advantage("grpo")(lambda **_: None)


def test_psr_nsr_follow_the_verifier_not_the_shaped_reward(batch):
    """A correct answer whose shaped reward fell below 0.5 (overlong penalty) is still correct."""
    shaped = np.array([0.3, 0.0, 1.0, 0.0, 0.0, 0.2], np.float32)  # rows 0, 5 penalised
    correct = np.array([1, 0, 1, 0, 0, 1], np.float32)
    for name, want_adv, want_w in (
        ("psr", [1, 0, 1, 0, 0, 1], [1, 0, 1, 0, 0, 1]),
        ("nsr", [0, -1, 0, -1, -1, 0], [0, 1, 0, 1, 1, 0]),
    ):
        adv, _, w = registry.compute_advantages(
            name, rewards=shaped, mask=batch["mask"], group_size=G, correct=correct
        )
        np.testing.assert_array_equal(np.asarray(adv)[:, 0], want_adv)
        np.testing.assert_array_equal(w, want_w)
        # without the verdict, rows 0 and 5 would count as wrong
        _, _, w_reward = registry.compute_advantages(
            name, rewards=shaped, mask=batch["mask"], group_size=G
        )
        assert not np.array_equal(w_reward, w)


def test_unknown_names_list_the_valid_ones(batch):
    with pytest.raises(ValueError, match="grpo, dr_grpo"):
        registry.compute_advantages(
            "gpro", rewards=batch["rewards"], mask=batch["mask"], group_size=G
        )
    with pytest.raises(ValueError, match="ppo_clip, reinforce, gspo"):
        registry.compute_policy_loss(
            "ppo", batch["logp"], batch["old"], batch["mask"], batch["mask"], agg="token-mean"
        )
    with pytest.raises(ValueError, match="token-mean, token-sum"):
        registry.compute_policy_loss(
            "ppo_clip", batch["logp"], batch["old"], batch["mask"], batch["mask"], agg="mean"
        )
    with pytest.raises(ValueError, match="advantage, policy_loss, aggregation"):
        registry.check("optimizer", "adamw")
    assert registry.check("aggregation", "token-sum") == "token-sum"


def _compute(name, b, **kw):
    return registry.compute_advantages(
        name,
        rewards=b["rewards"],
        mask=b["mask"],
        group_size=G,
        token_rewards=b["token_rewards"],
        values=b["values"],
        greedy_rewards=b["greedy"],
        gamma=0.9,
        lam=0.8,
        **kw,
    )


def test_compute_advantages_matches_the_functions(batch):
    b = batch
    m, r = b["mask"], b["rewards"]
    tok = functools.partial(A.to_tokens, mask=m)
    expected = {
        "gae": A.gae(b["token_rewards"], b["values"], m, gamma=0.9, lam=0.8)[0],
        "grpo": tok(A.group_advantages(r, G)),
        "dr_grpo": tok(A.group_advantages(r, G, scale="none")),
        "lite_ppo": tok(A.group_advantages(r, G, scale="batch")),
        "rloo": tok(A.rloo(r, G)),
        "reinforce_pp": A.reinforce_pp(b["token_rewards"], m, gamma=0.9),
        "reinforce_pp_baseline": A.reinforce_pp_baseline(r, G, m, token_rewards=b["token_rewards"]),
        "remax": tok(r - b["greedy"]),
        "psr": tok(A.psr_nsr(r, mode="psr")[0]),
        "nsr": tok(A.psr_nsr(r, mode="nsr")[0]),
        "w_reinforce": tok(A.psr_nsr(r, mode="w_reinforce", lam=0.1)[0]),
    }
    for name in ADV_NAMES:
        adv, ret, w = _compute(name, b)
        np.testing.assert_allclose(adv, expected[name], rtol=1e-6, atol=1e-6, err_msg=name)
        assert (
            adv.shape == m.shape
            and adv.dtype == jnp.float32
            and np.all(np.asarray(adv)[m == 0] == 0)
        )
        assert w.shape == (6,) and w.dtype == jnp.float32
        assert (ret is not None) == (name in ("gae", "reinforce_pp")), name
    np.testing.assert_array_equal(_compute("nsr", b)[2], 1.0 - r)
    np.testing.assert_array_equal(_compute("grpo", b)[2], np.ones(6))
    np.testing.assert_allclose(
        _compute("gae", b)[1], A.gae(b["token_rewards"], b["values"], m, gamma=0.9, lam=0.8)[1]
    )


def test_compute_advantages_options(batch):
    b = batch
    adv, _, _ = _compute("gae", b, whiten_advantages=True)
    np.testing.assert_allclose(
        adv, A.whiten(_compute("gae", b)[0], b["mask"]), rtol=1e-6, atol=1e-6
    )
    adv, _, _ = _compute("grpo", b, eps=1e-4, ddof=0)
    np.testing.assert_allclose(
        adv, A.to_tokens(A.group_advantages(b["rewards"], G, eps=1e-4, ddof=0), b["mask"])
    )
    adv, _, _ = _compute("w_reinforce", b, w_lambda=0.5)
    assert np.isclose(np.asarray(adv).max(), 0.5)
    # without token_rewards, REINFORCE++ builds them from the sequence rewards
    adv, _, _ = registry.compute_advantages(
        "reinforce_pp", rewards=b["rewards"], mask=b["mask"], group_size=G
    )
    np.testing.assert_allclose(
        adv, A.reinforce_pp(A.to_token_rewards(b["rewards"], b["mask"]), b["mask"])
    )


def test_missing_inputs_are_named(batch):
    b = batch
    with pytest.raises(ValueError, match="values"):
        registry.compute_advantages(
            "gae",
            rewards=b["rewards"],
            mask=b["mask"],
            group_size=G,
            token_rewards=b["token_rewards"],
        )
    with pytest.raises(ValueError, match="greedy_rewards"):
        registry.compute_advantages("remax", rewards=b["rewards"], mask=b["mask"], group_size=G)


# ------------------------------------------------------- exact micro-batching, end to end
CASES = [
    ("ppo_clip", "grpo", "token-mean", {}),
    ("ppo_clip", "nsr", "seq-mean-token-mean", {}),
    (
        "ppo_clip",
        "dr_grpo",
        "seq-mean-token-sum-norm",
        dict(entropy=True, forking_top_fraction=0.3),
    ),
    ("reinforce", "w_reinforce", "seq-mean-token-sum", {}),
    ("gspo", "grpo", "seq-mean-token-mean", {}),
    ("cispo", "rloo", "token-sum", {}),
    ("clip_cov", "grpo", "token-mean", dict(clip_ratio=0.1, cov_lb=0.0, cov_ub=10.0)),
    (
        "kl_cov",
        "grpo",
        "token-mean",
        dict(k_ratio=0.1, kl_coef=0.5, entropy=True, forking_top_fraction=0.5),
    ),
]


@pytest.mark.parametrize("loss_name, adv_name, agg, extra", CASES)
def test_microbatches_reproduce_the_minibatch(batch, loss_name, adv_name, agg, extra):
    """Advantages and loss statistics on the whole minibatch; two micro-batches of 15 and 11 tokens."""
    b = batch
    extra = dict(extra)
    if extra.pop("entropy", False):
        extra["entropy"] = b["entropy"]
    adv, _, w = _compute(adv_name, b)
    mask = b["mask"] * np.asarray(w)[:, None]
    n_tok, n_seq = global_counts(mask)
    key = jax.random.key(7)
    stats = registry.policy_loss_stats(loss_name, b["old"], adv, mask, key=key, **extra)
    stat_extra = {k: v for k, v in extra.items() if k != "entropy"}

    def loss_fn(logp, old, adv, mask, stats, entropy=None):
        ent = {} if entropy is None else {"entropy": entropy}
        return registry.compute_policy_loss(
            loss_name,
            logp,
            old,
            adv,
            mask,
            agg=agg,
            num_tokens=n_tok,
            num_seqs=n_seq,
            clip_low=0.2,
            clip_high=0.28,
            stats=stats,
            **stat_extra,
            **ent,
        )

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    ent = extra.get("entropy")
    (full, full_m), full_g = grad_fn(b["logp"], b["old"], adv, mask, stats, ent)
    split = registry.split_stats(stats, 2)
    outs = []
    for i, rows in enumerate((slice(0, 3), slice(3, 6))):
        micro_stats = jax.tree.map(lambda x, i=i: x[i], split)
        outs.append(
            grad_fn(
                b["logp"][rows],
                b["old"][rows],
                adv[rows],
                mask[rows],
                micro_stats,
                None if ent is None else ent[rows],
            )
        )
    np.testing.assert_allclose(outs[0][0][0] + outs[1][0][0], full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([outs[0][1], outs[1][1]]), full_g, rtol=1e-5, atol=1e-7
    )
    merged = registry.init_metrics(full_m)
    for rows, out in zip((slice(0, 3), slice(3, 6)), outs):
        merged = registry.merge_metrics(merged, out[0][1], weight=mask[rows].sum() / n_tok)
    assert merged.keys() == full_m.keys()
    for k in full_m:
        np.testing.assert_allclose(merged[k], full_m[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert np.abs(np.asarray(full_g)).max() > 0


def test_stats_contents(batch):
    b = batch
    adv = _compute("grpo", b)[0]
    assert registry.policy_loss_stats("ppo_clip", b["old"], adv, b["mask"]) == {}
    s = registry.policy_loss_stats(
        "ppo_clip", b["old"], adv, b["mask"], entropy=b["entropy"], forking_top_fraction=0.2
    )
    np.testing.assert_allclose(
        s["forking_threshold"], P.forking_threshold(b["entropy"], b["mask"], 0.2)
    )
    s = registry.policy_loss_stats("kl_cov", b["old"], adv, b["mask"], k_ratio=0.1, kl_coef=1.0)
    np.testing.assert_array_equal(
        s["select"], P.kl_cov_stats(b["old"], adv, b["mask"], k_ratio=0.1)["select"]
    )
    with pytest.raises(ValueError, match="key"):
        registry.policy_loss_stats("clip_cov", b["old"], adv, b["mask"])
    split = registry.split_stats(
        {"select": jnp.zeros((6, 8)), "forking_threshold": jnp.array(1.5)}, 3
    )
    assert split["select"].shape == (3, 2, 8) and split["forking_threshold"].shape == (3,)
    with pytest.raises(ValueError, match="cannot split"):
        registry.split_stats({"select": jnp.zeros((6, 8))}, 4)


def test_forking_tokens_restrict_the_gradient(batch):
    b = batch
    adv = _compute("grpo", b)[0]
    keep = np.asarray(P.forking_token_mask(b["entropy"], b["mask"], 0.2))
    f = lambda lp, **kw: registry.compute_policy_loss(
        "reinforce",
        lp,
        None,
        adv,
        b["mask"],
        agg="token-mean",  # noqa
        **kw,
    )[0]
    g = np.asarray(
        jax.grad(functools.partial(f, entropy=b["entropy"], forking_top_fraction=0.2))(b["logp"])
    )
    g_all = np.asarray(jax.grad(f)(b["logp"]))
    np.testing.assert_allclose(g, g_all * keep, rtol=1e-6, atol=1e-8)
    assert 0 < keep.sum() < b["mask"].sum()
    # an explicit pg_mask combines with the forking mask
    first = np.zeros_like(keep)
    first[:, 0] = 1.0
    g2 = np.asarray(
        jax.grad(
            functools.partial(f, entropy=b["entropy"], forking_top_fraction=0.2, pg_mask=first)
        )(b["logp"])
    )
    np.testing.assert_allclose(g2, g_all * keep * first, rtol=1e-6, atol=1e-8)


def test_loss_options_are_routed(batch):
    b = batch
    adv = _compute("grpo", b)[0]
    args = (b["logp"], b["old"], adv, b["mask"])
    loss = functools.partial(registry.compute_policy_loss, agg="token-mean")
    # None keeps each loss's own default clip range (GSPO: the paper's 3e-4 / 4e-4)
    np.testing.assert_allclose(loss("gspo", *args)[0], P.gspo(*args, agg="token-mean")[0])
    np.testing.assert_allclose(
        loss("ppo_clip", *args, clip_high=0.28, dual_clip=3.0, log_ratio_clamp=20.0)[0],
        P.ppo_clip(*args, clip_high=0.28, dual_clip=3.0, log_ratio_clamp=20.0)[0],
    )
    np.testing.assert_allclose(
        loss("reinforce", *args, clip_low=0.2, clip_high=0.2)[0], P.reinforce(*args)[0]
    )
    with pytest.raises(ValueError, match="no dual clip"):
        loss("reinforce", *args, dual_clip=3.0)
    with pytest.raises(ValueError, match="unknown options"):
        loss("ppo_clip", *args, k_ratio=0.1)
    jitted = jax.jit(
        functools.partial(registry.compute_policy_loss, "ppo_clip", agg="seq-mean-token-mean")
    )
    np.testing.assert_allclose(
        jitted(*args)[0], loss("ppo_clip", *args, agg="seq-mean-token-mean")[0], rtol=1e-6
    )
