"""Rollout sampler: prefill + decode with a static KV cache, sampling controls, exact log-probs.

prompts = pad_prompts(token_id_lists, bucket_lengths=(16, 32, 64), pad_id=0)
rollout = generate(params, config, prompts, key, SamplingParams(max_new_tokens=64, n=8))
logp = token_logprobs(logits, targets, temperature)   # shared with the trainer
rollout = generate(..., fused=True)                    # opt-in fused q/k/v and gate/up decode
logits, cache = extend_rows(config, params, cache, tokens, counts)   # append to live rows
rollout = generate_continuous(params, config, prompts, key, sampling, slots=16)  # continuous batching
rows = continue_rows(params, config, start_rows(prompts, key, n, T), sampling, budget)  # partial
"""

from jaxrl_llm.models.transformer import fuse_decode_params
from jaxrl_llm.rollout.continuous import generate_continuous, kv_buckets_for
from jaxrl_llm.rollout.extend import extend_rows, row_lengths
from jaxrl_llm.rollout.host import (
    DEFAULT_BUCKETS,
    apply_stop_strings,
    decode_completions,
    pad_prompts,
)
from jaxrl_llm.rollout.logprobs import token_logprobs
from jaxrl_llm.rollout.partial import PartialRows, continue_rows, start_rows
from jaxrl_llm.rollout.sampler import (
    generate,
    generate_seeds,
    generate_with_cache,
    init_sampler_cache,
    row_step_keys,
)
from jaxrl_llm.rollout.sampling import (
    TOP_P_CANDIDATES,
    argmax_first,
    sample_from_weights,
    sample_tokens,
    top_k_values,
    truncation_threshold,
)
from jaxrl_llm.rollout.types import PromptBatch, Rollout, SamplingParams

__all__ = [
    "PromptBatch",
    "SamplingParams",
    "Rollout",
    "generate",
    "generate_with_cache",
    "generate_seeds",
    "init_sampler_cache",
    "generate_continuous",
    "kv_buckets_for",
    "row_step_keys",
    "fuse_decode_params",
    "extend_rows",
    "PartialRows",
    "start_rows",
    "continue_rows",
    "row_lengths",
    "token_logprobs",
    "sample_tokens",
    "sample_from_weights",
    "truncation_threshold",
    "top_k_values",
    "argmax_first",
    "TOP_P_CANDIDATES",
    "pad_prompts",
    "decode_completions",
    "apply_stop_strings",
    "DEFAULT_BUCKETS",
]
