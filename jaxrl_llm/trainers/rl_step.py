"""The RL update and its jitted programs: rollouts → rewards → log-probs → advantages → one jitted update.

One step, as data flows:
  prompts (B) → `generate` (n = G) → rewards (host pool) → reference log-probs (when a KL is
  used or logged) → old log-probs (the sampler's, or recomputed) → critic values → token
  rewards → advantages (registry) → num_epochs × minibatches of `train_step`, which scans
  over micro-batches and accumulates gradients exactly (losses are normalised by the
  minibatch's global token / sequence counts) → metrics → eval → checkpoint.

The jitted functions live in `RLPrograms` and are built once per shape, with explicit
in/out shardings and donated state.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl_llm.losses import aggregation as agg_lib
from jaxrl_llm.losses import importance as importance_lib
from jaxrl_llm.losses import kl as kl_lib
from jaxrl_llm.losses import registry
from jaxrl_llm.losses import turns as turns_lib
from jaxrl_llm.losses import value as value_lib
from jaxrl_llm.losses.advantages import to_token_rewards
from jaxrl_llm.models import lora as lora_lib
from jaxrl_llm.trainers import packing
from jaxrl_llm.trainers.state import (
    TrainState,
    completion_logprobs,
    completion_values,
    critic_model,
    is_lora_critic,
)

__all__ = ["TrainBatch", "RLPrograms", "batch_counts"]


@flax.struct.dataclass
class TrainBatch:
    """The arrays one update reads; rows [N] are sequences, [N, T] tokens."""

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    mask: jax.Array  # loss mask: completion mask × sample_weight (float32)
    old_logp: jax.Array
    advantages: jax.Array
    ref_logp: Any = None
    old_values: Any = None
    returns: Any = None
    token_mask: Any = None  # completion mask of every sampled token (diagnostics); None: mask
    # The sampler's log-probs when a rollout correction is configured (`old_logp` is then the
    # trainer's recomputed pass); None: no correction.
    rollout_logp: Any = None
    # `train.micro_tokens`: the minibatch packed into token-budget micro-batches
    # (`packing.MicroPacks`, attached per minibatch by `RLPrograms.with_packs`); None: the
    # padded rows split into `num_micro` row micro-batches.
    packs: Any = None


def batch_counts(mask):
    """Global token and sequence counts of a minibatch (from the weighted mask)."""
    return agg_lib.global_counts(mask)


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Static loss options, read once from `config.algo` (hashable: part of the jit key)."""

    policy_loss: str
    aggregation: str
    clip_low: float
    clip_high: float
    dual_clip: float | None
    norm_constant: float | None
    entropy_coef: float
    kl_in_loss: bool
    kl_kind: str
    forking_tokens: float
    temperature: float
    logprob_chunk: int
    vocab_block: int
    vf_coef: float
    value_clip: float
    loss_kwargs: tuple
    rollout_correction: str = ""  # "", "tis" or "mis"
    correction_level: str = "token"
    correction_threshold: float = 2.0
    correction_low: float | None = None  # mis only; None: 1 / threshold

    @classmethod
    def from_config(cls, c):
        norm = c.algo.norm_constant or float(c.rollout.max_new_tokens)
        return cls(
            policy_loss=c.algo.policy_loss,
            aggregation=c.algo.aggregation,
            clip_low=float(c.algo.clip_low),
            clip_high=float(c.algo.clip_high),
            dual_clip=float(c.algo.dual_clip) if c.algo.dual_clip else None,
            norm_constant=float(norm),
            entropy_coef=float(c.algo.entropy_coef),
            kl_in_loss=c.algo.kl.placement == "loss" and c.algo.kl.coef > 0,
            kl_kind=c.algo.kl.kind,
            forking_tokens=float(c.algo.forking_tokens),
            temperature=float(c.rollout.temperature),
            logprob_chunk=int(c.train.logprob_chunk),
            vocab_block=int(c.train.vocab_block),
            vf_coef=float(c.algo.vf_coef),
            value_clip=float(c.algo.value_clip),
            loss_kwargs=tuple(sorted(c.algo.loss_kwargs.to_dict().items())),
            rollout_correction=c.algo.rollout_correction,
            correction_level=c.algo.rollout_correction_level,
            correction_threshold=float(c.algo.rollout_correction_threshold),
            correction_low=(
                float(c.algo.rollout_correction_low)
                if c.algo.rollout_correction == "mis" and c.algo.rollout_correction_low
                else None
            ),
        )


def _agg(x, mask, s: LossSettings, num_tokens, num_seqs):
    return agg_lib.aggregate(
        x,
        mask,
        s.aggregation,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        norm_constant=s.norm_constant,
    )


