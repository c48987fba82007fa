"""Partial rollouts: completions longer than a per-step token budget are paused and continued.

    rows = start_rows(prompts, key, n=8, max_new_tokens=1024)       # nothing drawn yet
    rows = continue_rows(params, config, rows, sampling, budget=256) # <= 256 more tokens per row
    done = rows.select(np.flatnonzero(rows.finished))               # ... later, other params
    rollout = done.to_rollout()

`PartialRows` (host numpy) holds each row's prompt, the completion tokens drawn so far, the
sampler's log-prob of each token (under the parameters that drew it: the behaviour policy,
kept across pauses) and the version (trainer step) of those parameters per token. A call of
`continue_rows` runs one jitted program on the rows that are not finished: the prompt and
the completion so far are prefilled together (teacher-forced, one pass), then each row
decodes up to `budget` more tokens. A row is finished when it drew a stop id or holds
`max_new_tokens` tokens (or its own limit, `start_rows(..., max_tokens=)`, as in `generate`).

**Keys.** Row r (= b·n + j, sample j of prompt b, in the `start_rows` call) draws its t-th
completion token with `fold_in(fold_in(key, r), t)`, the per-row scheme of
`generate(..., row_keys=True)` and `generate_continuous`, however the completion is cut
into segments. So with the same parameters, a completion continued over several calls has
the tokens of one uninterrupted `generate(..., row_keys=True)` and its log-probs up to float
rounding (the prefix is prefilled in one pass instead of decoded token by token; about 1e-6
relative in float32). A token can differ only where a draw lands within that rounding of a
category boundary, as for continuous batching (`docs/rollouts.md`). Rows are independent:
which rows are continued together changes nothing but rounding.

**Cost.** Each call prefills `P + prefix` tokens per row, the prefix rounded up to a multiple
of `budget` (so a run compiles at most `ceil(max_new_tokens / budget) + 1` programs per
prompt width and row count), and decodes until its longest row has drawn `budget` tokens.
The KV cache of a paused row is not kept between calls (the parameters that would reuse it
have changed); the recomputation is one teacher-forced pass.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import models
from jaxrl_llm.rollout import sampler as sampler_lib
from jaxrl_llm.rollout.types import PromptBatch, Rollout, SamplingParams

__all__ = ["PartialRows", "start_rows", "continue_rows"]


@dataclasses.dataclass
class PartialRows:
    """R completions in progress (host numpy; P the prompt width, T = `max_new_tokens`)."""

    prompt_tokens: np.ndarray  # [R, P] int32, left-padded
    prompt_mask: np.ndarray  # [R, P] int32
    tokens: np.ndarray  # [R, T] int32: the completion so far, 0 past `length`
    logp: np.ndarray  # [R, T] float32: each token's sampler log-prob (the policy that drew it)
    versions: np.ndarray  # [R, T] int32: the parameters' version that drew each token, -1 past
    length: np.ndarray  # [R] int32: tokens drawn so far
    stopped: np.ndarray  # [R] bool: the last token is a stop id
    keys: np.ndarray  # [R, ...] uint32: each row's key data, `fold_in(key, r)`
    group_id: np.ndarray  # [R] int32: the prompt of each row (`start_rows`' b)
    # [R] int32 per-row completion limits (<= T; `start_rows(max_tokens=)`); None: T for all
    limit: np.ndarray | None = None

    def __post_init__(self):
        rows = self.length.shape[0]
        for f in dataclasses.fields(self):
            x = getattr(self, f.name)
            if x is not None and x.shape[0] != rows:
                raise ValueError(f"PartialRows.{f.name} has {x.shape[0]} rows")

    @property
    def max_new_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def limits(self) -> np.ndarray:
        """[R] int32: each row's completion limit (`max_new_tokens` unless `limit` is set)."""
        t = self.max_new_tokens
        if self.limit is None:
            return np.full(len(self), t, np.int32)
        return np.minimum(self.limit, t).astype(np.int32)

    @property
    def finished(self) -> np.ndarray:
        """[R] bool: stopped, or holding its limit (`max_new_tokens`, or `limit`) of tokens."""
        return self.stopped | (self.length >= self.limits)

    def __len__(self) -> int:
        return int(self.length.shape[0])

    def select(self, idx) -> PartialRows:
        """The rows `idx` (an index array), in that order."""
        idx = np.asarray(idx, np.int64)
        return PartialRows(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[idx]
                for f in dataclasses.fields(self)
            }
        )

    @staticmethod
    def concat(parts) -> PartialRows:
        """Rows of several `PartialRows` (same `max_new_tokens`); prompts left-padded to the
        widest."""
        parts = list(parts)
        if not parts:
            raise ValueError("PartialRows.concat: no parts")
        if len({p.max_new_tokens for p in parts}) != 1:
            raise ValueError("PartialRows.concat: parts differ in max_new_tokens")
        width = max(p.prompt_tokens.shape[1] for p in parts)

        def widen(x):
            return np.pad(x, ((0, 0), (width - x.shape[1], 0)))

        out = {}
        for f in dataclasses.fields(PartialRows):
            if f.name == "limit":
                limited = any(p.limit is not None for p in parts)
                out[f.name] = np.concatenate([p.limits for p in parts]) if limited else None
                continue
            xs = [getattr(p, f.name) for p in parts]
            if f.name in ("prompt_tokens", "prompt_mask"):
                xs = [widen(x) for x in xs]
            out[f.name] = np.concatenate(xs)
        return PartialRows(**out)

    def to_rollout(self) -> Rollout:
        """The rows as a `Rollout` (numpy): `truncated` = not stopped."""
        mask = (np.arange(self.max_new_tokens)[None, :] < self.length[:, None]).astype(np.int32)
        return Rollout(
            prompt_tokens=self.prompt_tokens.astype(np.int32),
            prompt_mask=self.prompt_mask.astype(np.int32),
            tokens=np.where(mask > 0, self.tokens, 0).astype(np.int32),
            mask=mask,
            sampler_logp=np.where(mask > 0, self.logp, 0.0).astype(np.float32),
            group_id=self.group_id.astype(np.int32),
            truncated=~self.stopped,
        )


