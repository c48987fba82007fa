"""The config schema shared by every recipe, and its validation.

Each field is declared once, in `SCHEMA`, as a `Field(default, help, ...)` with
its allowed range or choices. From that table

* `base_config(runlocal)` builds the locked ConfigDict recipes in `configs/`
  start from (an unknown key fails at once);
* `validate(config, num_devices=None)` checks every field's type and range or
  choice, then the rules between fields (batch divisibility, mesh shards,
  replay, overlong buffer, filter band, ...). The trainer calls it before
  building anything, and so does the CLI right after parsing the flags;
* `describe(config)` is the CLI's `--helpconfig` listing;
* `apply_override(config, "optim.lr", "3e-4")` sets a field from command-line
  text, converted to the field's type.

Every error is a `ConfigError` of one line, `config.<field> = <value> <what is
allowed>`. Registry names (`algo.advantage`, `algo.policy_loss`,
`algo.aggregation`) come from `jaxrl_llm.losses.registry`, read when
`validate` runs.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np

__all__ = [
    "base_config",
    "validate",
    "ConfigError",
    "derived_sizes",
    "Field",
    "SCHEMA",
    "describe",
    "apply_override",
]


class ConfigError(ValueError):
    """A config field holds a value the trainer cannot use."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its default, one line of help, and what values it allows.

    `choices` is a tuple, or a function returning the allowed names (registries,
    read lazily). `ge`/`gt`/`le`/`lt` bound a number; for a tuple they bound
    each entry (`item_type` gives the entries' type) and `nonempty` forbids ().
    The type is the default's: an int is accepted where a float is expected,
    never a bool where a number is. A `dict` default is an open group of
    keyword arguments (`task.kwargs`, `algo.loss_kwargs`), not checked here.
    """

    default: Any
    help: str
    choices: tuple | Callable[[], Any] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    item_type: type | None = None
    nonempty: bool = False


def _advantages():
    from jaxrl_llm.losses import registry  # pylint: disable=g-import-not-at-top

    return tuple(registry.ADVANTAGES)


def _policy_losses():
    from jaxrl_llm.losses import registry  # pylint: disable=g-import-not-at-top

    return tuple(registry.POLICY_LOSSES)


def _aggregations():
    from jaxrl_llm.losses import registry  # pylint: disable=g-import-not-at-top

    return tuple(registry.AGGREGATIONS)


def _kl_kinds():
    from jaxrl_llm.losses import kl  # pylint: disable=g-import-not-at-top

    return tuple(kl.KL_KINDS)


def _architectures():
    from jaxrl_llm.models import config as model_config  # pylint: disable=g-import-not-at-top

    return tuple(model_config.SUPPORTED_ARCHITECTURES)


def _attention_names():
    from jaxrl_llm.models import config as model_config  # pylint: disable=g-import-not-at-top

    return tuple(model_config.ATTENTION_NAMES)


def _decode_attention_names():
    from jaxrl_llm.models import config as model_config  # pylint: disable=g-import-not-at-top

    return tuple(model_config.DECODE_ATTENTION_NAMES)


_DTYPES = ("float32", "bfloat16", "float16")
F = Field

SCHEMA: dict[str, dict[str, Any]] = {
    "model": {
        "hf_path": F("", "a local HF folder; empty: build the inline tiny model below"),
        "architecture": F("qwen2", "inline model family", choices=_architectures),
        "hidden_size": F(128, "inline model width", ge=1),
        "num_layers": F(2, "inline model depth", ge=1),
        "num_heads": F(4, "query heads", ge=1),
        "num_kv_heads": F(2, "key/value heads (divides num_heads)", ge=1),
        "head_dim": F(32, "width of one head", ge=1),
        "intermediate_size": F(384, "MLP width", ge=1),
        "rope_theta": F(10000.0, "RoPE base", gt=0),
        "tie_embeddings": F(True, "share the input embedding and the LM head"),
        "dtype": F("float32", "activation dtype", choices=_DTYPES),
        "param_dtype": F("float32", "parameter dtype", choices=_DTYPES),
        "remat": F(False, "rematerialise each layer in the backward pass"),
        "remat_policy": F(
            "full",
            "with model.remat, what a layer keeps from its forward pass: full (nothing), dots "
            "(matmul outputs), qkv_attn (q, k, v, attention context), block_outputs "
            "(attention and MLP outputs)",
            choices=("full", "dots", "qkv_attn", "block_outputs"),
        ),
        "attention": F(
            "xla",
            "attention of the teacher-forced passes (docs/scaling.md, Fused attention): xla "
            "(scores materialised), auto (cudnn on GPU in bf16/fp16, splash on TPU, else xla), "
            "cudnn, splash (TPU Pallas), pallas_gpu (Triton); decoding: model.decode_attention",
            choices=_attention_names,
        ),
        "decode_attention": F(
            "xla",
            "attention of the samplers' one-token decode steps (docs/rollouts.md, Decode "
            "attention kernel): xla (every read slot masked), pallas_gpu (Triton decode kernel "
            "over each row's filled slots), auto (pallas_gpu on GPU, else xla)",
            choices=_decode_attention_names,
        ),
        "init_checkpoint": F(
            "", "params to start RL from (an SFT checkpoint folder); empty: SFT warm start below"
        ),
        "lora_rank": F(
            0, "LoRA rank: train adapters on the frozen model (docs/lora.md); 0: full weights", ge=0
        ),
        "lora_alpha": F(
            16.0, "LoRA scale numerator: the update is (lora_alpha / lora_rank) A B", gt=0
        ),
        "lora_targets": F(
            ("q_proj", "k_proj", "v_proj", "o_proj"),
            "projections that get adapters (q/k/v/o_proj, gate/up/down_proj)",
            item_type=str,
            nonempty=True,
        ),
        "lora_quantize": F(
            "",
            "QLoRA (docs/lora.md): store the frozen base's lora_targets kernels quantised, "
            "int8 / int4 / nf4 in blocks of 64 (qwix); '': not quantised",
            choices=("", "int8", "int4", "nf4"),
        ),
    },
    "tokenizer": {"path": F("builtin", "a local HF tokenizer folder, or 'builtin' (char-level)")},
    "task": {
        "name": F("arith", 'registry name or "my_pkg.my_mod:make"'),
        "kwargs": F(dict(digits=(1, 2), ops="+"), "keyword arguments of the task's factory"),
        "reward_workers": F(2, "reward processes; 0: score in this process", ge=0),
        "reward_timeout_s": F(10.0, "seconds before one reward call counts as failed", gt=0),
        "reward_step_budget_s": F(
            0.0, "seconds the reward calls of one scoring pass may take in all; 0: no budget", ge=0
        ),
        "max_failed_reward_steps": F(
            3, "stop after this many steps in a row whose rewards all failed; 0: never", ge=0
        ),
    },
    "env": {
        "name": F(
            "",
            'a multi-turn environment (envs registry name or "my_pkg.my_mod:make"); it replaces '
            "task.name and collect plays episodes (rollout/multiturn.py); empty: single-turn",
        ),
        "kwargs": F({}, "keyword arguments of the environment's factory"),
        "max_turns": F(4, "actions per episode at most (the environment may end it sooner)", ge=1),
        "max_action_tokens": F(
            0, "tokens of one action at most; 0: up to rollout.max_new_tokens", ge=0
        ),
        "max_observation_tokens": F(
            32, "tokens of one observation at most (longer ones are cut)", ge=0
        ),
        "stop_strings": F(
            ("</tool>", "</answer>"),
            "texts that end an action (tokenised once, matched on token ids), besides EOS",
            item_type=str,
        ),
        "parser": F(
            "tags",
            "tool-call format: tags (the env's own, <tool name=...>), chat_template (Hermes "
            "<tool_call> JSON, as Qwen templates; adds </tool_call> to the stop strings), auto "
            "(chat_template when the tokenizer's chat template mentions <tool_call>, else tags)",
            ("tags", "chat_template", "auto"),
        ),
        "step_timeout_s": F(
            10.0, "seconds one env step may take; past it the episode ends, counted", gt=0
        ),
        "workers": F(16, "environment steps run at once (threads)", ge=1),
        "credit": F(
            "episode",
            "episode: the estimator on the episode return; turn: per-turn rewards (grpo / "
            "dr_grpo: each turn's return minus the group baseline; gae: rewards at action ends)",
            ("episode", "turn"),
        ),
        "turn_gamma": F(1.0, "discount between turns (env.credit = turn)", ge=0, le=1),
        "gae_over_observations": F(
            False, "GAE runs through observation tokens (their values bootstrap); False: skipped"
        ),
    },
    "rollout": {
        "max_new_tokens": F(6, "T, tokens sampled per completion", gt=0),
        "temperature": F(1.0, "sampling temperature", gt=0),
        "top_k": F(0, "keep the k most likely tokens; 0: off", ge=0),
        "top_p": F(1.0, "nucleus mass kept; 1: off", gt=0, le=1),
        "min_p": F(0.0, "drop tokens below min_p * the top probability; 0: off", ge=0, lt=1),
        "prompt_buckets": F(
            (16, 32, 64, 128, 256, 512),
            "prompt lengths P compiled for (a prompt pads to the smallest that fits)",
            item_type=int,
            ge=1,
            nonempty=True,
        ),
        "async_steps": F(
            0,
            "k: step t trains on a batch sampled with the parameters of step t - k, sampled "
            "while earlier updates run; 0: synchronous",
            ge=0,
            le=8,
        ),
        "row_keys": F(
            False,
            "the static sampler draws row r's token t with fold_in(fold_in(key, r), t), the "
            "continuous sampler's per-row keys, instead of one key per step: the same seed "
            "then samples the same completions with and without rollout.continuous_slots "
            "(docs/rollouts.md, The guarantee); False: today's scheme",
        ),
        "continuous_slots": F(
            0,
            "rows decoding at a time with continuous batching (rollout.generate_continuous, "
            "per-row keys; the plain RL trainer's rollouts and evaluations, one process); "
            "0: the static sampler",
            ge=0,
        ),
        "kv_buckets": F(
            0,
            "static sampler (vmapped seeds and partial rollouts too): each decode step attends "
            "over the filled cache prefix rounded up to one of this many lengths "
            "(rollout.kv_buckets_for), not all P + T slots; 0: every slot (the continuous "
            "sampler always uses 4)",
            ge=0,
            le=16,
        ),
        "partial_budget": F(
            0,
            "K: partial rollouts, each row draws at most K tokens per sampler round and "
            "completions not finished are paused and continued at the next step "
            "(trainers/partial_rollouts.py, per-row keys, one process); 0: off",
            ge=0,
        ),
    },
    "algo": {
        "advantage": F("grpo", "advantage estimator (losses.registry.ADVANTAGES)", _advantages),
        "policy_loss": F("ppo_clip", "policy loss (losses.registry.POLICY_LOSSES)", _policy_losses),
        "aggregation": F(
            "token-mean", "token to loss reduction (losses.registry.AGGREGATIONS)", _aggregations
        ),
        "clip_low": F(0.2, "ratio clip below: 1 - clip_low", ge=0, le=1),
        "clip_high": F(0.2, "ratio clip above: 1 + clip_high", ge=0),
        "dual_clip": F(0.0, "dual-clip constant c > 1 for negative advantages; 0: off", ge=0),
        "eps": F(1e-6, "added to the group std before dividing", ge=0),
        "ddof": F(1, "degrees of freedom of the group std", choices=(0, 1)),
        "gamma": F(1.0, "discount (gae)", ge=0, le=1),
        "lam": F(1.0, "GAE lambda", ge=0, le=1),
        "w_lambda": F(0.1, "W-REINFORCE weight of correct samples", ge=0),
        "dpo_beta": F(
            0.1, "online_dpo: DPO beta (inverse temperature of the implicit reward)", gt=0
        ),
        "dpo_label_smoothing": F(
            0.0, "online_dpo: label smoothing eps (conservative DPO)", ge=0, lt=0.5
        ),
        "norm_constant": F(0.0, "seq-mean-token-sum-norm divisor; 0: max_new_tokens", ge=0),
        "entropy_coef": F(0.0, "entropy bonus coefficient (negative: a penalty)"),
        "forking_tokens": F(
            0.0, "top entropy fraction kept in the policy gradient; 0: off", ge=0, le=1
        ),
        "recompute_old_logp": F(
            False, "recompute old log-probs with a forward pass instead of the sampler's"
        ),
        "rollout_correction": F(
            "",
            "correct for the sampler's log-probs differing from the recomputed old ones: tis "
            "(truncated IS weights), mis (masked IS); empty: off (needs recompute_old_logp)",
            ("", "tis", "mis"),
        ),
        "rollout_correction_level": F(
            "token",
            "ratio of the rollout correction: per token, per sequence, or geometric mean",
            ("token", "sequence", "geometric"),
        ),
        "rollout_correction_threshold": F(
            2.0,
            "C of the rollout correction: tis truncates the ratio at C, mis drops above C",
            gt=0,
        ),
        "rollout_correction_low": F(
            0.0, "mis: drop ratios below this; 0: 1 / rollout_correction_threshold", ge=0
        ),
        "vf_coef": F(0.5, "value loss coefficient", ge=0),
        "value_clip": F(0.2, "value clip range around the old values", ge=0),
        "loss_kwargs": F({}, "extra keywords for the policy loss (e.g. clip_cov ranges)"),
        "whiten_advantages": F(
            False, "whiten the advantages over the batch's tokens after the estimator"
        ),
        "kl": {
            "coef": F(0.0, "KL coefficient (initial one with a target)", ge=0),
            "kind": F("k3", "KL estimator", _kl_kinds),
            "placement": F("loss", "KL in the loss or in the reward", ("loss", "reward")),
            "target": F(0.0, "target KL of the adaptive controller; 0: fixed coef", ge=0),
            "horizon": F(10000, "adaptive controller horizon (Ziegler et al.)", ge=1),
            "ref_reset_every": F(
                0, "reset the reference to the policy every N steps; 0: never", ge=0
            ),
            "log": F(False, "compute the KL diagnostic even with coef 0"),
        },
    },
    "train": {
        "prompts_per_step": F(16, "B, prompts per step", gt=0),
        "samples_per_prompt": F(8, "G, samples per prompt", gt=0),
        "num_epochs": F(1, "passes over each batch", gt=0),
        "minibatch_size": F(0, "rows (of N = B*G) per optimizer step; 0: the whole batch", ge=0),
        "microbatch_size": F(0, "rows per gradient accumulation step; 0: the minibatch", ge=0),
        "steps": F(150, "RL steps", gt=0),
        "seed": F(0, "run seed", ge=0),
        "logprob_chunk": F(
            256,
            "positions per LM-head chunk of the teacher-forced log-prob passes (with "
            "vocab_block, one [rows, chunk, vocab_block] block alive); 0: one chunk",
            ge=0,
        ),
        "vocab_block": F(
            8192,
            "vocabulary columns per block of the teacher-forced log-prob passes (online "
            "log-sum-exp, no [N, T, V] logits in forward or backward) when the vocabulary is "
            "larger; a vocabulary of at most this many columns, or 0, runs unblocked",
            ge=0,
        ),
        "pack_budget": F(
            0,
            "tokens per pack of the no-gradient log-prob passes (old / reference log-probs): "
            "rows packed with segment ids, one pack per call (trainers/packing.py); at least "
            "the longest prompt bucket + rollout.max_new_tokens; 0: padded rows",
            ge=0,
        ),
        "micro_tokens": F(
            0,
            "token budget of each gradient micro-batch: the update packs a minibatch's rows "
            "into train.pack_budget-token packs, micro_tokens / pack_budget packs per "
            "micro-batch, so micro-batches are formed by tokens, not rows (verl's dynamic "
            "batch size; replaces microbatch_size); a multiple of pack_budget; 0: micro-batches "
            "of microbatch_size padded rows",
            ge=0,
        ),
        "max_bad_steps": F(5, "stop after this many non-finite updates in a row", ge=1),
    },
    "optim": {
        "lr": F(1e-4, "peak learning rate", ge=0),
        "schedule": F("constant", "after warm-up", ("constant", "cosine", "linear")),
        "warmup_steps": F(5, "linear warm-up steps", ge=0),
        "b1": F(0.9, "Adam beta1", ge=0, lt=1),
        "b2": F(0.99, "Adam beta2", ge=0, lt=1),
        "eps": F(1e-8, "Adam epsilon", ge=0),
        "weight_decay": F(0.0, "AdamW decoupled weight decay", ge=0),
        "clip_norm": F(1.0, "global gradient norm clip; 0: off", ge=0),
    },
    "reward_model": {
        "path": F(
            "",
            "a reward-model folder (python -m jaxrl_llm.trainers.reward_model) scored on device "
            "in the collect stage; empty: none",
        ),
        "weight": F(1.0, "weight of the reward model's score in the combined reward", ge=0),
        "normalize": F(
            "none", "batch: whiten the reward model's score over the batch first", ("none", "batch")
        ),
    },
    "judge": {
        "path": F(
            "", "an LLM-as-judge model folder (HF, with its tokenizer) scoring each completion"
        ),
        "weight": F(1.0, "weight of the judge's verdict in the combined reward", ge=0),
        "template": F(
            "Question: {prompt}\nAnswer: {completion}\nIs the answer correct? Reply yes or "
            "no.\nVerdict:",
            "the judge's prompt, with {prompt} and {completion}",
        ),
        "verdict": F(
            "yes_no", "how a verdict reads: yes/no, or a score n/m or n/10", ("yes_no", "score")
        ),
        "malformed_reward": F(0.0, "the reward of a verdict that does not parse (counted)"),
        "max_new_tokens": F(8, "verdict tokens at most", ge=1),
    },
    "reward_terms": {
        "task_weight": F(
            1.0, "weight of the task's (verifiable) reward; 0: the learned terms alone", ge=0
        ),
        "combine": F(
            "sum",
            "how terms combine: sum (weighted), gdpo (each normalised within its group first)",
            ("sum", "gdpo"),
        ),
    },
    "critic": {
        "enabled": F(False, "train a value model (needed by gae)"),
        "lr": F(5e-4, "critic learning rate", ge=0),
        "warmup_steps": F(0, "steps training only the critic first", ge=0),
        "lora": F(
            False,
            "the critic is a second LoRA adapter (model.lora_rank / alpha / targets) plus a value "
            "head on the policy's frozen base, instead of a full value model",
        ),
    },
    "sft": {
        "steps": F(2500, "SFT warm-start steps; 0: none", ge=0),
        "batch_size": F(32, "SFT batch", ge=1),
        "lr": F(1e-3, "SFT learning rate", ge=0),
        "warmup_steps": F(20, "SFT warm-up steps", ge=0),
        "seed": F(0, "SFT seed", ge=0),
        "data_file": F("", "SFT pairs file; empty: the task's own solutions"),
        "flawed_fraction": F(
            0.4, "fraction of SFT targets given a flaw the verifier rejects (sft.py)", ge=0, le=1
        ),
    },
    "data": {
        "dynamic_sampling": F(False, "DAPO: resample until B informative groups"),
        "max_attempts": F(4, "batches drawn per step by dynamic sampling", ge=1),
        "overlong_buffer": F(0, "DAPO soft overlong penalty band in tokens; 0: off", ge=0),
        "overlong_penalty": F(1.0, "penalty at the overlong limit", ge=0),
        "mask_truncated": F(False, "leave truncated completions out of the loss"),
        "laser_target": F(0, "LASER target length step reward; 0: off", ge=0),
        "laser_alpha": F(0.5, "LASER reward for short correct completions", ge=0),
        "curriculum": F("", "curriculum over difficulty arms", ("", "ucb", "td_softmax")),
        "filter_low": F(0.0, "keep prompts whose pass rate is at least this", ge=0, le=1),
        "filter_high": F(1.0, "... and at most this", ge=0, le=1),
        "num_examples": F(10000, "size of the training prompt pool", ge=1),
        "replay_fraction": F(
            0.0,
            "fraction of each batch reused from recent groups (importance-corrected)",
            ge=0,
            lt=1,
        ),
        "replay_capacity": F(256, "recent rollout groups kept for replay", ge=1),
    },
    "mesh": {
        "data": F(1, "data-parallel axis size (>= 1); -1: the rest of the devices", ge=-1),
        "fsdp": F(-1, "FSDP axis size (>= 1); -1: the rest of the devices", ge=-1),
        "tensor": F(1, "tensor-parallel axis size (>= 1); -1: the rest of the devices", ge=-1),
        "rules": F((), "logical-axis rules (name, mesh axes); (): the default rules"),
        "num_devices": F(0, "use the first N devices of this process's machine; 0: all", ge=0),
    },
    "checkpoint": {
        "every": F(20, "save every N steps (and at the end); 0: only at the end", ge=0),
        "keep": F(2, "checkpoints kept", ge=1),
    },
    "log": {
        "every": F(1, "write metrics every N steps; 0: never", ge=0),
        "samples": F(4, "completions printed every 10 steps", ge=0),
        "progress": F(True, "show a progress bar"),
    },
    "eval": {
        "every": F(
            0, "held-out evaluation every N steps (also before and after); 0: ends only", ge=0
        ),
        "size": F(200, "held-out prompts", ge=1),
        "seed": F(12345, "held-out prompt seed", ge=0),
        "n": F(4, "samples per held-out prompt", ge=1),
        "ks": F((1, 2, 4), "k of pass@k, maj@k, mean@k", item_type=int, ge=1),
        "temperature": F(1.0, "held-out sampling temperature; 0: greedy", ge=0),
    },
}
del F


def _fields(schema=SCHEMA, prefix="") -> Iterator[tuple[str, Field]]:
    for name, spec in schema.items():
        if isinstance(spec, Field):
            yield prefix + name, spec
        else:
            yield from _fields(spec, f"{prefix}{name}.")


def _build(schema) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for name, spec in schema.items():
        if not isinstance(spec, Field):
            c[name] = _build(spec)
        elif isinstance(spec.default, dict):
            c[name] = ml_collections.ConfigDict(dict(spec.default))
        else:
            c[name] = spec.default
    return c


def base_config(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The full schema with defaults (a GRPO recipe on the arithmetic task), locked."""
    c = _build(SCHEMA)
    if runlocal:
        c.train.steps = 30
    c.lock()
    return c


def derived_sizes(c) -> dict:
    """N, minibatch and micro-batch row counts, checked for divisibility."""
    n = c.train.prompts_per_step * c.train.samples_per_prompt
    mb = c.train.minibatch_size or n
    mu = c.train.microbatch_size or mb
    return dict(rows=n, minibatch=mb, microbatch=mu)


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _allowed(f: Field) -> str:
    """What `f` allows, in words: 'in [0, 1)', '>= 0', 'one of [...]', '' for anything."""
    if f.choices is not None:
        choices = f.choices() if callable(f.choices) else f.choices
        return f"one of {sorted(choices)}"
    low = f"[{_num(f.ge)}" if f.ge is not None else f"({_num(f.gt)}" if f.gt is not None else None
    high = f"{_num(f.le)}]" if f.le is not None else f"{_num(f.lt)})" if f.lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    if high:
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]
    return ""


