"""Multi-turn rollouts: the policy acts, environments answer, generation goes on, in one batch.

    rollout, episodes = run_episodes(params, config, make_env, examples, key, sampling,
                                     turns, tokenizer=tok)

One call plays `N = B·n` episodes (n per example) to the end:

1. **Reset** (host): one fresh environment per row (`make_env()`), `env.reset(example)` gives
   the first observation, which is the prompt (tokenised with BOS, left-padded to a bucket).
2. **Prefill** (device): the B distinct prompts once, copied n times into the rows of one
   KV cache, exactly as `rollout.generate` does.
3. **Act** (device, one jitted `while_loop` per turn): every row that is acting draws tokens
   (step s with `fold_in(key, s)`, s counted over the whole episode batch) and feeds them back
   through `extend_rows` until its action ends: a stop id, one of `turns.stop_sequences`
   (token sequences such as the parser's closing tags `</tool>` / `</answer>`), the action
   limit `turns.max_action_tokens`, or the completion budget `sampling.max_new_tokens`.
   Rows that are not acting are paused (`counts = 0`), so rows at different turns share
   the batch.
4. **Step** (host): `env.step(action text)` for every row whose action ended, in parallel
   threads, each with `turns.step_timeout_s`. A step that raises or does not return in time
   ends that episode (counted in `EpisodeStats.errors` / `timeouts`); the run goes on.
5. **Observe** (device): the observations of the rows that go on are tokenised (no BOS) and
   appended, after the action's last drawn token, with ONE `extend_rows` call for all rows
   (`[drawn token, observation tokens...]`, `counts` per row); its logits start their next
   action. Back to 3 until no row is acting.

**Where state lives.** The environments (one Python object per row, holding that episode's
state) live on the host, in this call, for the episode batch's lifetime; nothing of them is
kept after it returns. The token side lives in the KV cache (device) and in the host copies
of the completion arrays. Environments run in threads of this process: a step that hangs is
abandoned (its thread keeps running as a daemon) and its episode ended; environments that need
isolation run their tools in a subprocess (the sandbox of `envs/sandbox.py`).

**Output.** A `Rollout` whose completion holds the policy and observation tokens in order:
`mask` 1 on both, `loss_mask` 1 on policy tokens only, `sampler_logp` 0 on observation tokens,
`turn_ids` (the turn of each token), `turn_rewards` (each turn's reward on its action's last
token); `truncated` when the completion budget ended the episode. Policy tokens are the
sampled ids, never re-tokenised. `EpisodeStats` (host numpy) holds per row the turns used,
tool calls, invalid calls, errors, time-outs, the return, the verdict and each turn's
boundaries.

**One turn is today's rollout.** With `turns.max_turns == 1` the cache is `P + T` slots, the
prefill and the decode steps are `generate`'s, and the draws use the same keys: the tokens,
log-probs, masks and `truncated` equal `rollout.generate(params, config, prompts, key,
sampling)` (tested bit for bit). On a mesh the jitted steps follow the shardings of the
parameters they are given (the trainer's); an episode batch on data 2 x fsdp 4 equals the
one-device batch token for token (`tests/trainers/test_agent.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import models
from jaxrl_llm.rollout.extend import extend_rows
from jaxrl_llm.rollout.host import DEFAULT_BUCKETS, pad_prompts
from jaxrl_llm.rollout.logprobs import token_logprobs
from jaxrl_llm.rollout.sampling import sample_tokens
from jaxrl_llm.rollout.types import Rollout, SamplingParams

__all__ = ["TurnParams", "EpisodeStats", "run_episodes", "run_parallel"]

UNSTACK_MAX_ROWS = 8  # as `rollout.sampler`: unstacked layers up to this many rows


@dataclasses.dataclass(frozen=True)
class TurnParams:
    """How episodes are cut into turns (host + static program settings).

    max_turns: actions per episode at most (the environment may end it sooner).
    max_action_tokens: tokens of one action at most (0: up to the completion budget).
    max_observation_tokens: tokens of one observation at most (longer ones are cut and
      counted in `EpisodeStats.obs_truncated`); with the drawn token it fixes the append width.
    stop_sequences: token-id sequences that end an action (e.g. the tokenised `</tool>`,
      `</answer>`), besides `SamplingParams.stop_token_ids`.
    step_timeout_s: seconds one `env.step` may take.
    workers: environment steps run at once.
    """

    max_turns: int = 4
    max_action_tokens: int = 0
    max_observation_tokens: int = 32
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    step_timeout_s: float = 10.0
    workers: int = 16

    def __post_init__(self):
        seqs = tuple(tuple(int(t) for t in s) for s in self.stop_sequences if len(s))
        object.__setattr__(self, "stop_sequences", seqs)
        if self.max_turns < 1:
            raise ValueError(f"TurnParams.max_turns must be >= 1, got {self.max_turns}")
        if self.max_action_tokens < 0 or self.max_observation_tokens < 0:
            raise ValueError("TurnParams.max_action_tokens / max_observation_tokens must be >= 0")
        if self.step_timeout_s <= 0 or self.workers < 1:
            raise ValueError("TurnParams.step_timeout_s must be > 0 and workers >= 1")


@dataclasses.dataclass
class EpisodeStats:
    """Per-row episode facts (numpy, N rows; K = `max_turns`)."""

    turns: np.ndarray  # [N] int: actions taken
    tool_calls: np.ndarray  # [N] int
    invalid_calls: np.ndarray  # [N] int
    errors: np.ndarray  # [N] int: env reset / step raised
    timeouts: np.ndarray  # [N] int: env step past step_timeout_s
    obs_truncated: np.ndarray  # [N] int: an observation cut to fit
    returns: np.ndarray  # [N] float32: sum of the turn rewards
    correct: np.ndarray  # [N] float32: the final step's info["correct"] (else return >= 1)
    turn_rewards: np.ndarray  # [N, K] float32
    turn_starts: np.ndarray  # [N, K] int: completion index of each action's first token, -1
    turn_ends: np.ndarray  # [N, K] int: one past each action's last token, -1
    actions: list  # N lists of action texts
    observations: list  # N lists of observation texts (after each action)

    def summary(self, prefix: str = "episode/") -> dict[str, float]:
        """Means over rows: success, turns, tool calls, invalid-call rate, errors."""
        turns = np.maximum(self.turns, 1)
        return {
            f"{prefix}success": float(self.correct.mean()),
            f"{prefix}return": float(self.returns.mean()),
            f"{prefix}turns": float(self.turns.mean()),
            f"{prefix}tool_calls": float(self.tool_calls.mean()),
            f"{prefix}invalid_call_rate": float((self.invalid_calls / turns).mean()),
            f"{prefix}valid_tool_call_rate": float(
                ((self.tool_calls > 0) & (self.invalid_calls == 0)).mean()
            ),
            f"{prefix}errors": float(self.errors.sum()),
            f"{prefix}timeouts": float(self.timeouts.sum()),
        }


# ----------------------------------------------------------------------------- host: env steps
def run_parallel(fns: Sequence[Callable[[], Any]], *, timeout_s: float, workers: int):
    """Runs `fns` in daemon threads, at most `workers` at once, each limited to `timeout_s`.

    Returns a list of `("ok", value)`, `("error", message)` or `("timeout", None)`, in order.
    A call past its limit is abandoned (never joined) and no longer holds a worker slot.
    """
    results: list = [None] * len(fns)
    started: dict[int, float] = {}
    lock = threading.Lock()

    def run(i):
        try:
            out = ("ok", fns[i]())
        except Exception as e:  # noqa: BLE001 - an environment's failure is a counted result
            out = ("error", f"{type(e).__name__}: {e}")
        with lock:
            if results[i] is None:
                results[i] = out

    pending = list(range(len(fns)))
    while pending or started:
        now = time.monotonic()
        with lock:
            for i in list(started):
                if results[i] is not None:
                    del started[i]
                elif now - started[i] > timeout_s:
                    results[i] = ("timeout", None)
                    del started[i]
        while pending and len(started) < workers:
            i = pending.pop(0)
            started[i] = time.monotonic()
            threading.Thread(target=run, args=(i,), daemon=True).start()
        if started:
            time.sleep(0.002)
    return results


# ----------------------------------------------------------------------------- device programs
@functools.partial(jax.jit, static_argnums=(0, 3))
def _prefill(config, params, tokens_mask, n):
    """`generate`'s prefill: B prompts once into a [P]-slot cache, then n copies into N rows."""
    tokens, mask = tokens_mask
    b, p = tokens.shape
    empty = mask.sum(axis=-1) == 0
    mask = mask.at[:, -1].set(jnp.where(empty, 1, mask[:, -1]))
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    small = models.init_cache(config, b, p)
    logits, small = models.apply(config, params, tokens, positions, mask, small, last_only=True)
    rep = lambda x: jnp.repeat(x, n, axis=1) if n > 1 else x  # noqa: E731
    return jnp.repeat(logits[:, 0, :], n, axis=0), rep(small["k"]), rep(small["v"])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _place_cache(config, max_len, k, v, mask):
    """A `max_len`-slot cache holding the prefilled prompts in slots [0, P)."""
    rows, p = mask.shape
    cache = models.init_cache(config, rows, max_len)
    zero = jnp.zeros((), jnp.int32)
    return {
        "k": jax.lax.dynamic_update_slice(cache["k"], k, (zero,) * 5),
        "v": jax.lax.dynamic_update_slice(cache["v"], v, (zero,) * 5),
        "mask": cache["mask"].at[:, :p].set(mask.astype(cache["mask"].dtype)),
        "index": jnp.asarray(p, jnp.int32),
    }


