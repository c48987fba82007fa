"""Name → function registries for configs (``algo.advantage``, ``algo.policy_loss``, ``algo.aggregation``).

Unknown names raise a ``ValueError`` that lists the valid ones, so a config
fails at start-up (call :func:`check` on every name before the first step).

The trainer uses three entry points with one signature for every name:

* :func:`compute_advantages` — token-level advantages (zero outside the mask),
  returns (or None) and per-sequence sample weights, from the *whole* minibatch.
* :func:`policy_loss_stats` — the batch statistics a loss needs (Clip-Cov /
  KL-Cov token selections, the forking-token entropy threshold), computed
  once on the whole minibatch; split along rows with :func:`split_stats`.
* :func:`compute_policy_loss` — one micro-batch's loss and metrics.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp

from jaxrl_llm.losses import advantages as adv_lib
from jaxrl_llm.losses import aggregation, policy

__all__ = [
    "ADVANTAGES",
    "POLICY_LOSSES",
    "AGGREGATIONS",
    "check",
    "get_advantage",
    "get_policy_loss",
    "compute_advantages",
    "compute_policy_loss",
    "policy_loss_stats",
    "split_stats",
    "init_metrics",
    "merge_metrics",
]


def _require(name, **fields):
    for field, value in fields.items():
        if value is None:
            raise ValueError(f"advantage estimator {name!r} needs `{field}`")


def _seq(name, fn):
    """Adapter for sequence-level estimators: ``[N]`` advantages broadcast onto the mask."""

    def estimator(*, rewards, mask, group_size, **kwargs):
        seq_adv, weight = fn(rewards=rewards, group_size=group_size, **kwargs)
        return adv_lib.to_tokens(seq_adv, mask), None, weight

    estimator.__name__ = name
    estimator.__doc__ = f"Registry adapter for {name!r}: sequence advantages broadcast to tokens."
    return estimator


def _ones(x):
    return jnp.ones(jnp.shape(x)[:1], jnp.float32)


def _group(scale):
    def fn(*, rewards, group_size, eps, ddof, **_):
        return adv_lib.group_advantages(
            rewards, group_size, scale=scale, eps=eps, ddof=ddof
        ), _ones(rewards)

    return fn


def _rloo(*, rewards, group_size, **_):
    return adv_lib.rloo(rewards, group_size), _ones(rewards)


def _remax(*, rewards, greedy_rewards, **_):
    _require("remax", greedy_rewards=greedy_rewards)
    return adv_lib.remax(rewards, greedy_rewards), _ones(rewards)


def _psr_nsr(mode):
    def fn(*, rewards, w_lambda, **_):
        return adv_lib.psr_nsr(rewards, mode=mode, lam=w_lambda)

    return fn


def _gae(*, rewards, mask, token_rewards, values, gamma, lam, **_):
    _require("gae", token_rewards=token_rewards, values=values)
    adv, ret = adv_lib.gae(token_rewards, values, mask, gamma=gamma, lam=lam)
    return adv, ret, _ones(rewards)


def _token_rewards(rewards, mask, token_rewards):
    return adv_lib.to_token_rewards(rewards, mask) if token_rewards is None else token_rewards


def _reinforce_pp(*, rewards, mask, token_rewards, gamma, **_):
    token_rewards = _token_rewards(rewards, mask, token_rewards)
    adv = adv_lib.reinforce_pp(token_rewards, mask, gamma=gamma)
    return adv, adv_lib.discounted_returns(token_rewards, mask, gamma=gamma), _ones(rewards)


def _reinforce_pp_baseline(*, rewards, mask, group_size, token_rewards, **_):
    adv = adv_lib.reinforce_pp_baseline(rewards, group_size, mask, token_rewards=token_rewards)
    return adv, None, _ones(rewards)


ADVANTAGES = {
    "gae": _gae,
    "grpo": _seq("grpo", _group("group")),
    "dr_grpo": _seq("dr_grpo", _group("none")),
    "lite_ppo": _seq("lite_ppo", _group("batch")),
    "rloo": _seq("rloo", _rloo),
    "reinforce_pp": _reinforce_pp,
    "reinforce_pp_baseline": _reinforce_pp_baseline,
    "remax": _seq("remax", _remax),
    "psr": _seq("psr", _psr_nsr("psr")),
    "nsr": _seq("nsr", _psr_nsr("nsr")),
    "w_reinforce": _seq("w_reinforce", _psr_nsr("w_reinforce")),
}

POLICY_LOSSES = {
    "ppo_clip": policy.ppo_clip,
    "reinforce": policy.reinforce,
    "gspo": policy.gspo,
    "cispo": policy.cispo,
    "clip_cov": policy.clip_cov,
    "kl_cov": policy.kl_cov,
}

AGGREGATIONS = {
    mode: functools.partial(aggregation.aggregate, mode=mode) for mode in aggregation.MODES
}

_KINDS = {"advantage": ADVANTAGES, "policy_loss": POLICY_LOSSES, "aggregation": AGGREGATIONS}


def check(kind, name):
    """Raise ``ValueError`` unless ``name`` is registered under ``kind`` (advantage, policy_loss, aggregation)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; valid kinds: {', '.join(_KINDS)}")
    if name not in _KINDS[kind]:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(_KINDS[kind])}")
    return name


