"""Host-side helpers of the sampler: padding prompts, detokenising, stop strings.

Nothing here runs on the accelerator; these functions take and return numpy
arrays (a `Rollout` coming back from `generate` is fetched once with
`jax.device_get`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxrl_llm.rollout.types import PromptBatch, Rollout

__all__ = ["DEFAULT_BUCKETS", "pad_prompts", "decode_completions", "apply_stop_strings"]

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _smallest_fitting(size: int, buckets: Sequence[int], what: str) -> int:
    fitting = [b for b in sorted(int(b) for b in buckets) if b >= size]
    if not fitting:
        raise ValueError(
            f"pad_prompts: {what} {size} exceeds the largest bucket {max(buckets)} "
            f"(buckets {tuple(buckets)})"
        )
    return fitting[0]


def pad_prompts(
    prompts: Sequence[Sequence[int]],
    bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
    pad_id: int = 0,
    batch_bucket: int | Sequence[int] | None = None,
) -> PromptBatch:
    """Left-pad token-id lists into a `PromptBatch` of numpy int32 arrays.

    The length is the smallest of `bucket_lengths` that holds the longest
    prompt. `batch_bucket` pads the number of rows too: an int rounds B up to a
    multiple of it, a sequence picks its smallest entry >= B. Padding rows
    have an all-zero mask; `generate` gives them an empty completion (mask 0,
    truncated False). Every prompt must hold at least one token.
    """
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        raise ValueError("pad_prompts: no prompts given")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"pad_prompts: prompts {empty} are empty; every prompt needs >= 1 token")
    length = _smallest_fitting(max(len(p) for p in prompts), bucket_lengths, "prompt length")
    rows = len(prompts)
    if batch_bucket is not None:
        if isinstance(batch_bucket, int):
            if batch_bucket < 1:
                raise ValueError(f"pad_prompts: batch_bucket must be >= 1, got {batch_bucket}")
            rows = -(-rows // batch_bucket) * batch_bucket
        else:
            rows = _smallest_fitting(rows, batch_bucket, "batch size")
    tokens = np.full((rows, length), int(pad_id), np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p) :] = p
        mask[i, length - len(p) :] = 1
    return PromptBatch(tokens=tokens, mask=mask)


def _decode(tokenizer, ids: list[int], skip_special_tokens: bool) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    except TypeError:  # a minimal tokenizer whose decode takes ids only
        return tokenizer.decode(ids)


def decode_completions(
    tokenizer, rollout: Rollout, *, skip_special_tokens: bool = True
) -> list[str]:
    """Text of each row's valid completion tokens (`mask == 1`), a list of N strings."""
    tokens, mask = jax.device_get((rollout.tokens, rollout.mask))
    return [
        _decode(tokenizer, [int(t) for t in row[m > 0]], skip_special_tokens)
        for row, m in zip(np.asarray(tokens), np.asarray(mask))
    ]


def _stop_length(
    tokenizer, ids: list[int], stops: Sequence[str], skip_special_tokens: bool
) -> int | None:
    """Fewest leading tokens whose text contains a stop string (None if no stop string occurs)."""
    if not any(s in _decode(tokenizer, ids, skip_special_tokens) for s in stops):
        return None
    lo, hi = 1, len(ids)  # invariant: the prefix of hi tokens contains a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in _decode(tokenizer, ids[:mid], skip_special_tokens) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return hi


def apply_stop_strings(
    tokenizer, rollout: Rollout, stop_strings: Sequence[str], *, skip_special_tokens: bool = True
) -> Rollout:
    """End each row at the first token whose text completes one of `stop_strings`.

    The token that completes the stop string stays valid (mask 1), as a stop
    id does; later tokens get mask 0, token 0 and log-prob 0, and the row is
    no longer `truncated`. Rows without a stop string are unchanged. Returns a
    new `Rollout` with numpy arrays in the changed fields.
    """
    stops = [s for s in stop_strings if s]
    if not stops:
        return rollout
    tokens, mask, logp, truncated = (
        np.array(x)
        for x in jax.device_get(
            (rollout.tokens, rollout.mask, rollout.sampler_logp, rollout.truncated)
        )
    )
    for r in range(tokens.shape[0]):
        ids = [int(t) for t in tokens[r][mask[r] > 0]]
        cut = _stop_length(tokenizer, ids, stops, skip_special_tokens) if ids else None
        if cut is None:
            continue
        # mask is a prefix of ones, so the first `cut` valid tokens are columns [0, cut).
        mask[r, cut:] = 0
        tokens[r, cut:] = 0
        logp[r, cut:] = 0.0
        truncated[r] = False
    return rollout.replace(tokens=tokens, mask=mask, sampler_logp=logp, truncated=truncated)
