"""Host-side text ↔ token helpers shared by the trainers and evaluation."""

from __future__ import annotations

import numpy as np

__all__ = ["encode_prompts", "encode_completions", "bucket_for", "stop_ids", "eval_sampling_params"]


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


def eval_sampling_params(config, tokenizer, *, n: int | None = None, temperature=None):
    """The held-out `rollout.SamplingParams` of `config`.

    Temperature `eval.temperature` (<= 0: greedy) and `eval.n` samples per prompt unless given;
    top-k, top-p and min-p from `rollout`, as in training; `rollout.max_new_tokens`; the
    tokenizer's stop ids. The trainer's evaluations and the evaluation CLI both use this, so
    `eval/accuracy` in TensorBoard and `eval.json` come from the same sampler.
    """
    from jaxrl_llm import rollout as rollout_lib

    temperature = config.eval.temperature if temperature is None else float(temperature)
    return rollout_lib.SamplingParams(
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=temperature if temperature > 0 else 1.0,
        greedy=temperature <= 0,
        top_k=config.rollout.top_k,
        top_p=config.rollout.top_p,
        min_p=config.rollout.min_p,
        stop_token_ids=stop_ids(tokenizer),
        n=config.eval.n if n is None else int(n),
    )