def _in_range(x, f: Field) -> bool:
    return (
        (f.ge is None or x >= f.ge)
        and (f.gt is None or x > f.gt)
        and (f.le is None or x <= f.le)
        and (f.lt is None or x < f.lt)
    )


def _is(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is int:  # numpy integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return (
            isinstance(value, numbers.Real)
            and not isinstance(value, (bool, np.bool_))
            and value == value
        )
    return isinstance(value, kind)


_KIND_WORDS = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}


def _check_field(path: str, value, f: Field) -> None:
    err = f"config.{path} = {value!r}"
    d = f.default
    if isinstance(d, dict):
        if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
            raise ConfigError(f"{err} must be a group of keyword arguments")
        return
    if isinstance(d, tuple):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{err} must be a tuple, not a {type(value).__name__}")
        if f.nonempty and not value:
            raise ConfigError(f"{err} must not be empty")
        for item in value:
            if f.item_type is not None and not _is(item, f.item_type):
                raise ConfigError(
                    f"{err} has an entry {item!r}; each entry must be {_KIND_WORDS[f.item_type]}"
                )
            if f.item_type in (int, float) and not _in_range(item, f):
                raise ConfigError(f"{err} has an entry {item!r}; each entry must be {_allowed(f)}")
        return
    kind = type(d)
    if not _is(value, kind):
        raise ConfigError(f"{err} must be {_KIND_WORDS[kind]}, not a {type(value).__name__}")
    if kind is float and value in (float("inf"), float("-inf")):
        raise ConfigError(f"{err} must be a finite number")
    if f.choices is not None:
        choices = f.choices() if callable(f.choices) else f.choices
        if value not in choices:
            raise ConfigError(f"{err} is not one of {sorted(choices)}")
    elif kind in (int, float) and not _in_range(value, f):
        raise ConfigError(f"{err} must be {_allowed(f)}")