def _stop_hit(tok, hist, stop_ids, stop_seqs):
    hit = jnp.isin(tok, jnp.asarray(stop_ids, tok.dtype)) if stop_ids else jnp.zeros_like(tok, bool)
    for seq in stop_seqs:
        m = len(seq)
        hit = hit | jnp.all(hist[:, -m:] == jnp.asarray(seq, hist.dtype)[None, :], axis=1)
    return hit


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(5,))
def _act(config, static, params, key, floats, cache, logits, acting, cursor, step, out):
    """One action for every acting row: draw, write at the row's cursor, feed, until it ends.

    out = (tokens, logp) [N, T]. Returns (cache, out, cursor, step, last token, how it ended:
    1 stop id / sequence, 2 action limit, 3 completion budget or cache full).
    """
    max_new, max_action, stop_ids, stop_seqs, top_k, greedy, truncate, max_len = static
    temperature, top_p, min_p = floats[0], floats[1], floats[2]
    rows = logits.shape[0]
    width = max((len(s) for s in stop_seqs), default=1)
    hist0 = jnp.full((rows, width), -1, jnp.int32)
    idx = jnp.arange(rows)

    def draw(step, logits, state):
        cache, acting, cursor, hist, tokens, logp, length, ended = state
        tok = sample_tokens(
            jax.random.fold_in(key, step),
            logits,
            temperature,
            top_p,
            min_p,
            top_k=top_k,
            greedy=greedy,
            truncate=truncate,
        )
        lp = token_logprobs(logits, tok, temperature)
        col = jnp.clip(cursor, 0, max_new - 1)
        tokens = tokens.at[idx, col].set(jnp.where(acting, tok, tokens[idx, col]))
        logp = logp.at[idx, col].set(jnp.where(acting, lp, logp[idx, col]))
        hist = jnp.where(acting[:, None], jnp.concatenate([hist[:, 1:], tok[:, None]], 1), hist)
        cursor = cursor + acting
        length = length + acting
        room = cache["index"] < max_len
        why = jnp.where(
            _stop_hit(tok, hist, stop_ids, stop_seqs),
            1,
            jnp.where(
                (cursor >= max_new) | ~room,
                3,
                jnp.where((length >= max_action) if max_action else False, 2, 0),
            ),
        )
        ended = jnp.where(acting & (why > 0), why, ended)
        acting = acting & (why == 0)
        return tok, (cache, acting, cursor, hist, tokens, logp, length, ended)

    zeros = jnp.zeros(rows, jnp.int32)
    state = (cache, acting, cursor, hist0, out[0], out[1], zeros, zeros)
    tok, state = draw(step, logits, state)

    def cond(carry):
        return jnp.any(carry[2][1])

    def body(carry):
        step, tok, state = carry
        cache, acting = state[0], state[1]
        logits, cache = extend_rows(config, params, cache, tok[:, None], acting.astype(jnp.int32))
        step = step + 1
        new_tok, state = draw(step, logits, (cache,) + state[1:])
        return step, jnp.where(acting, new_tok, tok), state

    step, tok, state = jax.lax.while_loop(cond, body, (step, tok, state))
    cache, _, cursor, _, tokens, logp, _, ended = state
    return cache, (tokens, logp), cursor, step + 1, tok, ended