def policy_micro_loss(
    params,
    mb: TrainBatch,
    stats,
    kl_coef,
    key,
    *,
    model_config,
    s: LossSettings,
    num_tokens,
    num_seqs,
    num_sampled,
    pg_weight=None,
    base=None,
    pack=None,
):
    """Loss of one micro-batch, normalised by the minibatch's global counts.

    Returns (loss, (pg_metrics, sums)): `pg_metrics` are this micro-batch's token means (merged
    with `registry.merge_metrics`), `sums` are already divided by global counts (added).
    Entropy and KL diagnostics are means over every sampled token (`token_mask`), so PSR / NSR
    runs log comparable entropies. `pg_weight` [n, T] (TIS rollout-correction weights, or None)
    multiplies the per-token policy-gradient loss. `base`: LoRA's frozen model, `params` are
    then the adapters, merged into it here (gradients reach the adapters only). `pack`:
    `(MicroPacks, i)` when the minibatch is packed (`train.micro_tokens`): `mb` is then the
    whole minibatch with the masks of micro-batch `i`'s rows (`_packed_micro`), and the
    log-probs come from its packs.
    """
    if base is not None:
        params = lora_lib.merge(model_config, base, params)
    head = dict(chunk=s.logprob_chunk, vocab_block=s.vocab_block, with_entropy=True)
    if pack is not None:
        logp, ent = packing.micro_logprobs(
            model_config, params, *pack, mb.old_logp, temperature=s.temperature, **head
        )
    else:
        logp, ent = completion_logprobs(
            model_config,
            params,
            mb.prompt_tokens,
            mb.prompt_mask,
            mb.tokens,
            temperature=s.temperature,
            **head,
        )
    mask = mb.mask
    token_mask = mask if mb.token_mask is None else mb.token_mask
    extra = dict(s.loss_kwargs)
    if s.forking_tokens > 0:
        extra.update(entropy=jax.lax.stop_gradient(ent), forking_top_fraction=s.forking_tokens)
    if pg_weight is not None:
        # TIS: the truncated weight multiplies the per-token loss ℓ_t after clipping, as a
        # stop-gradient factor (`pg_mask`), and the normaliser (num_tokens) is unchanged: verl's
        # `pg_losses * rollout_is_weights` before `agg_loss` over the unchanged response mask.
        # Not folded into the advantages, which batch statistics (Clip-Cov, KL-Cov) read.
        w = jax.lax.stop_gradient(pg_weight)
        extra["pg_mask"] = w if extra.get("pg_mask") is None else extra["pg_mask"] * w
    pg_loss, pg_metrics = registry.compute_policy_loss(
        s.policy_loss,
        logp,
        mb.old_logp,
        mb.advantages,
        mask,
        agg=s.aggregation,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        norm_constant=s.norm_constant,
        clip_low=s.clip_low,
        clip_high=s.clip_high,
        dual_clip=s.dual_clip,
        stats=stats or None,
        key=key,
        **extra,
    )
    loss = pg_loss
    sampled_mean = lambda x: jnp.sum(x * token_mask) / jnp.maximum(num_sampled, 1.0)
    sums = {"loss/policy": pg_loss, "entropy": sampled_mean(ent)}
    if mb.ref_logp is not None:
        kl_tok = kl_lib.kl_estimate(logp, mb.ref_logp, kind=s.kl_kind)
        sums["kl"] = sampled_mean(kl_tok)
        if s.kl_in_loss:
            kl_loss = _agg(kl_tok, mask, s, num_tokens, num_seqs)
            loss = loss + kl_coef * kl_loss
            sums["loss/kl"] = kl_loss
    if s.entropy_coef:
        loss = loss - s.entropy_coef * _agg(ent, mask, s, num_tokens, num_seqs)
    sums["loss/total"] = loss
    return loss, ({f"pg/{k}": v for k, v in pg_metrics.items()}, sums)


def critic_micro_loss(
    critic_params,
    mb: TrainBatch,
    *,
    model_config,
    s: LossSettings,
    num_tokens,
    num_seqs,
    base=None,
    pack=None,
):
    """Value loss of one micro-batch (global normalisers). `base`: the frozen model a LoRA
    critic (`critic.lora`) runs on; gradients then reach its adapters and head only. `pack`
    as in `policy_micro_loss`."""
    if pack is not None:
        values = packing.micro_values(model_config, critic_params, *pack, mb.old_values, base)
    else:
        values = completion_values(
            model_config, critic_params, mb.prompt_tokens, mb.prompt_mask, mb.tokens, base=base
        )
    loss, m = value_lib.clipped_value_loss(
        values,
        mb.old_values,
        mb.returns,
        mb.mask,
        clip=s.value_clip,
        agg="token-mean",
        num_tokens=num_tokens,
        num_seqs=num_seqs,
    )
    tok_frac = jnp.sum(mb.mask) / jnp.maximum(num_tokens, 1.0)
    return s.vf_coef * loss, {f"critic/{k}": v * tok_frac for k, v in m.items()} | {
        "critic/loss": loss
    }