def _check_keys(c, schema, prefix="config") -> None:
    """Every key of `c` is in the schema and every schema field is in `c`."""
    for key in c.keys():
        if key not in schema:
            raise ConfigError(
                f"unknown field {prefix}.{key}; valid fields of {prefix}: {', '.join(sorted(schema))}"
            )
    for key, spec in schema.items():
        if key not in c:
            raise ConfigError(f"{prefix}.{key} is missing (start a recipe from base_config())")
        if not isinstance(spec, Field):
            if not isinstance(c[key], (Mapping, ml_collections.ConfigDict)):
                raise ConfigError(f"{prefix}.{key} = {c[key]!r} must be a group of fields")
            _check_keys(c[key], spec, f"{prefix}.{key}")


def _get(c, path: str):
    for part in path.split("."):
        c = c[part]
    return c


def _check_pack_budget(c) -> None:
    """A pack must hold the longest row: the largest prompt bucket and the completion."""
    budget = c.train.pack_budget
    longest = max(c.rollout.prompt_buckets) + c.rollout.max_new_tokens
    if budget and budget < longest:
        raise ConfigError(
            f"config.train.pack_budget = {budget} cannot hold the longest row: "
            f"max(rollout.prompt_buckets) + rollout.max_new_tokens = {longest}; set it to at "
            f"least {longest} or 0"
        )


