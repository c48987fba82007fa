"""`generate`: one jitted program per shape does prefill + a `while_loop` decode.

    rollout = generate(params, config, prompts, key, sampling, *, mesh=None, rules=None)

The program, compiled once per (config, batch bucket B, prompt bucket P,
static sampling fields, mesh, rules):

1. Prefill the B distinct prompts once (last-position logits only,
   `apply(..., last_only=True)`) into a small [L, B, P] KV cache; copy it `n`
   times into the rows of the full [L, N = B·n, P + T] cache, which is a
   donated input buffer, updated in place from there on.
2. Draw token 0 for all N rows (the n copies of a prompt draw independently).
   Sampled programs hold two decode loops behind one `lax.cond`, chosen once
   per call: the untruncated fast path, or the top-p / min-p thresholds when
   top_p < 1 or min_p > 0 (both traced, so neither recompiles).
3. `lax.while_loop` over steps 1..T-1: feed the last token at position
   `len(prompt) + t - 1`, draw the next token, record
   `token_logprobs(logits, token, temperature)`. The loop exits as soon as
   every row has emitted a stop id (or at T). A row's mask is 1 up to and
   including its stop token; later positions hold token 0, log-prob 0.

Randomness: step t draws with `fold_in(key, t)`, one uniform per row
(`sampling.sample_tokens`), so the same key gives the same rollout, on any mesh.
With `row_keys=True`, row r draws its token t with `row_step_keys(key, r, t)` instead,
so a row's tokens do not depend on the batch it runs in: the scheme of
`generate_continuous` (continuous.py), which equals this sampler row for row.
`max_tokens` (per-row limits) ends rows early, as truncated.

Sharding: `params` are used with the shardings they already have (the
trainer's own pytree: no copy, no second model; their `in_shardings` are
left to the arrays, explicit `out_shardings` fix the outputs). With a `mesh`, prompts and
every `Rollout` field take `parallel.row_sharding(mesh, rules, rows=...)` (the mesh axes
that `rules` map the logical `batch` axis to: the trainer's row sharding, so its batch
needs no reshard), the KV cache follows `models.cache_logical_axes` under the same rules
(rows over the batch axes, KV heads over those of `kv_heads`), and the model's own
logical constraints apply inside (run under `jax.sharding.set_mesh` and
`flax.linen.logical_axis_rules`). A row count the batch axes do not divide (an
evaluation's last prompts) is replicated along the axes that do not divide it, with a
warning, instead of failing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxrl_llm import models
from jaxrl_llm.models import attention_kernels
from jaxrl_llm.models.transformer import fuse_decode_params
from jaxrl_llm.parallel import axes as A
from jaxrl_llm.parallel import sharding as sharding_lib
from jaxrl_llm.rollout.logprobs import token_logprobs
from jaxrl_llm.rollout.sampling import sample_tokens
from jaxrl_llm.rollout.types import PromptBatch, Rollout, SamplingParams

__all__ = [
    "row_step_keys",
    "generate",
    "generate_with_cache",
    "generate_seeds",
    "init_sampler_cache",
]

Params = Any


def _rules_tuple(rules) -> tuple:
    if rules is None:
        rules = A.DEFAULT_RULES
    return tuple(
        (
            str(name),
            None if axis is None else (tuple(axis) if isinstance(axis, (list, tuple)) else axis),
        )
        for name, axis in rules
    )


def _named(mesh, rules, names, shape) -> NamedSharding:
    """Sharding from logical names; a mesh axis that does not divide its dimension is dropped."""
    return NamedSharding(mesh, A.logical_to_spec(names, rules, mesh, shape, what="sampler"))


def _cache_shardings(config, rows, max_len, mesh, rules):
    if mesh is None:
        return None
    kv = (config.num_layers, rows, max_len, config.num_kv_heads, config.head_dim)
    shapes = {"k": kv, "v": kv, "mask": (rows, max_len), "index": ()}
    return {
        name: _named(mesh, rules, names, shapes[name])
        for name, names in models.cache_logical_axes(config).items()
    }


def _rollout_shardings(rows, mesh, rules):
    """Every `Rollout` field split by rows, exactly as the trainer's `row_sharding` splits them."""
    if mesh is None:
        return None
    sh = sharding_lib.row_sharding(mesh, rules, rows=rows)
    return Rollout(
        prompt_tokens=sh,
        prompt_mask=sh,
        tokens=sh,
        mask=sh,
        sampler_logp=sh,
        group_id=sh,
        truncated=sh,
    )


