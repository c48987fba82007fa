"""The RL step as named stages, shared by the plain loop (`rl.Trainer`) and the vmapped-seeds
loop (`seeds.SeedsTrainer`).

    collect      prompts → rollout → rewards and the verifier's verdict (`score`), plus the
                 greedy baseline when the estimator declares it needs one (`greedy_rewards`)
    shape        length shaping of the rewards on the host (`shape_rewards`)
    build_batch  old / reference log-probs, critic values, token rewards, advantages →
                 the `TrainBatch` one update reads
    update       num_epochs × minibatches of the jitted `train_step`
    end_step     NaN guard and KL controller (`after_update`), the state's step counter and
                 reference reset (`advance_state`), metrics (`step_summary`)

The stages take arrays and the run's objects as arguments and keep no state of their own.
With `stacked=True` the device arrays carry a leading seed axis and the programs are the
vmapped ones (`RLPrograms(..., seeds=True)`); host arrays are then given per seed. The host
loop (resume, evaluation, logging, checkpoints) lives in `rl.py` / `seeds.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm import tasks as tasks_lib
from jaxrl_llm.losses import kl as kl_lib
from jaxrl_llm.losses import registry
from jaxrl_llm.parallel import multihost
from jaxrl_llm.trainers import rl_step

__all__ = [
    "COUNTERS",
    "initial_eval_of",
    "stop_reason",
    "fresh_counters",
    "correct_from",
    "score",
    "count_reward_failures",
    "greedy_sampling",
    "needs_greedy",
    "needs_reference",
    "shape_rewards",
    "build_batch",
    "update",
    "after_update",
    "advance_state",
    "step_summary",
]

COUNTERS = (
    "bad_steps",
    "skipped_total",
    "reward_errors",
    "reward_timeouts",
    "reward_nans",
    "reward_budget_skipped",
    "reward_fail_streak",  # steps in a row whose rewards all failed
)


def fresh_counters() -> dict:
    """The run's counters at step 0 (kept in checkpoints)."""
    return {k: 0 for k in COUNTERS}


# ----------------------------------------------------------------------------- collect
def correct_from(rewards, info) -> np.ndarray:
    """The one definition of "correct": the task verifier's `correct` component when it reports
    one, else a reward of 1 (within 1e-6). Carried beside the reward through shaping, so a
    length penalty never turns a correct answer into a wrong one."""
    comps = info.get("components", {})
    correct = comps.get("correct", (np.asarray(rewards) >= 1.0 - 1e-6).astype(np.float32))
    return np.asarray(correct, np.float32)


def _score_rows(pool, task, completions, examples, row_sharding):
    """Rewards of this process's rows (all rows on one process), concatenated over processes."""
    if jax.process_count() == 1:
        return pool.score(task, completions, examples)
    mine = multihost.local_rows(row_sharding, len(completions))
    rewards, info = pool.score(task, completions[mine], examples[mine])
    info = dict(
        info,
        components={
            k: multihost.gather_rows(np.asarray(v)) for k, v in info.get("components", {}).items()
        },
    )
    for k in ("errors", "timeouts", "nans", "budget_skipped"):
        info[k] = int(multihost.sum_over_processes(info.get(k, 0)))
    return multihost.gather_rows(np.asarray(rewards, np.float32)), info


def score(pool, task, completions, examples, *, row_sharding=None):
    """(rewards [N], correct [N], info) of completions against their examples (one per row)."""
    rewards, info = _score_rows(pool, task, completions, examples, row_sharding)
    info["num_rows"] = len(rewards)
    return np.asarray(rewards, np.float32), correct_from(rewards, info), info