def _split_micro(tree, num_micro):
    return jax.tree.map(
        lambda x: x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:]), tree
    )


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def train_step(
    state: TrainState,
    batch: TrainBatch,
    base=None,
    *,
    model_config,
    s: LossSettings,
    num_micro: int,
    optimizer,
    critic_optimizer,
    policy_warmup: int,
):
    """One optimiser update on a minibatch: scan over micro-batches, exact accumulation.

    `base`: LoRA's frozen model (not donated, not updated); `state.params` are then the
    adapters, merged into `base` inside each micro-batch's loss (`models.lora.merge`).
    """
    token_mask = batch.mask if batch.token_mask is None else batch.token_mask
    pg_weight, corr_metrics = None, {}
    if s.rollout_correction:
        # On the whole minibatch (ratio quantiles are batch statistics; the weights and the keep
        # mask are per row, so computing them before the micro-batch split changes nothing).
        w, keep, corr_metrics = importance_lib.rollout_correction(
            batch.old_logp,
            batch.rollout_logp,
            batch.mask,
            level=s.correction_level,
            mode="truncate" if s.rollout_correction == "tis" else "mask",
            threshold=s.correction_threshold,
            low_threshold=s.correction_low,
        )
        if s.rollout_correction == "tis":
            pg_weight = w
        else:
            # MIS: as verl (`response_mask * rejection mask` replaces the response mask), the
            # dropped tokens leave the loss mask, so the normaliser counts the kept tokens only;
            # the KL, entropy and value terms use the same mask. Diagnostics over every
            # sampled token (entropy, KL) keep the original `token_mask`.
            batch = batch.replace(mask=batch.mask * keep, token_mask=token_mask)
    num_tokens, num_seqs = batch_counts(batch.mask)
    num_sampled = jnp.sum(token_mask)
    key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 7)
    packs = batch.packs
    if packs is not None:
        # Token-budget micro-batches: `packs.used` of them, each the whole minibatch with its
        # own rows' masks (`_packed_micro`) and log-probs from its packs, in a loop whose trip
        # count is data. The row micro-batches below are not formed.
        batch = batch.replace(packs=None, token_mask=token_mask)
        micro = None
    else:
        micro = _split_micro(batch, num_micro)

    # Batch statistics on the whole minibatch (never per micro-batch).
    extra = dict(s.loss_kwargs)
    if s.forking_tokens > 0 and packs is not None:
        merged = lora_lib.merge(model_config, base, state.params) if base is not None else None
        ent = _packed_entropy(
            state.params if merged is None else merged,
            batch,
            packs,
            model_config=model_config,
            s=s,
        )
        extra.update(entropy=ent, forking_top_fraction=s.forking_tokens)
    elif s.forking_tokens > 0:

        def fwd(_, mb):
            _, ent = completion_logprobs(
                model_config,
                lora_lib.merge(model_config, base, state.params)
                if base is not None
                else state.params,
                mb.prompt_tokens,
                mb.prompt_mask,
                mb.tokens,
                temperature=s.temperature,
                chunk=s.logprob_chunk,
                vocab_block=s.vocab_block,
                with_entropy=True,
            )
            return None, ent

        _, ent = jax.lax.scan(fwd, None, micro)
        extra.update(entropy=ent.reshape(batch.mask.shape), forking_top_fraction=s.forking_tokens)
    if s.policy_loss == "clip_cov":
        extra.setdefault("old_logp", batch.old_logp)
    stats = (
        registry.policy_loss_stats(
            s.policy_loss, batch.old_logp, batch.advantages, batch.mask, key=key, **extra
        )
        if (registry.POLICY_LOSS_SPECS[s.policy_loss].batch_stats or s.forking_tokens > 0)
        else {}
    )
    if packs is None:
        micro_stats = registry.split_stats(stats, num_micro)
        micro_w = None if pg_weight is None else _split_micro(pg_weight, num_micro)

    grad_fn = jax.value_and_grad(policy_micro_loss, has_aux=True)
    loss_kw = dict(
        model_config=model_config,
        s=s,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        num_sampled=num_sampled,
    )

    def body(carry, xs, pack=None):
        grads, pg_acc, sums_acc = carry
        mb, st, w = xs
        (_, (pg_m, sums)), g = grad_fn(
            state.params, mb, st, state.kl_coef, key, pg_weight=w, base=base, pack=pack, **loss_kw
        )
        weight = jnp.sum(mb.mask) / jnp.maximum(num_tokens, 1.0)
        pg_acc = registry.merge_metrics(pg_acc, pg_m, weight=weight)
        return (
            jax.tree.map(jnp.add, grads, g),
            pg_acc,
            jax.tree.map(jnp.add, sums_acc, sums),
        ), None

    if packs is None:
        first, first_pack = jax.tree.map(lambda x: x[0], (micro, micro_stats, micro_w)), None
    else:
        first, first_pack = (_packed_micro(batch, packs, 0), stats, pg_weight), (packs, 0)
    _, (pg_shape, sums_shape) = jax.eval_shape(
        lambda: grad_fn(
            state.params,
            first[0],
            first[1],
            state.kl_coef,
            key,
            pg_weight=first[2],
            base=base,
            pack=first_pack,
            **loss_kw,
        )
    )[0]
    init = (
        jax.tree.map(jnp.zeros_like, state.params),
        registry.init_metrics(pg_shape),
        jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), sums_shape),
    )
    if packs is None:
        (grads, pg_metrics, metrics), _ = jax.lax.scan(body, init, (micro, micro_stats, micro_w))
    else:
        (grads, pg_metrics, metrics) = jax.lax.fori_loop(
            0,
            packs.used,
            lambda i, carry: body(
                carry, (_packed_micro(batch, packs, i), stats, pg_weight), pack=(packs, i)
            )[0],
            init,
        )
    metrics = dict(metrics, **pg_metrics)
    metrics.update({f"correction/{k}": v for k, v in corr_metrics.items()})

    grad_norm = _global_norm(grads)
    finite = jnp.isfinite(metrics["loss/total"]) & jnp.isfinite(grad_norm)
    policy_on = finite & (state.step >= policy_warmup)
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
    new_params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), state.params, updates)
    params = _tree_where(policy_on, new_params, state.params)
    opt_state = _tree_where(policy_on, new_opt, state.opt_state)
    metrics["grad_norm"] = grad_norm
    metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    metrics["num_tokens"] = num_tokens
    if packs is not None:
        used = packs.used.astype(jnp.float32)
        metrics["packed/micro_batches"] = used
        metrics["packed/fill"] = jnp.sum(packs.mask) / (used * packs.mask[0].size)

    critic_params, critic_opt = state.critic_params, state.critic_opt_state
    if critic_params is not None:
        cgrad_fn = jax.value_and_grad(critic_micro_loss, has_aux=True)

        def cbody(carry, mb, pack=None):
            g_acc, m_acc = carry
            (_, m), g = cgrad_fn(
                critic_params,
                mb,
                model_config=model_config,
                s=s,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                base=base,
                pack=pack,
            )
            return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, m_acc, m)), None

        if packs is None:
            cfirst, cfirst_pack = jax.tree.map(lambda x: x[0], micro), None
        else:
            cfirst, cfirst_pack = _packed_micro(batch, packs, 0), (packs, 0)
        _, cm_shape = jax.eval_shape(
            lambda: cgrad_fn(
                critic_params,
                cfirst,
                model_config=model_config,
                s=s,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                base=base,
                pack=cfirst_pack,
            )
        )[0]
        zero_cm = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cm_shape)
        cinit = (jax.tree.map(jnp.zeros_like, critic_params), zero_cm)
        if packs is None:
            (cgrads, cmetrics), _ = jax.lax.scan(cbody, cinit, micro)
        else:
            cgrads, cmetrics = jax.lax.fori_loop(
                0,
                packs.used,
                lambda i, carry: cbody(carry, _packed_micro(batch, packs, i), pack=(packs, i))[0],
                cinit,
            )
        cfinite = jnp.isfinite(cmetrics["critic/loss"]) & jnp.isfinite(_global_norm(cgrads))
        cupd, new_copt = critic_optimizer.update(cgrads, critic_opt, critic_params)
        new_cp = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), critic_params, cupd)
        critic_params = _tree_where(cfinite, new_cp, critic_params)
        critic_opt = _tree_where(cfinite, new_copt, critic_opt)
        metrics.update(cmetrics)

    new_state = state.replace(
        params=params, opt_state=opt_state, critic_params=critic_params, critic_opt_state=critic_opt
    )
    return new_state, metrics


