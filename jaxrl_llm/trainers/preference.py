"""Offline preference optimisation (DPO and its family) of a causal LM on (chosen, rejected) pairs.

    python -m jaxrl_llm.trainers.preference --config=configs/dpo_arith.py --workdir=DIR

Policy: a causal LM, from `model.init_checkpoint` (an HF folder) or a random init followed
by a quick SFT warm start (`sft.steps`, `trainers.sft.sft_train` on `sft.sft_pairs` of the
arithmetic task). Reference: the same initial weights. Its sequence log-probs of every
(prompt, chosen) and (prompt, rejected), train and held-out, are computed ONCE before
training and kept as host arrays (`RefPairBatch`); the reference weights are then dropped
and never run again.

Sequence log-probs are sums over the completion tokens (`mask == 1`, EOS included) of
`state.completion_logprobs`; SimPO divides them by the token count inside
`losses.preference.simpo`. Losses by name (`LOSSES`), hyperparameters from `train`:

    dpo    losses.preference.dpo(beta)                            label_smoothing must be 0
    cdpo   losses.preference.dpo(beta, label_smoothing > 0)       conservative DPO
    ipo    losses.preference.ipo(beta)                            (summed log-probs)
    rdpo   losses.preference.rdpo(beta, flip_rate)                robust DPO
    hinge  losses.preference.hinge(beta)                          SLiC-HF
    simpo  losses.preference.simpo(beta, gamma)                   no reference, length-normalised

Update: one `jax.jit` with `PreferenceState` donated, chosen and rejected rows in one
forward pass of 2·B rows, optax AdamW (`reward_model.make_optimizer`). Logged per step to
`metrics.MetricWriter` (TensorBoard + metrics.jsonl): `train/loss`, `train/reward_accuracy`
(implicit reward chosen > rejected, ties count 0), `train/reward_margin` (mean
β(Δchosen − Δrejected)), `train/chosen_logratio`, `train/rejected_logratio` (mean
log π − log π_ref), `train/grad_norm`.

Held-out (clean, length-balanced split) before, every `eval_every` steps and after:
`eval/reward_accuracy` — the implicit reward's pairwise accuracy, ties one half (exactly
0.5 at step 0 for the reference-based losses, where every log-ratio is 0);
`eval/logp_accuracy` — log π(chosen) > log π(rejected), summed log-probs;
`eval/reward_margin`, `eval/chosen_logratio`, `eval/rejected_logratio`; and with
`eval.greedy_prompts > 0` the greedy answer's accuracy on that many held-out prompts
(`rollout.generate` + the arithmetic verifier).

Output: `workdir/policy/` (HF folder via `models.save_hf`, plus the tokenizer),
`workdir/done.json` (`workdir.write_done`) with the numbers before and after. With
`model.lora_rank > 0` only LoRA adapters on the frozen initial policy are trained (the
reference is that policy, adapters off); they are also written as a PEFT folder
(`workdir/lora_adapter/`) and `policy/` holds the merged model.

Online DPO (pairs sampled from the current policy and labelled by the verifier, a reward
model or a judge) is the RL trainer's `online_dpo` estimator (`losses/online_dpo.py`,
`configs/online_dpo_arith.py`), not this loop. Not built: LiPO, multi-device sharding of the
update (it runs on the default device).
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
from jaxrl_llm.losses import preference as pref_losses
from jaxrl_llm.models import lora as lora_lib
from jaxrl_llm.tasks import preference_data
from jaxrl_llm.trainers import reward_model as rm
from jaxrl_llm.trainers.state import completion_logprobs

__all__ = [
    "LOSSES",
    "PreferenceState",
    "RefPairBatch",
    "sequence_logps",
    "reference_logps",
    "pair_loss",
    "make_loss_fn",
    "make_update",
    "evaluate",
    "train_preference",
    "run",
]

LOSSES = ("dpo", "cdpo", "ipo", "rdpo", "hinge", "simpo")


@flax.struct.dataclass
class PreferenceState:
    step: jax.Array  # int32 scalar: completed updates
    params: dict  # policy
    opt_state: optax.OptState


@flax.struct.dataclass
class RefPairBatch:
    """Encoded pairs with the reference's cached sequence log-probs `[N]` float32."""

    pairs: rm.PairBatch
    ref_chosen_logp: np.ndarray
    ref_rejected_logp: np.ndarray

    def __len__(self):
        return len(self.pairs)

    def take(self, idx) -> RefPairBatch:
        return jax.tree.map(lambda x: x[idx], self)


