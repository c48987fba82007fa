"""Policy-gradient losses: PPO-clip, REINFORCE, GSPO, CISPO, Clip-Cov, KL-Cov; forking-token mask.

Every loss has the signature::

    loss, metrics = fn(logp, old_logp, advantages, mask, *, <loss options>,
                       agg="token-mean", num_tokens=None, num_seqs=None,
                       norm_constant=None, pg_mask=None)

* ``logp`` ``[N, T]``: log-probs of the sampled tokens under the current
  policy (differentiated); ``old_logp``: the behaviour policy's (constant).
* ``advantages`` ``[N, T]``: token-level, already normalised by an estimator
  in :mod:`jaxrl_llm.losses.advantages` (losses never normalise).
* ``mask`` ``[N, T]``: completion mask times the per-sequence sample weight
  (PSR / NSR); it is the aggregation mask, so it sets the normaliser.
* ``agg`` / ``num_tokens`` / ``num_seqs`` / ``norm_constant``: see
  :func:`jaxrl_llm.losses.aggregation.aggregate`; pass the global counts of
  the minibatch (:func:`~jaxrl_llm.losses.aggregation.global_counts`) so that
  summing micro-batch losses gives the full-minibatch loss exactly.
* ``pg_mask`` ``[N, T]`` (optional): multiplies the per-token policy-gradient
  term *without* changing the normaliser — the forking-token indicator of
  Wang et al. 2025 (:func:`forking_token_mask`).

Inputs may be bf16; everything is computed in (at least) float32.

Metrics: a flat dict of float32 scalars with the same keys on every call of a
loss (:data:`METRIC_KEYS`, plus ``cov_frac`` for Clip-Cov / KL-Cov). Means
(``clip_frac*``, ``approx_kl*``, ``ratio_mean``, ``cov_frac``) are token means
over this call's ``mask`` (the local weighted token count, whatever
``num_tokens`` is). Across micro-batches, weight each call's means by its
token fraction ``Σ mask / num_tokens`` and add them; ``ratio_max`` /
``ratio_min`` combine with max / min (never weight or add them).
:func:`merge_metrics` and :func:`init_metrics` do this inside a ``lax.scan``.

Ratio conventions: ``log_ratio_clamp=None`` (default, TRL) leaves
``log π − log π_old`` unclamped; verl, OpenRLHF and tunix clamp it to ±20
(``log_ratio_clamp=20.0``). ``dual_clip=None`` (default; TRL, OpenRLHF);
verl's default is ``dual_clip=3.0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.aggregation import aggregate
from jaxrl_llm.losses.registration import register_policy_loss

__all__ = [
    "METRIC_KEYS",
    "ppo_clip",
    "reinforce",
    "gspo",
    "cispo",
    "clip_cov",
    "kl_cov",
    "clip_cov_stats",
    "kl_cov_stats",
    "forking_token_mask",
    "forking_threshold",
    "init_metrics",
    "merge_metrics",
]

METRIC_KEYS = (
    "clip_frac",
    "clip_frac_low",
    "clip_frac_high",
    "dual_clip_frac",
    "approx_kl",
    "approx_kl_k1",
    "ratio_mean",
    "ratio_max",
    "ratio_min",
)

sg = jax.lax.stop_gradient


def _float(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _prep(logp, old_logp, advantages, mask, pg_mask):
    """Promote to float32 and check that every token array is ``[N, T]`` of one shape."""
    arrays = dict(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, pg_mask=pg_mask)
    shapes = {k: jnp.shape(v) for k, v in arrays.items() if v is not None}
    if len(shapes["logp"]) != 2 or any(s != shapes["logp"] for s in shapes.values()):
        raise ValueError(
            f"logp, old_logp, advantages, mask (and pg_mask) must be [N, T] of one shape; got {shapes}"
        )
    logp, advantages, mask = _float(logp), _float(advantages), _float(mask)
    old_logp = sg(logp) if old_logp is None else _float(old_logp)
    pg_mask = jnp.ones_like(logp) if pg_mask is None else _float(pg_mask)
    # Zero the masked positions before any nonlinearity, so that padding values
    # (even inf / NaN) reach neither the loss nor its gradient.
    valid = mask != 0
    logp, old_logp, advantages, pg_mask = (
        jnp.where(valid, x, 0.0) for x in (logp, old_logp, advantages, pg_mask)
    )
    return logp, sg(old_logp), sg(advantages), sg(mask), sg(pg_mask)


def _log_ratio(logp, old_logp, log_ratio_clamp):
    d = logp - old_logp
    return d if log_ratio_clamp is None else jnp.clip(d, -log_ratio_clamp, log_ratio_clamp)


def _agg(x, mask, agg, num_tokens, num_seqs, norm_constant):
    return aggregate(
        x, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_constant=norm_constant
    )


def _metrics(ratio, log_ratio, mask, *, low=None, high=None, dual=None, **extra):
    """The common metric dict (all under stop_gradient); ``low``/``high``/``dual`` are boolean masks."""
    ratio, log_ratio = sg(ratio), sg(log_ratio)

    def mean(x):
        return aggregate(sg(jnp.asarray(x, jnp.float32)), mask, "token-mean")

    zero = jnp.zeros_like(ratio)
    low = zero if low is None else low
    high = zero if high is None else high
    dual = zero if dual is None else dual
    valid = mask != 0
    out = {
        "clip_frac": mean(jnp.logical_or(low, high)),
        "clip_frac_low": mean(low),
        "clip_frac_high": mean(high),
        "dual_clip_frac": mean(dual),
        "approx_kl": mean(jnp.exp(log_ratio) - 1.0 - log_ratio),  # k3 of KL(π_old ‖ π)
        "approx_kl_k1": mean(-log_ratio),
        "ratio_mean": mean(ratio),
        "ratio_max": jnp.max(jnp.where(valid, ratio, -jnp.inf)).astype(jnp.float32),
        "ratio_min": jnp.min(jnp.where(valid, ratio, jnp.inf)).astype(jnp.float32),
    }
    out.update({k: mean(v) for k, v in extra.items()})
    return out


def _clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip):
    """Per-token PPO loss ``max(−A r, −A clip(r, 1−ε_low, 1+ε_high))`` (+ dual clip) and clip indicators."""
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. use 3), got {dual_clip}")
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped)
    high = (advantages > 0) & (sg(ratio) > 1.0 + clip_high)
    low = (advantages < 0) & (sg(ratio) < 1.0 - clip_low)
    dual = jnp.zeros_like(high)
    if dual_clip is not None:
        capped = jnp.minimum(loss, -advantages * dual_clip)
        loss = jnp.where(advantages < 0, capped, loss)
        dual = (advantages < 0) & (sg(ratio) > dual_clip)
    return loss, low, high, dual


@register_policy_loss("ppo_clip")
def ppo_clip(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_low=0.2,
    clip_high=0.2,
    dual_clip=None,
    log_ratio_clamp=None,
    agg="token-mean",
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
    pg_mask=None,
):
    """PPO clipped surrogate (Schulman et al. 2017), with clip-higher and optional dual clip.

    With ``r_t = exp(log π(y_t) − log π_old(y_t))``::

        ℓ_t = max(−A_t r_t, −A_t clip(r_t, 1 − ε_low, 1 + ε_high))
        dual clip (A_t < 0 only): ℓ_t = min(ℓ_t, −c A_t)        (Ye et al. 2020, c > 1)

    then ``loss = aggregate(ℓ · pg_mask, mask, agg)``. ``clip_high > clip_low``
    is DAPO's clip-higher (Yu et al. 2025 use ε_low = 0.2, ε_high = 0.28).
    Defaults are the plain symmetric PPO (ε = 0.2, no dual clip, no clamp);
    verl: ``dual_clip=3.0, log_ratio_clamp=20.0``; OpenRLHF:
    ``log_ratio_clamp=20.0``.

    ``clip_frac_high``: fraction of tokens with ``A > 0`` and ``r > 1 + ε_high``
    (gradient cut); ``clip_frac_low``: ``A < 0`` and ``r < 1 − ε_low``;
    ``dual_clip_frac``: ``A < 0`` and ``r > c``.
    """
    logp, old_logp, advantages, mask, pg_mask = _prep(logp, old_logp, advantages, mask, pg_mask)
    log_ratio = _log_ratio(logp, old_logp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    per_token, low, high, dual = _clipped_surrogate(
        ratio, advantages, clip_low, clip_high, dual_clip
    )
    loss = _agg(per_token * pg_mask, mask, agg, num_tokens, num_seqs, norm_constant)
    return loss, _metrics(ratio, log_ratio, mask, low=low, high=high, dual=dual)


@register_policy_loss("reinforce", ratio_based=False)
def reinforce(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    agg="token-mean",
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
    pg_mask=None,
):
    """Plain policy gradient (Williams 1992): ``ℓ_t = −A_t log π(y_t)``, no ratio, no clipping.

    Its gradient equals that of :func:`ppo_clip` at ratio 1 (on-policy).
    ``old_logp`` is used only for the ratio metrics (pass ``None`` to skip:
    the ratio is then reported as 1).
    """
    logp, old_logp, advantages, mask, pg_mask = _prep(logp, old_logp, advantages, mask, pg_mask)
    loss = _agg(-advantages * logp * pg_mask, mask, agg, num_tokens, num_seqs, norm_constant)
    log_ratio = logp - old_logp
    return loss, _metrics(jnp.exp(log_ratio), log_ratio, mask)


@register_policy_loss("gspo")
def gspo(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_low=3e-4,
    clip_high=4e-4,
    log_ratio_clamp=None,
    agg="seq-mean-token-mean",
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
    pg_mask=None,
):
    """Group Sequence Policy Optimisation (Zheng et al. 2025, "GSPO").

    Sequence ratio, length-normalised over the ``|y_i|`` valid tokens::

        s_i = exp( (1/|y_i|) Σ_t (log π(y_{i,t}) − log π_old(y_{i,t})) )

    and the token form of the paper (GSPO-token), whose value is ``s_i`` and
    whose gradient, for advantages constant over a sequence, is GSPO's::

        s_{i,t} = sg[s_i] · π(y_{i,t}) / sg[π(y_{i,t})]
        ℓ_{i,t} = max(−A_{i,t} s_{i,t}, −A_{i,t} clip(s_{i,t}, 1 − ε_low, 1 + ε_high))

    Defaults follow the paper: ε_low = 3e-4, ε_high = 4e-4 and sequence-mean
    aggregation (``seq-mean-token-mean``). ``log_ratio_clamp`` clamps the
    sequence log-ratio on both sides (verl clamps it from above at 10). Ratio metrics and clip
    fractions are about ``s_i`` (counted per token); ``approx_kl`` is token-level.
    """
    logp, old_logp, advantages, mask, pg_mask = _prep(logp, old_logp, advantages, mask, pg_mask)
    valid = (mask != 0).astype(logp.dtype)
    token_log_ratio = logp - old_logp
    n = jnp.sum(valid, axis=-1, keepdims=True)
    seq_log_ratio = jnp.sum(
        jnp.where(valid != 0, token_log_ratio, 0.0), -1, keepdims=True
    ) / jnp.maximum(n, 1.0)
    seq_log_ratio = _log_ratio(seq_log_ratio, 0.0, log_ratio_clamp)
    log_s = sg(seq_log_ratio) + logp - sg(logp)
    s = jnp.exp(log_s)
    per_token, low, high, _ = _clipped_surrogate(s, advantages, clip_low, clip_high, None)
    loss = _agg(per_token * pg_mask, mask, agg, num_tokens, num_seqs, norm_constant)
    metrics = _metrics(s, token_log_ratio, mask, low=low, high=high)
    return loss, metrics


@register_policy_loss("cispo")
def cispo(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_low=None,
    clip_high=0.2,
    log_ratio_clamp=None,
    agg="token-mean",
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
    pg_mask=None,
):
    """Clipped IS-weight policy optimisation (MiniMax 2025, "MiniMax-M1").

    ``ℓ_t = −sg[clip(r_t, 1 − ε_low, 1 + ε_high)] · A_t · log π(y_t)``: the
    importance weight is clipped and detached, so every token keeps a
    gradient (unlike PPO, which drops clipped tokens). The paper sets no lower
    bound (``clip_low=None``, default) and uses token-mean aggregation.
    ``clip_frac_high`` / ``clip_frac_low``: tokens whose weight was clipped
    from above / below, whatever the sign of ``A``.
    """
    logp, old_logp, advantages, mask, pg_mask = _prep(logp, old_logp, advantages, mask, pg_mask)
    log_ratio = _log_ratio(logp, old_logp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    lo = -jnp.inf if clip_low is None else 1.0 - clip_low
    hi = jnp.inf if clip_high is None else 1.0 + clip_high
    weight = sg(jnp.clip(ratio, lo, hi))
    loss = _agg(
        -weight * advantages * logp * pg_mask, mask, agg, num_tokens, num_seqs, norm_constant
    )
    return loss, _metrics(ratio, log_ratio, mask, low=sg(ratio) < lo, high=sg(ratio) > hi)


# ----------------------------------------------------------- covariance-based losses


def _centred_cov(logp, advantages, valid):
    """``cov_t = (log π_t − mean log π) (A_t − mean A)`` with means over the valid tokens (detached)."""
    logp, advantages = sg(logp), sg(advantages)
    n = jnp.maximum(jnp.sum(valid), 1.0)
    mean_logp = jnp.sum(jnp.where(valid, logp, 0.0)) / n
    mean_adv = jnp.sum(jnp.where(valid, advantages, 0.0)) / n
    return (logp - mean_logp) * (advantages - mean_adv)


def clip_cov_stats(
    logp,
    advantages,
    mask,
    *,
    key,
    clip_ratio=2e-4,
    cov_lb=1.0,
    cov_ub=5.0,
    old_logp=None,
    clip_low=0.2,
    clip_high=0.2,
):
    """Clip-Cov's token selection on the whole minibatch.

    Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
    Reasoning Language Models".

    Candidates are valid tokens with ``cov_lb < cov_t < cov_ub`` (``cov`` from
    :func:`_centred_cov`; when ``old_logp`` is given, tokens already clipped by
    PPO are excluded, as in the authors' code); ``k = max(1, ⌊clip_ratio · N_tok⌋)``
    of them are drawn uniformly without replacement with ``key``. Defaults are
    the paper's (r = 2e-4, bounds 1 and 5).

    Pass ``logp`` of the whole minibatch (``old_logp`` is what is available
    before the micro-batch split); the result ``{"select": [N, T] float32}`` is
    split along rows like the batch and passed as ``stats`` to :func:`clip_cov`.
    """
    logp, advantages, mask = _float(logp), _float(advantages), _float(mask)
    valid = mask != 0
    cov = _centred_cov(logp, advantages, valid)
    band = valid & (cov > cov_lb) & (cov < cov_ub)
    if old_logp is not None:
        ratio = jnp.exp(sg(logp) - _float(old_logp))
        _, low, high, _ = _clipped_surrogate(ratio, sg(advantages), clip_low, clip_high, None)
        band = band & ~low & ~high
    k = jnp.maximum(jnp.floor(clip_ratio * jnp.sum(valid)), 1.0)
    priority = jnp.where(band, jax.random.uniform(key, band.shape), 2.0).reshape(-1)
    rank = (
        jnp.zeros(priority.shape, jnp.int32)
        .at[jnp.argsort(priority)]
        .set(jnp.arange(priority.size))
    )
    select = band & (rank.reshape(band.shape) < k)
    return {"select": select.astype(jnp.float32)}


def kl_cov_stats(logp, advantages, mask, *, k_ratio=2e-3):
    """KL-Cov's token selection on the whole minibatch (Cui et al. 2025).

    The ``k = max(1, ⌊k_ratio · N_tok⌋)`` valid tokens with the largest
    ``cov_t`` (ties at the k-th value are all kept). Returns
    ``{"select": [N, T] float32}``, split along rows like the batch.
    """
    logp, advantages, mask = _float(logp), _float(advantages), _float(mask)
    valid = mask != 0
    cov = jnp.where(valid, _centred_cov(logp, advantages, valid), -jnp.inf).reshape(-1)
    k = jnp.maximum(jnp.floor(k_ratio * jnp.sum(valid)), 1.0).astype(jnp.int32)
    threshold = jnp.sort(cov)[::-1][jnp.minimum(k, cov.size) - 1]
    select = valid & (cov.reshape(valid.shape) >= threshold)
    return {"select": select.astype(jnp.float32)}


def _check_select(stats, shape, name):
    select = _float(stats["select"])
    if select.shape != shape:
        raise ValueError(
            f"{name}: stats['select'] has shape {select.shape}, expected {shape}; split the minibatch "
            "statistics along rows like the batch (registry.split_stats)"
        )
    return sg(select)


@register_policy_loss("clip_cov", batch_stats=True)
def clip_cov(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    stats=None,
    key=None,
    clip_ratio=2e-4,
    cov_lb=1.0,
    cov_ub=5.0,
    clip_low=0.2,
    clip_high=0.2,
    dual_clip=None,
    log_ratio_clamp=None,
    agg="token-mean",
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
    pg_mask=None,
):
    """Clip-Cov (Cui et al. 2025): PPO-clip with the gradient of a few high-covariance tokens detached.

    ``ℓ_t = sg[ℓ^PPO_t]`` on the selected tokens, ``ℓ^PPO_t`` elsewhere (the
    loss value is unchanged; the authors' code zeroes the selected tokens'
    loss, same gradient). The selection comes from :func:`clip_cov_stats`
    computed on the whole minibatch (``stats``); when ``stats`` is None it is
    computed here from these arrays with ``key`` (a full-batch call).
    ``cov_frac``: fraction of tokens detached.
    """
    logp, old_logp, advantages, mask, pg_mask = _prep(logp, old_logp, advantages, mask, pg_mask)
    if stats is None:
        if key is None:
            raise ValueError(
                "clip_cov needs `key` (or `stats` from clip_cov_stats) for its random selection"
            )
        stats = clip_cov_stats(
            logp,
            advantages,
            mask,
            key=key,
            clip_ratio=clip_ratio,
            cov_lb=cov_lb,
            cov_ub=cov_ub,
            old_logp=old_logp,
            clip_low=clip_low,
            clip_high=clip_high,
        )
    select = _check_select(stats, logp.shape, "clip_cov")
    log_ratio = _log_ratio(logp, old_logp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    per_token, low, high, dual = _clipped_surrogate(
        ratio, advantages, clip_low, clip_high, dual_clip
    )
    per_token = jnp.where(select != 0, sg(per_token), per_token)
    loss = _agg(per_token * pg_mask, mask, agg, num_tokens, num_seqs, norm_constant)
    return loss, _metrics(ratio, log_ratio, mask, low=low, high=high, dual=dual, cov_frac=select)


@register_policy_loss("kl_cov", batch_stats=True)
def kl_cov(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    stats=None,
    k_ratio=2e-3,
    kl_coef=1.0,
    log_ratio_clamp=None,
    agg="token-mean",
    num_tokens=None,
    num_seqs=None,
    norm_constant=None,
    pg_mask=None,
):
    """KL-Cov (Cui et al. 2025): unclipped surrogate plus a KL penalty on the top-covariance tokens.

    ``ℓ_t = −A_t r_t + k · 1[t ∈ top-k cov] · |log π(y_t) − log π_old(y_t)|``,
    the top ``k_ratio`` fraction of tokens chosen by :func:`kl_cov_stats` on the
    whole minibatch (``stats``; computed here when None). Defaults: the paper's
    ``k_ratio = 2e-3`` and ``kl_coef = 1`` (verl's config defaults differ:
    ``kl_cov_ratio = 2e-4``). ``pg_mask`` applies to the surrogate term only.
    ``cov_frac``: fraction of tokens penalised.
    """
    logp, old_logp, advantages, mask, pg_mask = _prep(logp, old_logp, advantages, mask, pg_mask)
    if stats is None:
        stats = kl_cov_stats(logp, advantages, mask, k_ratio=k_ratio)
    select = _check_select(stats, logp.shape, "kl_cov")
    log_ratio = _log_ratio(logp, old_logp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    per_token = -advantages * ratio * pg_mask + kl_coef * select * jnp.abs(log_ratio)
    loss = _agg(per_token, mask, agg, num_tokens, num_seqs, norm_constant)
    return loss, _metrics(ratio, log_ratio, mask, cov_frac=select)


# ------------------------------------------------------------------ forking tokens


def forking_threshold(entropy, mask, top_fraction=0.2):
    """Entropy threshold of the top ``top_fraction`` of valid tokens (the ``k = ⌈ρ N_tok⌉``-th largest).

    Compute it on the whole minibatch and pass it to :func:`forking_token_mask`.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    entropy, valid = _float(entropy), jnp.asarray(mask) != 0
    if entropy.shape != valid.shape:
        raise ValueError(f"entropy {entropy.shape} and mask {valid.shape} must have one shape")
    flat = jnp.where(valid, sg(entropy), -jnp.inf).reshape(-1)
    k = jnp.maximum(jnp.ceil(top_fraction * jnp.sum(valid)), 1.0).astype(jnp.int32)
    return jnp.sort(flat)[::-1][jnp.minimum(k, flat.size) - 1]


def forking_token_mask(entropy, mask, top_fraction=0.2, threshold=None):
    """High-entropy "forking" tokens (Wang et al. 2025, "Beyond the 80/20 Rule").

    ``1[H_t ≥ τ]`` on valid tokens, ``τ`` the entropy of the ``⌈ρ N_tok⌉``-th
    highest-entropy valid token in the minibatch (ρ = ``top_fraction``, 0.2 in
    the paper; ties keep all). Pass ``threshold`` computed by
    :func:`forking_threshold` on the whole minibatch when calling per
    micro-batch. Use the result as ``pg_mask`` of a policy loss: the paper
    keeps the policy-gradient term only on these tokens while the normaliser
    still counts every token. Returns ``[N, T]`` float32.
    """
    entropy, valid = _float(entropy), jnp.asarray(mask) != 0
    if entropy.shape != valid.shape or entropy.ndim != 2:
        raise ValueError(
            f"entropy and mask must be [N, T] of one shape, got {entropy.shape}, {valid.shape}"
        )
    if threshold is None:
        threshold = forking_threshold(entropy, mask, top_fraction)
    return (valid & (sg(entropy) >= threshold)).astype(jnp.float32)


def init_metrics(metrics):
    """Identity elements for :func:`merge_metrics`: 0 for sums, −inf for ``*_max``, +inf for ``*_min``.

    ``metrics`` may hold arrays or ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape``).
    """

    def init(k, v):
        value = -jnp.inf if k.endswith("_max") else jnp.inf if k.endswith("_min") else 0.0
        return jnp.full(jnp.shape(v), value, jnp.result_type(v.dtype, jnp.float32))

    return {k: init(k, v) for k, v in metrics.items()}


def merge_metrics(acc, metrics, weight=1.0):
    """Accumulate one micro-batch's metrics: ``acc + weight · m``, but max / min for ``*_max`` / ``*_min``.

    With ``weight = Σ mask_micro / num_tokens`` (the micro-batch's share of
    the minibatch's weighted tokens) the accumulated means equal the
    full-minibatch means exactly; extremes are never weighted. Start from
    :func:`init_metrics`. Key prefixes are allowed (``"pg/ratio_max"``).
    Jittable.
    """
    if acc.keys() != metrics.keys():
        raise ValueError(f"metric keys differ: {sorted(acc)} vs {sorted(metrics)}")

    def combine(k):
        if k.endswith("_max"):
            return jnp.maximum(acc[k], metrics[k])
        if k.endswith("_min"):
            return jnp.minimum(acc[k], metrics[k])
        return acc[k] + weight * metrics[k]

    return {k: combine(k) for k in acc}
