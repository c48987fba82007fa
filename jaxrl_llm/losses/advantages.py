"""Advantage estimators: GAE, group baselines (GRPO family, RLOO), REINFORCE++, ReMax, PSR/NSR.

All functions are pure and jittable. Sequence-level estimators take rewards
``[N]`` (``N = B·G`` rows, groups of ``G`` samples of one prompt stored as
contiguous blocks) and return ``[N]``; :func:`to_tokens` broadcasts them onto
the completion mask. Token-level estimators take ``[N, T]`` arrays.

Every statistic over the batch (group mean / std, batch std, whitening) is
computed here, on the whole minibatch, *before* it is split into
micro-batches: losses never normalise advantages themselves.

Field conventions that disagree (defaults are the papers' plain definitions):

* GRPO epsilon: ``eps`` in ``(r − μ)/(σ + eps)``; verl and tunix 1e-6 (our
  default), TRL 1e-4, OpenRLHF 1e-9. ``ddof=1`` (unbiased std, all four) or 0.
* Whitening: ``ddof=1, eps=1e-8, eps_mode="add"`` is verl / TRL
  (``(x − μ)·rsqrt(var_unbiased + 1e-8)``); OpenRLHF is
  ``ddof=0, eps_mode="max"`` (``rsqrt(max(var_biased, 1e-8))``).
* GAE over masked (observation) tokens: ``masked="carry"`` (verl, tunix;
  default) carries the next value and the running advantage through masked
  positions; ``masked="zero"`` (TRL, OpenRLHF) zeroes masked rewards and
  values and runs the plain recursion through them.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp

from jaxrl_llm.losses.registration import register_advantage

__all__ = [
    "gae",
    "discounted_returns",
    "whiten",
    "group_advantages",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "psr_nsr",
    "to_tokens",
    "to_token_rewards",
    "last_token_index",
]


def _float(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_div(num, den):
    """``num / den``, 0 where ``den <= 0`` (gradient-safe): empty masks give 0, not NaN."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _check_2d(**arrays):
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected [N, T] arrays of one shape, got {shapes}")


def _check_1d(**arrays):
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected [N] arrays of one shape, got {shapes}")


def _check_groups(rewards, group_size):
    """Check ``rewards [N]`` against a static ``group_size``; return it as a Python int."""
    _check_1d(rewards=rewards)
    try:
        group_size = operator.index(group_size)
    except TypeError:
        raise ValueError(f"group_size must be a static positive int, got {group_size!r}") from None
    if group_size < 1:
        raise ValueError(f"group_size must be a static positive int, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards has {rewards.shape[0]} rows, not a multiple of group_size={group_size}"
        )
    return group_size


# --------------------------------------------------------------------- token level


def _reverse_scan(rewards, values, valid, gamma, lam):
    """GAE for one sequence ``[T]``; masked steps carry (next value, running advantage)."""

    def step(carry, x):
        next_value, next_adv = carry
        r, v, ok = x
        delta = r + gamma * next_value - v
        adv = delta + gamma * lam * next_adv
        carry = (jnp.where(ok, v, next_value), jnp.where(ok, adv, next_adv))
        return carry, jnp.where(ok, adv, 0.0)

    zero = jnp.zeros((), rewards.dtype)
    _, adv = jax.lax.scan(step, (zero, zero), (rewards, values, valid), reverse=True)
    return adv