# ------------------------------------------------------------------ sequence log-probs
def sequence_logps(config, params, batch: rm.PairBatch):
    """Summed completion log-probs and token counts, chosen and rejected: four `[B]` float32.

    Chosen and rejected rows go through the model as one batch of 2·B rows.
    """
    prompt = jnp.concatenate([batch.prompt_tokens, batch.prompt_tokens])
    prompt_mask = jnp.concatenate([batch.prompt_mask, batch.prompt_mask])
    tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens])
    mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask]).astype(jnp.float32)
    logp, _ = completion_logprobs(config, params, prompt, prompt_mask, tokens)
    seq = jnp.sum(logp * mask, axis=1)
    lens = jnp.sum(mask, axis=1)
    b = batch.prompt_tokens.shape[0]
    return seq[:b], seq[b:], lens[:b], lens[b:]


def _chunked_logps(fn, params, batch: rm.PairBatch, batch_size: int):
    """`fn(params, chunk)` over fixed-size chunks (the last one wrapped), host arrays [N]."""
    n = len(batch)
    outs = []
    for s in range(0, n, batch_size):
        chunk = batch.take(np.arange(s, s + batch_size) % n)
        keep = min(batch_size, n - s)
        outs.append([np.asarray(x)[:keep] for x in jax.device_get(fn(params, chunk))])
    return [np.concatenate(col) for col in zip(*outs)]


def reference_logps(config, params, batch: rm.PairBatch, *, batch_size: int = 256):
    """The reference's cache: `RefPairBatch` with host float32 log-prob sums (one pass)."""
    fn = jax.jit(functools.partial(sequence_logps, config))
    chosen, rejected, _, _ = _chunked_logps(fn, params, batch, batch_size)
    return RefPairBatch(batch, chosen.astype(np.float32), rejected.astype(np.float32))


