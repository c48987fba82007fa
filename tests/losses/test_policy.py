"""Tests for jaxrl_llm.losses.policy: hand values, numpy references (PPO clip, GSPO), gradient identities."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl_llm.losses import advantages as A
from jaxrl_llm.losses import policy as P
from jaxrl_llm.losses.aggregation import MODES, global_counts


# ---------------------------------------------------------------------- numpy references
def np_token_mean(x, m):
    return (
        sum(x[i, t] * m[i, t] for i in range(x.shape[0]) for t in range(x.shape[1]) if m[i, t])
        / m.sum()
    )


def np_seq_mean_token_mean(x, m):
    rows = [
        sum(x[i, t] for t in range(x.shape[1]) if m[i, t]) / m[i].sum()
        for i in range(x.shape[0])
        if m[i].sum()
    ]
    return sum(rows) / len(rows)


def np_ppo_clip(logp, old, adv, m, eps_low, eps_high, dual=None):
    """Per-token PPO surrogate written out case by case; returns (token-mean loss, clip_low, clip_high)."""
    loss = np.zeros_like(logp, dtype=np.float64)
    low = np.zeros_like(loss)
    high = np.zeros_like(loss)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            r = np.exp(float(logp[i, t]) - float(old[i, t]))
            a = float(adv[i, t])
            l1, l2 = -a * r, -a * min(max(r, 1 - eps_low), 1 + eps_high)
            loss[i, t] = max(l1, l2)
            if dual is not None and a < 0:
                loss[i, t] = min(loss[i, t], -a * dual)
            high[i, t] = a > 0 and r > 1 + eps_high
            low[i, t] = a < 0 and r < 1 - eps_low
    return np_token_mean(loss, m), np_token_mean(low, m), np_token_mean(high, m)


def np_gspo(logp, old, adv, m, eps_low, eps_high):
    """Sequence-level GSPO objective (seq-mean over sequences), advantages constant per sequence."""
    per_seq = []
    for i in range(logp.shape[0]):
        valid = m[i] > 0
        if not valid.any():
            continue
        s = np.exp(np.mean(np.asarray(logp[i][valid], np.float64) - old[i][valid]))
        a = float(adv[i][valid][0])
        per_seq.append(max(-a * s, -a * min(max(s, 1 - eps_low), 1 + eps_high)))
    return np.mean(per_seq)


def gspo_sequence_objective(logp, old, adv, m, eps_low, eps_high):
    """The paper's sequence-level form in jax (gradient through s_i), for the gradient identity."""
    valid = m > 0
    n = valid.sum(-1)
    s = jnp.exp(jnp.sum(jnp.where(valid, logp - old, 0.0), -1) / n)
    a = adv[:, 0]
    per_seq = jnp.maximum(-a * s, -a * jnp.clip(s, 1 - eps_low, 1 + eps_high))
    return jnp.mean(per_seq)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    N, T = 6, 5
    lengths = np.array([5, 2, 4, 3, 5, 1])
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    logp = np.log(rng.uniform(0.05, 0.95, size=(N, T))).astype(np.float32)
    old = (logp + rng.normal(scale=0.3, size=(N, T))).astype(np.float32)
    rewards = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], np.float32)
    seq_adv = np.array([1.0, -0.5, 2.0, -1.5, -0.7, 0.3], np.float32)
    adv = np.asarray(A.to_tokens(seq_adv, mask))
    return dict(logp=logp, old=old, adv=adv, mask=mask, rewards=rewards)