# ----------------------------------------------------------------------------- the episode loop
def _encode(tokenizer, text: str) -> list[int]:
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]


def _bos(tokenizer) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [] if bos is None else [int(bos)]


def _decode(tokenizer, ids) -> str:
    try:
        return tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode([int(t) for t in ids])


def run_episodes(
    params,
    config,
    make_env: Callable[[], Any],
    examples: Sequence[Any],
    key: jax.Array,
    sampling: SamplingParams,
    turns: TurnParams,
    *,
    tokenizer,
    bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
    first_observations: Sequence[str] | None = None,
) -> tuple[Rollout, EpisodeStats, list[str]]:
    """Plays `sampling.n` episodes per example to the end (module docstring).

    Args:
      params, config: the policy (`models.ModelConfig` static).
      make_env: returns a fresh environment (the `envs.Env` contract); called once per row.
      examples: B examples, one per prompt; rows r = i·n .. i·n + n - 1 play example i.
      key: PRNG key (the only randomness of the sampler).
      sampling: `SamplingParams`; `max_new_tokens` is the completion budget T (policy and
        observation tokens together), `n` the episodes per example.
      turns: `TurnParams`.
      tokenizer: encodes observations, decodes actions.
      bucket_lengths: prompt buckets.
      first_observations: the prompts' text, if the caller reset elsewhere (tests); None:
        `env.reset(example)` of each row.
    Returns:
      `(rollout, stats, completions)`: the `Rollout` [N, T] (host numpy arrays), the
      `EpisodeStats` and each row's completion text (actions and observations).
    """
    b, n, t_max = len(examples), int(sampling.n), int(sampling.max_new_tokens)
    rows, k_max = b * n, int(turns.max_turns)
    envs = [make_env() for _ in range(rows)]
    errors = np.zeros(rows, np.int32)
    timeouts = np.zeros(rows, np.int32)
    done = np.zeros(rows, bool)
    if first_observations is None:
        resets = run_parallel(
            [functools.partial(envs[r].reset, examples[r // n]) for r in range(rows)],
            timeout_s=turns.step_timeout_s,
            workers=turns.workers,
        )
        first = []
        for i in range(b):  # the n rows of an example share one prompt (the first that reset)
            got = [resets[i * n + j] for j in range(n)]
            ok = [v for kind, v in got if kind == "ok"]
            first.append(str(ok[0]) if ok else "")
            for j, (kind, _) in enumerate(got):
                if kind != "ok":
                    errors[i * n + j] += kind == "error"
                    timeouts[i * n + j] += kind == "timeout"
                    done[i * n + j] = True
    else:
        first = list(first_observations)
    prompts = pad_prompts(
        [_bos(tokenizer) + _encode(tokenizer, f) or [0] for f in first],
        bucket_lengths=bucket_lengths,
        pad_id=int(getattr(tokenizer, "pad_token_id", None) or 0),
    )
    p = prompts.tokens.shape[1]
    append_width = 1 + int(turns.max_observation_tokens)
    action_cap = int(turns.max_action_tokens) or t_max
    max_len = (
        p + t_max
        if k_max == 1
        else p + k_max * (min(action_cap, t_max) + append_width) + append_width
    )
    truncate = bool(sampling.greedy or sampling.top_k) or not (
        sampling.top_p >= 1.0 and sampling.min_p <= 0.0
    )
    static = (
        t_max,
        int(turns.max_action_tokens),
        tuple(sampling.stop_token_ids),
        turns.stop_sequences,
        int(sampling.top_k),
        bool(sampling.greedy),
        truncate,
        max_len,
    )
    floats = np.asarray([sampling.temperature, sampling.top_p, sampling.min_p], np.float32)
    if rows <= UNSTACK_MAX_ROWS:  # as `generate`: weight-bound decode steps read unstacked layers
        params = models.unstack_layers(params)

    prompt_tokens = np.asarray(prompts.tokens, np.int32)
    prompt_mask = np.asarray(prompts.mask, np.int32)
    logits, k, v = _prefill(config, params, (prompt_tokens, prompt_mask), n)
    cache_mask = np.repeat(prompt_mask, n, axis=0)
    cache_mask[cache_mask.sum(1) == 0, -1] = 1  # an empty prompt row gets one slot, as generate
    cache = _place_cache(config, max_len, k, v, cache_mask)

    tokens = np.zeros((rows, t_max), np.int32)
    logp = np.zeros((rows, t_max), np.float32)
    policy = np.zeros((rows, t_max), np.int32)
    turn_ids = np.full((rows, t_max), -1, np.int32)
    turn_rewards = np.zeros((rows, t_max), np.float32)
    stats = dict(
        turns=np.zeros(rows, np.int32),
        tool_calls=np.zeros(rows, np.int32),
        invalid_calls=np.zeros(rows, np.int32),
        obs_truncated=np.zeros(rows, np.int32),
        returns=np.zeros(rows, np.float32),
        correct=np.zeros(rows, np.float32),
        turn_rewards=np.zeros((rows, k_max), np.float32),
        turn_starts=np.full((rows, k_max), -1, np.int32),
        turn_ends=np.full((rows, k_max), -1, np.int32),
    )
    actions = [[] for _ in range(rows)]
    observations = [[] for _ in range(rows)]
    has_correct = np.zeros(rows, bool)
    truncated = np.zeros(rows, bool)
    cursor = np.zeros(rows, np.int32)
    acting = ~done
    step = np.asarray(0, np.int32)
    out = (jnp.asarray(tokens), jnp.asarray(logp))

    for turn in range(k_max):
        start = cursor.copy()
        cache, out, cursor_d, step, last_tok, ended = _act(
            config,
            static,
            params,
            key,
            floats,
            cache,
            logits,
            jnp.asarray(acting),
            jnp.asarray(cursor),
            step,
            out,
        )
        tokens, logp = (np.array(x) for x in jax.device_get(out))
        cursor, last_tok, ended = (np.array(x) for x in jax.device_get((cursor_d, last_tok, ended)))
        out = (jnp.asarray(tokens), jnp.asarray(logp))
        acted = np.flatnonzero(acting)
        for r in acted:
            policy[r, start[r] : cursor[r]] = 1
            turn_ids[r, start[r] : cursor[r]] = turn
            stats["turn_starts"][r, turn] = start[r]
            stats["turn_ends"][r, turn] = cursor[r]
            actions[r].append(_decode(tokenizer, tokens[r, start[r] : cursor[r]]))
        results = run_parallel(
            [functools.partial(envs[r].step, actions[r][-1]) for r in acted],
            timeout_s=turns.step_timeout_s,
            workers=turns.workers,
        )
        go_on = np.zeros(rows, bool)
        obs_ids = {}
        for r, (kind, res) in zip(acted, results):
            stats["turns"][r] += 1
            if ended[r] == 3:  # completion budget spent (or cache full): the episode ends here
                truncated[r] = True
            if kind != "ok":
                errors[r] += kind == "error"
                timeouts[r] += kind == "timeout"
                continue
            reward = float(res.reward)
            info = dict(res.info or {})
            stats["returns"][r] += reward
            stats["turn_rewards"][r, turn] = reward
            turn_rewards[r, max(cursor[r] - 1, 0)] += reward
            stats["tool_calls"][r] += int(info.get("tool_call", 0))
            stats["invalid_calls"][r] += int(info.get("invalid_call", 0))
            if "correct" in info:
                stats["correct"][r], has_correct[r] = float(info["correct"]), True
            observations[r].append(str(res.observation))
            if res.done or truncated[r] or turn + 1 >= k_max:
                continue
            ids = _encode(tokenizer, str(res.observation))
            room = t_max - int(cursor[r]) - 1  # keep one slot for the next action
            limit = min(int(turns.max_observation_tokens), room)
            if limit < 0 or (room <= 0):
                truncated[r] = True
                continue
            if len(ids) > limit:
                ids = ids[:limit]
                stats["obs_truncated"][r] += 1
            obs_ids[r] = ids
            go_on[r] = True
        if not go_on.any():
            break
        if int(jax.device_get(cache["index"])) + append_width > max_len:
            truncated[go_on] = True  # cannot happen with the sizes above; kept as a guard
            break
        app = np.zeros((rows, append_width), np.int32)
        counts = np.zeros(rows, np.int32)
        for r, ids in obs_ids.items():
            app[r, 0] = last_tok[r]
            app[r, 1 : 1 + len(ids)] = ids
            counts[r] = 1 + len(ids)
            c0 = int(cursor[r])
            tokens[r, c0 : c0 + len(ids)] = ids
            turn_ids[r, c0 : c0 + len(ids)] = turn
            cursor[r] = c0 + len(ids)
        out = (jnp.asarray(tokens), jnp.asarray(logp))
        logits, cache = extend_rows(config, params, cache, jnp.asarray(app), jnp.asarray(counts))
        acting = go_on

    no_verdict = ~has_correct
    stats["correct"][no_verdict] = (stats["returns"][no_verdict] >= 1.0 - 1e-6).astype(np.float32)
    mask = (np.arange(t_max)[None, :] < cursor[:, None]).astype(np.int32)
    tokens = np.where(mask > 0, tokens, 0)
    logp = np.where(policy > 0, logp, 0.0).astype(np.float32)
    rollout = Rollout(
        prompt_tokens=np.repeat(prompt_tokens, n, axis=0),
        prompt_mask=np.repeat(prompt_mask, n, axis=0),
        tokens=tokens.astype(np.int32),
        mask=mask,
        sampler_logp=logp,
        group_id=np.repeat(np.arange(b, dtype=np.int32), n),
        truncated=truncated,
        loss_mask=policy,
        turn_ids=np.where(mask > 0, turn_ids, -1).astype(np.int32),
        turn_rewards=turn_rewards,
    )
    episode = EpisodeStats(
        errors=errors, timeouts=timeouts, actions=actions, observations=observations, **stats
    )
    completions = [_decode(tokenizer, tokens[r][mask[r] > 0]) for r in range(rows)]
    return rollout, episode, completions