def _packed_micro(batch: TrainBatch, packs, i) -> TrainBatch:
    """The minibatch as micro-batch `i` of `packs` sees it: the masks keep its own rows."""
    mine = (packs.micro == i)[:, None]
    return batch.replace(
        mask=jnp.where(mine, batch.mask, 0.0), token_mask=jnp.where(mine, batch.token_mask, 0.0)
    )


def _packed_entropy(params, batch: TrainBatch, packs, *, model_config, s: LossSettings):
    """Token entropies `[n, T]` of the whole packed minibatch (forking-token selection reads
    them as a batch statistic), one micro-batch's packs at a time; no gradient."""

    def add(i, ent):
        _, e = packing.micro_logprobs(
            model_config,
            params,
            packs,
            i,
            batch.old_logp,
            temperature=s.temperature,
            chunk=s.logprob_chunk,
            vocab_block=s.vocab_block,
            with_entropy=True,
        )
        return ent + e

    ent = jax.lax.fori_loop(0, packs.used, add, jnp.zeros(batch.mask.shape, jnp.float32))
    return jax.lax.stop_gradient(ent)


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


class RLPrograms:
    """The jitted programs of a run (update, log-prob and value passes), built once.

    With `seeds=True` every program is vmapped over a leading seed axis of its state, params
    and batch (S runs of one config, one device, no shardings): `train_step(state[S], batch[S])`,
    `logprobs(params[S], rollout[S])`, `select_rows(batch[S], idx[S, M])`.
    """

    def __init__(
        self,
        config,
        model_config,
        optimizer,
        critic_optimizer,
        *,
        state_shardings=None,
        batch_sharding=None,
        replicated=None,
        seeds: bool = False,
        lora_base=None,
    ):
        self.settings = LossSettings.from_config(config)
        # `train.pack_budget > 0`: the no-gradient log-prob passes run packed rows, one
        # [1, budget] pack per call (trainers/packing.py); 0: padded rows in row chunks.
        self.pack_budget = 0 if seeds else int(config.train.get("pack_budget", 0))
        # `train.micro_tokens > 0`: the update packs each minibatch into micro-batches of
        # micro_tokens / pack_budget packs (`with_packs`), instead of `num_micro` row slices.
        self.micro_tokens = int(config.train.get("micro_tokens", 0)) if self.pack_budget else 0
        # LoRA: the frozen base model, an argument of every program (never donated); the
        # state's params and reference are then adapters.
        self.lora_base = lora_base
        self.model_config = model_config
        self.num_micro = (
            config.train.minibatch_size // config.train.microbatch_size
            if (config.train.minibatch_size and config.train.microbatch_size)
            else (
                _rows(config) // config.train.microbatch_size if config.train.microbatch_size else 1
            )
        )
        if (
            self.settings.rollout_correction
            and batch_sharding is not None
            and batch_sharding.rollout_logp is None
        ):
            # the sampler's log-probs travel with the batch, laid out like the old ones
            batch_sharding = batch_sharding.replace(rollout_logp=batch_sharding.old_logp)
        self.batch_sharding = batch_sharding
        self._pack_shardings = None
        if self.micro_tokens and batch_sharding is not None:
            self._pack_shardings = _pack_shardings(
                batch_sharding.mask, self.micro_tokens // self.pack_budget
            )
            batch_sharding = batch_sharding.replace(packs=self._pack_shardings)
        step_fn = functools.partial(
            train_step,
            model_config=model_config,
            s=self.settings,
            num_micro=self.num_micro,
            optimizer=optimizer,
            critic_optimizer=critic_optimizer,
            policy_warmup=int(config.critic.warmup_steps) if config.critic.enabled else 0,
        )
        if seeds and lora_base is not None:  # adapters carry the seed axis, the base is shared
            seeds_step = jax.jit(jax.vmap(step_fn, in_axes=(0, 0, None)), donate_argnums=(0,))
            self.train_step = lambda state, batch: seeds_step(state, batch, self.lora_base)
        elif seeds:
            self.train_step = jax.jit(jax.vmap(step_fn), donate_argnums=(0,))
        elif lora_base is not None:
            base_shardings = jax.tree.map(lambda x: x.sharding, lora_base)
            lora_step = jax.jit(
                step_fn,
                in_shardings=(state_shardings, batch_sharding, base_shardings),
                out_shardings=(state_shardings, replicated),
                donate_argnums=(0,),
            )
            self.train_step = lambda state, batch: lora_step(state, batch, self.lora_base)
        else:
            self.train_step = jax.jit(
                step_fn,
                in_shardings=(state_shardings, batch_sharding),
                out_shardings=(state_shardings, replicated),
                donate_argnums=(0,),
            )
        chunk = self.settings.logprob_chunk
        vocab_block = self.settings.vocab_block
        temp = self.settings.temperature

        def logp_fn(params, prompt_tokens, prompt_mask, tokens):
            return completion_logprobs(
                model_config,
                params,
                prompt_tokens,
                prompt_mask,
                tokens,
                temperature=temp,
                chunk=chunk,
                vocab_block=vocab_block,
                with_entropy=False,
            )[0]

        def value_fn(critic_params, prompt_tokens, prompt_mask, tokens):
            return completion_values(
                model_config, critic_params, prompt_tokens, prompt_mask, tokens
            )

        select = lambda batch, idx: jax.tree.map(lambda x: x[idx], batch)  # noqa: E731
        if seeds:

            def per_seed(fn):
                return lambda rows, *args: jax.vmap(functools.partial(fn, rows))(*args)

            self._logp = jax.jit(per_seed(_in_chunks(logp_fn)), static_argnums=0)

            def lora_logp_seeds(rows, adapters, base, *xs):
                merged = jax.vmap(lambda a: lora_lib.merge(model_config, base, a))(adapters)
                return jax.vmap(functools.partial(_in_chunks(logp_fn), rows))(merged, *xs)

            self._lora_logp = jax.jit(lora_logp_seeds, static_argnums=0)
            self._values = jax.jit(per_seed(_in_chunks(value_fn)), static_argnums=0)
            self._select = jax.jit(jax.vmap(select))
            return
        rows = batch_sharding.mask  # [N, T] outputs split by rows, like the batch
        self._logp = jax.jit(_in_chunks(logp_fn), static_argnums=0, out_shardings=rows)
        self._values = jax.jit(_in_chunks(value_fn), static_argnums=0, out_shardings=rows)

        def lora_logp(rows, adapters, base, *xs):  # the merge once, outside the row chunks
            return _in_chunks(logp_fn)(rows, lora_lib.merge(model_config, base, adapters), *xs)

        self._lora_logp = jax.jit(lora_logp, static_argnums=0, out_shardings=rows)

        def lora_values(rows, critic, base, *xs):  # a LoRA critic: the merge once, as above
            return _in_chunks(value_fn)(rows, critic_model(model_config, critic, base), *xs)

        self._lora_values = jax.jit(lora_values, static_argnums=0, out_shardings=rows)
        self._rows_sharding = rows
        self._slot_logp = jax.jit(
            functools.partial(
                packing.slot_logprobs,
                model_config,
                temperature=temp,
                vocab_block=vocab_block,
            )
        )
        self._slot_values = jax.jit(functools.partial(packing.slot_values, model_config))
        self._merge = jax.jit(lambda base, ad: lora_lib.merge(model_config, base, ad))
        self._critic_model = jax.jit(lambda critic, base: critic_model(model_config, critic, base))
        # One SPMD program picks a minibatch's rows (a cross-process gather when rows live on
        # several hosts), rather than eager per-field indexing plus a device_put: eager
        # multi-process ops are separate computations whose collectives can interleave
        # differently between processes and deadlock.
        self._select = jax.jit(
            select, in_shardings=(None, replicated), out_shardings=self.batch_sharding
        )

    def select_rows(self, batch, idx):
        """`batch` restricted to rows `idx` (host int array, the same on every process), laid out
        with `batch_sharding`."""
        return self._select(batch, np.asarray(idx, np.int32))

    def pack_source(self, batch):
        """What `with_packs` reads of the whole batch, on the host (one transfer per step);
        None when the update does not pack."""
        if not self.micro_tokens:
            return None
        fields = (batch.prompt_tokens, batch.prompt_mask, batch.tokens)
        fields += (batch.mask if batch.token_mask is None else batch.token_mask,)
        return tuple(np.asarray(x) for x in jax.device_get(fields))

    def with_packs(self, minibatch, source, idx):
        """`minibatch` (rows `idx` of the batch `source` was read from) with its token-budget
        micro-batches attached (`packing.MicroPacks`, laid out for the train step)."""
        pt, pm, tok, token_mask = (x[np.asarray(idx)] for x in source)
        plan = packing.plan_micro_batches(
            pm,
            token_mask,
            budget=self.pack_budget,
            packs_per_micro=self.micro_tokens // self.pack_budget,
        )
        packs = packing.pack_micro_batches(pt, pm, tok, plan)
        if self._pack_shardings is not None:
            packs = jax.device_put(packs, self._pack_shardings)
        return minibatch.replace(packs=packs)

    def logprobs(self, params, rollout, micro_rows: int):
        """Sampled-token log-probs [N, T] of `rollout` under `params`, `micro_rows` rows at a time
        (with LoRA, `params` are adapters on `lora_base`); packed with `train.pack_budget`."""
        if self.pack_budget:
            return self._packed_logprobs(params, rollout)
        if self.lora_base is not None:
            return self._lora_logp(
                micro_rows,
                params,
                self.lora_base,
                rollout.prompt_tokens,
                rollout.prompt_mask,
                rollout.tokens,
            )
        return self._logp(
            micro_rows, params, rollout.prompt_tokens, rollout.prompt_mask, rollout.tokens
        )

    def _packed_logprobs(self, params, rollout):
        """`logprobs` over packed rows (`_packed_pass`)."""
        if self.lora_base is not None:
            params = self._merge(self.lora_base, params)
        return self._packed_pass(lambda *xs: self._slot_logp(params, *xs), rollout)

    def _packed_pass(self, run_pack, rollout):
        """A no-gradient pass over packed rows: the rows' valid tokens laid out in
        `pack_budget`-token packs on the host, `run_pack` (one fixed-shape program) per pack,
        its slot outputs gathered back to [N, T] (zero past each completion, as the padded
        pass's values there are never read)."""
        pt, pm, tok, mask = (
            np.asarray(x)
            for x in jax.device_get(
                (rollout.prompt_tokens, rollout.prompt_mask, rollout.tokens, rollout.mask)
            )
        )
        lengths = packing.row_lengths(pm, mask)
        plan = packing.plan_packs(lengths, self.pack_budget, max_packs=max(len(lengths), 1))
        packed = packing.pack_rows(pt, pm, tok, mask, plan)
        out = packing.packed_logprobs_by_pack(run_pack, packed)
        return jax.device_put(out, self._rows_sharding)

    def values(self, critic_params, rollout, micro_rows: int):
        """Critic values [N, T] of `rollout`, `micro_rows` rows at a time (a LoRA critic on
        `lora_base`); packed with `train.pack_budget`."""
        if self.pack_budget:
            critic = critic_params
            if is_lora_critic(critic_params):
                critic = self._critic_model(critic_params, self.lora_base)
            return self._packed_pass(lambda *xs: self._slot_values(critic, *xs), rollout)
        if is_lora_critic(critic_params):
            return self._lora_values(
                micro_rows,
                critic_params,
                self.lora_base,
                rollout.prompt_tokens,
                rollout.prompt_mask,
                rollout.tokens,
            )
        return self._values(
            micro_rows, critic_params, rollout.prompt_tokens, rollout.prompt_mask, rollout.tokens
        )