def get_advantage(name):
    return ADVANTAGES[check("advantage", name)]


def get_policy_loss(name):
    return POLICY_LOSSES[check("policy_loss", name)]


def compute_advantages(
    name,
    *,
    rewards,
    mask,
    group_size,
    token_rewards=None,
    values=None,
    greedy_rewards=None,
    gamma=1.0,
    lam=1.0,
    eps=1e-6,
    ddof=1,
    w_lambda=0.1,
    whiten_advantages=False,
):
    """Run the estimator ``name`` on the whole minibatch.

    Args:
      rewards: ``[N]`` sequence rewards. mask: ``[N, T]`` completion mask.
      group_size: ``G`` (static int); groups are contiguous blocks of rows.
      token_rewards: ``[N, T]`` (``gae``, ``reinforce_pp``, ``reinforce_pp_baseline``):
        the reward on the last valid token minus any per-token KL penalty
        (:func:`~jaxrl_llm.losses.advantages.to_token_rewards`); when None,
        ``reinforce_pp*`` build it from ``rewards`` without KL. ``gae`` requires it.
      values: ``[N, T]`` critic values (``gae``). greedy_rewards: ``[N]`` (``remax``).
      gamma, lam: discount and GAE λ. eps, ddof: the group-std convention
        (``grpo``, ``lite_ppo``). w_lambda: W-REINFORCE's λ.
      whiten_advantages: whiten the token advantages over the mask afterwards
        (the usual PPO-with-GAE practice of verl, TRL and OpenRLHF; off by default).

    Returns:
      ``(advantages [N, T] zero outside the mask, returns [N, T] or None,
      sample_weight [N] float32)``. Multiply ``sample_weight[:, None]`` into the
      loss mask.
    """
    fn = get_advantage(name)
    mask = jnp.asarray(mask)
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or mask.ndim != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"expected rewards [N] and mask [N, T], got {rewards.shape} and {mask.shape}"
        )
    adv, returns, weight = fn(
        rewards=rewards,
        mask=mask,
        group_size=group_size,
        token_rewards=token_rewards,
        values=values,
        greedy_rewards=greedy_rewards,
        gamma=gamma,
        lam=lam,
        eps=eps,
        ddof=ddof,
        w_lambda=w_lambda,
    )
    if whiten_advantages:
        adv = adv_lib.whiten(adv, mask)
    return adv, returns, weight.astype(jnp.float32)


def _accepts(fn, name):
    return name in inspect.signature(fn).parameters


def _pg_mask(extra, mask, stats):
    """``pg_mask`` from ``extra``, times the forking-token mask if ``entropy`` and ``forking_top_fraction`` are set."""
    pg_mask = extra.pop("pg_mask", None)
    entropy = extra.pop("entropy", None)
    top_fraction = extra.pop("forking_top_fraction", None)
    if entropy is None or top_fraction is None:
        return pg_mask
    threshold = None if stats is None else stats.get("forking_threshold")
    keep = policy.forking_token_mask(entropy, mask, top_fraction, threshold=threshold)
    return keep if pg_mask is None else keep * pg_mask