# ------------------------------------------------------------------ losses
def pair_loss(
    name,
    chosen_logp,
    rejected_logp,
    ref_chosen_logp,
    ref_rejected_logp,
    chosen_len,
    rejected_len,
    *,
    beta,
    label_smoothing=0.0,
    flip_rate=0.0,
    gamma=0.0,
):
    """`(loss, metrics)` of loss `name` on summed sequence log-probs `[B]` (table: module doc).

    Adds to the loss's metrics the mean log-ratios `chosen_logratio`, `rejected_logratio`
    (log π − log π_ref; reported for SimPO too, which does not use them).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; choose one of {list(LOSSES)}")
    if name == "dpo" and label_smoothing:
        raise ValueError("loss 'dpo' takes label_smoothing = 0; label smoothing is loss 'cdpo'")
    if name == "cdpo" and not label_smoothing > 0:
        raise ValueError(f"loss 'cdpo' needs label_smoothing > 0, got {label_smoothing}")
    ref = (chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    if name in ("dpo", "cdpo"):
        loss, metrics = pref_losses.dpo(*ref, beta=beta, label_smoothing=label_smoothing)
    elif name == "ipo":
        loss, metrics = pref_losses.ipo(*ref, beta=beta)
    elif name == "rdpo":
        loss, metrics = pref_losses.rdpo(*ref, beta=beta, flip_rate=flip_rate)
    elif name == "hinge":
        loss, metrics = pref_losses.hinge(*ref, beta=beta)
    else:
        loss, metrics = pref_losses.simpo(
            chosen_logp, chosen_len, rejected_logp, rejected_len, beta=beta, gamma=gamma
        )
    metrics = dict(
        metrics,
        chosen_logratio=jnp.mean(chosen_logp - ref_chosen_logp),
        rejected_logratio=jnp.mean(rejected_logp - ref_rejected_logp),
    )
    return loss, metrics


def make_loss_fn(config, name, **hyper):
    """`loss_fn(params, batch: RefPairBatch, base=None) -> (loss, metrics)`: the update's
    objective; with `base` (LoRA), `params` are adapters merged into the frozen `base`."""

    def loss_fn(params, batch: RefPairBatch, base=None):
        if base is not None:
            params = models.merge_lora(config, base, params)
        c, r, c_len, r_len = sequence_logps(config, params, batch.pairs)
        return pair_loss(
            name, c, r, batch.ref_chosen_logp, batch.ref_rejected_logp, c_len, r_len, **hyper
        )

    return loss_fn


def make_update(config, optimizer, name, **hyper):
    """`update(state, batch) -> (state, metrics)`: one jitted AdamW step, `state` donated."""
    loss_fn = make_loss_fn(config, name, **hyper)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def update(state: PreferenceState, batch: RefPairBatch, base=None):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, base
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        return PreferenceState(state.step + 1, params, opt_state), metrics

    return update


# ------------------------------------------------------------------ evaluation
def _implicit_rewards(name, beta, c, r, c_len, r_len, ref_c, ref_r):
    if name == "simpo":
        return beta * c / np.maximum(c_len, 1), beta * r / np.maximum(r_len, 1)
    return beta * (c - ref_c), beta * (r - ref_r)


def evaluate(logp_fn, params, heldout: RefPairBatch, *, name, beta, batch_size=256):
    """Held-out pairwise metrics of the policy (module doc); host floats."""
    c, r, c_len, r_len = _chunked_logps(logp_fn, params, heldout.pairs, batch_size)
    ref_c, ref_r = heldout.ref_chosen_logp, heldout.ref_rejected_logp
    rc, rr = _implicit_rewards(name, beta, c, r, c_len, r_len, ref_c, ref_r)
    return {
        "reward_accuracy": preference_data.pairwise_accuracy(rc, rr),
        "logp_accuracy": preference_data.pairwise_accuracy(c, r),
        "reward_margin": float(np.mean(rc - rr)),
        "chosen_logratio": float(np.mean(c - ref_c)),
        "rejected_logratio": float(np.mean(r - ref_r)),
    }


def greedy_accuracy(config, params, tokenizer, pairs, task, *, max_new_tokens, buckets):
    """Fraction of the pairs' distinct prompts whose greedy answer the verifier accepts."""
    from jaxrl_llm import rollout  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.tasks.base import Example  # pylint: disable=g-import-not-at-top
    from jaxrl_llm.trainers import text  # pylint: disable=g-import-not-at-top

    seen = {}
    for p in pairs:
        seen.setdefault(p.prompt, p.meta["answer"])
    prompts = list(seen)
    batch = rollout.pad_prompts(
        text.encode_prompts(tokenizer, prompts), buckets, int(tokenizer.pad_token_id)
    )
    sampling = rollout.SamplingParams(
        max_new_tokens=max_new_tokens, greedy=True, stop_token_ids=text.stop_ids(tokenizer)
    )
    out = rollout.generate(params, config, batch, jax.random.PRNGKey(0), sampling)
    completions = rollout.decode_completions(tokenizer, out)
    arith = task.arith
    hits = [
        arith.reward(comp, Example(id=q, prompt=q, answer=seen[q]))
        for q, comp in zip(prompts, completions)
    ]
    return float(np.mean(hits)), len(prompts)