def _pack_shardings(rows, packs_per_micro: int):
    """Shardings of `packing.MicroPacks` beside a minibatch whose `[n, T]` arrays have the
    sharding `rows`: packs `[K, M, B]` split over the same mesh axes along M when they divide
    it (replicated otherwise), per-row arrays like the rows, the count replicated."""
    mesh, axes = rows.mesh, rows.spec[0] if rows.spec else None
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    spec = PartitionSpec(None, axes) if names and packs_per_micro % size == 0 else PartitionSpec()
    pack = NamedSharding(mesh, spec)
    return packing.MicroPacks(
        tokens=pack,
        positions=pack,
        mask=pack,
        segment_ids=pack,
        micro=NamedSharding(mesh, PartitionSpec(axes)),
        predict_pack=rows,
        predict_slot=rows,
        predicted=rows,
        used=NamedSharding(mesh, PartitionSpec()),
    )


def _rows(config):
    return config.train.prompts_per_step * config.train.samples_per_prompt


def _in_chunks(fn):
    """`fn(params, prompt_tokens, prompt_mask, tokens)` over the batch `rows` rows at a time, in
    one program (memory-lean: `lax.map` runs the chunks one after another).

    Chunk c holds rows c, c + C, c + 2C, ... (C = N / rows chunks), so each device's block of
    a row-sharded batch is split evenly between the chunks and no chunk needs rows from
    another device. Rows are independent, so the chunking changes the order of the work, not
    what is computed. When `rows` does not divide N the chunks are consecutive slices instead.
    """

    def run(rows, params, prompt_tokens, prompt_mask, tokens):
        n = tokens.shape[0]
        rows = rows or n
        if rows >= n:
            return fn(params, prompt_tokens, prompt_mask, tokens)
        if n % rows:
            outs = [
                fn(
                    params,
                    prompt_tokens[i : i + rows],
                    prompt_mask[i : i + rows],
                    tokens[i : i + rows],
                )
                for i in range(0, n, rows)
            ]
            return jnp.concatenate(outs, axis=0)
        c = n // rows
        split = lambda x: jnp.moveaxis(x.reshape(rows, c, *x.shape[1:]), 1, 0)  # noqa: E731
        out = jax.lax.map(
            lambda xs: fn(params, *xs), (split(prompt_tokens), split(prompt_mask), split(tokens))
        )
        return jnp.moveaxis(out, 0, 1).reshape(n, *out.shape[2:])

    return run