def start_rows(
    prompts: PromptBatch, key: jax.Array, n: int, max_new_tokens: int, *, max_tokens=None
) -> PartialRows:
    """`n` empty completions per prompt: row r = b·n + j with key data `fold_in(key, r)`.

    `max_tokens`: optional int `[B·n]` per-row limits, as in `generate` (each >= 1; those past
    `max_new_tokens` act as it): row r is finished, as truncated, once it holds
    `max_tokens[r]` tokens.
    """
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"start_rows: n ({n}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    tokens, mask = np.asarray(prompts.tokens, np.int32), np.asarray(prompts.mask, np.int32)
    if tokens.ndim != 2 or tokens.shape != mask.shape:
        raise ValueError(f"start_rows: prompts must be [B, P], got {tokens.shape} / {mask.shape}")
    rows = tokens.shape[0] * n
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows, dtype=jnp.int32))
    limit = None
    if max_tokens is not None:
        limit = np.asarray(max_tokens)
        if limit.shape != (rows,) or not np.issubdtype(limit.dtype, np.integer):
            raise ValueError(
                f"start_rows: max_tokens must be int of shape ({rows},) = (B·n,), "
                f"got {limit.dtype} {limit.shape}"
            )
        if rows and limit.min() < 1:
            raise ValueError(f"start_rows: max_tokens must be >= 1, got min {limit.min()}")
        limit = np.minimum(limit, max_new_tokens).astype(np.int32)
    return PartialRows(
        prompt_tokens=np.repeat(tokens, n, axis=0),
        prompt_mask=np.repeat(mask, n, axis=0),
        tokens=np.zeros((rows, max_new_tokens), np.int32),
        logp=np.zeros((rows, max_new_tokens), np.float32),
        versions=np.full((rows, max_new_tokens), -1, np.int32),
        length=np.zeros(rows, np.int32),
        stopped=np.zeros(rows, bool),
        keys=np.asarray(jax.random.key_data(row_keys)),
        group_id=np.repeat(np.arange(tokens.shape[0], dtype=np.int32), n),
        limit=limit,
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _segment(
    config, static, truncate, kv_buckets, params, tokens, mask, keys, offsets, idle, limits, floats
):
    """Prefill [R, W] (prompt + completion so far, left-padded), then decode <= budget tokens
    per row with its own keys; rows with `idle` draw nothing. `kv_buckets` as in `generate`."""
    budget = static[0]
    rows, width = tokens.shape
    cache = models.init_cache(config, rows, width + budget)
    logits, cache, plen, empty = sampler_lib._prefill(config, params, tokens, mask, 1, cache)
    keys = jax.random.wrap_key_data(keys)
    buckets = sampler_lib.kv_buckets_for(width, budget, kv_buckets) if kv_buckets else ()
    _, _, out_tokens, out_logp, length = sampler_lib._decode(
        config, static, truncate, params, keys, floats, logits, cache, plen, empty | idle,
        limits, offsets=offsets, kv_buckets=buckets,
    )  # fmt: skip
    valid = jnp.arange(budget)[None, :] < length[:, None]
    stopped = jnp.any(sampler_lib._is_stop(out_tokens, static[2]) & valid, axis=1)
    return out_tokens, out_logp, length, stopped


def _left_aligned(rows: PartialRows, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's prompt (with its padding mask) then its completion so far, right-aligned in
    P + the longest completion rounded up to a multiple of `budget` slots (masked slots in
    front: positions count valid slots only, so the shift changes nothing)."""
    p = rows.prompt_tokens.shape[1]
    width = p + -(-int(rows.length.max(initial=0)) // budget) * budget
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for r in range(len(rows)):
        n = int(rows.length[r])
        start = width - p - n
        tokens[r, start : start + p] = rows.prompt_tokens[r]
        mask[r, start : start + p] = rows.prompt_mask[r]
        tokens[r, width - n :] = rows.tokens[r, :n]
        mask[r, width - n :] = 1
    return tokens, mask


def continue_rows(
    params,
    config,
    rows: PartialRows,
    sampling: SamplingParams,
    budget: int,
    *,
    version: int = 0,
    kv_buckets: int = 0,
) -> PartialRows:
    """Draws up to `budget` more tokens for every unfinished row of `rows` (module docstring).

    Args:
      params, config: the policy now (`models.ModelConfig` static).
      rows: `PartialRows` from `start_rows` or an earlier call (not modified).
      sampling: `SamplingParams`; `max_new_tokens` must equal `rows.max_new_tokens`, `n` is
        ignored (rows were laid out by `start_rows`).
      budget: tokens per row in this call, >= 1.
      version: recorded in `versions` for the tokens drawn here (e.g. the trainer step).
      kv_buckets: decode attention over the filled prefix in this many length buckets, as
        `generate(..., kv_buckets=)` (the call's cache is the prefilled width + `budget`).
    Returns:
      New `PartialRows`: finished rows unchanged, the others longer by up to `budget` tokens.
    """
    if int(budget) < 1:
        raise ValueError(f"continue_rows: budget must be >= 1, got {budget}")
    sampler_lib._check_buckets(kv_buckets)
    if sampling.max_new_tokens != rows.max_new_tokens:
        raise ValueError(
            f"continue_rows: sampling.max_new_tokens = {sampling.max_new_tokens} but the rows "
            f"hold completions of up to {rows.max_new_tokens} tokens"
        )
    idle = rows.finished
    if len(rows) == 0 or idle.all():
        return rows
    if sampler_lib._kv_start(config, 0) is not None:
        sampler_lib._check_left_padded(
            rows.prompt_mask, f"continue_rows: decode_attention={config.decode_attention!r}"
        )
    budget = int(min(budget, rows.max_new_tokens))
    tokens, mask = _left_aligned(rows, budget)
    limits = np.where(idle, 1, np.minimum(budget, rows.limits - rows.length))
    static = sampling.replace(max_new_tokens=budget, n=1).static_key()
    truncate = bool(sampling.greedy or sampling.top_k) or not (
        sampling.top_p >= 1.0 and sampling.min_p <= 0.0
    )
    floats = np.asarray([sampling.temperature, sampling.top_p, sampling.min_p], np.float32)
    out = _segment(
        config,
        static,
        truncate,
        int(kv_buckets),
        params,
        tokens,
        mask,
        rows.keys,
        rows.length.astype(np.int32),
        idle,
        limits.astype(np.int32),
        floats,
    )
    new_tokens, new_logp, new_len, stopped = (np.asarray(x) for x in jax.device_get(out))
    res = dataclasses.replace(
        rows,
        tokens=rows.tokens.copy(),
        logp=rows.logp.copy(),
        versions=rows.versions.copy(),
        length=rows.length.copy(),
        stopped=rows.stopped.copy(),
    )
    for r in np.flatnonzero(~idle):
        start, k = int(rows.length[r]), int(new_len[r])
        res.tokens[r, start : start + k] = new_tokens[r, :k]
        res.logp[r, start : start + k] = new_logp[r, :k]
        res.versions[r, start : start + k] = version
        res.length[r] = start + k
        res.stopped[r] = bool(stopped[r])
    return res
