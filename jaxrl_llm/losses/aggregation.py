"""Reduce a per-token loss ``[B, T]`` to a scalar, with gradient accumulation in mind.

Every loss in :mod:`jaxrl_llm.losses` builds a per-token quantity ``x[i, t]``
and hands it to :func:`aggregate` with the loss mask ``m[i, t]`` (the
completion mask, already multiplied by any per-sequence ``sample_weight``, so
samples with weight 0 leave both the sum and the normaliser). With
``n_i = Σ_t m[i, t]`` tokens in row ``i`` and ``w_i = max_t m[i, t]`` its
sequence weight (1 for a kept row, 0 for a dropped or padding row):

| mode | value | used by |
|---|---|---|
| ``token-mean`` | ``Σ_{i,t} m x / N_tok``, ``N_tok = Σ_{i,t} m`` | DAPO, Lite PPO, verl's default |
| ``token-sum`` | ``Σ_{i,t} m x`` | sums (no normaliser) |
| ``seq-mean-token-mean`` | ``Σ_i w_i (Σ_t m x / n_i) / N_seq``, ``N_seq = Σ_i w_i`` | GRPO paper, GSPO |
| ``seq-mean-token-sum`` | ``Σ_i Σ_t m x / N_seq`` | sequence-level REINFORCE |
| ``seq-mean-token-sum-norm`` | ``Σ_i Σ_t m x / (C · N_seq)`` | Dr. GRPO (``C`` = max response length) |

Gradient accumulation is exact: each row's contribution depends only on that
row, so passing the *global* counts ``num_tokens = N_tok`` and
``num_seqs = N_seq`` of the whole minibatch (see :func:`global_counts`) makes
the sum over micro-batches equal the full-minibatch value, whatever the split.
Left as ``None`` they are computed from the arrays given (correct for a single
call on the whole minibatch; for micro-batches they give a mean of means).

Conventions. ``seq-mean-token-sum-norm``: ``norm_constant`` defaults to
``T = per_token.shape[-1]`` (the padded response length, verl's
``loss_scale_factor=None`` default; TRL divides by ``max_completion_length``,
which is ``T`` in our padding). Like the Dr. GRPO paper, TRL and current
verl, this module also averages over sequences, so the scale does not grow
with the batch (older verl releases divided by ``C`` only). A normaliser of 0 (everything masked) gives a
loss of 0, not NaN.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["MODES", "aggregate", "global_counts", "sequence_weight"]

MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def _float(x):
    """Promote to at least float32 (bf16 in, float32 out; float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_div(num, den):
    """``num / den`` with 0 where ``den == 0`` (gradient-safe)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def sequence_weight(mask):
    """``w_i = max_t mask[i, t]`` (0 for rows with no kept token). ``[B, T] -> [B]``."""
    mask = _float(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {mask.shape}")
    return jnp.max(jnp.maximum(mask, 0.0), axis=-1)


def global_counts(mask):
    """The normalisers of a whole minibatch: ``(num_tokens, num_seqs)``.

    ``num_tokens = Σ_{i,t} mask``; ``num_seqs = Σ_i max_t mask[i, t]``. Compute
    them once on the (weighted) loss mask of the full minibatch and pass them
    to every micro-batch call so that gradient accumulation is exact.
    """
    mask = _float(mask)
    return jnp.sum(mask), jnp.sum(sequence_weight(mask))


def aggregate(per_token, mask, mode, *, num_tokens=None, num_seqs=None, norm_constant=None):
    """Aggregate a per-token quantity ``[B, T]`` to a scalar (formulas in the module docstring).

    Args:
      per_token: ``[B, T]`` per-token values (any float dtype; promoted to float32).
      mask: ``[B, T]`` loss mask (0/1, or a completion mask times per-sequence
        sample weights).
      mode: one of :data:`MODES`.
      num_tokens: global ``Σ mask`` over the whole minibatch (``token-mean``).
      num_seqs: global number of kept sequences (``seq-mean-*`` modes).
      norm_constant: the constant ``C`` of ``seq-mean-token-sum-norm``; defaults to ``T``.

    Returns:
      A float32 scalar.
    """
    if mode not in MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes: {', '.join(MODES)}")
    per_token, mask = _float(per_token), _float(mask)
    if per_token.ndim != 2 or per_token.shape != mask.shape:
        raise ValueError(
            f"per_token and mask must both be [B, T]; got per_token {per_token.shape}, mask {mask.shape}"
        )
    dtype = jnp.promote_types(per_token.dtype, mask.dtype)
    per_token, mask = per_token.astype(dtype), mask.astype(dtype)
    # where(), not a product, so that NaN/inf in padded positions cannot leak in.
    masked = jnp.where(mask != 0, per_token * mask, 0.0)
    if mode == "token-sum":
        return jnp.sum(masked)
    if mode == "token-mean":
        n = jnp.sum(mask) if num_tokens is None else jnp.asarray(num_tokens, dtype)
        return _safe_div(jnp.sum(masked), n)
    n_seq = jnp.sum(sequence_weight(mask)) if num_seqs is None else jnp.asarray(num_seqs, dtype)
    row_sum = jnp.sum(masked, axis=-1)
    if mode == "seq-mean-token-mean":
        row = sequence_weight(mask) * _safe_div(row_sum, jnp.sum(mask, axis=-1))
        return _safe_div(jnp.sum(row), n_seq)
    if mode == "seq-mean-token-sum":
        return _safe_div(jnp.sum(row_sum), n_seq)
    c = per_token.shape[-1] if norm_constant is None else norm_constant
    return _safe_div(jnp.sum(row_sum), n_seq * jnp.asarray(c, dtype))