@dataclasses.dataclass(frozen=True)
class AdvantageSettings:
    """Static advantage options, read once from the config (hashable: part of the jit key).

    `hparams` holds the values of the hyperparameters the registered estimator declares
    (`registry.ADVANTAGES[name].hparams`), read from `config.algo`.
    """

    name: str
    group_size: int
    kl_in_reward: bool
    kl_kind: str
    whiten: bool
    hparams: tuple
    # Multi-turn rollouts (`env.*`; ignored when the rollout has no `turn_ids`).
    credit: str = "episode"
    turn_gamma: float = 1.0
    gae_over_observations: bool = False

    @classmethod
    def from_config(cls, c, *, has_ref: bool):
        a = c.algo
        e = c.get("env")
        entry = registry.ADVANTAGES[a.advantage]
        hparams = tuple(
            (k, type(default)(a[k]) if k in a else default) for k, default in entry.hparams.items()
        )
        return cls(
            name=a.advantage,
            group_size=int(c.train.samples_per_prompt),
            kl_in_reward=a.kl.placement == "reward" and has_ref,
            kl_kind=a.kl.kind,
            whiten=bool(a.get("whiten_advantages", False)),
            hparams=hparams,
            credit=str(e.credit) if e is not None else "episode",
            turn_gamma=float(e.turn_gamma) if e is not None else 1.0,
            gae_over_observations=bool(e.gae_over_observations) if e is not None else False,
        )