def count_reward_failures(counters: dict, info: dict, *, fresh_step: bool = False) -> None:
    """Adds a scoring call's errors, time-outs, NaN rewards and completions left unscored by
    the step budget to the run's counters. `fresh_step`: this call scored the step's first
    batch of rows, which decides whether the step counts towards `reward_fail_streak`."""
    for k_src, k_dst in (
        ("errors", "reward_errors"),
        ("timeouts", "reward_timeouts"),
        ("nans", "reward_nans"),
        ("budget_skipped", "reward_budget_skipped"),
    ):
        counters[k_dst] = counters.get(k_dst, 0) + int(info.get(k_src, 0))
    if "judge_malformed" in info:  # only runs with a judge carry this counter
        counters["judge_malformed"] = counters.get("judge_malformed", 0) + info["judge_malformed"]
    if fresh_step:
        counters["reward_fail_streak"] = tasks_lib.reward_failure_streak(
            counters.get("reward_fail_streak", 0), info, int(info.get("num_rows", 0))
        )


def needs_reference(config) -> bool:
    """Whether the run keeps reference parameters: a KL term (or its logging), or an
    estimator that reads the reference's log-probs (online DPO)."""
    a = config.algo
    return a.kl.coef > 0 or a.kl.log or registry.ADVANTAGES[a.advantage].needs_logps


def needs_greedy(config) -> bool:
    """Whether the configured estimator needs a greedy baseline (ReMax)."""
    return registry.ADVANTAGES[config.algo.advantage].needs_greedy


def greedy_sampling(sampling: rollout_lib.SamplingParams) -> rollout_lib.SamplingParams:
    """One greedy completion per prompt, otherwise the rollout's settings."""
    return rollout_lib.SamplingParams(
        max_new_tokens=sampling.max_new_tokens,
        greedy=True,
        stop_token_ids=sampling.stop_token_ids,
        n=1,
    )


# ----------------------------------------------------------------------------- shape
def shape_rewards(config, rewards, correct, info, mask, truncated):
    """Length shaping (overlong buffer, LASER, truncation masking) of one run's rewards on the
    host; adds the shaping components to `info`. Returns (rewards, sample weights, lengths)."""
    c = config
    lengths = np.asarray(mask).sum(axis=1)
    shaped, shape_weight, shape_comps = tasks_lib.length.shape_rewards(
        rewards,
        lengths,
        truncated=np.asarray(truncated),
        correct=correct,
        max_len=c.rollout.max_new_tokens,
        overlong_buffer=c.data.overlong_buffer,
        overlong_penalty_scale=c.data.overlong_penalty,
        laser_target=c.data.laser_target,
        laser_alpha=c.data.laser_alpha,
        mask_truncated=c.data.mask_truncated,
    )
    info.setdefault("components", {}).update(shape_comps)
    return shaped, shape_weight, lengths


# ----------------------------------------------------------------------------- build_batch
def build_batch(
    config,
    programs,
    state,
    ro,
    rewards,
    correct,
    shape_weight,
    *,
    micro_rows: int,
    needs_ref: bool,
    greedy_rewards=None,
    stacked: bool = False,
):
    """Old / reference log-probs, values and advantages of a scored rollout.

    rewards, correct, shape_weight: host arrays [N] ([S, N] when `stacked`); greedy_rewards
    likewise or None. Returns (rollout with the trainer's fields filled, `TrainBatch`).
    """
    c = config
    # Policy tokens only (`Rollout.loss_mask` of a multi-turn rollout, else its `mask`): every
    # normaliser, the KL, entropy and value terms and the diagnostics read this mask.
    mask = ro.policy_mask().astype(jnp.float32)
    old_logp = ro.sampler_logp
    if c.algo.recompute_old_logp:
        old_logp = programs.logprobs(state.params, ro, micro_rows)
    ref_logp = programs.logprobs(state.ref_params, ro, micro_rows) if needs_ref else None
    values = programs.values(state.critic_params, ro, micro_rows) if c.critic.enabled else None
    ro = ro.replace(
        rewards=jnp.asarray(rewards), old_logp=old_logp, ref_logp=ref_logp, values=values
    )
    correct = jnp.asarray(correct, jnp.float32)
    greedy = None if greedy_rewards is None else jnp.asarray(greedy_rewards, jnp.float32)
    advantages = lambda r, rew, k, ok, g: rl_step.compute_advantages(c, r, rew, k, g, ok)
    if stacked:
        advantages = jax.vmap(advantages)
    token_rewards, adv, ret, weight = advantages(ro, ro.rewards, state.kl_coef, correct, greedy)
    ro = ro.replace(token_rewards=token_rewards, advantages=adv, returns=ret, sample_weight=weight)
    loss_mask = mask * (weight * jnp.asarray(shape_weight))[..., None]
    batch = rl_step.TrainBatch(
        prompt_tokens=ro.prompt_tokens,
        prompt_mask=ro.prompt_mask,
        tokens=ro.tokens,
        mask=loss_mask,
        old_logp=old_logp,
        advantages=adv,
        ref_logp=ref_logp,
        old_values=values,
        returns=ret if c.critic.enabled else None,
        token_mask=mask,
        # rollout correction: the sampler's log-probs against the recomputed `old_logp`
        rollout_logp=ro.sampler_logp if c.algo.rollout_correction else None,
    )
    return ro, batch


