"""Sequence packing for teacher-forced passes: rows of different lengths share fixed token
budgets, kept apart by segment ids, and results come back per row.

    plan = plan_packs(row_lengths, budget=256, max_packs=8)          # host: where rows go
    packed = pack_rows(prompt_tokens, prompt_mask, tokens, mask, plan) # host numpy
    logp = packed_completion_logprobs(config, params, packed, temperature=1.0)  # [N, T]

A row's valid tokens (its prompt's mask-1 slots, then its completion's mask-1 slots) are
laid out contiguously in one pack, with positions 0, 1, 2, ... and a segment id of its own
(1-based; 0 marks padding). The model (`models.apply(..., segment_ids=)`) lets a query
attend only to earlier keys of its segment, so each row sees exactly what it sees unpacked:
its log-probs equal the unpacked ones up to float rounding (tested with gradients). The
pack count is padded to `max_packs`, so a jitted pass compiles once per (budget,
max_packs) whatever the lengths.

Rows are placed first-fit in order (a row goes to the first pack with room); a row longer
than the budget, or rows that need more than `max_packs` packs, are a `ValueError` naming
the numbers. Padding tokens inside a row (the prompt's left padding) are dropped: the
packed row holds only valid tokens, as the unpacked row's positions already ignore them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.models import transformer
from jaxrl_llm.models.blocked_head import lm_head_logprobs
from jaxrl_llm.rollout.logprobs import token_logprobs

__all__ = [
    "PackPlan",
    "Packed",
    "plan_packs",
    "pack_rows",
    "packed_completion_logprobs",
    "slot_logprobs",
    "packed_logprobs_by_pack",
]


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Where each of N rows goes: `pack[r]`, `offset[r]` (its first slot); M packs of
    `budget` slots, `used` of them holding rows."""

    pack: np.ndarray  # [N] int
    offset: np.ndarray  # [N] int
    budget: int
    max_packs: int
    used: int


@dataclasses.dataclass(frozen=True)
class Packed:
    """Packed inputs (numpy) and the gather indices back to rows.

    tokens, positions, mask, segment_ids: int32 `[M, budget]`.
    predict_pack, predict_slot: int32 `[N, T]`: the slot whose output predicts completion
      token t of row r (the slot before it); 0 where the completion's mask is 0.
    targets, target_mask: the completion tokens and mask `[N, T]`, as given.
    """

    tokens: np.ndarray
    positions: np.ndarray
    mask: np.ndarray
    segment_ids: np.ndarray
    predict_pack: np.ndarray
    predict_slot: np.ndarray
    targets: np.ndarray
    target_mask: np.ndarray


def plan_packs(lengths, budget: int, max_packs: int) -> PackPlan:
    """First-fit placement of rows of `lengths` tokens into at most `max_packs` packs."""
    lengths = np.asarray(lengths, np.int64)
    if budget < 1 or max_packs < 1:
        raise ValueError(f"plan_packs: budget ({budget}) and max_packs ({max_packs}) must be >= 1")
    if lengths.size and lengths.max() > budget:
        r = int(lengths.argmax())
        raise ValueError(f"plan_packs: row {r} holds {lengths[r]} tokens > budget {budget}")
    free: list[int] = []
    pack = np.zeros(lengths.shape, np.int64)
    offset = np.zeros(lengths.shape, np.int64)
    for r, n in enumerate(lengths.tolist()):
        m = next((i for i, f in enumerate(free) if f >= n), None)
        if m is None:
            free.append(budget)
            m = len(free) - 1
        pack[r], offset[r] = m, budget - free[m]
        free[m] -= n
    if len(free) > max_packs:
        raise ValueError(
            f"plan_packs: {lengths.size} rows of {int(lengths.sum())} tokens need {len(free)} "
            f"packs of {budget}; max_packs is {max_packs}"
        )
    return PackPlan(pack, offset, int(budget), int(max_packs), len(free))


def row_lengths(prompt_mask, mask) -> np.ndarray:
    """Valid tokens per row: prompt and completion together."""
    return np.asarray(prompt_mask).sum(axis=1) + np.asarray(mask).sum(axis=1)