# ------------------------------------------------------------------ training
def train_preference(
    model_config,
    params,
    train: RefPairBatch,
    heldout: RefPairBatch,
    *,
    loss: str,
    hyper: dict,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int = 10,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    seed: int = 0,
    eval_every: int = 0,
    writer=None,
    log_fn=None,
    extra_eval=None,
    base=None,
):
    """Trains the policy `params` on `train`; returns `(params, history)`.

    history: `{"eval": [(step, metrics)] (before, every eval_every, after), "seconds":
    training time without the evaluations}`. `writer(step, dict)` gets `train/*` every step
    and `eval/*` at each evaluation; `extra_eval(params) -> dict` adds to each evaluation
    (it gets the full policy). With `base` (LoRA), `params` are adapters on the frozen
    `base`: only they are trained and held in the optimizer, and they are what is returned.
    """
    log = log_fn or logging.info
    write = writer or (lambda step, values: None)
    optimizer = rm.make_optimizer(
        steps=steps,
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
    )
    update = make_update(model_config, optimizer, loss, **hyper)
    merge = jax.jit(lambda p, b: p if b is None else models.merge_lora(model_config, b, p))
    logp_fn = jax.jit(functools.partial(sequence_logps, model_config))
    state = PreferenceState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    history = {"eval": []}

    def run_eval(step):
        policy = merge(state.params, base)
        m = evaluate(logp_fn, policy, heldout, name=loss, beta=hyper["beta"])
        if extra_eval is not None:
            m.update(extra_eval(policy))
        history["eval"].append((step, m))
        write(step, {f"eval/{k}": v for k, v in m.items()})
        log(f"{loss} step {step}: held-out " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))

    run_eval(0)
    rng = np.random.default_rng(seed)
    seconds, t0 = 0.0, time.perf_counter()
    for i in range(steps):
        idx = rng.choice(len(train), size=batch_size, replace=len(train) < batch_size)
        state, metrics = update(state, train.take(idx), base)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        write(i + 1, {f"train/{k}": v for k, v in metrics.items()})
        if i % 50 == 49 or i == steps - 1:
            log(
                f"{loss} step {i + 1}: loss {metrics['loss']:.4f} batch reward accuracy "
                f"{metrics['reward_accuracy']:.3f} margin {metrics['reward_margin']:.3f}"
            )
        if eval_every and (i + 1) % eval_every == 0 and i != steps - 1:
            seconds += time.perf_counter() - t0
            run_eval(i + 1)
            t0 = time.perf_counter()
    jax.block_until_ready(state.params)
    history["seconds"] = seconds + time.perf_counter() - t0
    run_eval(steps)
    return state.params, history


# ------------------------------------------------------------------ the recipe runner
def _lora_settings(m) -> tuple | None:
    """(rank, alpha, targets) from `model.lora_rank / lora_alpha / lora_targets`; None when
    the rank is 0 or absent (full fine-tuning)."""
    rank = int(m.get("lora_rank", 0) or 0)
    if m.get("lora_quantize", ""):
        raise ValueError(
            f"config.model.lora_quantize = {m.lora_quantize!r}: a quantised base (QLoRA) is "
            "supported by the RL trainer only; allowed here: ''"
        )
    if rank < 0:
        raise ValueError(f"config.model.lora_rank = {rank} must be >= 0")
    if not rank:
        return None
    targets = tuple(m.get("lora_targets", ("q_proj", "k_proj", "v_proj", "o_proj")))
    return rank, float(m.get("lora_alpha", 16.0)), lora_lib.check_targets(targets)


def _hyper(t: ml_collections.ConfigDict) -> dict:
    return dict(
        beta=t.beta, label_smoothing=t.label_smoothing, flip_rate=t.flip_rate, gamma=t.gamma
    )


