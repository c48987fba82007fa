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
import importlib
import inspect
import pkgutil

import jax
import jax.numpy as jnp

from jaxrl_llm.losses import advantages as adv_lib
from jaxrl_llm.losses import aggregation, policy, registration

__all__ = [
    "ADVANTAGES",
    "POLICY_LOSSES",
    "AGGREGATIONS",
    "check",
    "get_advantage",
    "get_policy_loss",
    "compute_advantages",
    "check_config",
    "POLICY_LOSS_SPECS",
    "compute_policy_loss",
    "policy_loss_stats",
    "split_stats",
    "init_metrics",
    "merge_metrics",
]


def _load_all_modules():
    """Imports every module of `jaxrl_llm.losses`, so each registers what it defines."""
    import jaxrl_llm.losses as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


_load_all_modules()

# name -> Estimator (callable with the keyword contract of `registration`), in definition order.
ADVANTAGES = registration.ESTIMATORS
# name -> the loss function itself; `POLICY_LOSS_SPECS` holds what each declares.
POLICY_LOSSES = {name: spec.fn for name, spec in registration.LOSSES.items()}
POLICY_LOSS_SPECS = registration.LOSSES

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
    correct=None,
    old_logp=None,
    ref_logp=None,
    whiten_advantages=False,
    **hparams,
):
    """Run the estimator ``name`` on the whole minibatch.

    Args:
      rewards: ``[N]`` sequence rewards. mask: ``[N, T]`` completion mask.
      group_size: ``G`` (static int); groups are contiguous blocks of rows.
      token_rewards: ``[N, T]`` (``gae``, ``reinforce_pp``, ``reinforce_pp_baseline``):
        the reward on the last valid token minus any per-token KL penalty
        (:func:`~jaxrl_llm.losses.advantages.to_token_rewards`); when None it is built
        from ``rewards`` without KL where needed. ``gae`` needs it and ``values``.
      values: ``[N, T]`` critic values (``gae``). greedy_rewards: ``[N]`` (``remax``).
      correct: ``[N]`` the verifier's verdict (``psr``, ``nsr``, ``w_reinforce``); when
        None, ``rewards > 0.5``.
      old_logp, ref_logp: ``[N, T]`` the current policy's and the reference's token
        log-probs (``online_dpo``; entries that declare ``needs_logps``).
      whiten_advantages: whiten the token advantages over the mask afterwards
        (the usual PPO-with-GAE practice of verl, TRL and OpenRLHF; off by default).
      **hparams: the estimator's hyperparameters (``gamma``, ``lam``, ``eps``, ``ddof``,
        ``w_lambda``, ...); each entry declares which it reads and their defaults
        (``ADVANTAGES[name].hparams``); others are ignored.

    Returns:
      ``(advantages [N, T] zero outside the mask, returns [N, T] or None,
      sample_weight [N] float32)``. Multiply ``sample_weight[:, None]`` into the
      loss mask.
    """
    entry = get_advantage(name)
    mask = jnp.asarray(mask)
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or mask.ndim != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"expected rewards [N] and mask [N, T], got {rewards.shape} and {mask.shape}"
        )
    if entry.needs_critic and (token_rewards is None or values is None):
        raise ValueError(f"advantage estimator {name!r} needs `token_rewards` and `values`")
    if entry.needs_logps and (old_logp is None or ref_logp is None):
        raise ValueError(f"advantage estimator {name!r} needs `old_logp` and `ref_logp`")
    if correct is None:
        correct = (rewards > 0.5).astype(jnp.float32)
    settings = {k: hparams.get(k, default) for k, default in entry.hparams.items()}
    adv, returns, weight = entry(
        rewards=rewards,
        mask=mask,
        group_size=group_size,
        token_rewards=token_rewards,
        values=values,
        greedy_rewards=greedy_rewards,
        correct=correct,
        old_logp=old_logp if entry.needs_logps else None,
        ref_logp=ref_logp if entry.needs_logps else None,
        **settings,
    )
    if entry.level == "sequence":
        adv = adv_lib.to_tokens(adv, mask)
    if weight is None:
        weight = jnp.ones(rewards.shape, jnp.float32)
    if whiten_advantages:
        adv = adv_lib.whiten(adv, mask)
    return adv, returns, weight.astype(jnp.float32)


def check_config(config) -> None:
    """Checks `config.algo` (and the fields it depends on) against what the registered
    estimator and policy loss declare; raises ``ValueError`` naming the field and the valid
    values. `trainers.config.validate` calls it before anything is built."""
    a = config.algo
    for kind, field, value in (
        ("advantage", "algo.advantage", a.advantage),
        ("policy_loss", "algo.policy_loss", a.policy_loss),
        ("aggregation", "algo.aggregation", a.aggregation),
    ):
        if value not in _KINDS[kind]:
            raise ValueError(f"config.{field} = {value!r} is not one of {sorted(_KINDS[kind])}")
    entry, loss = ADVANTAGES[a.advantage], POLICY_LOSS_SPECS[a.policy_loss]
    if entry.needs_critic and not config.critic.enabled:
        raise ValueError(
            f"config.algo.advantage = {a.advantage!r} needs config.critic.enabled = True"
        )
    for field, allowed in entry.requires.items():
        if a[field] not in allowed:
            raise ValueError(
                f"config.algo.{field} = {a[field]!r}: algo.advantage = {a.advantage!r} needs "
                f"one of {list(allowed)}"
            )
    kl = a.kl
    if kl.placement == "reward" and (kl.coef > 0 or kl.target > 0) and entry.level != "token":
        token_level = sorted(n for n, e in ADVANTAGES.items() if e.level == "token")
        raise ValueError(
            f"config.algo.kl.placement = 'reward' has no effect with config.algo.advantage = "
            f"{a.advantage!r}, which reads one reward per completion, not the per-token "
            f"rewards the KL enters; use placement = 'loss', or a token-level estimator "
            f"({token_level})"
        )
    group = config.train.samples_per_prompt
    if group < entry.min_group:
        raise ValueError(
            f"config.train.samples_per_prompt = {group}: {a.advantage!r} needs a group of at "
            f"least {entry.min_group}"
        )
    if config.data.replay_fraction and not loss.ratio_based:
        ratio_losses = [n for n, spec in POLICY_LOSS_SPECS.items() if spec.ratio_based]
        raise ValueError(
            f"config.data.replay_fraction > 0 needs a ratio-based policy loss (one of "
            f"{ratio_losses}: the ratio to the stored behaviour log-probs is the importance "
            f"correction); config.algo.policy_loss = {a.policy_loss!r} is not"
        )
    unknown = sorted(set(a.loss_kwargs) - set(inspect.signature(loss.fn).parameters))
    if unknown:
        raise ValueError(f"config.algo.loss_kwargs has {unknown}, not options of {a.policy_loss!r}")


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
