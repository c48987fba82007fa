"""Host-side text ↔ token helpers shared by the trainers and evaluation."""

from __future__ import annotations

import numpy as np

__all__ = ["encode_prompts", "encode_completions", "bucket_for", "stop_ids"]


def _bos(tokenizer):
    bos = getattr(tokenizer, "bos_token_id", None)
    return [] if bos is None else [int(bos)]


def encode_prompts(tokenizer, prompts):
    """Token ids of each prompt, with the tokenizer's BOS when it has one."""
    return [_bos(tokenizer) + list(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]


def encode_completions(tokenizer, completions, length: int):
    """Right-padded completion ids [N, length] ending in EOS, and their mask."""
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    tokens = np.full((len(completions), length), pad, np.int32)
    mask = np.zeros((len(completions), length), np.int32)
    for i, c in enumerate(completions):
        ids = list(tokenizer.encode(c, add_special_tokens=False)) + [eos]
        if len(ids) > length:
            raise ValueError(
                f"completion {c!r} has {len(ids)} tokens with EOS; the length is {length}"
            )
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    return tokens, mask


def bucket_for(length: int, buckets) -> int:
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise ValueError(
        f"a prompt of {length} tokens is longer than the largest bucket in "
        f"rollout.prompt_buckets = {tuple(buckets)}"
    )


def stop_ids(tokenizer):
    return (int(tokenizer.eos_token_id),)