def _check_micro_tokens(c) -> None:
    """Token-budget micro-batches are whole packs of `train.pack_budget` tokens."""
    tokens, budget = c.train.micro_tokens, c.train.pack_budget
    if not tokens:
        return
    if not budget:
        raise ConfigError(
            f"config.train.micro_tokens = {tokens} packs the update into "
            "train.pack_budget-token packs; set train.pack_budget > 0 (at least the longest "
            "row) or micro_tokens = 0"
        )
    if tokens % budget:
        raise ConfigError(
            f"config.train.micro_tokens = {tokens} must be a multiple of train.pack_budget = "
            f"{budget} (whole packs per micro-batch), e.g. {budget * max(1, tokens // budget)}"
        )
    if c.train.microbatch_size:
        raise ConfigError(
            f"config.train.micro_tokens = {tokens} forms the micro-batches by tokens; "
            f"train.microbatch_size = {c.train.microbatch_size} (rows) cannot apply too: set "
            "one of them to 0"
        )


def _check_partial(c) -> None:
    """`rollout.partial_budget > 0` runs its own rounds in the collect stage: the options that
    resample, replay, sample ahead, play episodes or batch continuously inside it are refused."""
    if not c.rollout.partial_budget:
        return
    clash = {
        "rollout.async_steps": c.rollout.async_steps,
        "rollout.continuous_slots": c.rollout.continuous_slots,
        "data.dynamic_sampling": c.data.dynamic_sampling,
        "data.replay_fraction": c.data.replay_fraction,
        "env.name": c.env.name,
    }
    on = [f"{k} = {v!r}" for k, v in clash.items() if v]
    if on:
        raise ConfigError(
            f"config.rollout.partial_budget = {c.rollout.partial_budget} does not combine with "
            f"{', '.join(on)} yet; set rollout.partial_budget = 0 or turn them off"
        )