def run(c: ml_collections.ConfigDict, workdir: str, *, log_fn=print) -> dict:
    """Runs a preference recipe (`configs/dpo_arith.py`); returns the summary in `done.json`."""
    from jaxrl_llm.metrics import MetricWriter  # pylint: disable=g-import-not-at-top

    if c.train.loss not in LOSSES:
        raise ValueError(f"train.loss = {c.train.loss!r} is not one of {list(LOSSES)}")
    os.makedirs(workdir, exist_ok=True)
    tokenizer = models.build_tokenizer(c.tokenizer.path, workdir)
    task, train_pairs, heldout_pairs = rm._pairs(c)  # pylint: disable=protected-access
    writer = MetricWriter(workdir)
    if c.model.init_checkpoint:
        model_config, params = models.load_hf(c.model.init_checkpoint)
    else:
        model_config = rm.build_model_config(c.model, tokenizer)
        params = models.init_params(model_config, jax.random.PRNGKey(c.sft.seed))
    sft_seconds = 0.0
    if c.sft.steps and not c.model.init_checkpoint:
        from jaxrl_llm.trainers import sft  # pylint: disable=g-import-not-at-top

        t0 = time.perf_counter()
        params, sft_loss = sft.sft_train(
            model_config,
            params,
            tokenizer,
            sft.sft_pairs(task.arith, 5000, c.sft.seed),
            steps=c.sft.steps,
            batch_size=c.sft.batch_size,
            lr=c.sft.lr,
            warmup_steps=c.sft.warmup_steps,
            seed=c.sft.seed,
            prompt_buckets=c.prompt_buckets,
            completion_len=c.completion_len,
            writer=writer,
        )
        sft_seconds = time.perf_counter() - t0
        log_fn(f"SFT warm start: {c.sft.steps} steps, loss {sft_loss:.4f}, {sft_seconds:.0f} s")

    # The reference: the initial weights, run once over every pair, then only its numbers.
    t0 = time.perf_counter()
    encode = functools.partial(
        rm.encode_pairs, tokenizer, prompt_buckets=c.prompt_buckets, completion_len=c.completion_len
    )
    train = reference_logps(model_config, params, encode(train_pairs))
    heldout = reference_logps(model_config, params, encode(heldout_pairs))
    ref_seconds = time.perf_counter() - t0
    log_fn(f"reference log-probs of {len(train)} + {len(heldout)} pairs: {ref_seconds:.0f} s")

    extra_eval = None
    if c.eval.greedy_prompts:
        subset = heldout_pairs[: c.eval.greedy_prompts]

        def extra_eval(p):
            acc, n = greedy_accuracy(
                model_config,
                p,
                tokenizer,
                subset,
                task,
                max_new_tokens=c.completion_len,
                buckets=c.prompt_buckets,
            )
            return {"greedy_accuracy": acc, "greedy_prompts": n}

    t = c.train
    base, lora = None, _lora_settings(c.model)
    if lora:  # adapters on the frozen initial policy (= the reference, adapters off)
        base = params
        params = models.init_lora(
            model_config, base, jax.random.key(t.seed), rank=lora[0], alpha=lora[1], targets=lora[2]
        )
    params, history = train_preference(
        model_config,
        params,
        train,
        heldout,
        loss=t.loss,
        hyper=_hyper(t),
        steps=t.steps,
        batch_size=t.batch_size,
        lr=t.lr,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        clip_norm=t.clip_norm,
        seed=t.seed,
        eval_every=t.eval_every,
        writer=writer,
        log_fn=log_fn,
        extra_eval=extra_eval,
        base=base,
    )
    writer.close()
    if lora:
        models.save_peft(
            workdir_lib.lora_adapter_dir(workdir),
            model_config,
            jax.device_get(params),
            base_model_name_or_path=c.model.init_checkpoint or None,
        )
        params = models.merge_lora(model_config, base, params)
    policy_dir = os.path.join(workdir, "policy")  # the full policy (LoRA: merged)
    models.save_hf(policy_dir, model_config, jax.device_get(params))
    tokenizer.save_pretrained(policy_dir)
    before, after = history["eval"][0][1], history["eval"][-1][1]
    summary = {
        "loss": t.loss,
        "hyper": _hyper(t),
        "heldout_before": before,
        "heldout_after": after,
        "heldout_pairs": len(heldout),
        "train_pairs": len(train),
        "steps": t.steps,
        "train_seconds": history["seconds"],
        "sft_seconds": sft_seconds,
        "reference_seconds": ref_seconds,
        "policy_dir": policy_dir,
        "lora": {"rank": lora[0], "alpha": lora[1], "targets": list(lora[2])} if lora else None,
    }
    workdir_lib.write_done(workdir, summary)
    log_fn(
        f"held-out implicit-reward accuracy {before['reward_accuracy']:.3f} -> "
        f"{after['reward_accuracy']:.3f}, log-prob accuracy {before['logp_accuracy']:.3f} -> "
        f"{after['logp_accuracy']:.3f} ({len(heldout)} pairs)"
    )
    return summary


def main(argv):
    del argv
    from absl import flags  # pylint: disable=g-import-not-at-top

    run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=g-import-not-at-top
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

    config_flags.DEFINE_config_file("config", None, "Recipe file (configs/dpo_*.py[:arg]).")
    flags.DEFINE_string("workdir", None, "Run directory.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
