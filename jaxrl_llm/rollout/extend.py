"""Append tokens to live rows of a KV cache and keep decoding: the primitive under continuous
batching, partial rollouts and multi-turn episodes (none of which is built here).

    cache = models.init_cache(config, rows, max_len)                   # or a sampler's cache
    logits, cache = extend_rows(config, params, cache, tokens, counts)  # prefill / append / step
    next_positions = row_lengths(cache)

**The live-cache contract.** A cache is the `models.init_cache` dict (`k`, `v` `[L, N,
max_len, kv_heads, head_dim]`, `mask [N, max_len]`, `index`). All rows share the slot
cursor `index`; each row's tokens are the slots `< index` whose `mask` is 1, in slot
order, and a row's token positions are `0, 1, 2, ...` over those slots (the library's
`positions = cumsum(mask) - 1` convention). So a row's next position is its number of
valid slots, `row_lengths(cache)`, and masked slots ("holes") inside a row are never
attended to and change nothing. Caches filled by `models.apply` (prefill, decode steps)
and by the sampler keep this contract; so does `extend_rows`. Two things to know about the
cache `generate_with_cache` returns: its last drawn token of each row is not in it (as with
any decode loop), and a row that stopped before the loop ended holds the tokens fed after
its stop (the loop writes every row until all stop); continue such a row only after a
`reset`, or build the loop on `extend_rows` itself. Its `P + T` slots also leave at most
`T` minus the steps run for appends: a continuing caller allocates a longer cache.

A row is *live* when its cache holds its sequence so far and the caller holds what comes
next: usually the token just drawn from the last logits (not yet in the cache, as in the
sampler's loop), and/or new tokens from outside (an environment observation, a tool
result, the next turn of a chat, or a whole new prompt for a refilled row).
`extend_rows` writes, for every row `i`, its `counts[i]` tokens `tokens[i, :counts[i]]`
and returns the logits after the last of them, from which the caller draws the row's next
token. One call therefore does any mix of per-row work with static shapes:

- prefill: an empty cache, `counts` = prompt lengths;
- a decode step: `A = 1`, every row gives the token it just drew;
- an append: a row gives `[drawn token, observation tokens...]` (the drawn token must be
  included: it is not in the cache yet);
- a refill: `reset[i] = True` drops row `i`'s earlier tokens (mask only, O(max_len)),
  so its new tokens start again at position 0;
- a paused row: `counts[i] = 0` leaves the row as it is (its returned logits are 0).

Cost and capacity: every call writes `A = tokens.shape[1]` slots for *all* rows at
`[index, index + A)` (rows with fewer tokens get masked holes) and runs the model on all
`N x A` token slots, so a mix of one long append and many decode steps pays `A` per row;
keep `A` small or group appends. The caller keeps `index + A <= max_len` (a traced index
cannot be checked here; `dynamic_update_slice` would clamp the write and overwrite the
last slots). The programs compile once per `(config, N, A, max_len, reset or not)`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrl_llm import models

__all__ = ["extend_rows", "row_lengths"]


def row_lengths(cache: dict) -> jax.Array:
    """int32 `[N]`: the tokens each row of `cache` holds, i.e. the position of its next token."""
    return cache["mask"].sum(axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=0, donate_argnames=("cache",))
def extend_rows(
    config: models.ModelConfig,
    params,
    cache: dict,
    tokens: jax.Array,
    counts: jax.Array,
    *,
    reset: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Write `tokens[i, :counts[i]]` after the tokens row `i` holds; logits after the last one.

    Args:
      config: `models.ModelConfig` (static).
      params: model parameters in any form `models.apply` takes (stacked, unstacked,
        `fuse_decode_params`-fused).
      cache: a live cache (module docstring). **Donated**: its buffers are reused in place;
        use only the returned cache afterwards.
      tokens: int `[N, A]`, each row's new tokens left-aligned (entries past `counts[i]` are
        ignored).
      counts: int `[N]` in `[0, A]`: how many of the row's tokens to write (0: row untouched).
      reset: optional bool `[N]`: rows that drop their earlier tokens first (a new sequence
        from position 0, e.g. a refilled prompt). None: no row resets.
    Returns:
      `(logits, cache)`: float32 `[N, V]` logits after each row's last written token (0 for
      rows with `counts[i] == 0`), and the cache with `index + A`, row `i` holding
      `counts[i]` more tokens at positions `row_lengths(cache)[i], ...` (after the reset).
      Equal, up to float rounding, to the last-token logits of a cache-free forward of each
      row's whole sequence (its earlier tokens, then the new ones).
    """
    n, a = tokens.shape
    if cache["mask"].shape[0] != n or counts.shape != (n,):
        raise ValueError(
            f"extend_rows: tokens {tokens.shape}, counts {counts.shape} and a cache of "
            f"{cache['mask'].shape[0]} rows must agree on N"
        )
    if reset is not None and reset.shape != (n,):
        raise ValueError(f"extend_rows: reset has shape {reset.shape}; expected ({n},)")
    counts = jnp.clip(counts.astype(jnp.int32), 0, a)
    # Right-align each row's tokens in the A new slots so the last slot holds every written
    # row's last token: `apply(..., last_only=True)` then gives the logits wanted, never [N, A, V].
    slot = jnp.arange(a, dtype=jnp.int32)[None, :]
    shift = (a - counts)[:, None]
    valid = slot >= shift
    src = jnp.clip(slot - shift, 0, a - 1)
    new = jnp.where(valid, jnp.take_along_axis(tokens.astype(jnp.int32), src, axis=1), 0)
    mask = valid.astype(jnp.int32)

    old_mask = cache["mask"]
    if reset is not None:
        old_mask = jnp.where(reset[:, None], jnp.zeros_like(old_mask), old_mask)
    start = row_lengths({"mask": old_mask})
    positions = start[:, None] + jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, cache = models.apply(
        config, params, new, positions, mask, dict(cache, mask=old_mask), last_only=True
    )
    logits = jnp.where(counts[:, None] > 0, logits[:, 0, :], 0.0)
    return logits, cache