def _validate_env(c) -> None:
    """The multi-turn fields: a known environment, and a credit mode the estimator supports."""
    if not c.env.name:
        return
    from jaxrl_llm.envs import registered_envs  # pylint: disable=g-import-not-at-top

    if ":" not in c.env.name and c.env.name not in registered_envs():
        raise ConfigError(
            f"config.env.name = {c.env.name!r} is not one of {sorted(registered_envs())} "
            "(or 'my_pkg.my_mod:make')"
        )
    if c.rollout.get("async_steps", 0):
        raise ConfigError(
            f"config.env.name = {c.env.name!r} does not combine with rollout.async_steps = "
            f"{c.rollout.async_steps} yet (episodes are played in the collect stage); set it to 0"
        )
    if c.rollout.get("kv_buckets", 0):
        raise ConfigError(
            f"config.env.name = {c.env.name!r} does not combine with rollout.kv_buckets = "
            f"{c.rollout.kv_buckets} yet (episodes decode with the multi-turn sampler, over "
            "every cache slot); set it to 0"
        )
    if c.rollout.get("row_keys", False):
        raise ConfigError(
            f"config.env.name = {c.env.name!r} does not combine with rollout.row_keys = True "
            "(episodes draw with the multi-turn sampler's own keys); set it to False"
        )
    if c.model.get("decode_attention", "xla") == "pallas_gpu":
        raise ConfigError(
            f"config.env.name = {c.env.name!r} does not combine with model.decode_attention = "
            "'pallas_gpu' yet (episodes append observations with masked holes, and the "
            "decode kernel attends to one span per row); use 'auto' or 'xla'"
        )
    if c.env.credit == "turn" and c.algo.advantage not in ("grpo", "dr_grpo", "gae"):
        raise ConfigError(
            f"config.env.credit = 'turn' needs algo.advantage in ['dr_grpo', 'gae', 'grpo'], "
            f"not {c.algo.advantage!r}"
        )