# ------------------------------------------------------------------------------ PPO clip
def test_ppo_clip_hand_values():
    one = jnp.ones((1, 1))

    def loss(ratio, adv, **kw):
        return P.ppo_clip(jnp.log(ratio) * one, 0.0 * one, adv * one, one, **kw)

    np.testing.assert_allclose(loss(1.5, 1.0)[0], -1.2, rtol=1e-6)  # clipped at 1 + 0.2
    np.testing.assert_allclose(loss(0.5, 1.0)[0], -0.5, rtol=1e-6)  # pessimistic: unclipped
    np.testing.assert_allclose(loss(0.5, -1.0)[0], 0.8, rtol=1e-6)  # clipped at 1 - 0.2
    np.testing.assert_allclose(loss(1.5, 1.0, clip_high=0.28)[0], -1.28, rtol=1e-6)  # clip-higher
    np.testing.assert_allclose(loss(5.0, -1.0)[0], 5.0, rtol=1e-6)
    np.testing.assert_allclose(
        loss(5.0, -1.0, dual_clip=3.0)[0], 3.0, rtol=1e-6
    )  # dual clip caps it
    m = loss(1.5, 1.0)[1]
    assert float(m["clip_frac_high"]) == 1.0 and float(m["clip_frac_low"]) == 0.0
    np.testing.assert_allclose(m["ratio_mean"], 1.5, rtol=1e-6)
    np.testing.assert_allclose(m["approx_kl"], 0.5 - np.log(1.5), rtol=1e-5)  # k3: r - 1 - log r
    assert float(loss(5.0, -1.0, dual_clip=3.0)[1]["dual_clip_frac"]) == 1.0
    assert float(loss(0.5, -1.0)[1]["clip_frac_low"]) == 1.0


@pytest.mark.parametrize(
    "eps_low, eps_high, dual", [(0.2, 0.2, None), (0.2, 0.28, None), (0.1, 0.3, 1.5)]
)
def test_ppo_clip_matches_numpy_reference(batch, eps_low, eps_high, dual):
    b = batch
    loss, metrics = P.ppo_clip(
        b["logp"],
        b["old"],
        b["adv"],
        b["mask"],
        clip_low=eps_low,
        clip_high=eps_high,
        dual_clip=dual,
    )
    ref, low, high = np_ppo_clip(b["logp"], b["old"], b["adv"], b["mask"], eps_low, eps_high, dual)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_frac_low"], low, rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_frac_high"], high, rtol=1e-6)
    assert 0 < low + high < 1  # the data exercises both clipped and unclipped tokens
    assert set(metrics) == set(P.METRIC_KEYS)


@pytest.mark.parametrize("agg", MODES)
def test_on_policy_ppo_clip_has_reinforce_gradient(batch, agg):
    b = batch
    kw = dict(agg=agg)
    g_ppo = jax.grad(
        lambda lp: P.ppo_clip(lp, b["logp"], b["adv"], b["mask"], dual_clip=2.0, **kw)[0]
    )(b["logp"])
    g_pg = jax.grad(lambda lp: P.reinforce(lp, b["logp"], b["adv"], b["mask"], **kw)[0])(b["logp"])
    np.testing.assert_allclose(g_ppo, g_pg, rtol=1e-6, atol=1e-7)
    assert np.abs(np.asarray(g_pg)).max() > 0


def test_reinforce_hand_value_and_metrics():
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    loss, metrics = P.reinforce(logp, None, jnp.array([[2.0, 2.0]]), jnp.array([[1.0, 1.0]]))
    np.testing.assert_allclose(loss, -2.0 * (np.log(0.5) + np.log(0.25)) / 2, rtol=1e-6)
    assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["approx_kl"]) == 0.0


# ------------------------------------------------------------------------------- PSR / NSR
def _grad_rows(adv_seq, weight, b, num_tokens=None, agg="token-mean"):
    adv = A.to_tokens(adv_seq, b["mask"])
    mask = b["mask"] * np.asarray(weight)[:, None]
    f = lambda lp: P.ppo_clip(
        lp,
        b["logp"],
        adv,
        mask,
        agg=agg,
        num_tokens=num_tokens,  # noqa: E731
        num_seqs=None if num_tokens is None else len(mask),
    )[0]
    return np.asarray(jax.grad(f)(b["logp"]))