@functools.cache
def _cache_initializer(config, rows: int, max_len: int, mesh, rules):
    fn = functools.partial(models.init_cache, config, rows, max_len)
    return jax.jit(fn, out_shardings=_cache_shardings(config, rows, max_len, mesh, rules))


def init_sampler_cache(config, rows: int, max_len: int, *, mesh=None, rules=None) -> dict:
    """A zeroed KV cache for `rows` rows and `max_len = P + T` slots, sharded like the sampler's."""
    rules = _rules_tuple(rules)
    return _cache_initializer(config, int(rows), int(max_len), mesh, rules)()


# ----------------------------------------------------------------------- program
def kv_buckets_for(prompt_len: int, max_new_tokens: int, buckets: int) -> tuple[int, ...]:
    """The static attention lengths of a decode step, ascending: `P + ceil(T / 2^i)` for
    i < `buckets`, rounded up to a multiple of 8, and always the whole cache `P + T`
    (`generate(..., kv_buckets=)`, `generate_continuous`)."""
    max_len = prompt_len + max_new_tokens
    out = set()
    for i in range(buckets):
        kv = prompt_len + math.ceil(max_new_tokens / 2**i)
        out.add(min(max_len, -(-kv // 8) * 8))
    out.add(max_len)
    return tuple(sorted(out))


def row_step_keys(key: jax.Array, rows: jax.Array, steps) -> jax.Array:
    """Per-row keys: `fold_in(fold_in(key, rows[i]), steps[i])` for each i, typed keys [N].

    The per-row key scheme (`generate(..., row_keys=True)`, `generate_continuous`): row
    r = b·n + j (prompt b, sample j) draws its token t with `row_step_keys(key, r, t)`,
    whatever batch, slot or step of the loop it runs in.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    steps = jnp.broadcast_to(jnp.asarray(steps, jnp.int32), rows.shape)
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(key, r), t))(rows, steps)


def _prefill_prompts(config, params, tokens, mask, dtype):
    """Prefill B prompts into a [L, B, P] cache: (last logits [B, 1, V], cache, mask, empty [B])."""
    b, p = tokens.shape
    # A fully padded row (batch padding) gets one valid slot so attention stays finite.
    empty = mask.sum(axis=-1) == 0
    mask = mask.at[:, -1].set(jnp.where(empty, 1, mask[:, -1]))
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    small = models.init_cache(config, b, p, dtype)
    logits, small = models.apply(config, params, tokens, positions, mask, small, last_only=True)
    return logits, small, mask, empty


def _prefill(config, params, tokens, mask, n, cache):
    """Prefill B prompts, write them n times into the N-row cache. Returns (logits [N, V], cache, plen [N])."""
    b, p = tokens.shape
    logits, small, mask, empty = _prefill_prompts(config, params, tokens, mask, cache["k"].dtype)
    rep = lambda x: jnp.repeat(x, n, axis=1) if n > 1 else x  # noqa: E731
    zero = jnp.zeros((), jnp.int32)
    k = jax.lax.dynamic_update_slice(cache["k"], rep(small["k"]), (zero,) * 5)
    v = jax.lax.dynamic_update_slice(cache["v"], rep(small["v"]), (zero,) * 5)
    cache_mask = (
        jnp.zeros_like(cache["mask"])
        .at[:, :p]
        .set(jnp.repeat(mask, n, axis=0).astype(cache["mask"].dtype))
    )
    cache = {"k": k, "v": v, "mask": cache_mask, "index": jnp.asarray(p, jnp.int32)}
    logits = jnp.repeat(logits[:, 0, :], n, axis=0)
    plen = jnp.repeat(mask.sum(axis=-1), n, axis=0)
    return logits, cache, plen, jnp.repeat(empty, n, axis=0)


def _kv_start(config, first_slot):
    """`first_slot` (int `[N]`: each row's first valid cache slot, its prompt left-padded and
    its tokens following without holes) for `models.apply(..., kv_start=)` when
    `config.decode_attention` runs a kernel on this platform; None (the XLA path) otherwise.
    A kernel this platform cannot run is a `ValueError` here, before anything compiles."""
    platform = jax.default_backend()
    impl = attention_kernels.resolve_decode(config.decode_attention, platform=platform)
    if impl == "xla":
        return None
    attention_kernels.check_platform(
        impl, platform, interpret=config.attention_interpret, field="decode_attention"
    )
    return jnp.asarray(first_slot, jnp.int32)


def _is_stop(tokens, stop_ids):
    if not stop_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(stop_ids, tokens.dtype))


def _decode(
    config,
    static,
    truncate,
    params,
    key,
    floats,
    logits,
    cache,
    plen,
    empty,
    limits=None,
    *,
    row_keys=False,
    offsets=None,
    kv_buckets=(),
):
    """Draw token 0 from the prefill logits, then the while_loop over steps 1..T-1.

    `kv_buckets` (ascending cache lengths, the last one the cache's): the steps run in
    phases, each attending over the smallest bucket that holds every slot written so far
    (`apply(..., kv_len=)`), not over the whole cache; () attends over every slot.

    `limits` (optional int [N]): row r ends after `limits[r]` tokens (as truncated).
    `row_keys`: token t of row r is drawn with `row_step_keys(key, r, t)`. With `offsets`
    (int [N], partial rollouts), `key` is instead a typed key per row [N] and row r's t-th
    token here is drawn with `fold_in(key[r], offsets[r] + t)`: the row's own key scheme
    resumed after the `offsets[r]` tokens it already holds.
    """
    max_new, n, stop_ids, top_k, greedy = static
    temperature, top_p, min_p = floats[0], floats[1], floats[2]
    rows = logits.shape[0]
    row_ids = jnp.arange(rows, dtype=jnp.int32)

    def keys(t):
        if offsets is not None:
            return jax.vmap(jax.random.fold_in)(key, offsets + t)
        return row_step_keys(key, row_ids, t) if row_keys else jax.random.fold_in(key, t)

    def draw(t, logits):
        tok = sample_tokens(
            keys(t),
            logits,
            temperature,
            top_p,
            min_p,
            top_k=top_k,
            greedy=greedy,
            truncate=truncate,
        )
        return tok, token_logprobs(logits, tok, temperature)

    tok, lp = draw(0, logits)
    alive = ~empty
    out_tokens = jnp.zeros((rows, max_new), jnp.int32).at[:, 0].set(jnp.where(alive, tok, 0))
    out_logp = jnp.zeros((rows, max_new), jnp.float32).at[:, 0].set(jnp.where(alive, lp, 0.0))
    length = alive.astype(jnp.int32)
    done = empty | _is_stop(tok, stop_ids)
    if limits is not None:
        done = done | (limits <= 1)
    ones = jnp.ones((rows, 1), jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    kv_start = _kv_start(config, cache["index"] - plen)  # the prompt ends at the cursor

    def cond(state):
        t, _, _, done, *_ = state
        return (t < max_new) & ~jnp.all(done)

    def body(state, kv_len=None):
        t, cache, prev, done, out_tokens, out_logp, length = state
        pos = (plen + t - 1)[:, None]
        logits, cache = models.apply(
            config, params, prev[:, None], pos, ones, cache, kv_len=kv_len, kv_start=kv_start
        )
        tok, lp = draw(t, logits[:, 0, :])
        alive = ~done
        out_tokens = jax.lax.dynamic_update_slice(
            out_tokens, jnp.where(alive, tok, 0)[:, None], (zero, t)
        )
        out_logp = jax.lax.dynamic_update_slice(
            out_logp, jnp.where(alive, lp, 0.0)[:, None], (zero, t)
        )
        length = length + alive
        done = done | _is_stop(tok, stop_ids)
        if limits is not None:
            done = done | (t + 1 >= limits)
        return t + 1, cache, tok, done, out_tokens, out_logp, length

    state = (jnp.asarray(1, jnp.int32), cache, tok, done, out_tokens, out_logp, length)
    if not kv_buckets:
        state = jax.lax.while_loop(cond, body, state)
    else:
        # Step t writes slot index + t - 1 (the shared cursor starts at the prompt width) and
        # attends to every slot before it: bucket k serves the steps with index + t <= k, in
        # order, as t only grows.
        start = cache["index"] - 1
        for k in kv_buckets:
            state = jax.lax.while_loop(
                lambda s, k=k: cond(s) & (start + s[0] < k),
                functools.partial(body, kv_len=int(k)),
                state,
            )
    _, cache, _, done, out_tokens, out_logp, length = state
    return cache, done, out_tokens, out_logp, length


def _program(
    config,
    static,
    unstack,
    constrain,
    params,
    prompt_tokens,
    prompt_mask,
    key,
    floats,
    cache,
    limits=None,
    *,
    fused=False,
    row_keys=False,
    kv_buckets=(),
):
    max_new, n, stop_ids, top_k, greedy = static
    b, p = prompt_tokens.shape
    if unstack:  # one copy of the layer weights per call, none per decode step
        params = models.unstack_layers(params)
    if fused:  # one copy of the q/k/v and gate/up kernels per call, fused (opt-in)
        params = fuse_decode_params(config, params)

    logits, cache, plen, empty = _prefill(config, params, prompt_tokens, prompt_mask, n, cache)
    cache = constrain["cache"](cache)
    operands = (params, key, floats, logits, cache, plen, empty, limits)
    decode = functools.partial(_decode, row_keys=row_keys, kv_buckets=kv_buckets)
    if greedy or top_k:
        outs = decode(config, static, True, *operands)
    else:  # one branch per call: the untruncated fast path unless top_p < 1 or min_p > 0
        truncate = (floats[1] < 1.0) | (floats[2] > 0.0)
        outs = jax.lax.cond(
            truncate,
            functools.partial(decode, config, static, True),
            functools.partial(decode, config, static, False),
            *operands,
        )
    cache, done, out_tokens, out_logp, length = outs
    cache = constrain["cache"](cache)

    mask = (jnp.arange(max_new)[None, :] < length[:, None]).astype(jnp.int32)
    if limits is not None:  # a row cut by its limit is truncated, not done
        hit = _is_stop(out_tokens, stop_ids) & (mask > 0)
        done = empty | jnp.any(hit, axis=1)
    rollout = Rollout(
        prompt_tokens=jnp.repeat(prompt_tokens, n, axis=0),
        prompt_mask=jnp.repeat(prompt_mask, n, axis=0),
        tokens=out_tokens,
        mask=mask,
        sampler_logp=out_logp,
        group_id=jnp.repeat(jnp.arange(b, dtype=jnp.int32), n),
        truncated=~done,
    )
    return rollout, cache


@functools.cache
def _compiled(
    config,
    static: tuple,
    batch: int,
    prompt_len: int,
    mesh,
    rules,
    unstack: bool,
    *,
    fused=False,
    row_keys=False,
    kv_buckets: int = 0,
):
    """The jitted program for one (config, static sampling fields, shape, mesh, rules, layout)."""
    max_new, n = static[0], static[1]
    if mesh is None:
        constrain = {"cache": lambda c: c}
        shardings = {}
    else:
        rows = batch * n
        cache_sh = _cache_shardings(config, rows, prompt_len + max_new, mesh, rules)
        constrain = {"cache": lambda c: jax.lax.with_sharding_constraint(c, cache_sh)}
        shardings = {"out_shardings": (_rollout_shardings(rows, mesh, rules), cache_sh)}
    buckets = kv_buckets_for(prompt_len, max_new, kv_buckets) if kv_buckets else ()
    fn = functools.partial(
        _program,
        config,
        static,
        unstack,
        constrain,
        fused=fused,
        row_keys=row_keys,
        kv_buckets=buckets,
    )
    return jax.jit(fn, donate_argnums=(5,), **shardings)


def _check(config, prompts: PromptBatch, sampling: SamplingParams):
    if not isinstance(sampling, SamplingParams):
        raise TypeError(
            f"generate: sampling must be a SamplingParams, got {type(sampling).__name__}"
        )
    if not isinstance(prompts, PromptBatch):
        raise TypeError(f"generate: prompts must be a PromptBatch, got {type(prompts).__name__}")
    if prompts.tokens.ndim != 2 or prompts.tokens.shape != prompts.mask.shape:
        raise ValueError(
            f"generate: prompts.tokens {prompts.tokens.shape} and prompts.mask {prompts.mask.shape} "
            "must both be [B, P]"
        )
    bad = [t for t in sampling.stop_token_ids if t >= config.vocab_size]
    if bad:
        raise ValueError(
            f"SamplingParams.stop_token_ids {bad} are >= vocab_size {config.vocab_size}"
        )
    if sampling.top_k > config.vocab_size:
        raise ValueError(
            f"SamplingParams.top_k={sampling.top_k} exceeds vocab_size {config.vocab_size}"
        )
    if _kv_start(config, 0) is not None:
        _check_left_padded(prompts.mask, f"decode_attention={config.decode_attention!r}")


def _check_left_padded(mask, who: str) -> None:
    """`ValueError` unless each row of `mask` [B, P] is 0s then 1s (a decode kernel attends to
    one span of slots per row). Skipped for traced arrays and for arrays this process cannot
    read whole."""
    if isinstance(mask, jax.core.Tracer) or (
        isinstance(mask, jax.Array) and not mask.is_fully_addressable
    ):
        return
    m = np.asarray(mask) > 0
    holes = np.flatnonzero((m[:, :-1] & ~m[:, 1:]).any(axis=1))
    if holes.size:
        raise ValueError(
            f"{who}: prompt mask rows {holes[:8].tolist()} are not left-padded (a 1 before a 0); "
            "the decode kernel needs each row's tokens in one span (use pad_prompts)"
        )


# Up to this many rows per device a decode step is bound by reading the weights, and the
# sampler unstacks the layers (see `models.unstack_layers`): e.g. 1.56x faster backbone steps for a
# 0.5B model at 1 row on CPU; no gain at 16 rows, where the step is compute-bound.
UNSTACK_MAX_ROWS = 8


def generate_with_cache(
    params: Params,
    config,
    prompts: PromptBatch,
    key: jax.Array,
    sampling: SamplingParams,
    cache: dict | None = None,
    *,
    mesh=None,
    rules=None,
    unstack_layers: bool | None = None,
    fused: bool = False,
    row_keys: bool = False,
    max_tokens=None,
    kv_buckets: int = 0,
) -> tuple[Rollout, dict]:
    """`generate`, also returning the final KV cache.

    `cache` (from `init_sampler_cache(config, B·n, P + T, mesh=..., rules=...)`)
    is donated: its buffers are reused in place and must not be used after
    the call; pass the returned cache to the next call of the same shape to
    avoid a new allocation. None allocates a fresh one.
    `unstack_layers`, `fused`, `row_keys`, `max_tokens` and `kv_buckets` are as in `generate`.
    """
    _check(config, prompts, sampling)
    _check_buckets(kv_buckets)
    rules = _rules_tuple(rules)
    b, p = prompts.tokens.shape
    rows, max_len = b * sampling.n, p + sampling.max_new_tokens
    if cache is None:
        cache = _cache_initializer(config, rows, max_len, mesh, rules)()
    elif tuple(cache["k"].shape[1:3]) != (rows, max_len):
        raise ValueError(
            f"generate: cache k has shape {cache['k'].shape}; rows and slots must be "
            f"({rows}, {max_len}) = (B·n, P + max_new_tokens)"
        )
    tokens = (
        np.asarray(prompts.tokens, np.int32)
        if isinstance(prompts.tokens, np.ndarray)
        else prompts.tokens.astype(jnp.int32)
    )
    mask = (
        np.asarray(prompts.mask, np.int32)
        if isinstance(prompts.mask, np.ndarray)
        else prompts.mask.astype(jnp.int32)
    )
    floats = (
        np.asarray([sampling.temperature, sampling.top_p, sampling.min_p], np.float32)
        if all(
            isinstance(x, (int, float))
            for x in (sampling.temperature, sampling.top_p, sampling.min_p)
        )
        else jnp.stack(
            [
                jnp.asarray(x, jnp.float32)
                for x in (sampling.temperature, sampling.top_p, sampling.min_p)
            ]
        )
    )
    if unstack_layers is None:  # rows per device decide whether a step is weight-bound
        shards = sharding_lib.batch_shards(mesh, rules) if mesh is not None else 1
        unstack_layers = (rows // shards if rows % shards == 0 else rows) <= UNSTACK_MAX_ROWS
    program = _compiled(
        config,
        sampling.static_key(),
        b,
        p,
        mesh,
        rules,
        bool(unstack_layers),
        fused=bool(fused),
        row_keys=bool(row_keys),
        kv_buckets=int(kv_buckets),
    )
    extra = () if max_tokens is None else (_check_limits(max_tokens, rows, "generate"),)
    if mesh is None:
        return program(params, tokens, mask, key, floats, cache, *extra)
    batch_sh = sharding_lib.row_sharding(mesh, rules, rows=b)
    tokens, mask = jax.device_put((tokens, mask), batch_sh)
    if extra:
        extra = (jax.device_put(extra[0], sharding_lib.row_sharding(mesh, rules, rows=rows)),)
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules):
        return program(params, tokens, mask, key, floats, cache, *extra)


def _check_buckets(kv_buckets) -> None:
    if isinstance(kv_buckets, bool) or not isinstance(kv_buckets, int) or kv_buckets < 0:
        raise ValueError(f"generate: kv_buckets must be an int >= 0, got {kv_buckets!r}")


def _check_limits(max_tokens, rows: int, who: str) -> jax.Array:
    """Per-row token limits as int32 [rows]; a wrong shape or a limit < 1 fails here."""
    limits = np.asarray(max_tokens)
    if limits.shape != (rows,):
        raise ValueError(f"{who}: max_tokens has shape {limits.shape}; expected ({rows},) = (B·n,)")
    if limits.size and limits.min() < 1:
        raise ValueError(f"{who}: max_tokens must be >= 1, got min {limits.min()}")
    return jnp.asarray(limits, jnp.int32)


@functools.cache
def _compiled_seeds(
    config,
    static: tuple,
    seeds: int,
    batch: int,
    prompt_len: int,
    unstack: bool,
    fused=False,
    kv_buckets: int = 0,
    row_keys: bool = False,
):
    """`_program` vmapped over a leading seed axis of params, prompts, keys and cache."""
    rows, max_len = batch * static[1], prompt_len + static[0]
    buckets = kv_buckets_for(prompt_len, static[0], kv_buckets) if kv_buckets else ()
    fn = jax.vmap(
        functools.partial(
            _program,
            config,
            static,
            unstack,
            {"cache": lambda c: c},
            fused=fused,
            row_keys=row_keys,
            kv_buckets=buckets,
        ),
        in_axes=(0, 0, 0, 0, None, 0),
    )

    def run(params, tokens, mask, key_data, floats):
        cache = jax.vmap(lambda _: models.init_cache(config, rows, max_len))(jnp.arange(seeds))
        return fn(params, tokens, mask, jax.random.wrap_key_data(key_data), floats, cache)[0]

    return jax.jit(run)


def generate_seeds(
    params: Params,
    config,
    prompts: PromptBatch,
    keys: jax.Array,
    sampling: SamplingParams,
    *,
    unstack_layers: bool | None = None,
    fused: bool = False,
    kv_buckets: int = 0,
    row_keys: bool = False,
) -> Rollout:
    """`generate` for S models at once, as one program vmapped over a leading seed axis.

    `params` (every leaf [S, ...]), `prompts` ([S, B, P]) and `keys` (S typed PRNG keys) carry
    the seed axis; the result's fields are [S, N, ...], and slice s equals
    `generate(params[s], config, prompts[s], keys[s], sampling)` up to float rounding (one
    device, no mesh: the use is many small runs, e.g. seeds of a tiny model, on one chip).
    The decode loop runs until every row of every seed has stopped.
    `unstack_layers`, `fused`, `kv_buckets` and `row_keys` are as in `generate`.
    """
    _check_buckets(kv_buckets)
    tokens, mask = np.asarray(prompts.tokens, np.int32), np.asarray(prompts.mask, np.int32)
    if tokens.ndim != 3 or tokens.shape != mask.shape:
        raise ValueError(
            f"generate_seeds: prompts.tokens {tokens.shape} and prompts.mask "
            f"{mask.shape} must both be [S, B, P]"
        )
    _check(config, PromptBatch(tokens=tokens[0], mask=mask[0]), sampling)
    s, b, p = tokens.shape
    key_data = jax.random.key_data(keys)
    if key_data.shape[0] != s:
        raise ValueError(f"generate_seeds: {key_data.shape[0]} keys for {s} seeds of prompts")
    if unstack_layers is None:
        unstack_layers = b * sampling.n <= UNSTACK_MAX_ROWS
    floats = jnp.stack(
        [
            jnp.asarray(x, jnp.float32)
            for x in (sampling.temperature, sampling.top_p, sampling.min_p)
        ]
    )
    program = _compiled_seeds(
        config,
        sampling.static_key(),
        s,
        b,
        p,
        bool(unstack_layers),
        bool(fused),
        kv_buckets,
        bool(row_keys),
    )
    return program(params, tokens, mask, key_data, floats)


def generate(
    params: Params,
    config,
    prompts: PromptBatch,
    key: jax.Array,
    sampling: SamplingParams,
    *,
    mesh=None,
    rules: Sequence | None = None,
    unstack_layers: bool | None = None,
    fused: bool = False,
    row_keys: bool = False,
    max_tokens=None,
    kv_buckets: int = 0,
) -> Rollout:
    """Sample `sampling.n` completions for each prompt: a `Rollout` of N = B·n rows.

    Args:
      params: the model parameters (the trainer's pytree, used as sharded).
      config: `models.ModelConfig` (static).
      prompts: `PromptBatch` [B, P], left-padded (`pad_prompts`).
      key: PRNG key, the only source of randomness.
      sampling: `SamplingParams`.
      mesh, rules: optional device mesh and logical-axis rules.
      unstack_layers: run the layers unrolled on a per-layer copy of their weights
        (`models.unstack_layers`, made once per call) instead of the stacked scan; None
        (default) does so when the rows per device (B·n over the mesh's batch shards) are
        at most `UNSTACK_MAX_ROWS`, where decoding is bound by reading the weights. Costs one extra copy of the layer weights in memory during
        the call. Same tokens and log-probs either way.
      fused: decode (and prefill) with `models.transformer.fuse_decode_params(config, params)`,
        made once per call inside the program: one q/k/v and one gate/up matmul per layer
        instead of five (fewer kernels per decode step, see BENCHMARKS.md "Decode kernels").
        Costs a copy of those kernels (about 2/3 of the layer weights) while it runs; params
        that are already fused are used as they are (no copy). Off by default. The same
        function up to float rounding (logits within ~1e-6 of the unfused ones in float32),
        so greedy tokens match, and sampled tokens match unless a draw lands within that
        rounding of a category boundary.
      row_keys: draw row r's token t with `row_step_keys(key, r, t)` (row r = b·n + j is
        sample j of prompt b) instead of the default one key per step `fold_in(key, t)`
        shared by the rows. A row's tokens then do not depend on the batch it runs in: this
        is the scheme `generate_continuous` uses, and its reference. Off by default (the
        default keys are unchanged).
      max_tokens: optional int [N] per-row limits (each >= 1; those past max_new_tokens act
        as max_new_tokens): row r ends after `max_tokens[r]` tokens, as truncated, unless a
        stop id came first. Fixes completion lengths (the long-tail benchmark) or gives rows
        their own budgets. None (default): every row may run to max_new_tokens.
      kv_buckets: > 0: each decode step attends over the filled prefix of the cache rounded
        up to one of `kv_buckets_for(P, T, kv_buckets)` static lengths (the steps run in
        phases, one per length), instead of all P + T slots; a step reads about P + t slots
        instead of P + T. 0 (default): every slot, as before. The same function up to float
        rounding (the masked slots it skips weigh exactly 0), like `fused`.
    Returns:
      `Rollout` with prompt_tokens/prompt_mask [N, P], tokens/mask/sampler_logp
      [N, T], group_id [N] (row r ↔ prompt r // n), truncated [N].
    """
    rollout, _ = generate_with_cache(
        params,
        config,
        prompts,
        key,
        sampling,
        mesh=mesh,
        rules=rules,
        unstack_layers=unstack_layers,
        fused=fused,
        row_keys=row_keys,
        max_tokens=max_tokens,
        kv_buckets=kv_buckets,
    )
    return rollout