def validate(c, num_devices: int | None = None) -> None:
    """Fails with a one-line `ConfigError` naming the field and the allowed values.

    Checks that the keys are the schema's, every field's type and range or
    choice, then the rules between fields; with `num_devices`, that the mesh
    and the batch divide over that many devices. What the configured estimator and policy
    loss need is checked by the loss registry (`registry.check_config`).
    """
    from jaxrl_llm.tasks import registered_tasks  # pylint: disable=g-import-not-at-top

    _check_keys(c, SCHEMA)
    for path, f in _fields():
        _check_field(path, _get(c, path), f)

    if ":" not in c.task.name and c.task.name not in registered_tasks():
        raise ConfigError(
            f"config.task.name = {c.task.name!r} is not one of {sorted(registered_tasks())} "
            "(or 'my_pkg.my_mod:make')"
        )
    _validate_env(c)
    if not c.model.hf_path and c.model.num_heads % c.model.num_kv_heads:
        raise ConfigError(
            f"config.model.num_kv_heads = {c.model.num_kv_heads} does not divide "
            f"model.num_heads = {c.model.num_heads}"
        )
    if c.model.lora_rank:
        from jaxrl_llm.models import lora  # pylint: disable=g-import-not-at-top

        try:
            lora.check_targets(c.model.lora_targets)
        except ValueError as e:
            raise ConfigError(
                f"config.model.lora_targets = {tuple(c.model.lora_targets)}: {e}"
            ) from None
    if c.model.lora_quantize and not c.model.lora_rank:
        raise ConfigError(
            f"config.model.lora_quantize = {c.model.lora_quantize!r} quantises LoRA's frozen "
            "base: it needs model.lora_rank > 0 (got 0); allowed: '', 'int8', 'int4', 'nf4'"
        )
    if c.critic.lora and not (c.critic.enabled and c.model.lora_rank):
        raise ConfigError(
            f"config.critic.lora = True needs critic.enabled = True and model.lora_rank > 0 "
            f"(got critic.enabled = {c.critic.enabled}, model.lora_rank = {c.model.lora_rank})"
        )
    if c.model.attention == "cudnn" and c.model.dtype not in ("bfloat16", "float16"):
        raise ConfigError(
            f"config.model.attention = 'cudnn' needs model.dtype in ['bfloat16', 'float16'], "
            f"not {c.model.dtype!r} (cuDNN flash attention has no float32); or use 'auto' / 'xla'"
        )
    if c.algo.dual_clip and not c.algo.dual_clip > 1:
        raise ConfigError(f"config.algo.dual_clip = {c.algo.dual_clip!r} must be 0 (off) or > 1")
    sizes = {k: c.mesh[k] for k in ("data", "fsdp", "tensor")}
    for k, v in sizes.items():
        if v == 0:
            raise ConfigError(
                f"config.mesh.{k} = 0 must be >= 1, or -1 for the rest of the devices"
            )
    if list(sizes.values()).count(-1) > 1:
        raise ConfigError(f"config.mesh sizes {sizes}: at most one of them may be -1")
    if not c.data.filter_low <= c.data.filter_high:
        raise ConfigError(
            f"config.data.filter_low = {c.data.filter_low}, filter_high = "
            f"{c.data.filter_high}: need 0 <= filter_low <= filter_high <= 1"
        )
    if c.data.overlong_buffer >= c.rollout.max_new_tokens:
        raise ConfigError(
            f"config.data.overlong_buffer = {c.data.overlong_buffer} must be smaller "
            f"than rollout.max_new_tokens = {c.rollout.max_new_tokens}"
        )
    if c.algo.rollout_correction and not c.algo.recompute_old_logp:
        raise ConfigError(
            f"config.algo.rollout_correction = {c.algo.rollout_correction!r} needs "
            "config.algo.recompute_old_logp = True (the correction weighs the sampler's "
            "log-probs against the trainer's recomputed old ones)"
        )
    if (
        c.algo.rollout_correction == "mis"
        and c.algo.rollout_correction_low > c.algo.rollout_correction_threshold
    ):
        raise ConfigError(
            f"config.algo.rollout_correction_low = {c.algo.rollout_correction_low} must be "
            f"<= rollout_correction_threshold = {c.algo.rollout_correction_threshold}"
        )
    # What the estimator and the policy loss need (a critic, a group size, a ratio to the
    # behaviour policy) is checked by the registry, from what each entry declares.
    _check_registry(c)
    _check_reward_model(c)
    if c.data.replay_fraction and (
        c.data.dynamic_sampling or c.critic.enabled or c.algo.recompute_old_logp
    ):
        raise ConfigError(
            "config.data.replay_fraction > 0 needs the stored behaviour log-probs as the "
            "importance correction (so no algo.recompute_old_logp), no dynamic sampling and "
            "no critic"
        )
    _check_partial(c)
    _check_pack_budget(c)
    _check_micro_tokens(c)
    if c.rollout.async_steps and (c.data.dynamic_sampling or c.data.replay_fraction):
        raise ConfigError(
            f"config.rollout.async_steps = {c.rollout.async_steps} does not combine with "
            "data.dynamic_sampling or data.replay_fraction > 0 (both resample or replay "
            "inside the collect stage); set rollout.async_steps = 0 or turn them off"
        )
    s = derived_sizes(c)
    if s["rows"] % s["minibatch"]:
        raise ConfigError(
            f"config.train.minibatch_size = {s['minibatch']} does not divide the batch of "
            f"prompts_per_step * samples_per_prompt = {c.train.prompts_per_step} * "
            f"{c.train.samples_per_prompt} = {s['rows']} rows"
        )
    if s["minibatch"] % s["microbatch"]:
        raise ConfigError(
            f"config.train.microbatch_size = {s['microbatch']} does not divide "
            f"minibatch_size = {s['minibatch']}"
        )
    if num_devices is not None:
        _check_attention_platform(c)
        if c.mesh.num_devices:
            if c.mesh.num_devices > num_devices:
                raise ConfigError(
                    f"config.mesh.num_devices = {c.mesh.num_devices} but only "
                    f"{num_devices} devices are available"
                )
            num_devices = c.mesh.num_devices
        batch_shards = _batch_shards(c, num_devices)
        if s["microbatch"] % batch_shards:
            raise ConfigError(
                f"config.train.microbatch_size = {s['microbatch']} rows do not divide over the "
                f"{batch_shards} batch shards of the mesh (the mesh axes config.mesh.rules map `batch` to)"
            )
        if c.train.prompts_per_step % batch_shards:
            raise ConfigError(
                f"config.train.prompts_per_step = {c.train.prompts_per_step} does not divide over "
                f"the {batch_shards} batch shards of the mesh (the mesh axes config.mesh.rules map `batch` to)"
            )