def test_nsr_and_psr_zero_gradient_on_left_out_samples(batch):
    correct = batch["rewards"] > 0.5
    g_nsr = _grad_rows(*A.psr_nsr(batch["rewards"], mode="nsr"), batch)
    assert np.all(g_nsr[correct] == 0.0) and np.abs(g_nsr[~correct]).max() > 0
    g_psr = _grad_rows(*A.psr_nsr(batch["rewards"], mode="psr"), batch)
    assert np.all(g_psr[~correct] == 0.0) and np.abs(g_psr[correct]).max() > 0


def test_psr_normaliser_counts_only_kept_samples(batch):
    """Left-out samples leave the normaliser: PSR's token-mean is over correct samples' tokens only."""
    b = batch
    adv, w = A.psr_nsr(b["rewards"], mode="psr")
    mask = b["mask"] * np.asarray(w)[:, None]
    loss, _ = P.reinforce(b["logp"], None, A.to_tokens(adv, b["mask"]), mask)
    keep = b["rewards"] > 0.5
    expected = -b["logp"][keep][b["mask"][keep] > 0].mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_w_reinforce_gradient_is_lambda_psr_plus_nsr(batch, agg):
    lam = 0.1
    n_tok, n_seq = global_counts(batch["mask"])
    kw = dict(agg=agg)
    num = n_tok if agg == "token-mean" else None

    def grad(mode):
        adv, w = A.psr_nsr(batch["rewards"], mode=mode, lam=lam)
        advt = A.to_tokens(adv, batch["mask"])
        mask = batch["mask"] * np.asarray(w)[:, None]
        f = lambda lp: P.ppo_clip(
            lp, batch["logp"], advt, mask, num_tokens=num, num_seqs=n_seq, **kw
        )[0]  # noqa
        return np.asarray(jax.grad(f)(batch["logp"]))

    np.testing.assert_allclose(
        grad("w_reinforce"), lam * grad("psr") + grad("nsr"), rtol=1e-5, atol=1e-7
    )


# ------------------------------------------------------------------------------------ GSPO
def test_gspo_matches_numpy_reference(batch):
    b = batch
    for eps in [(3e-4, 4e-4), (0.2, 0.2)]:
        loss, metrics = P.gspo(
            b["logp"], b["old"], b["adv"], b["mask"], clip_low=eps[0], clip_high=eps[1]
        )
        np.testing.assert_allclose(
            loss, np_gspo(b["logp"], b["old"], b["adv"], b["mask"], *eps), rtol=1e-5
        )
    assert set(metrics) == set(P.METRIC_KEYS)


def test_gspo_hand_value():
    # one sequence of two tokens, log-ratios 0.2 and 0.0: s = exp(0.1); A = 1; eps 0.2 -> unclipped
    logp = jnp.array([[0.2, 0.0]])
    loss, m = P.gspo(
        logp, jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.ones((1, 2)), clip_low=0.2, clip_high=0.2
    )
    np.testing.assert_allclose(loss, -np.exp(0.1), rtol=1e-6)
    np.testing.assert_allclose(m["ratio_max"], np.exp(0.1), rtol=1e-6)


