"""Reward-model training: a backbone with a scalar head, fit with the Bradley–Terry loss.

    python -m jaxrl_llm.trainers.reward_model --config=configs/rm_arith.py --workdir=DIR

The reward model is the value model of `models.value` (backbone + scalar head); the reward
of a (prompt, completion) is its value at the LAST VALID TOKEN of the concatenation
prompt + completion (for the completions of `trainers.text` that is the EOS token). Scoring
and the folder format live in `rewards.model` (re-exported here):

    model_config, params = load_reward_model(path)
    score = make_score_fn(model_config)     # jitted
    rewards = score(params, prompt_tokens, prompt_mask, completion_tokens, completion_mask)  # [N]

Training (`train_reward_model`): pairs are encoded once (left-padded prompts in one bucket,
right-padded completions), each step draws `batch_size` pairs, scores chosen and rejected
in one forward pass of 2·B rows and takes one AdamW step of `losses.reward.bradley_terry`
inside one `jax.jit` with the state donated. Held-out pairwise accuracy (ties count one
half) is measured before, every `eval_every` steps and after.

Checkpoint (`save_reward_model`): the HF-style folder of `rewards.model`, which the RL
trainer scores with inside its collect stage (`config.reward_model.path`, `rewards.learned`).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxrl_llm import models
from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.losses.reward import bradley_terry
from jaxrl_llm.rewards.model import (
    BACKBONE_KEYS,
    HEAD_FILE,
    META_FILE,
    last_valid_index,
    load_reward_model,
    make_score_fn,
    save_reward_model,
    sequence_rewards,
)
from jaxrl_llm.tasks import preference_data
from jaxrl_llm.trainers import text
from jaxrl_llm.trainers.state import weight_decay_mask

__all__ = [
    "BACKBONE_KEYS",
    "HEAD_FILE",
    "META_FILE",
    "RewardModelState",
    "PairBatch",
    "last_valid_index",
    "sequence_rewards",
    "make_score_fn",
    "encode_pairs",
    "evaluate_pairs",
    "make_optimizer",
    "make_update",
    "train_reward_model",
    "save_reward_model",
    "load_reward_model",
    "build_model_config",
    "run",
]


@flax.struct.dataclass
class RewardModelState:
    step: jax.Array  # int32 scalar: completed updates
    params: dict  # backbone + value_head
    opt_state: optax.OptState


@flax.struct.dataclass
class PairBatch:
    """Encoded pairs: prompts left-padded [N, P], completions right-padded [N, T] (int32)."""

    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    chosen_tokens: np.ndarray
    chosen_mask: np.ndarray
    rejected_tokens: np.ndarray
    rejected_mask: np.ndarray

    def __len__(self):
        return int(self.prompt_tokens.shape[0])

    def take(self, idx) -> PairBatch:
        return jax.tree.map(lambda x: x[idx], self)


# ------------------------------------------------------------------ data
def encode_pairs(tokenizer, pairs, prompt_buckets, completion_len: int) -> PairBatch:
    """Host-side encoding of `PreferencePair`s (BOS + prompt left-padded to one bucket)."""
    if not pairs:
        raise ValueError("no preference pairs to encode")
    prompt_ids = text.encode_prompts(tokenizer, [p.prompt for p in pairs])
    p_len = text.bucket_for(max(len(x) for x in prompt_ids), prompt_buckets)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    pt = np.full((len(pairs), p_len), pad, np.int32)
    pm = np.zeros((len(pairs), p_len), np.int32)
    for i, ids in enumerate(prompt_ids):
        pt[i, p_len - len(ids) :] = ids
        pm[i, p_len - len(ids) :] = 1
    ct, cm = text.encode_completions(tokenizer, [p.chosen for p in pairs], completion_len)
    rt, rm = text.encode_completions(tokenizer, [p.rejected for p in pairs], completion_len)
    return PairBatch(pt, pm, ct, cm, rt, rm)


def evaluate_pairs(score_fn, params, batch: PairBatch, pairs=None, *, batch_size: int = 256):
    """Held-out metrics: `accuracy` (ties one half), `margin_mean`, and per `wrong_length`.

    Scores in fixed-size chunks (the last one padded) so one program serves every call.
    `pairs` (the `PreferencePair`s of `batch`) adds `accuracy/<meta wrong_length>` when set.
    """
    n = len(batch)
    chosen, rejected = [], []
    for s in range(0, n, batch_size):
        idx = np.arange(s, s + batch_size) % n
        b = batch.take(idx)
        c = score_fn(params, b.prompt_tokens, b.prompt_mask, b.chosen_tokens, b.chosen_mask)
        r = score_fn(params, b.prompt_tokens, b.prompt_mask, b.rejected_tokens, b.rejected_mask)
        keep = min(batch_size, n - s)
        chosen.append(np.asarray(c)[:keep])
        rejected.append(np.asarray(r)[:keep])
    chosen, rejected = np.concatenate(chosen), np.concatenate(rejected)
    out = {
        "accuracy": preference_data.pairwise_accuracy(chosen, rejected),
        "margin_mean": float(np.mean(chosen - rejected)),
    }
    if pairs is not None:
        groups = np.array([str(p.meta.get("wrong_length", "")) for p in pairs])
        for g in sorted(set(groups) - {""}):
            sel = groups == g
            out[f"accuracy/{g}"] = preference_data.pairwise_accuracy(chosen[sel], rejected[sel])
    return out


# ------------------------------------------------------------------ training
def _loss(params, batch: PairBatch, *, config, margin, label_smoothing):
    prompt = jnp.concatenate([batch.prompt_tokens, batch.prompt_tokens])
    prompt_mask = jnp.concatenate([batch.prompt_mask, batch.prompt_mask])
    completion = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens])
    completion_mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
    r = sequence_rewards(config, params, prompt, prompt_mask, completion, completion_mask)
    b = batch.prompt_tokens.shape[0]
    return bradley_terry(r[:b], r[b:], margin=margin or None, label_smoothing=label_smoothing)


def make_optimizer(*, steps, lr, warmup_steps, weight_decay=0.0, clip_norm=1.0):
    """AdamW (no decay on norms and biases), linear warm-up then cosine to 10 %, norm clipping."""
    warmup = max(min(int(warmup_steps), int(steps)), 1)
    sched = optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, warmup),
            optax.cosine_decay_schedule(lr, max(int(steps) - warmup, 1), alpha=0.1),
        ],
        [warmup],
    )
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
    chain.append(optax.adamw(sched, weight_decay=weight_decay, mask=weight_decay_mask))
    return optax.chain(*chain)


def make_update(config, optimizer, *, margin=0.0, label_smoothing=0.0):
    """`update(state, batch) -> (state, metrics)`: one jitted AdamW step, `state` donated."""
    loss_fn = functools.partial(
        _loss, config=config, margin=margin, label_smoothing=label_smoothing
    )

    @functools.partial(jax.jit, donate_argnums=(0,))
    def update(state: RewardModelState, batch: PairBatch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        return RewardModelState(state.step + 1, params, opt_state), metrics

    return update


def train_reward_model(
    model_config,
    params,
    tokenizer,
    train_pairs,
    heldout_pairs,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int = 20,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    margin: float = 0.0,
    label_smoothing: float = 0.0,
    seed: int = 0,
    prompt_buckets=(16, 32, 64, 128, 256, 512),
    completion_len: int = 8,
    eval_every: int = 0,
    log_fn=None,
):
    """Fits `params` (backbone + `value_head`) to `train_pairs`; returns `(params, history)`.

    history: `{"eval": [(step, metrics), ...] (before, every eval_every steps, after),
    "train": [(step, metrics), ...] (every 50 steps and the last), "seconds": training time
    without the evaluations}`. `log_fn(str)` receives one line per entry.
    """
    log = log_fn or logging.info
    train = encode_pairs(tokenizer, train_pairs, prompt_buckets, completion_len)
    heldout = encode_pairs(tokenizer, heldout_pairs, prompt_buckets, completion_len)
    optimizer = make_optimizer(
        steps=steps,
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
    )
    update = make_update(model_config, optimizer, margin=margin, label_smoothing=label_smoothing)
    score = make_score_fn(model_config)
    state = RewardModelState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    history = {"eval": [], "train": []}

    def evaluate(step):
        m = evaluate_pairs(score, state.params, heldout, heldout_pairs)
        history["eval"].append((step, m))
        parts = "".join(
            f", {k.split('/', 1)[1]} {v:.3f}" for k, v in m.items() if k.startswith("accuracy/")
        )
        log(
            f"reward model step {step}: held-out pairwise accuracy {m['accuracy']:.3f}"
            + (f" (by wrong-answer length{parts})" if parts else "")
        )

    evaluate(0)
    rng = np.random.default_rng(seed)
    seconds, t0 = 0.0, time.perf_counter()
    for i in range(steps):
        idx = rng.choice(len(train), size=batch_size, replace=len(train) < batch_size)
        state, metrics = update(state, train.take(idx))
        if i % 50 == 49 or i == steps - 1:
            metrics = {k: float(v) for k, v in metrics.items()}
            history["train"].append((i + 1, metrics))
            log(
                f"reward model step {i + 1}: loss {metrics['loss']:.4f} "
                f"batch accuracy {metrics['accuracy']:.3f}"
            )
        if eval_every and (i + 1) % eval_every == 0 and i != steps - 1:
            jax.block_until_ready(state.params)
            seconds += time.perf_counter() - t0
            evaluate(i + 1)
            t0 = time.perf_counter()
    jax.block_until_ready(state.params)
    history["seconds"] = seconds + time.perf_counter() - t0
    evaluate(steps)
    return state.params, history


# ------------------------------------------------------------------ the recipe runner
def build_model_config(m: ml_collections.ConfigDict, tokenizer) -> models.ModelConfig:
    """The inline tiny model of a recipe's `model` group (or `model.hf_path`'s config)."""
    return models.build_model_config(m, tokenizer)


def _tokenizer(c, workdir):
    return models.build_tokenizer(c.tokenizer.path, workdir)


def _pairs(c):
    d = c.data
    task = preference_data.ArithPreferenceTask(
        digits=tuple(d.digits),
        ops=d.ops,
        noise=d.noise,
        same_length_fraction=d.same_length_fraction,
    )
    if d.train_file:
        train = preference_data.load_preference_pairs(d.train_file)
    else:
        train = task.pairs("train", d.train_pairs, d.seed)
    if d.heldout_file:
        heldout = preference_data.load_preference_pairs(d.heldout_file)
    else:
        heldout = task.pairs("test", d.heldout_pairs, d.heldout_seed)
    return task, train, heldout


def run(c: ml_collections.ConfigDict, workdir: str, *, log_fn=print) -> dict:
    """Runs a reward-model recipe (`configs/rm_arith.py`); returns the summary it writes.

    Steps: tokenizer, model (random, `model.init_checkpoint`'s backbone, or a quick SFT warm
    start of `sft.steps` on the arithmetic answers), training, `workdir/reward_model/`
    checkpoint, `workdir/rm_summary.json` with the held-out accuracy before and after.
    """
    os.makedirs(workdir, exist_ok=True)
    tokenizer = _tokenizer(c, workdir)
    task, train_pairs, heldout_pairs = _pairs(c)
    key = jax.random.PRNGKey(c.train.seed)
    if c.model.init_checkpoint:
        model_config, policy = models.load_hf(c.model.init_checkpoint)
    else:
        model_config = build_model_config(c.model, tokenizer)
        policy = models.init_params(model_config, jax.random.fold_in(key, 1))
    sft_seconds = 0.0
    if c.sft.steps:
        from jaxrl_llm.trainers import sft  # pylint: disable=g-import-not-at-top

        t0 = time.perf_counter()
        sft_data = [(e.prompt, e.answer) for e in task.arith.examples("train", 5000, c.sft.seed)]
        policy, loss = sft.sft_train(
            model_config,
            policy,
            tokenizer,
            sft_data,
            steps=c.sft.steps,
            batch_size=c.sft.batch_size,
            lr=c.sft.lr,
            warmup_steps=c.sft.warmup_steps,
            seed=c.sft.seed,
            prompt_buckets=c.prompt_buckets,
            completion_len=c.completion_len,
        )
        sft_seconds = time.perf_counter() - t0
        log_fn(f"SFT warm start: {c.sft.steps} steps, loss {loss:.4f}, {sft_seconds:.0f} s")
    params = models.init_value_params(model_config, jax.random.fold_in(key, 2), policy)
    del policy
    params, history = train_reward_model(
        model_config,
        params,
        tokenizer,
        train_pairs,
        heldout_pairs,
        steps=c.train.steps,
        batch_size=c.train.batch_size,
        lr=c.train.lr,
        warmup_steps=c.train.warmup_steps,
        weight_decay=c.train.weight_decay,
        clip_norm=c.train.clip_norm,
        margin=c.train.margin,
        label_smoothing=c.train.label_smoothing,
        seed=c.train.seed,
        prompt_buckets=c.prompt_buckets,
        completion_len=c.completion_len,
        eval_every=c.train.eval_every,
        log_fn=log_fn,
    )
    before, after = history["eval"][0][1], history["eval"][-1][1]
    summary = {
        "heldout_accuracy_before": before["accuracy"],
        "heldout_accuracy_after": after["accuracy"],
        "heldout_after": after,
        "heldout_pairs": len(heldout_pairs),
        "train_pairs": len(train_pairs),
        "train_seconds": history["seconds"],
        "sft_seconds": sft_seconds,
        "steps": c.train.steps,
    }
    save_reward_model(
        os.path.join(workdir, "reward_model"),
        model_config,
        params,
        tokenizer=tokenizer,
        meta={"heldout_accuracy": after["accuracy"], "config": c.to_dict()},
    )
    workdir_lib.write_json_atomic(
        workdir_lib.path(workdir, "rm_summary.json"), summary, default=str
    )
    log_fn(
        f"held-out pairwise accuracy: before {before['accuracy']:.3f}, "
        f"after {after['accuracy']:.3f} ({len(heldout_pairs)} pairs)"
    )
    return summary


def main(argv):
    del argv
    from absl import flags  # pylint: disable=g-import-not-at-top

    run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=g-import-not-at-top
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

    config_flags.DEFINE_config_file("config", None, "Recipe file (configs/rm_*.py[:arg]).")
    flags.DEFINE_string("workdir", None, "Run directory.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