# ----------------------------------------------------------------------------- update
def update(
    programs,
    state,
    batch,
    *,
    seeds,
    step: int,
    epochs: int,
    rows: int,
    minibatch: int,
    fetch: bool = True,
):
    """`epochs` passes over the batch in minibatches of `minibatch` rows (a permutation per
    epoch from `default_rng([seed, step])`, sorted when one minibatch holds every row).

    seeds: the run's `train.seed` (an int), or a list of them for a stacked (vmapped) batch,
    whose minibatch indices are stacked [S, M]. Returns (state, per-update metrics on the host);
    with `fetch=False` the metrics stay on the device (the updates may still be running: the
    caller can do host work meanwhile and `jax.device_get` them later).
    """
    stacked = isinstance(seeds, list | tuple)
    rngs = [np.random.default_rng([s, step]) for s in (seeds if stacked else [seeds])]
    step_metrics = []
    # `train.micro_tokens`: each minibatch is packed on the host from one read of the batch
    source = None if stacked else programs.pack_source(batch)
    for _ in range(epochs):
        plans = [rl_step.sample_indices(g, rows, minibatch) for g in rngs]
        for j in range(len(plans[0])):
            idx = [np.sort(p[j]) if minibatch == rows else p[j] for p in plans]
            idx = np.stack(idx) if stacked else idx[0]
            mb = programs.select_rows(batch, idx)
            if source is not None:
                mb = programs.with_packs(mb, source, idx)
            state, m = programs.train_step(state, mb)
            step_metrics.append(m)
    return state, (jax.device_get(step_metrics) if fetch else step_metrics)


# ----------------------------------------------------------------------------- end_step
def initial_eval_of(history) -> dict | None:
    """The evaluation before RL (the step-0 entry of a run's history), or None."""
    for h in history:
        if h.get("step") == 0 and "eval/accuracy" in h:
            return {k: v for k, v in h.items() if k != "step"}
    return None


def stop_reason(config, counters, step: int, last_checkpoint: int | None) -> str | None:
    """Why the run must stop after `step` (None: it goes on): the NaN guard
    (`train.max_bad_steps` non-finite updates in a row) or rewards that all failed for
    `task.max_failed_reward_steps` steps in a row. Says which checkpoint is kept."""
    kept = (
        f"the last good checkpoint (step {last_checkpoint}) is kept in the workdir"
        if last_checkpoint is not None
        else "no checkpoint had been written yet (the run stopped before its first save)"
    )
    if counters["bad_steps"] >= config.train.max_bad_steps:
        return (
            f"stopping at step {step}: {counters['bad_steps']} consecutive steps had a "
            f"non-finite loss or gradient (limit train.max_bad_steps = "
            f"{config.train.max_bad_steps}); {kept}"
        )
    limit = config.task.max_failed_reward_steps
    if limit and counters.get("reward_fail_streak", 0) >= limit:
        return (
            f"stopping at step {step}: every reward call failed (error, time-out, NaN or out of "
            f"budget) in {counters['reward_fail_streak']} steps in a row (limit "
            f"task.max_failed_reward_steps = {limit}; totals: {counters['reward_errors']} "
            f"errors, {counters['reward_timeouts']} time-outs, {counters['reward_nans']} NaN, "
            f"{counters['reward_budget_skipped']} out of budget); {kept}"
        )
    return None