def gae(rewards, values, mask, *, gamma, lam, masked="carry"):
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE").

    Over the valid tokens ``t`` of a row, with ``t'`` the next valid token
    (``V = 0`` past the last one)::

        δ_t = r_t + γ V_{t'} − V_t,    A_t = δ_t + γ λ A_{t'},    R_t = A_t + V_t.

    A reverse ``lax.scan`` over one sequence, ``vmap``-ed over rows.

    Args:
      rewards: ``[N, T]`` token rewards (e.g. from :func:`to_token_rewards`).
      values: ``[N, T]`` critic values ``V_t`` of the state before token ``t``.
      mask: ``[N, T]`` completion mask; positions with ``mask == 0`` are not
        actions (padding, or observation tokens in a multi-turn rollout).
      gamma, lam: discount and GAE λ (PPO for LMs usually uses 1.0 and 0.95).
      masked: ``"carry"`` (default; verl, tunix): masked positions are skipped —
        the recursion links each valid token to the next *valid* one, so
        observation tokens do not break it, and their rewards are ignored.
        ``"zero"`` (TRL, OpenRLHF): masked rewards and values are set to 0 and
        the plain recursion runs through them (``V_{t+1}`` regardless of mask).
        Both agree for a right-padded single-turn completion.

    Returns:
      ``(advantages, returns)``, ``[N, T]`` float32, zero outside the mask. No
      whitening: call :func:`whiten` on the whole minibatch if you want it.
    """
    rewards, values = _float(rewards), _float(values)
    _check_2d(rewards=rewards, values=values, mask=mask)
    valid = jnp.asarray(mask) > 0
    if masked == "zero":
        rewards = jnp.where(valid, rewards, 0.0)
        values = jnp.where(valid, values, 0.0)
        scan_valid = jnp.ones_like(valid)
    elif masked == "carry":
        scan_valid = valid
    else:
        raise ValueError(f"masked must be 'carry' or 'zero', got {masked!r}")
    adv = jax.vmap(_reverse_scan, in_axes=(0, 0, 0, None, None))(
        rewards, values, scan_valid, gamma, lam
    )
    adv = jnp.where(valid, adv, 0.0)
    return adv, jnp.where(valid, adv + values, 0.0)


@register_advantage("gae", level="token", needs_critic=True, hparams={"gamma": 1.0, "lam": 1.0})
def _gae_entry(*, mask, token_rewards, values, gamma, lam, **_):
    adv, ret = gae(token_rewards, values, mask, gamma=gamma, lam=lam)
    return adv, ret, None


def discounted_returns(rewards, mask, *, gamma):
    """Reward-to-go ``G_t = Σ_{s ≥ t, valid} γ^{k(s) − k(t)} r_s`` over the valid tokens of each row.

    ``k`` counts valid tokens, so masked positions are skipped (their rewards
    ignored), as in :func:`gae` with ``masked="carry"``; equals ``gae`` with
    ``values = 0`` and ``λ = 1``. Returns ``[N, T]`` float32, zero outside the mask.
    """
    rewards = _float(rewards)
    return gae(rewards, jnp.zeros_like(rewards), mask, gamma=gamma, lam=1.0)[0]


def whiten(x, mask, *, shift_mean=True, ddof=1, eps=1e-8, eps_mode="add"):
    """Masked whitening over the whole array: ``(x − μ) / sqrt(σ² + eps)``.

    ``μ = Σ m x / Σ m``, ``σ² = Σ m (x − μ)² / (Σ m − ddof)``. With
    ``shift_mean=False`` the mean is added back (only the scale changes;
    verl's and TRL's ``shift_mean`` option).

    Conventions: ``ddof=1, eps=1e-8, eps_mode="add"`` (default) is verl / TRL;
    ``ddof=0, eps_mode="max"`` is OpenRLHF (``rsqrt(max(σ², eps))``); tunix
    uses ``ddof=1``. Apply it to the full minibatch before splitting it.
    Returns float32 (for float32/bf16 input), zero outside the mask; with
    fewer than ``ddof + 1`` valid entries the variance is taken as 0.
    """
    x, m = _float(x), _float(mask)
    if x.shape != m.shape:
        raise ValueError(f"x and mask must have one shape, got {x.shape} and {m.shape}")
    if eps_mode not in ("add", "max"):
        raise ValueError(f"eps_mode must be 'add' or 'max', got {eps_mode!r}")
    n = jnp.sum(m)
    mean = _safe_div(jnp.sum(jnp.where(m != 0, m * x, 0.0)), n)
    var = _safe_div(jnp.sum(jnp.where(m != 0, m * (x - mean) ** 2, 0.0)), n - ddof)
    scale = jax.lax.rsqrt(var + eps if eps_mode == "add" else jnp.maximum(var, eps))
    out = (x - mean) * scale
    if not shift_mean:
        out = out + mean
    return jnp.where(m != 0, out, 0.0)


# ------------------------------------------------------------------ sequence level


def group_advantages(rewards, group_size, *, scale="group", eps=1e-6, ddof=1):
    """Group-relative advantages: ``A_i = (r_i − μ_g) / (σ + eps)``, ``μ_g`` the mean of ``i``'s group.

    * ``scale="group"``: ``σ`` = std of the group — GRPO (Shao et al. 2024,
      "DeepSeekMath").
    * ``scale="none"``: ``A_i = r_i − μ_g`` — Dr. GRPO (Liu et al. 2025,
      "Understanding R1-Zero-Like Training").
    * ``scale="batch"``: ``σ`` = std of all rewards of the (mini)batch — the
      group-mean / batch-std normalisation of Lite PPO (Liu et al. 2025,
      "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning").

    Groups are contiguous blocks of ``group_size`` rows. ``ddof=1`` is the
    unbiased std (verl, TRL, OpenRLHF, tunix); ``eps``: verl/tunix 1e-6
    (default), TRL 1e-4, OpenRLHF 1e-9. A group whose rewards are all equal
    gets advantage 0. ``group_size == 1`` follows verl: ``μ = 0, σ = 1`` for the
    group statistics, so ``"group"`` and ``"none"`` return the rewards.

    Returns ``[N]`` float32.
    """
    rewards = _float(rewards)
    group_size = _check_groups(rewards, group_size)
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    g = rewards.reshape(-1, group_size)
    if group_size == 1:
        mean, group_std = jnp.zeros_like(g), jnp.ones_like(g)
    else:
        mean = jnp.mean(g, axis=1, keepdims=True)
        group_std = jnp.std(g, axis=1, keepdims=True, ddof=ddof)
    centred = (g - mean).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = jnp.broadcast_to(group_std, g.shape).reshape(-1)
    else:
        std = jnp.std(rewards, ddof=ddof)
    return centred / (std + eps)


def _group_entry(scale):
    def entry(*, rewards, group_size, eps, ddof, **_):
        return group_advantages(rewards, group_size, scale=scale, eps=eps, ddof=ddof), None, None

    return entry


_GROUP_HPARAMS = {"eps": 1e-6, "ddof": 1}
register_advantage("grpo", min_group=2, hparams=_GROUP_HPARAMS)(_group_entry("group"))
register_advantage("dr_grpo", min_group=2, hparams=_GROUP_HPARAMS)(_group_entry("none"))
register_advantage("lite_ppo", min_group=2, hparams=_GROUP_HPARAMS)(_group_entry("batch"))


def rloo(rewards, group_size):
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

    ``A_i = r_i − 1/(G−1) Σ_{j≠i} r_j = G/(G−1) · (r_i − μ_g)``. Needs ``G ≥ 2``.
    Returns ``[N]`` float32.
    """
    rewards = _float(rewards)
    group_size = _check_groups(rewards, group_size)
    if group_size < 2:
        raise ValueError(f"rloo needs group_size >= 2, got {group_size}")
    g = rewards.reshape(-1, group_size)
    baseline = (jnp.sum(g, axis=1, keepdims=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


@register_advantage("rloo", min_group=2)
def _rloo_entry(*, rewards, group_size, **_):
    return rloo(rewards, group_size), None, None


def reinforce_pp(rewards, mask, *, gamma=1.0, **whiten_kwargs):
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs").

    ``A_t = whiten(G_t)`` with ``G_t`` the discounted reward-to-go of the token
    rewards (:func:`discounted_returns`; the KL penalty, if any, already in the
    token rewards) and whitening over all valid tokens of the minibatch
    (:func:`whiten`; OpenRLHF uses ``ddof=0, eps_mode="max"``).

    Args:
      rewards: ``[N, T]`` token rewards. mask: ``[N, T]``. gamma: discount.
    Returns ``[N, T]`` float32 advantages, zero outside the mask.
    """
    return whiten(discounted_returns(rewards, mask, gamma=gamma), mask, **whiten_kwargs)


@register_advantage("reinforce_pp", level="token", hparams={"gamma": 1.0})
def _reinforce_pp_entry(*, rewards, mask, token_rewards, gamma, **_):
    if token_rewards is None:
        token_rewards = to_token_rewards(rewards, mask)
    adv = reinforce_pp(token_rewards, mask, gamma=gamma)
    return adv, discounted_returns(token_rewards, mask, gamma=gamma), None


def reinforce_pp_baseline(rewards, group_size, mask, *, token_rewards=None, **whiten_kwargs):
    """REINFORCE++-baseline (Hu 2025; OpenRLHF ``reinforce_baseline``).

    Subtract the group mean from the sequence rewards, broadcast to tokens
    (``γ = 1``), then whiten over all valid tokens of the minibatch::

        A_{i,t} = whiten_t( Σ_{s ≥ t} r'_{i,s} ),  r' = token rewards with r_i − μ_g at the last token.

    Args:
      rewards: ``[N]`` sequence rewards. group_size: ``G``. mask: ``[N, T]``.
      token_rewards: optional ``[N, T]`` token rewards that already hold ``r_i``
        on the last valid token plus a per-token KL penalty
        (:func:`to_token_rewards`); the baseline is subtracted at the last
        valid token. ``None``: just ``r_i − μ_g`` on every valid token.
    Returns ``[N, T]`` float32, zero outside the mask.
    """
    rewards = _float(rewards)
    group_size = _check_groups(rewards, group_size)
    if mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"mask {mask.shape} and rewards {rewards.shape} disagree on N")
    centred = group_advantages(rewards, group_size, scale="none")
    if token_rewards is None:
        returns = to_tokens(centred, mask)
    else:
        shaped = _float(token_rewards) - to_token_rewards(rewards - centred, mask)
        returns = discounted_returns(shaped, mask, gamma=1.0)
    return whiten(returns, mask, **whiten_kwargs)


@register_advantage("reinforce_pp_baseline", level="token", min_group=2)
def _reinforce_pp_baseline_entry(*, rewards, mask, group_size, token_rewards, **_):
    return reinforce_pp_baseline(rewards, group_size, mask, token_rewards=token_rewards), None, None


def remax(rewards, greedy_rewards):
    """ReMax (Li et al. 2024): ``A_i = r_i − r_i^greedy``, the greedy completion's reward as baseline.

    Both ``[N]`` (repeat the greedy reward of a prompt over its ``G`` rows).
    """
    rewards, greedy_rewards = _float(rewards), _float(greedy_rewards)
    _check_1d(rewards=rewards, greedy_rewards=greedy_rewards)
    return rewards - greedy_rewards


@register_advantage("remax", needs_greedy=True)
def _remax_entry(*, rewards, greedy_rewards, **_):
    if greedy_rewards is None:
        raise ValueError("advantage estimator 'remax' needs `greedy_rewards`")
    return remax(rewards, greedy_rewards), None, None


def psr_nsr(rewards, *, mode, lam=0.1, threshold=0.5, correct=None):
    """Positive / negative sample reinforcement for binary rewards.

    Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement
    in LLM Reasoning".

    For binary rewards (correct iff ``r > threshold``; 0.5 suits {0, 1} and
    {−1, 1} rewards):

    | mode | correct: (A, w) | incorrect: (A, w) |
    |---|---|---|
    | ``psr`` | (+1, 1) | (0, 0) |
    | ``nsr`` | (0, 0) | (−1, 1) |
    | ``w_reinforce`` | (+λ, 1) | (−1, 1) |

    ``sample_weight`` ``w`` multiplies the loss mask, so left-out samples are
    out of the loss *and* of its normaliser. The paper recommends λ = 0.1,
    uses no KL term and one update per batch (REINFORCE through the PPO loss
    at ratio 1).

    ``correct`` ``[N]`` (0/1 or bool): the verifier's verdict, used instead of
    ``r > threshold`` when given — a shaped reward (e.g. an overlong penalty) can push a
    correct answer's reward below the threshold; the trainer passes the verdict.

    Returns ``(advantages [N], sample_weight [N])``, float32.
    """
    rewards = _float(rewards)
    _check_1d(rewards=rewards)
    if correct is None:
        correct = rewards > threshold
    else:
        correct = jnp.asarray(correct) > 0
        _check_1d(rewards=rewards, correct=correct)
    one, zero = jnp.ones_like(rewards), jnp.zeros_like(rewards)
    if mode == "psr":
        return jnp.where(correct, one, zero), correct.astype(rewards.dtype)
    if mode == "nsr":
        return jnp.where(correct, zero, -one), (~correct).astype(rewards.dtype)
    if mode == "w_reinforce":
        return jnp.where(correct, lam * one, -one), one
    raise ValueError(f"psr_nsr mode must be 'psr', 'nsr' or 'w_reinforce', got {mode!r}")


def _psr_nsr_entry(mode):
    def entry(*, rewards, correct, w_lambda=0.1, **_):
        adv, weight = psr_nsr(rewards, mode=mode, lam=w_lambda, correct=correct)
        return adv, None, weight

    return entry


register_advantage("psr")(_psr_nsr_entry("psr"))
register_advantage("nsr")(_psr_nsr_entry("nsr"))
register_advantage("w_reinforce", hparams={"w_lambda": 0.1})(_psr_nsr_entry("w_reinforce"))


# ----------------------------------------------------------------------- helpers


def to_tokens(seq_advantages, mask):
    """Broadcast ``[N]`` sequence values onto the valid tokens: ``[N, T]``, zero outside the mask."""
    seq_advantages = _float(seq_advantages)
    if seq_advantages.ndim != 1 or jnp.ndim(mask) != 2 or mask.shape[0] != seq_advantages.shape[0]:
        raise ValueError(
            f"expected seq_advantages [N] and mask [N, T], got {seq_advantages.shape}, {jnp.shape(mask)}"
        )
    return jnp.where(jnp.asarray(mask) > 0, seq_advantages[:, None], 0.0)


def last_token_index(mask):
    """Index of the last valid token of each row ``[N]`` (0 for an empty row)."""
    valid = jnp.asarray(mask) > 0
    t = valid.shape[-1]
    return jnp.where(jnp.any(valid, -1), t - 1 - jnp.argmax(valid[:, ::-1], axis=-1), 0)


def to_token_rewards(rewards, mask, *, kl=None, kl_coef=0.0):
    """Token rewards: ``r_i`` on the last valid token of row ``i``, minus ``kl_coef · kl_t`` on every valid token.

    This is the "KL in the reward" placement (Ziegler et al. 2019; Ouyang et
    al. 2022; OpenRLHF / verl PPO default): ``kl`` is a per-token estimate
    ``[N, T]`` such as ``kl_estimate(logp, ref_logp, "k1")``, treated as a
    constant (stop-gradient). Rows with no valid token get no reward.
    Returns ``[N, T]`` float32, zero outside the mask.
    """
    rewards = _float(rewards)
    valid = jnp.asarray(mask) > 0
    if rewards.ndim != 1 or valid.ndim != 2 or valid.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"expected rewards [N] and mask [N, T], got {rewards.shape}, {valid.shape}"
        )
    last = last_token_index(mask)
    is_last = (jnp.arange(valid.shape[1])[None, :] == last[:, None]) & valid
    out = jnp.where(is_last, rewards[:, None], 0.0)
    if kl is not None:
        kl = jax.lax.stop_gradient(_float(kl))
        if kl.shape != valid.shape:
            raise ValueError(f"kl must be [N, T] like mask {valid.shape}, got {kl.shape}")
        out = out - kl_coef * jnp.where(valid, kl, 0.0)
    return out