@functools.partial(jax.jit, static_argnames=("s",))
def _advantages(
    rewards, mask, old_logp, ref_logp, values, greedy_rewards, correct, kl_coef, turns=None, *, s
):
    """`mask` is the policy mask; `turns` (multi-turn rollouts, else None) holds the rollout's
    `mask` (policy + environment tokens), `turn_ids` and `turn_rewards`."""
    kl = kl_lib.kl_estimate(old_logp, ref_logp, kind=s.kl_kind) if s.kl_in_reward else None
    turn_credit = turns is not None and s.credit == "turn"
    token_rewards = to_token_rewards(
        jnp.zeros_like(rewards) if turn_credit else rewards,
        mask,
        kl=kl,
        kl_coef=kl_coef if s.kl_in_reward else 0.0,
    )
    if turn_credit:  # each turn's reward on the last token of its action
        token_rewards = token_rewards + jnp.where(mask > 0, turns["turn_rewards"], 0.0)
    if turn_credit and not registry.ADVANTAGES[s.name].needs_critic:
        adv = turns_lib.turn_advantages(
            turns["turn_rewards"],
            turns["turn_ids"],
            mask,
            s.group_size,
            gamma=s.turn_gamma,
            scale="none" if s.name == "dr_grpo" else "group",
        )
        return token_rewards, adv, adv, jnp.ones_like(rewards)
    critic_mask = mask
    if turns is not None and s.gae_over_observations:  # GAE runs through observation tokens
        critic_mask = turns["mask"]
    adv, ret, weight = registry.compute_advantages(
        s.name,
        rewards=rewards,
        mask=critic_mask if registry.ADVANTAGES[s.name].needs_critic else mask,
        group_size=s.group_size,
        token_rewards=token_rewards,
        values=values,
        greedy_rewards=greedy_rewards,
        correct=correct,
        old_logp=old_logp,
        ref_logp=ref_logp,
        whiten_advantages=s.whiten,
        **dict(s.hparams),
    )
    return token_rewards, adv, ret, weight


