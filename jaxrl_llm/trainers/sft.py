"""SFT warm start: next-token loss on the completion tokens of (prompt, completion) pairs.

Pairs come from a task's shipped generator (`task.examples` + `task.sft_target`) or from a
user's jsonl file with `prompt` and `completion` fields, read through `datasets`. The batch
has the RL layout (left-padded prompt, right-padded completion), so the loss is the mean of
the same chunked completion log-probs the RL trainer uses.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_llm.trainers import text
from jaxrl_llm.trainers.state import completion_logprobs

__all__ = ["sft_pairs", "sft_train", "load_jsonl_pairs", "add_target_flaw"]


def load_jsonl_pairs(path: str, *, max_bad_fraction: float = 0.1):
    """(prompt, completion) pairs from a json / jsonl (or parquet) file with those two text fields.

    Read row by row (`jaxrl_llm.tasks.datafiles`): a row that is not UTF-8, not JSON, lacks
    a field or has a non-text one is skipped and counted, and one warning names the file,
    the count and the first bad rows. More than `max_bad_fraction` bad rows, an empty or
    unreadable file, or no valid row is a `tasks.DataError` (a ValueError) naming the path.
    """
    from jaxrl_llm.tasks import datafiles  # pylint: disable=g-import-not-at-top

    def pair(record):
        missing = [k for k in ("prompt", "completion") if record.get(k) is None]
        if missing:
            raise datafiles.BadRow(
                f"SFT rows need the fields 'prompt' and 'completion'; missing {missing} "
                f"(found {sorted(record)})"
            )
        for k in ("prompt", "completion"):
            if not isinstance(record[k], str):
                raise datafiles.BadRow(f"field {k!r} is {type(record[k]).__name__}, not text")
        return record["prompt"], record["completion"]

    return datafiles.read_rows(path, pair, max_bad_fraction=max_bad_fraction)


def sft_pairs(task, n: int, seed: int, *, flawed_fraction: float = 0.0, flaw: str = "."):
    """(prompt, target) pairs from a task's training split; see `add_target_flaw`."""
    examples = task.examples("train", n, seed)
    pairs = [(e.prompt, task.sft_target(e)) for e in examples]
    return add_target_flaw(pairs, flawed_fraction, seed, flaw) if flawed_fraction > 0 else pairs


def add_target_flaw(pairs, fraction: float, seed: int, flaw: str = "."):
    """Appends `flaw` to the target of a `fraction` of the pairs (seeded).

    Imperfect demonstrations for the demo: the verifier rejects a flawed answer ("30." is not
    "30"), so the SFT model has some, but not full, skill — it knows the answers but often
    writes them wrongly — and its samples still cover the right form (pass@k ≫ pass@1). RL
    from the verifier's reward alone has to find and remove the flaw.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"sft.flawed_fraction = {fraction} must be in [0, 1]")
    rng = np.random.default_rng([seed, 17])
    return [(p, t + flaw if rng.random() < fraction else t) for p, t in pairs]


def _encode_batch(tokenizer, pairs, prompt_buckets, completion_len):
    prompt_ids = text.encode_prompts(tokenizer, [p for p, _ in pairs])
    p_len = text.bucket_for(max(len(x) for x in prompt_ids), prompt_buckets)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    pt = np.full((len(pairs), p_len), pad, np.int32)
    pm = np.zeros((len(pairs), p_len), np.int32)
    for i, ids in enumerate(prompt_ids):
        pt[i, p_len - len(ids) :] = ids
        pm[i, p_len - len(ids) :] = 1
    ct, cm = text.encode_completions(tokenizer, [c for _, c in pairs], completion_len)
    return pt, pm, ct, cm


def _sft_loss(params, pt, pm, ct, cm, *, model_config, vocab_block=None):
    logp, _ = completion_logprobs(model_config, params, pt, pm, ct, vocab_block=vocab_block)
    m = cm.astype(jnp.float32)
    return -jnp.sum(logp * m) / jnp.maximum(jnp.sum(m), 1.0)


def sft_train(
    model_config,
    params,
    tokenizer,
    pairs,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
    prompt_buckets,
    completion_len: int,
    log_fn=None,
    writer=None,
    write_every: int = 10,
    progress: bool = False,
    vocab_block: int | None = None,
):
    """Trains `params` on `pairs` for `steps` AdamW steps; returns (params, last loss).
    `vocab_block`: the log-prob pass's vocabulary blocks (`train.vocab_block`; None: the
    default, `state.VOCAB_BLOCK`).

    Reporting, none of which changes the numbers (the same params for the same seed):
      log_fn: `log_fn(step, loss)` every 50 steps and at the last (step 0-based).
      writer: a `metrics.MetricWriter` or any `fn(step, dict)`: `{"sft/loss", "sft/lr"}` every
        `write_every` steps and at the last, at step = steps done (1-based), so TensorBoard
        shows the warm start's loss curve beside the RL run's.
      progress: a tqdm bar with the ETA on process 0 (the loss in its postfix when written).
    """
    if not pairs:
        raise ValueError("sft_train got no (prompt, completion) pairs")
    if write_every < 1:
        raise ValueError(f"sft_train: write_every must be >= 1, got {write_every}")
    sched = optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
            optax.cosine_decay_schedule(lr, max(steps - warmup_steps, 1), alpha=0.1),
        ],
        [max(warmup_steps, 1)],
    )
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.0))
    opt_state = opt.init(params)
    loss_fn = functools.partial(_sft_loss, model_config=model_config, vocab_block=vocab_block)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, pt, pm, ct, cm):
        loss, grads = jax.value_and_grad(loss_fn)(params, pt, pm, ct, cm)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    write = getattr(writer, "scalars", writer)
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

        bar = tqdm(total=steps, desc="SFT warm start", unit="step", dynamic_ncols=True)
    rng = np.random.default_rng(seed)
    # Encode once with a common prompt bucket so every step has the same shape.
    pt, pm, ct, cm = _encode_batch(tokenizer, pairs, prompt_buckets, completion_len)
    loss = float("nan")
    try:
        for i in range(steps):
            idx = rng.choice(len(pairs), size=batch_size, replace=len(pairs) < batch_size)
            params, opt_state, loss = step(params, opt_state, pt[idx], pm[idx], ct[idx], cm[idx])
            if i % 32 == 31:
                # Bound the queue of dispatched steps: hundreds of queued programs with collectives
                # on many virtual CPU devices can trip XLA's collective time-outs.
                loss.block_until_ready()
            if log_fn is not None and (i % 50 == 0 or i == steps - 1):
                log_fn(i, float(loss))
            if (write is not None or bar is not None) and (
                (i + 1) % write_every == 0 or i == steps - 1
            ):
                value = float(loss)
                if write is not None:
                    write(i + 1, {"sft/loss": value, "sft/lr": float(sched(i))})
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    loss = float(loss)
    logging.info("SFT finished: %d steps, final loss %.4f", steps, loss)
    return params, loss
