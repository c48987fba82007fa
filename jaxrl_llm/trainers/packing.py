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

The update's gradient pass (`train.micro_tokens`) packs each minibatch into micro-batches
formed by tokens instead of rows (verl's dynamic batch size):

    micro = plan_micro_batches(prompt_mask, token_mask, budget=512, packs_per_micro=4)
    packs = pack_micro_batches(prompt_tokens, prompt_mask, tokens, micro)   # MicroPacks
    logp, ent = micro_logprobs(config, params, packs, i, fill=old_logp)    # micro-batch i

Rows are placed first-fit decreasing into `budget`-token packs, and consecutive packs form
micro-batches of `packs_per_micro`. A row keeps its prompt and its completion up to its last
token with a nonzero `token_mask` (all completion slots before it are attended, as in the
padded pass). The pack arrays are `[K, M, B]` with K = ceil(n / M) for n rows (a static
bound: a pack holds at least one row, so at most n packs are used) and the used count
`K_used` as a scalar, so the
update runs `K_used` micro-batches in a loop whose trip count is data (one compile whatever
the lengths). Per-row outputs come back `[n, T]` for every micro-batch: its own rows' values
where they are predicted, `fill` (the old log-probs) elsewhere, so the losses run unchanged
on the rows of the minibatch with the other micro-batches' rows masked out.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.models import transformer
from jaxrl_llm.models import value as value_lib
from jaxrl_llm.models.blocked_head import lm_head_logprobs
from jaxrl_llm.rollout.logprobs import token_logprobs
from jaxrl_llm.trainers.state import blocked_columns, critic_model, head_logprobs

__all__ = [
    "PackPlan",
    "Packed",
    "plan_packs",
    "pack_rows",
    "packed_completion_logprobs",
    "slot_logprobs",
    "packed_logprobs_by_pack",
    "MicroPlan",
    "MicroPacks",
    "plan_micro_batches",
    "pack_micro_batches",
    "micro_logprobs",
    "micro_values",
    "slot_values",
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
    config, params, tokens, positions, mask, segment_ids, *, temperature=1.0, vocab_block=None
):
    """Per slot of packs `[M, B]`, the log-prob of the next slot's token when it belongs to
    the same segment (0 elsewhere): every teacher-forced log-prob of every packed row, from
    one pass. A vocabulary larger than `vocab_block` (`state.blocked_columns`) runs the
    vocabulary-blocked head (no `[M, B, V]` tensor)."""
    hidden = transformer.apply_hidden(config, params, tokens, positions, mask, segment_ids)
    targets = jnp.roll(tokens, -1, axis=1)
    same = (jnp.roll(segment_ids, -1, axis=1) == segment_ids) & (segment_ids > 0)
    same = same.at[:, -1].set(False)
    vocab_block = blocked_columns(config, vocab_block)
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


def slot_values(config, critic_params, tokens, positions, mask, segment_ids):
    """Per slot of packs `[M, B]`, the critic's value of the segment's prefix up to that slot
    (the value that predicts the next slot's token), float32."""
    return value_lib.apply_value(config, critic_params, tokens, positions, mask, segment_ids)


# ----------------------------------------------------------------------------- update packing
@dataclasses.dataclass(frozen=True)
class MicroPlan:
    """A minibatch's rows in token-budget micro-batches: row r sits in pack `pack[r]` (global
    index; micro-batch `pack[r] // packs_per_micro`) at slot `offset[r]`, holding its prompt's
    valid tokens and its first `extent[r]` completion tokens."""

    pack: np.ndarray  # [n] int
    offset: np.ndarray  # [n] int
    extent: np.ndarray  # [n] int
    budget: int
    packs_per_micro: int
    used: int  # micro-batches holding rows

    @property
    def micro(self) -> np.ndarray:
        return self.pack // self.packs_per_micro


def completion_extent(token_mask) -> np.ndarray:
    """Completion tokens a row's passes must cover: up to its last nonzero mask slot."""
    token_mask = np.asarray(token_mask) > 0
    t = token_mask.shape[1]
    last = t - np.argmax(token_mask[:, ::-1], axis=1)
    return np.where(token_mask.any(axis=1), last, 0)


def plan_micro_batches(prompt_mask, token_mask, *, budget: int, packs_per_micro: int):
    """First-fit decreasing placement of the rows into `budget`-token packs, grouped into
    micro-batches of `packs_per_micro` consecutive packs. A row longer than the budget, or one
    without a prompt token, is a `ValueError` naming it."""
    prompt_len = np.asarray(prompt_mask).astype(bool).sum(axis=1)
    extent = completion_extent(token_mask)
    lengths = prompt_len + extent
    if budget < 1 or packs_per_micro < 1:
        raise ValueError(
            f"plan_micro_batches: budget ({budget}) and packs_per_micro ({packs_per_micro}) "
            "must be >= 1"
        )
    if (prompt_len == 0).any():
        raise ValueError(
            f"plan_micro_batches: row {int(np.argmin(prompt_len))} has no prompt token"
        )
    if lengths.max(initial=0) > budget:
        r = int(lengths.argmax())
        raise ValueError(f"plan_micro_batches: row {r} holds {lengths[r]} tokens > budget {budget}")
    free: list[int] = []
    pack = np.zeros(lengths.shape, np.int64)
    offset = np.zeros(lengths.shape, np.int64)
    for r in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[r])
        m = next((i for i, f in enumerate(free) if f >= n), None)
        if m is None:
            free.append(budget)
            m = len(free) - 1
        pack[r], offset[r] = m, budget - free[m]
        free[m] -= n
    used = -(-len(free) // packs_per_micro)
    return MicroPlan(pack, offset, extent, int(budget), int(packs_per_micro), int(used))


@flax.struct.dataclass
class MicroPacks:
    """The update's packed micro-batches (module docstring). Packs `[K, M, B]` int32: tokens,
    positions, mask, segment_ids (row r + 1; 0: padding). Per row: `micro` `[n]` (its
    micro-batch), `predict_pack` / `predict_slot` `[n, T]` (the slot, within its micro-batch,
    whose output predicts completion token t), `predicted` `[n, T]` (1 where t is inside the
    row's extent). `used`: int32 scalar, micro-batches that hold rows."""

    tokens: jax.Array
    positions: jax.Array
    mask: jax.Array
    segment_ids: jax.Array
    micro: jax.Array
    predict_pack: jax.Array
    predict_slot: jax.Array
    predicted: jax.Array
    used: jax.Array


def pack_micro_batches(prompt_tokens, prompt_mask, tokens, plan: MicroPlan) -> MicroPacks:
    """Lays the rows out as `plan` says, as numpy arrays (`jax.device_put` them)."""
    prompt_tokens, prompt_mask = np.asarray(prompt_tokens), np.asarray(prompt_mask)
    tokens = np.asarray(tokens)
    n, t = tokens.shape
    m, b = plan.packs_per_micro, plan.budget
    k_max = -(-n // m)  # at most n packs (each holds a row): ceil(n / m) micro-batches
    shape = (k_max * m, b)  # flattened while filling
    out = {k: np.zeros(shape, np.int32) for k in ("tokens", "positions", "mask", "segment_ids")}
    predict_pack = np.zeros((n, t), np.int32)
    predict_slot = np.zeros((n, t), np.int32)
    predicted = np.zeros((n, t), np.int32)
    for r in range(n):
        prompt = prompt_tokens[r][prompt_mask[r] > 0]
        e = int(plan.extent[r])
        seq = np.concatenate([prompt, tokens[r, :e]])
        k, o = int(plan.pack[r]), int(plan.offset[r])
        out["tokens"][k, o : o + len(seq)] = seq
        out["positions"][k, o : o + len(seq)] = np.arange(len(seq))
        out["mask"][k, o : o + len(seq)] = 1
        out["segment_ids"][k, o : o + len(seq)] = r + 1
        # completion token i sits at slot o + p + i; the slot before it predicts it
        predict_pack[r, :e] = k % m
        predict_slot[r, :e] = o + len(prompt) - 1 + np.arange(e)
        predicted[r, :e] = 1
    return MicroPacks(
        **{k: v.reshape(k_max, m, b) for k, v in out.items()},
        micro=(plan.pack // m).astype(np.int32),
        predict_pack=predict_pack,
        predict_slot=predict_slot,
        predicted=predicted,
        used=np.int32(plan.used),
    )


def _micro_rows(packs: MicroPacks, i, slots, fill):
    """Slot outputs `[M, B]` of micro-batch `i` gathered to rows `[n, T]`; `fill` where a row
    is not in micro-batch `i` or a column is past its extent."""
    mine = (packs.micro == i)[:, None] & (packs.predicted > 0)
    return jnp.where(mine, slots[packs.predict_pack, packs.predict_slot], fill)


def micro_logprobs(
    config,
    params,
    packs: MicroPacks,
    i,
    fill,
    *,
    temperature=1.0,
    chunk: int = 0,
    vocab_block: int | None = None,
    with_entropy: bool = False,
):
    """(log-probs, entropies) `[n, T]` of micro-batch `i`'s rows from one packed pass over its
    `[M, B]` packs; `fill` (log-probs) and 0 (entropies) at the other rows and past each row's
    extent. The LM head runs on the packs' slots (`head_logprobs`: sequence chunks and
    vocabulary blocks as in the padded pass); differentiable in `params`."""
    tokens = packs.tokens[i]
    segment_ids = packs.segment_ids[i]
    hidden = transformer.apply_hidden(
        config, params, tokens, packs.positions[i], packs.mask[i], segment_ids
    )
    targets = jnp.roll(tokens, -1, axis=1)
    lp, ent = head_logprobs(
        config,
        params,
        hidden,
        targets,
        temperature=temperature,
        chunk=chunk,
        with_entropy=with_entropy,
        vocab_block=vocab_block,
    )
    return _micro_rows(packs, i, lp, fill), _micro_rows(packs, i, ent, 0.0)


def micro_values(config, critic_params, packs: MicroPacks, i, fill, base=None):
    """Critic values `[n, T]` of micro-batch `i`'s rows (`fill` elsewhere), from one packed
    pass; a LoRA critic runs on `base` (`state.critic_model`)."""
    values = slot_values(
        config,
        critic_model(config, critic_params, base),
        packs.tokens[i],
        packs.positions[i],
        packs.mask[i],
        packs.segment_ids[i],
    )
    return _micro_rows(packs, i, values, fill)