def compute_advantages(config, rollout, rewards, kl_coef=0.0, greedy_rewards=None, correct=None):
    """Token rewards (minus a per-token KL penalty when KL lives in the reward) and advantages.

    One jitted program per estimator and shape; `kl_coef` is traced (adaptive controller).
    `correct` [N] is the verifier's verdict (PSR / NSR decide on it, not on shaped rewards).
    """
    s = AdvantageSettings.from_config(config, has_ref=rollout.ref_logp is not None)
    rewards = jnp.asarray(rewards, jnp.float32)
    turns = None
    if rollout.turn_ids is not None:  # a multi-turn rollout (`Rollout.loss_mask` is set)
        turns = {
            "mask": rollout.mask.astype(jnp.float32),
            "turn_ids": rollout.turn_ids,
            "turn_rewards": rollout.turn_rewards,
        }
    return _advantages(
        rewards,
        rollout.policy_mask().astype(jnp.float32),
        rollout.old_logp,
        rollout.ref_logp,
        rollout.values,
        None if greedy_rewards is None else jnp.asarray(greedy_rewards, jnp.float32),
        (rewards > 0.5).astype(jnp.float32) if correct is None else jnp.asarray(correct),
        jnp.asarray(kl_coef, jnp.float32),
        turns,
        s=s,
    )


def advantage_stats(adv, mask):
    m = np.asarray(mask) > 0
    a = np.asarray(adv)[m]
    if a.size == 0:
        return {"adv/mean": 0.0, "adv/std": 0.0, "adv/abs_mean": 0.0}
    return {
        "adv/mean": float(a.mean()),
        "adv/std": float(a.std()),
        "adv/abs_mean": float(np.abs(a).mean()),
    }


def sample_indices(rng: np.random.Generator, n: int, minibatch: int):
    perm = rng.permutation(n)
    return [perm[i : i + minibatch] for i in range(0, n, minibatch)]
