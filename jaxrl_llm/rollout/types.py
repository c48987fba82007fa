"""Data types of the rollout stage: `PromptBatch`, `SamplingParams`, `Rollout`.

Shapes (INTERFACES.md): `B` prompts, `n` samples per prompt (`G` in the
trainer), `N = B·n` rows, `P` prompt bucket length, `T = max_new_tokens`.

`PromptBatch` and `Rollout` are `flax.struct.dataclass` pytrees, so they pass
through `jax.jit` and `jax.tree.map` as they are. `SamplingParams` is a frozen
Python dataclass: its static fields pick the compiled program, its float
fields (temperature, top_p, min_p) are fed to that program as traced scalars,
so changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax

__all__ = ["PromptBatch", "SamplingParams", "Rollout"]

Array = jax.Array


@flax.struct.dataclass
class PromptBatch:
    """Left-padded prompts: `tokens` int32 [B, P], `mask` int32 [B, P] (1 = real token).

    Build it with `pad_prompts` (host side), which picks the smallest bucket
    length that fits, so every batch of that bucket reuses one program.
    """

    tokens: Array
    mask: Array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the sampler draws tokens.

    Static (part of the compiled program's identity): `max_new_tokens`, `n`
    (samples per prompt), `stop_token_ids`, `top_k` (0 = off), `greedy`.
    Traced (changing them does not recompile): `temperature` (> 0), `top_p`
    in (0, 1] (1 = off), `min_p` in [0, 1) (0 = off).

    Truncations apply in the order of HF transformers' warpers: temperature,
    then top-k, then top-p on the top-k survivors, then min-p (keep tokens
    with p >= min_p * p_max). `greedy=True` takes the arg-max and ignores the
    truncations. The recorded `sampler_logp` is always the untruncated
    `log_softmax(logits / temperature)` at the drawn token.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if int(self.max_new_tokens) < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if int(self.n) < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if int(self.top_k) < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(
                f"SamplingParams.stop_token_ids must be >= 0, got {self.stop_token_ids}"
            )
        if not isinstance(self.greedy, bool):
            raise ValueError(f"SamplingParams.greedy must be True or False, got {self.greedy!r}")
        # Float knobs may be jax scalars (traced by the caller); check only Python numbers.
        if isinstance(self.temperature, (int, float)) and not self.temperature > 0:
            raise ValueError(f"SamplingParams.temperature must be > 0, got {self.temperature}")
        if isinstance(self.top_p, (int, float)) and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if isinstance(self.min_p, (int, float)) and not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"SamplingParams.min_p must be in [0, 1) (0 = off), got {self.min_p}")

    def static_key(self) -> tuple:
        """The fields that select a compiled program (hashable)."""
        return (
            int(self.max_new_tokens),
            int(self.n),
            self.stop_token_ids,
            int(self.top_k),
            bool(self.greedy),
        )

    def replace(self, **overrides) -> SamplingParams:
        return dataclasses.replace(self, **overrides)


@flax.struct.dataclass
class Rollout:
    """One RL batch of `N = B·n` rows (INTERFACES.md, "The batch").

    | field | shape | filled by |
    |---|---|---|
    | prompt_tokens, prompt_mask | [N, P] | sampler |
    | tokens, mask | [N, T] | sampler; mask is 1 up to and including the stop token |
    | sampler_logp | [N, T] float32 | sampler: log_softmax(logits / temperature) at tokens (0 where mask is 0) |
    | group_id | [N] int32 | sampler: row r belongs to prompt r // n |
    | truncated | [N] bool | sampler: hit max_new_tokens without a stop token |
    | rewards | [N] float32 | trainer |
    | token_rewards | [N, T] | trainer |
    | old_logp, ref_logp, values | [N, T] | trainer (None when not needed) |
    | advantages, returns | [N, T] | estimator |
    | sample_weight | [N] | estimator |
    | loss_mask | [N, T] | multi-turn sampler: 1 on policy tokens only (None: `mask`) |
    | turn_ids | [N, T] int32 | multi-turn sampler: 0-based turn of each token (an action and the observation after it), -1 past the end |
    | turn_rewards | [N, T] float32 | multi-turn sampler: each turn's reward on the last token of its action |

    Fields not yet filled are None. Completion positions past the end hold
    token 0 with mask 0.

    Multi-turn rows (`rollout/multiturn.py`) interleave policy and environment tokens in the
    completion: `mask` covers both, `loss_mask` only the policy tokens (sampled ids, never
    re-tokenised), and `sampler_logp` is 0 on environment tokens. Everything that trains or
    normalises reads `policy_mask()` (= `loss_mask`, or `mask` when `loss_mask` is None, so a
    single-turn rollout behaves exactly as before).
    """

    prompt_tokens: Array
    prompt_mask: Array
    tokens: Array
    mask: Array
    sampler_logp: Array
    group_id: Array
    truncated: Array
    rewards: Array | None = None
    token_rewards: Array | None = None
    old_logp: Array | None = None
    ref_logp: Array | None = None
    values: Array | None = None
    advantages: Array | None = None
    returns: Array | None = None
    sample_weight: Array | None = None
    loss_mask: Array | None = None
    turn_ids: Array | None = None
    turn_rewards: Array | None = None

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    def lengths(self) -> Any:
        """Number of valid completion tokens per row, [N]."""
        return self.mask.sum(axis=-1)

    def policy_mask(self) -> Any:
        """The mask of the tokens the policy produced, [N, T]: `loss_mask`, else `mask`."""
        return self.mask if self.loss_mask is None else self.loss_mask

    def policy_lengths(self) -> Any:
        """Number of policy tokens per row, [N] (`lengths()` for a single-turn rollout)."""
        return self.policy_mask().sum(axis=-1)