def compute_policy_loss(
    name,
    logp,
    old_logp,
    advantages,
    mask,
    *,
    agg,
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
    clip_low=None,
    clip_high=None,
    dual_clip=None,
    stats=None,
    key=None,
    **extra,
):
    """One micro-batch's ``(loss, metrics)`` for the policy loss ``name``.

    ``mask`` is the completion mask already multiplied by ``sample_weight``;
    ``num_tokens`` / ``num_seqs`` are the global counts of the minibatch
    (:func:`~jaxrl_llm.losses.aggregation.global_counts` of that mask).
    ``clip_low`` / ``clip_high``: None keeps the loss's own default (0.2 for
    PPO-style losses, the paper's 3e-4 / 4e-4 for GSPO); they are ignored by
    losses without clipping (``reinforce``, ``kl_cov``). ``dual_clip`` is only
    accepted by ``ppo_clip`` and ``clip_cov``. ``stats``: this micro-batch's
    slice of :func:`policy_loss_stats`. ``key``: only used by ``clip_cov``
    when ``stats`` is None. ``extra``: loss options (``log_ratio_clamp``,
    ``clip_ratio``, ``k_ratio``, ``kl_coef``, ...), ``pg_mask`` [N, T], and
    ``entropy`` [N, T] with ``forking_top_fraction`` to restrict the policy
    gradient to forking tokens (threshold from ``stats["forking_threshold"]``
    when present). Restricting tokens goes through ``pg_mask``, never through
    ``mask``, so the normaliser still counts every token (Wang et al. 2025).

    ``metrics`` are this micro-batch's token means (see :mod:`.policy`):
    accumulate them with ``merge_metrics(acc, m, weight=Σ mask / num_tokens)``
    from ``init_metrics(m)``.
    """
    fn = get_policy_loss(name)
    extra = dict(extra)
    pg_mask = _pg_mask(extra, mask, stats)
    kwargs = dict(
        agg=check("aggregation", agg),
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        norm_constant=norm_constant,
        pg_mask=pg_mask,
    )
    for field, value in (("clip_low", clip_low), ("clip_high", clip_high)):
        if value is not None and _accepts(fn, field):
            kwargs[field] = value
    if dual_clip is not None:
        if not _accepts(fn, "dual_clip"):
            raise ValueError(f"policy loss {name!r} has no dual clip; set dual_clip=None")
        kwargs["dual_clip"] = dual_clip
    if _accepts(fn, "stats"):
        kwargs["stats"] = None if stats is None or "select" not in stats else stats
    if _accepts(fn, "key"):
        kwargs["key"] = key
    unknown = [k for k in extra if not _accepts(fn, k)]
    if unknown:
        valid = [
            p
            for p in inspect.signature(fn).parameters
            if p not in ("logp", "old_logp", "advantages", "mask")
        ]
        raise ValueError(
            f"policy loss {name!r} got unknown options {unknown}; valid: {', '.join(valid)}"
        )
    return fn(logp, old_logp, advantages, mask, **kwargs, **extra)


def policy_loss_stats(name, logp, advantages, mask, *, key=None, **extra):
    """Batch statistics of the policy loss ``name``, computed once on the whole minibatch.

    * ``clip_cov``: ``{"select": [N, T]}`` (needs ``key``; options ``clip_ratio``,
      ``cov_lb``, ``cov_ub``, and ``old_logp`` / ``clip_low`` / ``clip_high``
      to leave out tokens PPO already clips).
    * ``kl_cov``: ``{"select": [N, T]}`` (option ``k_ratio``).
    * with ``entropy`` [N, T] and ``forking_top_fraction`` in ``extra``:
      ``{"forking_threshold": scalar}``.
    * ``{}`` otherwise.

    Pass the behaviour log-probs (``old_logp``, known for the whole minibatch)
    as ``logp``. Loss options that do not concern the statistics are ignored,
    so the same ``extra`` can be given here and to :func:`compute_policy_loss`.
    """
    get_policy_loss(name)
    stats = {}
    entropy = extra.get("entropy")
    top_fraction = extra.get("forking_top_fraction")
    if entropy is not None and top_fraction is not None:
        stats["forking_threshold"] = policy.forking_threshold(entropy, mask, top_fraction)
    if name == "clip_cov":
        if key is None:
            raise ValueError(
                "policy_loss_stats('clip_cov') needs `key` for its random token selection"
            )
        opts = {
            k: extra[k]
            for k in ("clip_ratio", "cov_lb", "cov_ub", "old_logp", "clip_low", "clip_high")
            if extra.get(k) is not None
        }
        stats.update(policy.clip_cov_stats(logp, advantages, mask, key=key, **opts))
    elif name == "kl_cov":
        opts = {k: extra[k] for k in ("k_ratio",) if extra.get(k) is not None}
        stats.update(policy.kl_cov_stats(logp, advantages, mask, **opts))
    return stats


def split_stats(stats, num_microbatches):
    """Stack the minibatch statistics per micro-batch: ``[N, ...]`` leaves → ``[M, N/M, ...]``, scalars → ``[M]``.

    Rows are split in order, like ``x.reshape(M, N // M, ...)`` of the batch;
    index (or ``lax.scan`` over) the leading axis.
    """

    def split(x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return jnp.broadcast_to(x, (num_microbatches,))
        if x.shape[0] % num_microbatches:
            raise ValueError(
                f"cannot split {x.shape[0]} rows into {num_microbatches} micro-batches"
            )
        return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])

    return jax.tree.map(split, stats)


init_metrics = policy.init_metrics
merge_metrics = policy.merge_metrics