def pack_rows(prompt_tokens, prompt_mask, tokens, mask, plan: PackPlan) -> Packed:
    """Lays the rows out as `plan` says (module docstring)."""
    prompt_tokens, prompt_mask = np.asarray(prompt_tokens), np.asarray(prompt_mask)
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    n, t = tokens.shape
    m, b = plan.max_packs, plan.budget
    out = {k: np.zeros((m, b), np.int32) for k in ("tokens", "positions", "mask", "segment_ids")}
    predict_pack = np.zeros((n, t), np.int32)
    predict_slot = np.zeros((n, t), np.int32)
    for r in range(n):
        seq = np.concatenate([prompt_tokens[r][prompt_mask[r] > 0], tokens[r][mask[r] > 0]])
        k, o, length = int(plan.pack[r]), int(plan.offset[r]), len(seq)
        if o + length > b:
            raise ValueError(f"pack_rows: row {r} ({length} tokens) does not fit the plan")
        out["tokens"][k, o : o + length] = seq
        out["positions"][k, o : o + length] = np.arange(length)
        out["mask"][k, o : o + length] = 1
        out["segment_ids"][k, o : o + length] = r + 1
        done = np.flatnonzero(mask[r] > 0)
        p = int((prompt_mask[r] > 0).sum())
        # completion token i (the i-th valid one, at completion column done[i]) sits at slot
        # o + p + i; the slot before it predicts it
        predict_pack[r, done] = k
        predict_slot[r, done] = o + p + np.arange(done.size) - 1
    return Packed(
        **out,
        predict_pack=predict_pack,
        predict_slot=np.maximum(predict_slot, 0),
        targets=tokens.astype(np.int32),
        target_mask=mask.astype(np.int32),
    )


def packed_completion_logprobs(config, params, packed: Packed, *, temperature=1.0) -> jax.Array:
    """log π(token_t | row prefix) for each completion token, `[N, T]` float32 (0 where the
    completion mask is 0), from one packed pass; differentiable in `params`."""
    hidden = transformer.apply_hidden(
        config,
        params,
        jnp.asarray(packed.tokens),
        jnp.asarray(packed.positions),
        jnp.asarray(packed.mask),
        jnp.asarray(packed.segment_ids),
    )
    h = hidden[jnp.asarray(packed.predict_pack), jnp.asarray(packed.predict_slot)]  # [N, T, H]
    logits = transformer.lm_head(config, params, h)
    lp = token_logprobs(logits, jnp.asarray(packed.targets), temperature)
    return jnp.where(jnp.asarray(packed.target_mask) > 0, lp, 0.0)


def slot_logprobs(
    config, params, tokens, positions, mask, segment_ids, *, temperature=1.0, vocab_block=0
):
    """Per slot of packs `[M, B]`, the log-prob of the next slot's token when it belongs to
    the same segment (0 elsewhere): every teacher-forced log-prob of every packed row, from
    one pass. `vocab_block > 0` uses the vocabulary-blocked head (no `[M, B, V]` tensor)."""
    hidden = transformer.apply_hidden(config, params, tokens, positions, mask, segment_ids)
    targets = jnp.roll(tokens, -1, axis=1)
    same = (jnp.roll(segment_ids, -1, axis=1) == segment_ids) & (segment_ids > 0)
    same = same.at[:, -1].set(False)
    if vocab_block:
        lp, _ = lm_head_logprobs(
            config, params, hidden, targets, temperature, vocab_block=int(vocab_block)
        )
    else:
        lp = token_logprobs(transformer.lm_head(config, params, hidden), targets, temperature)
    return jnp.where(same, lp, 0.0)


def packed_logprobs_by_pack(run_pack, packed: Packed) -> np.ndarray:
    """Completion log-probs `[N, T]` (numpy) from `run_pack(tokens, positions, mask,
    segment_ids)` called on one pack `[1, B]` at a time (a fixed shape: one compiled program
    whatever the lengths), each slot's output gathered back to its row."""
    used = int(packed.predict_pack.max(initial=0)) + 1
    out = np.zeros(packed.targets.shape, np.float32)
    for k in range(used):
        mine = (packed.predict_pack == k) & (packed.target_mask > 0)
        if not mine.any():
            continue
        slots = np.asarray(
            run_pack(
                packed.tokens[k : k + 1],
                packed.positions[k : k + 1],
                packed.mask[k : k + 1],
                packed.segment_ids[k : k + 1],
            )
        )[0]
        out[mine] = slots[packed.predict_slot[mine]]
    return out
