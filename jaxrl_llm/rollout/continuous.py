"""`generate_continuous`: continuous batching in one jitted program, decode attention over
the filled cache prefix only.

    rollout = generate_continuous(params, config, prompts, key, sampling, slots=16)
    rollout, stats = generate_continuous(..., return_stats=True)   # steps, refills, busy

The static sampler (`generate`) decodes all N = B·n rows together until the longest one
ends, so with long-tailed completion lengths most rows idle for most of the loop. Here a
fixed number of `slots` rows decode together, and when a row stops (a stop id, its
`max_new_tokens`, or its `max_tokens` limit) its slot takes the next waiting job. Job
r = b·n + j is sample j of prompt b; jobs start in that order, and the `Rollout` rows come
back in that order, exactly as `generate` lays them out.

The program, compiled once per (config, static sampling fields, B, P, slots, buckets,
layout, truncation on/off):

1. Prefill the B prompts once (last logits only) into a small `[L, B, P]` cache. Each
   prompt is prefilled exactly once for its n samples.
2. One loop (nested `lax.while_loop`s, below). Each iteration runs one decode step of the
   model on the `slots` rows, draws each busy slot's next token, ends the rows that stop,
   and refills the free slots with the next jobs. A refill is no model compute: it copies
   the prompt's KV from the small cache into the slot (slots `[0, P)`), resets the slot's
   cache mask, and draws the job's token 0 from the prompt's prefill logits. The loop ends
   when every job is done, so a group is returned only with all its n samples complete.
   (The decode step is the same one-token `models.apply` the static sampler runs, and a
   refill is a copy, not an append: `extend_rows` is not needed here.)
3. The slot cache is `[L, slots, P + T]` with per-row cursors (`cache["index"]` is
   int32 `[slots]`, `models.apply` writes each row at its own slot). A job's cache row has
   exactly the layout of its row in `generate`: prompt at `[0, P)`, its token t - 1 fed at
   slot `P + t - 1` with position `len(prompt) + t - 1`.

Decode attention over the filled prefix: each step reads only the first `kv_len` cache
slots, `kv_len` the smallest of a few static lengths ("buckets") that covers every busy
slot's cursor. The buckets are `P + ceil(T / 2^i)` for i = `kv_buckets - 1, ..., 0`,
rounded up to a multiple of 8 and capped at `P + T`. The loop runs in phases: an inner
`while_loop` of decode steps with one static `kv_len` while the bucket stays the same,
picked by a `lax.switch` when it changes (so the cache passes through a conditional once
per phase, not once per step). The one program holds `len(buckets)` decode steps (compile
time grows with it; `kv_buckets=1` is full attention). Memory is the same as a static
batch of `slots` rows: one `[L, slots, P + T]` cache, plus the small prompt cache.

Randomness (per-row keys): job r draws its token t with `row_step_keys(key, r, t)` =
`fold_in(fold_in(key, r), t)`, whatever slot or loop step it runs in.

**Guarantee.** For every (prompt b, sample j), i.e. row r = b·n + j, the tokens, mask and
`truncated` equal those of `generate(..., row_keys=True)` (same key, same sampling, same
`max_tokens`), and `sampler_logp` equals it up to float rounding. Exactly: each logits
vector is the same function of the same cache contents, but computed in a batch of other
rows and over a different number of (masked) cache slots, so it can differ in the last
bits (about 1e-6 relative in float32); a token can therefore differ only if a draw lands
within that rounding of a category boundary (for greedy: an arg-max tie within rounding),
after which that row diverges. The tests check tokens equal and log-probs within 1e-5.

Meshes: with a `mesh`, the program runs under it and the logical `rules` (as `generate`),
the params are used with the shardings they have, the slot cache follows the model's own
logical constraints, and every `Rollout` field comes back split by rows like the
trainer's batch (`parallel.row_sharding`); the tokens are those of one device (tested on
the 8-device CPU mesh). The per-job scatters and the refill gathers are left to the
compiler's partitioner, so this is correct rather than tuned: the sharded slot loop is not
yet measured or optimised for many devices.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl_llm import models
from jaxrl_llm.models.transformer import fuse_decode_params
from jaxrl_llm.rollout.logprobs import token_logprobs
from jaxrl_llm.rollout.sampler import (
    UNSTACK_MAX_ROWS,
    _check,
    _check_limits,
    _is_stop,
    _kv_start,
    _prefill_prompts,
    _rollout_shardings,
    _rules_tuple,
    kv_buckets_for,
    row_step_keys,
)
from jaxrl_llm.rollout.sampling import sample_tokens
from jaxrl_llm.rollout.types import PromptBatch, Rollout, SamplingParams

__all__ = ["generate_continuous", "kv_buckets_for"]

Params = Any
_STATS = ("steps", "refills", "busy_slot_steps")


def _program(
    config,
    static,
    truncate,
    unstack,
    fused,
    slots,
    buckets,
    params,
    tokens,
    mask,
    key,
    floats,
    limits,
):
    max_new, n, stop_ids, top_k, greedy = static
    temperature, top_p, min_p = floats[0], floats[1], floats[2]
    b, p = tokens.shape
    jobs, max_len = b * n, p + max_new
    if unstack:
        params = models.unstack_layers(params)
    if fused:
        params = fuse_decode_params(config, params)
    dtype = jnp.dtype(config.dtype)

    logits0, small, pmask, empty = _prefill_prompts(config, params, tokens, mask, dtype)
    logits0 = logits0[:, 0, :]
    plen = pmask.sum(axis=-1).astype(jnp.int32)
    cache = models.init_cache(config, slots, max_len, dtype)
    cache = dict(cache, index=jnp.full((slots,), p, jnp.int32))
    slot_ids = jnp.arange(slots, dtype=jnp.int32)
    none = jnp.int32(jobs)  # the job id of an idle slot: every scatter by it is dropped

    def draw(job, t, logits):
        tok = sample_tokens(
            row_step_keys(key, job, t),
            logits,
            temperature,
            top_p,
            min_p,
            top_k=top_k,
            greedy=greedy,
            truncate=truncate,
        )
        return tok, token_logprobs(logits, tok, temperature)

    def refill(state, free):
        """Free slots take the next jobs: copy the prompt's KV, draw the job's token 0."""
        s = dict(state)
        rank = jnp.cumsum(free) - 1
        new_job = s["next_job"] + rank
        take = free & (new_job < jobs)
        job = jnp.where(take, new_job, none)
        prompt = jnp.clip(job // n, 0, b - 1)
        tok, lp = draw(job, jnp.zeros_like(job), logits0[prompt])
        e = empty[prompt]
        rec = jnp.where(take & ~e, job, none)
        s["out_tokens"] = s["out_tokens"].at[rec, 0].set(tok, mode="drop")
        s["out_logp"] = s["out_logp"].at[rec, 0].set(lp, mode="drop")
        s["length"] = s["length"].at[rec].set(1, mode="drop")
        stop0 = _is_stop(tok, stop_ids) | e
        s["stopped"] = s["stopped"].at[job].set(stop0, mode="drop")
        live = take & ~stop0 & (limits[jnp.minimum(job, jobs - 1)] > 1)

        def copy(c):
            dst = jnp.where(take, slot_ids, slots)  # out of range: dropped
            k = c["k"].at[:, dst, :p].set(small["k"][:, prompt], mode="drop")
            v = c["v"].at[:, dst, :p].set(small["v"][:, prompt], mode="drop")
            row = jnp.zeros((slots, max_len), c["mask"].dtype).at[:, :p].set(pmask[prompt])
            m = jnp.where(take[:, None], row, c["mask"])
            return {"k": k, "v": v, "mask": m, "index": jnp.where(take, p, c["index"])}

        # Unconditional: the scatter drops the rows that take nothing, and updates the loop's
        # cache in place (a `lax.cond` around it made XLA copy the whole cache per step).
        s["cache"] = copy(s["cache"])
        s["slot_job"] = jnp.where(live, job, jnp.where(free, none, s["slot_job"]))
        s["slot_t"] = jnp.where(take, 1, s["slot_t"])
        s["prev"] = jnp.where(take, tok, s["prev"])
        taken = jnp.sum(take, dtype=jnp.int32)
        s["next_job"] = s["next_job"] + taken
        s["fills"] = s["fills"] + taken
        return s

    def cond(s):
        return jnp.any(s["slot_job"] < jobs) | (s["next_job"] < jobs)

    def bucket(s):
        """Index of the smallest bucket that holds every busy slot's next write."""
        need = jnp.max(jnp.where(s["slot_job"] < jobs, s["cache"]["index"] + 1, 1))
        return jnp.sum(jnp.asarray(buckets, jnp.int32) < need)

    def body(kv_len, s):
        s = dict(s)
        active = s["slot_job"] < jobs
        job = s["slot_job"]
        t = s["slot_t"]
        old_index = s["cache"]["index"]
        prompt = jnp.clip(job // n, 0, b - 1)
        pos = (plen[prompt] + t - 1)[:, None]
        m = active.astype(jnp.int32)[:, None]
        # a busy slot's valid cache slots: its left-padded prompt, then its tokens
        kv_start = _kv_start(config, p - plen[prompt])
        logits, cache = models.apply(
            config, params, s["prev"][:, None], pos, m, s["cache"], kv_len=kv_len, kv_start=kv_start
        )
        s["cache"] = dict(cache, index=jnp.where(active, cache["index"], old_index))
        tok, lp = draw(job, t, logits[:, 0, :])
        s["out_tokens"] = s["out_tokens"].at[job, t].set(tok, mode="drop")
        s["out_logp"] = s["out_logp"].at[job, t].set(lp, mode="drop")
        s["length"] = s["length"].at[job].set(t + 1, mode="drop")
        stop = _is_stop(tok, stop_ids)
        s["stopped"] = s["stopped"].at[job].set(stop, mode="drop")
        limit = limits[jnp.minimum(job, jobs - 1)]
        finished = active & (stop | (t + 1 >= limit))
        s["slot_t"] = t + active
        s["prev"] = tok
        s["steps"] = s["steps"] + 1
        s["busy"] = s["busy"] + jnp.sum(active, dtype=jnp.int32)
        return refill(s, finished | ~active)

    zero = jnp.zeros((), jnp.int32)
    state = {
        "cache": cache,
        "slot_job": jnp.full((slots,), none),
        "slot_t": jnp.zeros((slots,), jnp.int32),
        "prev": jnp.zeros((slots,), jnp.int32),
        "next_job": zero,
        "out_tokens": jnp.zeros((jobs, max_new), jnp.int32),
        "out_logp": jnp.zeros((jobs, max_new), jnp.float32),
        "length": jnp.zeros((jobs,), jnp.int32),
        "stopped": jnp.zeros((jobs,), bool),
        "steps": zero,
        "busy": zero,
        "fills": zero,
    }
    state = refill(state, jnp.ones((slots,), bool))
    first_fills = state["fills"]

    # Steps run in phases of one attention bucket: an inner loop of decode steps with a
    # static kv_len while the bucket stays the same, chosen by a `lax.switch` only when it
    # changes (a switch per step would pass the cache through a conditional every step).
    def phase(i, s):
        return jax.lax.while_loop(
            lambda s: cond(s) & (bucket(s) == i), functools.partial(body, buckets[i]), s
        )

    phases = [functools.partial(phase, i) for i in range(len(buckets))]
    state = jax.lax.while_loop(cond, lambda s: jax.lax.switch(bucket(s), phases, s), state)

    mask_out = (jnp.arange(max_new)[None, :] < state["length"][:, None]).astype(jnp.int32)
    rollout = Rollout(
        prompt_tokens=jnp.repeat(tokens, n, axis=0),
        prompt_mask=jnp.repeat(mask, n, axis=0),
        tokens=state["out_tokens"],
        mask=mask_out,
        sampler_logp=state["out_logp"],
        group_id=jnp.repeat(jnp.arange(b, dtype=jnp.int32), n),
        truncated=~state["stopped"],
    )
    stats = {  # keys: _STATS
        "steps": state["steps"],
        "refills": state["fills"] - first_fills,
        "busy_slot_steps": state["busy"],
    }
    return rollout, stats


@functools.cache
def _compiled(
    config, static, truncate, unstack, fused, slots, buckets, batch, prompt_len, mesh, rules
):
    """The jitted program for one (config, sampling, layout, slots, buckets, shape, mesh)."""
    fn = functools.partial(_program, config, static, truncate, unstack, fused, slots, buckets)
    if mesh is None:
        return jax.jit(fn)
    stats = NamedSharding(mesh, PartitionSpec())
    out = (_rollout_shardings(batch * static[1], mesh, rules), {k: stats for k in _STATS})
    return jax.jit(fn, out_shardings=out)


def generate_continuous(
    params: Params,
    config,
    prompts: PromptBatch,
    key: jax.Array,
    sampling: SamplingParams,
    *,
    slots: int,
    kv_buckets: int = 4,
    max_tokens=None,
    mesh=None,
    rules=None,
    unstack_layers: bool | None = None,
    fused: bool = False,
    return_stats: bool = False,
):
    """Sample `sampling.n` completions per prompt with `slots` rows decoding at a time.

    Args:
      params, config, prompts, key, sampling: as in `generate`.
      slots: rows in flight (>= 1). `slots >= B·n` runs every job at once.
      kv_buckets: number of static attention lengths (module docstring); 1 = attention
        over all `P + T` cache slots.
      max_tokens: optional int [B·n] per-job limits, as in `generate`.
      mesh, rules: optional device mesh and logical-axis rules, as in `generate`.
      unstack_layers, fused: as in `generate` (`unstack_layers=None`: by `slots`).
      return_stats: also return `{"steps", "refills", "busy_slot_steps"}` (int scalars):
        loop iterations (one model decode step each), slot refills after the first fill,
        and the summed number of busy slots over the steps (utilisation =
        busy_slot_steps / (steps · slots)).
    Returns:
      A `Rollout` laid out as `generate`'s (row b·n + j is sample j of prompt b), equal
      to `generate(..., row_keys=True)` as the module docstring's guarantee states;
      `(rollout, stats)` with `return_stats=True`.
    """
    _check(config, prompts, sampling)
    if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)) or slots < 1:
        raise ValueError(f"generate_continuous: slots must be an int >= 1, got {slots!r}")
    if isinstance(kv_buckets, bool) or not isinstance(kv_buckets, int) or kv_buckets < 1:
        raise ValueError(f"generate_continuous: kv_buckets must be an int >= 1, got {kv_buckets!r}")
    b, p = prompts.tokens.shape
    jobs, max_new = b * sampling.n, sampling.max_new_tokens
    slots = min(int(slots), jobs)
    if max_tokens is None:
        limits = jnp.full((jobs,), max_new, jnp.int32)
    else:
        limits = jnp.minimum(_check_limits(max_tokens, jobs, "generate_continuous"), max_new)
    tokens = jnp.asarray(prompts.tokens, jnp.int32)
    mask = jnp.asarray(prompts.mask, jnp.int32)
    floats = jnp.asarray(
        [float(sampling.temperature), float(sampling.top_p), float(sampling.min_p)], jnp.float32
    )
    truncate = bool(sampling.greedy or sampling.top_k) or bool(
        float(sampling.top_p) < 1.0 or float(sampling.min_p) > 0.0
    )
    if unstack_layers is None:
        unstack_layers = slots <= UNSTACK_MAX_ROWS
    program = _compiled(
        config,
        sampling.static_key(),
        truncate,
        bool(unstack_layers),
        bool(fused),
        slots,
        kv_buckets_for(p, max_new, kv_buckets),
        b,
        p,
        mesh,
        _rules_tuple(rules) if mesh is not None else None,
    )
    if mesh is None:
        rollout, stats = program(params, tokens, mask, key, floats, limits)
    else:
        with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(_rules_tuple(rules)):
            rollout, stats = program(params, tokens, mask, key, floats, limits)
    return (rollout, stats) if return_stats else rollout