def _check_reward_model(c) -> None:
    """The reward terms: folders that exist, a term left with weight, a combination the
    estimator can use. Fields set without the folder they belong to are an error."""
    from jaxrl_llm.rewards import learned  # pylint: disable=g-import-not-at-top

    r, j, t = c.reward_model, c.judge, c.reward_terms
    for group, defaults in (
        ("reward_model", {"weight": 1.0, "normalize": "none"}),
        ("judge", {"weight": 1.0}),
    ):
        g = c[group]
        changed = [f"{k} = {g[k]!r}" for k, v in defaults.items() if g[k] != v]
        if changed and not g.path:
            raise ConfigError(
                f"config.{group}: {', '.join(changed)} set but no {group}.path; give the "
                "path, or leave the group at its defaults"
            )
    if r.path:
        try:
            learned.check_folder(r.path)
        except ValueError as e:
            raise ConfigError(f"config.reward_model.path: {e}") from None
    if j.path:
        if not os.path.isfile(os.path.join(j.path, "config.json")):
            raise ConfigError(
                f"config.judge.path = {j.path!r} is not a model folder (no config.json)"
            )
        if "{prompt}" not in j.template or "{completion}" not in j.template:
            raise ConfigError(
                f"config.judge.template = {j.template!r} must contain {{prompt}} and {{completion}}"
            )
    learned_on = bool(r.path or j.path)
    if not learned_on:
        if (t.task_weight, t.combine) != (1.0, "sum"):
            raise ConfigError(
                f"config.reward_terms = (task_weight {t.task_weight}, combine {t.combine!r}) "
                "set but no reward_model.path or judge.path: the task's reward is the only term"
            )
        return
    weights = [t.task_weight] + [r.weight] * bool(r.path) + [j.weight] * bool(j.path)
    if not any(weights):
        raise ConfigError(
            "config.reward_terms.task_weight, reward_model.weight and judge.weight are all 0: "
            "nothing would be rewarded"
        )
    if t.combine == "gdpo" and c.train.samples_per_prompt < 2:
        raise ConfigError(
            "config.reward_terms.combine = 'gdpo' normalises within groups: it needs "
            f"train.samples_per_prompt >= 2, got {c.train.samples_per_prompt}"
        )
    from jaxrl_llm.losses import registry  # pylint: disable=g-import-not-at-top

    if (t.combine, r.normalize) != ("sum", "none") and registry.ADVANTAGES[
        c.algo.advantage
    ].needs_greedy:
        raise ConfigError(
            f"config.reward_terms.combine = {t.combine!r} / reward_model.normalize = "
            f"{r.normalize!r} do not combine with algo.advantage = {c.algo.advantage!r}: its "
            "greedy baseline is one sample per prompt, normalised apart from the batch; use "
            "combine = 'sum', normalize = 'none'"
        )


