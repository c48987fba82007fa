"""Train state, optimisers and the memory-lean completion log-probs shared by the trainers."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import models
from jaxrl_llm.losses import entropy as entropy_lib
from jaxrl_llm.models import lora as lora_lib
from jaxrl_llm.models.blocked_head import lm_head_logprobs
from jaxrl_llm.rollout import token_logprobs

__all__ = [
    "TrainState",
    "make_optimizer",
    "completion_logprobs",
    "completion_values",
    "head_logprobs",
    "blocked_columns",
    "VOCAB_BLOCK",
    "weight_decay_mask",
]


# Vocabulary columns per block of the teacher-forced log-prob passes by default
# (`train.vocab_block`): a 152k vocabulary runs in 19 blocks, a small one unblocked.
VOCAB_BLOCK = 8192


@flax.struct.dataclass
class TrainState:
    """Everything on device that a step reads and writes; donated to `train_step`."""

    step: jax.Array  # int32 scalar: completed RL steps
    params: Any  # policy
    opt_state: Any
    rng: jax.Array  # base key; per-step keys are fold_in(rng, step)
    kl_coef: jax.Array  # float32 scalar (fixed or adaptive controller state)
    ref_params: Any = None  # frozen reference (None when no KL is needed)
    critic_params: Any = None  # value model (None without a critic)
    critic_opt_state: Any = None


def weight_decay_mask(params):
    """Decay weight matrices and embeddings only: no decay on norm scales or biases.

    Decided by parameter name, since layer-stacked norm scales are 2-D too.
    """

    def keep(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))).lower() for k in path]
        return not any(
            ("norm" in n) or n in ("scale", "bias") or n.endswith("_bias") for n in names
        )

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
    """AdamW with warm-up + constant / cosine / linear decay and global-norm clipping."""
    total_steps = max(int(total_steps), 1)
    warmup = min(int(optim.warmup_steps), total_steps)
    if optim.schedule == "constant":
        decay = optax.constant_schedule(optim.lr)
    elif optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(optim.lr, max(total_steps - warmup, 1))
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(optim.lr, 0.0, max(total_steps - warmup, 1))
    else:
        raise ValueError(
            f"optim.schedule = {optim.schedule!r} is not one of ['constant', 'cosine', 'linear']"
        )
    schedule = (
        optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), decay], [warmup])
        if warmup
        else decay
    )
    chain = []
    if optim.clip_norm and optim.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(optim.clip_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*chain)


def _full_sequence(prompt_tokens, prompt_mask, tokens):
    """Concatenates prompt and completion; completion slots are attended (causal) positions."""
    full = jnp.concatenate([prompt_tokens, tokens], axis=1)
    full_mask = jnp.concatenate([prompt_mask, jnp.ones_like(tokens)], axis=1).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(full_mask, axis=1) - 1, 0).astype(jnp.int32)
    return full, positions, full_mask


def completion_logprobs(
    config,
    params,
    prompt_tokens,
    prompt_mask,
    tokens,
    *,
    temperature=1.0,
    chunk: int = 0,
    with_entropy: bool = False,
    vocab_block: int | None = None,
):
    """log π(token_t | prefix) for each completion token, [N, T] float32 (and entropies).

    The backbone runs once; the LM head, log-softmax and entropy run over `chunk`
    completion positions at a time under `jax.checkpoint`, so at most one
    `[N, chunk, V]` float32 block of logits is alive (forward and backward).

    A vocabulary larger than `vocab_block` (default `VOCAB_BLOCK`) is also split: each
    sequence chunk goes through `models.blocked_head.lm_head_logprobs` (online
    log-sum-exp over `vocab_block` columns, a custom VJP that recomputes each block), so
    at most one `[N, chunk, vocab_block]` float32 block is alive and no `jax.checkpoint`
    is needed. Equal to the plain path within float32 rounding; `vocab_block=0`, or a
    vocabulary of at most `vocab_block` columns, runs the plain path.
    """
    p, t = prompt_tokens.shape[1], tokens.shape[1]
    full, positions, full_mask = _full_sequence(prompt_tokens, prompt_mask, tokens)
    hidden = models.apply_hidden(config, params, full, positions, full_mask)
    return head_logprobs(
        config,
        params,
        hidden[:, p - 1 : p + t - 1],
        tokens,
        temperature=temperature,
        chunk=chunk,
        with_entropy=with_entropy,
        vocab_block=vocab_block,
    )


def head_logprobs(
    config,
    params,
    hidden,
    targets,
    *,
    temperature=1.0,
    chunk: int = 0,
    with_entropy: bool = False,
    vocab_block: int | None = None,
):
    """log π(targets | hidden) and entropies `[N, S]` float32 from hidden states `[N, S, H]`:
    the LM head and log-softmax over `chunk` positions at a time (`completion_logprobs`
    says how `chunk` and `vocab_block` bound the live logits)."""
    t = targets.shape[1]
    chunk = t if not chunk or chunk >= t else int(chunk)
    vocab_block = blocked_columns(config, vocab_block)

    if vocab_block:
        # The custom VJP recomputes each vocabulary block; nothing to checkpoint.
        head = functools.partial(
            lm_head_logprobs,
            config,
            params,
            temperature=temperature,
            vocab_block=int(vocab_block),
            with_entropy=with_entropy,
        )
    else:

        @jax.checkpoint
        def head(h, targets):
            logits = models.lm_head(config, params, h).astype(jnp.float32)
            lp = token_logprobs(logits, targets, temperature)
            ent = (
                entropy_lib.token_entropy(logits / temperature)
                if with_entropy
                else jnp.zeros_like(lp)
            )
            return lp, ent

    lps, ents = [], []
    for s in range(0, t, chunk):
        lp, ent = head(hidden[:, s : s + chunk], targets[:, s : s + chunk])
        lps.append(lp)
        ents.append(ent)
    return jnp.concatenate(lps, axis=1), jnp.concatenate(ents, axis=1)


def blocked_columns(config, vocab_block: int | None) -> int:
    """Columns per vocabulary block of a log-prob pass, 0 for the plain head: `vocab_block`
    (None: `VOCAB_BLOCK`) when the vocabulary is larger, else 0 (one block would be the whole
    vocabulary, which the plain path computes as it always did)."""
    block = VOCAB_BLOCK if vocab_block is None else int(vocab_block)
    return block if 0 < block < config.vocab_size else 0


def is_lora_critic(critic_params) -> bool:
    """Whether `critic_params` is a LoRA critic (`critic.lora`): `{"adapters", "value_head"}`."""
    return isinstance(critic_params, dict) and "adapters" in critic_params


def critic_model(config, critic_params, base=None):
    """The value model's params: `critic_params` itself, or for a LoRA critic its adapters
    merged into the frozen `base`'s backbone, with its value head."""
    if not is_lora_critic(critic_params):
        return critic_params
    if base is None:
        raise ValueError("a LoRA critic needs the frozen base model (base=None)")
    body = lora_lib.merge(config, base, critic_params["adapters"])
    return {"embed": body["embed"], "layers": body["layers"], "final_norm": body["final_norm"]} | {
        "value_head": critic_params["value_head"]
    }


def completion_values(config, critic_params, prompt_tokens, prompt_mask, tokens, base=None):
    """V(prefix before token_t) for each completion token, [N, T] float32. A LoRA critic
    (`critic_model`) runs on `base`."""
    p = prompt_tokens.shape[1]
    t = tokens.shape[1]
    full, positions, full_mask = _full_sequence(prompt_tokens, prompt_mask, tokens)
    values = models.apply_value(
        config, critic_model(config, critic_params, base), full, positions, full_mask
    )
    return values[:, p - 1 : p + t - 1].astype(jnp.float32)