def after_update(config, step_metrics, counters, kl_coef, *, rows: int, needs_ref: bool):
    """NaN-guard counters from the updates' `skipped` flags; the next KL coefficient (adaptive
    controller when `algo.kl.target > 0`, else `kl_coef` unchanged)."""
    c = config
    skipped = sum(float(m["skipped"]) for m in step_metrics)
    counters["skipped_total"] += int(skipped)
    counters["bad_steps"] = counters["bad_steps"] + 1 if skipped == len(step_metrics) else 0
    if needs_ref and c.algo.kl.target > 0:
        kl_now = float(np.mean([m.get("kl", 0.0) for m in step_metrics]))
        ctl = kl_lib.AdaptiveKLController(
            float(c.algo.kl.coef), float(c.algo.kl.target), float(c.algo.kl.horizon)
        )
        return ctl.update(kl_lib.KLControllerState(coef=kl_coef), kl_now, rows).coef
    return kl_coef


def resets_ref(config, step: int, needs_ref: bool) -> bool:
    """Whether the reference policy is reset to the current one after `step`."""
    every = config.algo.kl.ref_reset_every
    return bool(needs_ref and every and (step + 1) % every == 0)


def advance_state(state, new_kl, *, reset_ref: bool, replicated):
    """The state after a step: step + 1, the next KL coefficient(s), the reference reset."""
    ref_params = state.ref_params
    if reset_ref:
        ref_params = jax.tree.map(jnp.copy, state.params)
    return state.replace(
        step=jax.device_put(state.step + 1, replicated),
        kl_coef=jax.device_put(jnp.asarray(new_kl, jnp.float32), replicated),
        ref_params=ref_params,
    )


def step_summary(
    config,
    writer,
    step,
    source,
    step_metrics,
    scored,
    adv,
    loss_mask,
    ro_mask,
    ro_truncated,
    lengths,
    kl_coef,
    counters,
    data_metrics,
    timings,
):
    """Host side of a step's end for one run: the prompt source's statistics, the `train/*`
    metrics and the sample text. `scored` = (examples, completions, rewards, correct, info)."""
    examples, completions, rewards, correct, info = scored
    group = config.train.samples_per_prompt
    rep = [e for e in examples for _ in range(group)]
    abs_adv = (np.abs(adv) * np.asarray(ro_mask)).sum(1) / np.maximum(lengths, 1)
    source.update(tasks_lib.prompt_stats(examples, correct, abs_adv, group))
    m = {k: float(np.mean([float(x[k]) for x in step_metrics])) for k in step_metrics[0]}
    out = {f"train/{k}": v for k, v in m.items()}
    out.update(
        {
            "train/reward": float(rewards.mean()),
            "train/accuracy": float(correct.mean()),
            "train/response_length": float(lengths.mean()),
            "train/response_length_max": float(lengths.max()),
            "train/truncated_frac": float(np.asarray(ro_truncated).mean()),
            "train/kl_coef": kl_coef,
            "reward/errors": counters["reward_errors"],
            "reward/timeouts": counters["reward_timeouts"],
            "reward/nans": counters["reward_nans"],
            "reward/budget_skipped": counters["reward_budget_skipped"],
            "train/skipped_total": counters["skipped_total"],
        }
    )
    out.update(rl_step.advantage_stats(adv, loss_mask))
    out.update(data_metrics)
    out.update({f"reward/{k}": float(np.mean(v)) for k, v in info.get("components", {}).items()})
    total_time = sum(timings.values())
    out.update(timings)
    out["throughput/tokens_per_s"] = float(lengths.sum() / max(total_time, 1e-9))
    if config.log.samples and (step % 10 == 0):
        sample_text = "\n\n".join(
            f"{e.prompt} → {comp!r} (reward {r:.2f})"
            for e, comp, r in zip(rep[: config.log.samples], completions, rewards)
        )
        writer.text(step + 1, "samples", sample_text)
    return out