@pytest.mark.parametrize("eps", [(0.2, 0.2), (3e-4, 4e-4)])
def test_gspo_gradient_is_sequence_level_gradient(batch, eps):
    b = batch
    g_token = jax.grad(
        lambda lp: P.gspo(lp, b["old"], b["adv"], b["mask"], clip_low=eps[0], clip_high=eps[1])[0]
    )
    g_seq = jax.grad(lambda lp: gspo_sequence_objective(lp, b["old"], b["adv"], b["mask"], *eps))
    np.testing.assert_allclose(g_token(b["logp"]), g_seq(b["logp"]), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------ CISPO
def test_cispo_gradient_is_clipped_detached_weight(batch):
    b = batch
    loss_fn = lambda lp: P.cispo(lp, b["old"], b["adv"], b["mask"], clip_low=0.1, clip_high=0.2)[0]  # noqa
    g = np.asarray(jax.grad(loss_fn)(b["logp"]))
    w = np.clip(np.exp(b["logp"] - b["old"]), 0.9, 1.2)
    expected = np.where(b["mask"] > 0, -w * b["adv"] / b["mask"].sum(), 0.0)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
    # clipped tokens keep their gradient (unlike PPO)
    r = np.exp(b["logp"] - b["old"])
    clipped = (b["mask"] > 0) & ((r > 1.2) | (r < 0.9)) & (b["adv"] != 0)
    assert clipped.any() and np.all(g[clipped] != 0)
    # no lower bound by default
    _, m = P.cispo(b["logp"], b["old"], b["adv"], b["mask"])
    assert float(m["clip_frac_low"]) == 0.0 and float(m["clip_frac_high"]) > 0


def test_cispo_hand_value():
    loss, _ = P.cispo(
        jnp.log(jnp.array([[0.5]])),
        jnp.log(jnp.array([[0.25]])),
        jnp.array([[1.0]]),
        jnp.ones((1, 1)),
        clip_high=0.2,
    )
    np.testing.assert_allclose(loss, -1.2 * np.log(0.5), rtol=1e-6)  # ratio 2 clipped to 1.2


# ------------------------------------------------------------------- Clip-Cov and KL-Cov
@pytest.fixture(scope="module")
def cov_batch():
    rng = np.random.default_rng(3)
    N, T = 4, 50
    mask = np.ones((N, T), np.float32)
    mask[1, 30:] = 0
    logp = np.log(rng.uniform(0.01, 1.0, size=(N, T))).astype(np.float32)
    adv = np.repeat(rng.normal(scale=2.0, size=(N, 1)), T, 1).astype(np.float32) * mask
    old = (logp + rng.normal(scale=0.05, size=(N, T))).astype(np.float32)
    return dict(logp=logp, adv=adv, mask=mask, old=old)


def np_cov(logp, adv, m):
    v = m > 0
    return (logp - logp[v].mean()) * (adv - adv[v].mean())


def test_clip_cov_selection(cov_batch):
    b = cov_batch
    cov = np_cov(b["logp"], b["adv"], b["mask"])
    band = (b["mask"] > 0) & (cov > 1.0) & (cov < 5.0)
    k = int(np.floor(0.02 * b["mask"].sum()))
    assert band.sum() > k > 1
    sel = np.asarray(
        P.clip_cov_stats(b["logp"], b["adv"], b["mask"], key=jax.random.key(0), clip_ratio=0.02)[
            "select"
        ]
    )
    assert sel.sum() == k and np.all(band[sel > 0])
    again = P.clip_cov_stats(
        b["logp"], b["adv"], b["mask"], key=jax.random.key(0), clip_ratio=0.02
    )["select"]
    other = P.clip_cov_stats(
        b["logp"], b["adv"], b["mask"], key=jax.random.key(1), clip_ratio=0.02
    )["select"]
    np.testing.assert_array_equal(sel, again)
    assert np.any(np.asarray(other) != sel)
    # at least one token even when clip_ratio * N_tok < 1 (the authors' max(., 1))
    assert (
        float(
            P.clip_cov_stats(b["logp"], b["adv"], b["mask"], key=jax.random.key(0))["select"].sum()
        )
        == 1.0
    )


def test_clip_cov_detaches_selected_tokens_only(cov_batch):
    b = cov_batch
    stats = P.clip_cov_stats(b["logp"], b["adv"], b["mask"], key=jax.random.key(0), clip_ratio=0.02)
    sel = np.asarray(stats["select"]) > 0
    f_cov = lambda lp: P.clip_cov(lp, b["old"], b["adv"], b["mask"], stats=stats)  # noqa: E731
    f_ppo = lambda lp: P.ppo_clip(lp, b["old"], b["adv"], b["mask"])  # noqa: E731
    (l_cov, m_cov), g_cov = jax.value_and_grad(f_cov, has_aux=True)(b["logp"])
    (l_ppo, _), g_ppo = jax.value_and_grad(f_ppo, has_aux=True)(b["logp"])
    np.testing.assert_allclose(l_cov, l_ppo, rtol=1e-6)
    assert np.all(np.asarray(g_cov)[sel] == 0) and np.all(np.asarray(g_ppo)[sel] != 0)
    np.testing.assert_allclose(np.asarray(g_cov)[~sel], np.asarray(g_ppo)[~sel], rtol=1e-6)
    np.testing.assert_allclose(m_cov["cov_frac"], sel.sum() / b["mask"].sum(), rtol=1e-6)


def test_clip_cov_excludes_ppo_clipped_tokens_when_old_logp_given(cov_batch):
    b = cov_batch
    old = b["logp"] - 0.5 * np.sign(
        b["adv"]
    )  # ratio exp(±0.5): every A≠0 token is clipped ... for half
    old[:, ::2] = b["logp"][:, ::2]  # ... and on-policy for the other half
    stats = P.clip_cov_stats(
        b["logp"], b["adv"], b["mask"], key=jax.random.key(0), clip_ratio=0.02, old_logp=old
    )
    sel = np.asarray(stats["select"]) > 0
    assert sel.sum() > 0 and not np.any(sel[:, 1::2])


def test_clip_cov_needs_key_or_stats(cov_batch):
    b = cov_batch
    with pytest.raises(ValueError, match="key"):
        P.clip_cov(b["logp"], b["old"], b["adv"], b["mask"])
    with pytest.raises(ValueError, match="split"):
        P.clip_cov(b["logp"], b["old"], b["adv"], b["mask"], stats={"select": jnp.zeros((2, 50))})


def test_kl_cov_selection_and_value(cov_batch):
    b = cov_batch
    cov = np_cov(b["logp"], b["adv"], b["mask"])
    k = int(np.floor(0.05 * b["mask"].sum()))
    top = np.sort(cov[b["mask"] > 0])[::-1][:k]
    sel = np.asarray(P.kl_cov_stats(b["logp"], b["adv"], b["mask"], k_ratio=0.05)["select"]) > 0
    assert sel.sum() == k
    np.testing.assert_allclose(np.sort(cov[sel])[::-1], top, rtol=1e-5)
    loss, metrics = P.kl_cov(b["logp"], b["old"], b["adv"], b["mask"], k_ratio=0.05, kl_coef=0.7)
    d = b["logp"].astype(np.float64) - b["old"]
    per_token = -b["adv"] * np.exp(d) + 0.7 * sel * np.abs(d)
    np.testing.assert_allclose(loss, np_token_mean(per_token, b["mask"]), rtol=1e-5)
    np.testing.assert_allclose(metrics["cov_frac"], k / b["mask"].sum(), rtol=1e-6)


# ------------------------------------------------------------------------ forking tokens
def test_forking_token_mask_hand():
    ent = jnp.array([[0.1, 0.9, 0.5], [0.7, 0.3, 5.0]])
    m = jnp.array([[1, 1, 1], [1, 1, 0]])
    # 5 valid tokens, top 40 % -> 2 tokens: 0.9 and 0.7 (the masked 5.0 never counts)
    np.testing.assert_array_equal(P.forking_token_mask(ent, m, 0.4), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(P.forking_threshold(ent, m, 0.4), 0.7)
    # top 20 % of 5 -> ceil(1) = 1 token
    np.testing.assert_array_equal(P.forking_token_mask(ent, m, 0.2), [[0, 1, 0], [0, 0, 0]])


def test_forking_threshold_from_whole_batch(batch):
    ent = -batch["logp"]  # any per-token score
    m = batch["mask"]
    full = np.asarray(P.forking_token_mask(ent, m, 0.3))
    tau = P.forking_threshold(ent, m, 0.3)
    parts = [
        np.asarray(P.forking_token_mask(ent[s], m[s], threshold=tau))
        for s in (slice(0, 2), slice(2, None))
    ]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    local = np.asarray(P.forking_token_mask(ent[:2], m[:2], 0.3))
    assert np.any(local != full[:2])  # a per-micro-batch quantile would differ


def test_pg_mask_keeps_normaliser(batch):
    b = batch
    keep = np.zeros_like(b["mask"])
    keep[0, :2] = 1.0
    loss, _ = P.reinforce(b["logp"], None, b["adv"], b["mask"], pg_mask=keep)
    expected = -(b["adv"][0, :2] * b["logp"][0, :2]).sum() / b["mask"].sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


# ------------------------------------------------------------------------ metrics merging
def test_merge_metrics_reproduces_full_batch(batch):
    b = batch
    n_tok, n_seq = global_counts(b["mask"])
    f = functools.partial(P.ppo_clip, clip_low=0.1, clip_high=0.1, num_tokens=n_tok, num_seqs=n_seq)
    _, full = f(b["logp"], b["old"], b["adv"], b["mask"])
    acc = P.init_metrics(full)
    for s in (slice(0, 1), slice(1, None)):  # 5 and 15 tokens
        _, m = f(*(b[k][s] for k in ("logp", "old", "adv", "mask")))
        acc = P.merge_metrics(acc, m, weight=b["mask"][s].sum() / n_tok)
    for key in full:
        np.testing.assert_allclose(acc[key], full[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert float(full["ratio_max"]) > 1.0 > float(full["ratio_min"])


def test_metrics_are_local_token_means(batch):
    """Metrics do not depend on the global counts (only the loss does)."""
    b = batch
    args = (b["logp"][:2], b["old"][:2], b["adv"][:2], b["mask"][:2])
    _, local = P.ppo_clip(*args)
    _, with_global = P.ppo_clip(*args, num_tokens=100.0, num_seqs=50.0)
    for key in local:
        np.testing.assert_allclose(with_global[key], local[key], rtol=1e-6, err_msg=key)
    ratio = np.exp(args[0] - args[1])[args[3] > 0]
    np.testing.assert_allclose(local["ratio_mean"], ratio.mean(), rtol=1e-5)
    np.testing.assert_allclose(local["ratio_max"], ratio.max(), rtol=1e-6)


# ---------------------------------------------------------------- jit, vmap, dtype, grads
LOSSES = {
    "ppo_clip": P.ppo_clip,
    "reinforce": P.reinforce,
    "gspo": functools.partial(P.gspo, clip_low=0.2, clip_high=0.2),
    "cispo": P.cispo,
    "kl_cov": functools.partial(P.kl_cov, k_ratio=0.2),
    "clip_cov": functools.partial(P.clip_cov, key=jax.random.key(0), clip_ratio=0.2, cov_lb=0.0),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_vmap_bf16(batch, name):
    b = batch
    fn = LOSSES[name]
    args = (b["logp"], b["old"], b["adv"], b["mask"])
    loss, metrics = fn(*args)
    jl, jm = jax.jit(fn)(*args)
    np.testing.assert_allclose(jl, loss, rtol=1e-5, atol=1e-6)
    assert jm.keys() == metrics.keys()
    stacked = jax.jit(jax.vmap(lambda lp: fn(lp, *args[1:])[0]))(
        np.stack([b["logp"], b["logp"] - 0.1])
    )
    np.testing.assert_allclose(stacked[0], loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked[1], fn(b["logp"] - 0.1, *args[1:])[0], rtol=1e-5, atol=1e-6)
    bl, bm = fn(*(jnp.asarray(a, jnp.bfloat16) for a in args))
    assert bl.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in bm.values())
    np.testing.assert_allclose(bl, loss, rtol=5e-2, atol=5e-2)


def test_check_grads_on_smooth_losses(batch):
    b = batch
    # move every ratio away from the clip boundaries so the surrogate is smooth around the point
    old = b["logp"] - np.where(np.arange(b["logp"].size).reshape(b["logp"].shape) % 2, 0.05, 0.6)
    mask, adv = b["mask"], b["adv"]
    for fn in (
        P.reinforce,
        P.ppo_clip,
        functools.partial(P.gspo, clip_low=0.2, clip_high=0.2),
        functools.partial(P.ppo_clip, agg="seq-mean-token-sum"),
    ):
        check_grads(
            jax.jit(lambda lp, fn=fn: fn(lp, old, adv, mask)[0]),
            (jnp.asarray(b["logp"]),),
            order=1,
            modes=["rev"],
            eps=1e-3,
            atol=1e-2,
            rtol=1e-2,
        )


def test_shape_and_option_errors(batch):
    b = batch
    with pytest.raises(ValueError, match="one shape"):
        P.ppo_clip(b["logp"], b["old"][:, :3], b["adv"], b["mask"])
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        P.ppo_clip(b["logp"], b["old"], b["adv"], b["mask"], dual_clip=0.5)
    with pytest.raises(ValueError, match="top_fraction"):
        P.forking_threshold(b["logp"], b["mask"], 0.0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_call_equals_call_on_kept_rows(batch, name):
    """Padding values (even NaN / inf) change nothing; dropping all-masked rows changes nothing."""
    b = batch
    fn = LOSSES[name]
    mask = b["mask"].copy()
    mask[2] = 0.0  # a left-out sample (weight 0)
    pad = mask == 0
    poisoned = [
        np.where(pad, bad, b[k]) for k, bad in (("logp", np.nan), ("old", -np.inf), ("adv", np.inf))
    ]
    f = lambda lp, old, adv, m: fn(lp, old, adv, m, agg="seq-mean-token-mean")[0]  # noqa: E731
    clean_l, clean_g = jax.value_and_grad(f)(b["logp"], b["old"], b["adv"], mask)
    l, g = jax.value_and_grad(f)(*poisoned, mask)
    np.testing.assert_allclose(l, clean_l, rtol=1e-6)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[pad] == 0)
    np.testing.assert_allclose(g, clean_g, rtol=1e-6, atol=1e-8)
    if name != "clip_cov":  # its random draw depends on the array layout
        keep = mask.sum(1) > 0
        np.testing.assert_allclose(
            f(b["logp"][keep], b["old"][keep], b["adv"][keep], mask[keep]),
            clean_l,
            rtol=1e-5,
            atol=1e-7,
        )


def test_cov_selections_hand():
    # mean log π = -2.5, mean A = 0 -> cov = [1.5, -0.5, -0.5, 1.5]
    logp = jnp.array([[-1.0, -2.0, -3.0, -4.0]])
    adv = jnp.array([[1.0, -1.0, 1.0, -1.0]])
    m = jnp.ones((1, 4))
    np.testing.assert_array_equal(
        P.kl_cov_stats(logp, adv, m, k_ratio=0.5)["select"], [[1, 0, 0, 1]]
    )
    np.testing.assert_array_equal(
        P.kl_cov_stats(logp, adv, m, k_ratio=0.25)["select"], [[1, 0, 0, 1]]
    )  # tie
    sel = np.asarray(
        P.clip_cov_stats(logp, adv, m, key=jax.random.key(0), clip_ratio=0.25)["select"]
    )
    assert sel.sum() == 1 and sel[0, 1] == sel[0, 2] == 0  # one of the two tokens in (1, 5)
    sel = P.clip_cov_stats(
        logp, adv, m, key=jax.random.key(0), clip_ratio=1.0, cov_lb=-1.0, cov_ub=1.0
    )["select"]
    np.testing.assert_array_equal(sel, [[0, 1, 1, 0]])