def _check_registry(c) -> None:
    from jaxrl_llm.losses import registry

    try:
        registry.check_config(c)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _check_attention_platform(c) -> None:
    """`model.attention` and `model.decode_attention` name kernels this process's backend runs
    (checked with devices)."""
    import jax  # pylint: disable=g-import-not-at-top

    from jaxrl_llm.models import attention_kernels  # pylint: disable=g-import-not-at-top

    platform = jax.default_backend()
    runnable = attention_kernels.runnable(platform)
    if c.model.attention not in runnable:
        raise ConfigError(
            f"config.model.attention = {c.model.attention!r} cannot run on this {platform!r} "
            f"backend; allowed here: {list(runnable)}"
        )
    decode = c.model.get("decode_attention", "xla")
    if decode not in runnable and decode in attention_kernels.DECODE_ATTENTION_NAMES:
        allowed = [n for n in attention_kernels.DECODE_ATTENTION_NAMES if n in runnable]
        raise ConfigError(
            f"config.model.decode_attention = {decode!r} cannot run on this {platform!r} "
            f"backend; allowed here: {allowed}"
        )


def _batch_shards(c, num_devices):
    """How many ways the rows split on the configured mesh, by the configured rules (the
    same function the trainer and the sampler use)."""
    from jaxrl_llm import parallel

    sizes = {k: c.mesh[k] for k in ("data", "fsdp", "tensor")}
    known = math.prod(v for v in sizes.values() if v != -1)
    if num_devices % known:
        raise ConfigError(f"config.mesh sizes {sizes} do not divide the {num_devices} devices")
    sizes = {k: num_devices // known if v == -1 else v for k, v in sizes.items()}
    rules = tuple(tuple(r) for r in c.mesh.rules) or parallel.DEFAULT_RULES
    return parallel.batch_shards(sizes, rules)


def describe(config=None) -> str:
    """Every field, one a line: `config.<field> = <value>  <help> [allowed] (default ...)`.

    With `config` (a recipe), the values are the recipe's and a field it
    changed also shows the schema default.
    """
    rows = []
    for path, f in _fields():
        value = f.default if config is None else _get(config, path)
        if isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        allowed = _allowed(f) if not isinstance(f.default, (dict, bool)) else ""
        note = f" [{allowed}]" if allowed else ""
        if config is not None and value != f.default:
            note += f" (default {f.default!r})"
        rows.append((f"config.{path} = {value!r}", f.help + note))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


_TRUE, _FALSE = ("true", "t", "1", "yes"), ("false", "f", "0", "no")


def _parse(key: str, text: str | None, current):
    """`text` from the command line as a value of `current`'s type."""
    err = f"config.{key} = {text!r}"
    if text is None:
        if isinstance(current, bool):
            return True
        raise ConfigError(f"config.{key} needs a value: --config.{key}=VALUE")
    if isinstance(current, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{err} must be true or false")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{err} must be an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{err} must be a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        if not text.strip():
            return ()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(p.strip() for p in text.split(","))
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config, key: str, text: str | None) -> None:
    """Sets `config.<key>` from command-line `text` (None: a bare boolean flag).

    Raises `ConfigError` for an unknown field (listing its group's fields) or
    text that does not convert to the field's type.
    """
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(["config", *parts[:i]])
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"unknown field config.{key}: {where} is not a group of fields")
        if part not in node:
            raise ConfigError(
                f"unknown field config.{key}; valid fields of {where}: "
                f"{', '.join(sorted(node.keys()))}"
            )
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"config.{key} is a group; set its fields: {', '.join(sorted(current.keys()))}"
        )
    value = _parse(key, text, current)
    try:
        node[parts[-1]] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{key} = {text!r}: {e}") from None


def __getattr__(name):
    # The name tuples that lived here before the registries: kept readable, read from them.
    if name in ("ADVANTAGE_NAMES", "POLICY_LOSS_NAMES", "AGGREGATIONS", "KL_KINDS"):
        return {
            "ADVANTAGE_NAMES": _advantages,
            "POLICY_LOSS_NAMES": _policy_losses,
            "AGGREGATIONS": _aggregations,
            "KL_KINDS": _kl_kinds,
        }[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
