"""Several seeds of one recipe as one vmapped program (for tiny models on one chip).

    python -m jaxrl_llm.main --config=configs/nsr_arith.py --seeds=0,1,2 \\
        --workdirs=runs/nsr/seed=0 --workdirs=runs/nsr/seed=1 --workdirs=runs/nsr/seed=2

S runs that differ only in `train.seed` share every shape, so their device work can run as
one program with a leading seed axis: the sampler (`rollout.generate_seeds`), the log-prob /
value passes and `train_step` are `jax.vmap`-ed over stacked train states (`RLPrograms(...,
seeds=True)`). A tiny model leaves most of a chip idle; S seeds in one program fill it for
about the time of one.

The host side stays per seed and is the plain trainer's own code (`rl.Trainer` methods): each
seed has its prompt stream, reward scoring, length shaping, NaN-guard counters, adaptive-KL
controller, metrics, TensorBoard event files, orbax checkpoints and `done.json` in its own
workdir, written exactly as a separate `python -m jaxrl_llm.main --workdir=...` run with
that `train.seed` writes them (so `experiments/collate.py` reads them unchanged, and a seed's
workdir can even be resumed by a plain run). Slice s of every step equals the separate run of
seed s up to float rounding (`tests/trainers/test_seeds.py`): the same tokens are sampled
until, over a long run, rounding flips one draw (after ~42 steps in the NSR reproduction),
from where the two runs are different samples of the same experiment.

LoRA runs too: the seeds' adapters carry the seed axis, the frozen base is shared.

What a separate run does that this mode cannot (a `ConfigError` names the field): dynamic
sampling and rollout replay (their per-seed control flow differs between seeds), several
processes; it always runs on one device (`mesh.num_devices` is set to 1). The seeds share the
initial policy: the SFT warm start runs once (every seed would compute the same one, it
depends on `sft.seed`, not `train.seed`) and is copied into each seed's workdir. When the NaN
guard stops one seed, the whole group stops at its last good checkpoints.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import checkpoint as ckpt_lib
from jaxrl_llm import metrics as metrics_lib
from jaxrl_llm import models
from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl, rl_step, stages

__all__ = ["SeedsTrainer", "train_seeds", "seed_config"]


def seed_config(config, seed: int):
    """`config` with `train.seed = seed` on one device (unlocked copy)."""
    c = copy.deepcopy(config)
    c.unlock()
    c.train.seed = int(seed)
    c.mesh.num_devices = 1
    return c


def _check(config, workdirs, seeds):
    if len(workdirs) != len(seeds) or not seeds:
        raise config_lib.ConfigError(
            f"vmapped seeds: {len(seeds)} seeds {list(seeds)} but {len(workdirs)} workdirs; give one "
            "workdir per seed"
        )
    if len(set(seeds)) != len(seeds) or len(set(map(os.path.abspath, workdirs))) != len(workdirs):
        raise config_lib.ConfigError(
            f"vmapped seeds: seeds {list(seeds)} and workdirs must be distinct"
        )
    if config.data.dynamic_sampling:
        raise config_lib.ConfigError(
            "config.data.dynamic_sampling = True cannot run as vmapped seeds "
            "(each seed re-samples a different number of times); run the "
            "seeds as separate runs"
        )
    if config.env.name:
        raise config_lib.ConfigError(
            f"config.env.name = {config.env.name!r} cannot run as vmapped seeds yet (episodes "
            "are played by the plain trainer's collect stage); run the seeds as separate runs"
        )
    if config.data.replay_fraction:
        raise config_lib.ConfigError(
            f"config.data.replay_fraction = {config.data.replay_fraction} "
            "cannot run as vmapped seeds (batch sizes differ per seed); run "
            "the seeds as separate runs"
        )
    if config.rollout.async_steps:
        raise config_lib.ConfigError(
            f"config.rollout.async_steps = {config.rollout.async_steps} cannot run as vmapped "
            "seeds (the vmapped loop samples synchronously); run the seeds as separate runs"
        )
    if config.train.pack_budget:
        raise config_lib.ConfigError(
            f"config.train.pack_budget = {config.train.pack_budget} cannot run as vmapped "
            "seeds yet (their log-prob passes are vmapped over padded rows); set it to 0"
        )
    if config.critic.lora:
        raise config_lib.ConfigError(
            "config.critic.lora = True cannot run as vmapped seeds yet (their value passes "
            "are vmapped over full value models); run the seeds as separate runs"
        )
    if config.rollout.partial_budget:
        raise config_lib.ConfigError(
            f"config.rollout.partial_budget = {config.rollout.partial_budget} cannot run as "
            "vmapped seeds (each seed pauses other rows); run the seeds as separate runs"
        )
    if jax.process_count() > 1:
        raise config_lib.ConfigError(
            f"vmapped seeds run in one process; got {jax.process_count()} processes"
        )


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _seed(tree, s):
    return jax.tree.map(lambda x: x[s], tree)


class SeedsTrainer:
    """S runs of one config (seeds `seeds`, workdirs `workdirs`) stepped as one vmapped program."""

    def __init__(self, config, workdirs, seeds):
        seeds = [int(s) for s in seeds]
        _check(config, workdirs, seeds)
        self.seeds = seeds
        # One plain trainer per seed: its config, workdir, writer, checkpointer and host methods.
        self.runs = [rl.Trainer(seed_config(config, s), w) for s, w in zip(seeds, workdirs)]
        self.lead = self.runs[0]
        self.config = self.lead.config
        self.compiles = metrics_lib.CompileCounter()
        self.programs = None
        mc = self.lead.model_config
        # LoRA: the seeds' adapters merged into the one shared base (a stacked copy for sampling)
        self._merge_seeds = jax.jit(
            lambda base, ad: jax.vmap(lambda a: models.merge_lora(mc, base, a))(ad)
        )

    # ----------------------------------------------------------------------------- device work
    def rollout(self, params, examples, keys, sampling):
        """`rollout.generate_seeds` on each seed's prompts (one shared bucket); completions as text."""
        lead = self.lead
        batches = [lead.prompt_batch(ex) for ex in examples]
        p_len = max(b.tokens.shape[1] for b in batches)  # each seed left-padded to the longest
        widen = lambda x, fill: np.pad(
            np.asarray(x),
            ((0, 0), (p_len - x.shape[1], 0)),  # noqa: E731
            constant_values=fill,
        )
        pad_id = int(lead.tokenizer.pad_token_id or 0)
        prompts = rollout_lib.PromptBatch(
            tokens=np.stack([widen(b.tokens, pad_id) for b in batches]),
            mask=np.stack([widen(b.mask, 0) for b in batches]),
        )
        if isinstance(params, models.LoraAdapters):  # LoRA: each seed's adapters on the base
            params = self._merge_seeds(lead.lora_base, params)
        ro = rollout_lib.generate_seeds(
            params,
            lead.model_config,
            prompts,
            keys,
            sampling,
            kv_buckets=self.config.rollout.kv_buckets,
            row_keys=self.config.rollout.get("row_keys", False),
        )
        host = jax.device_get(ro)
        completions = [
            rollout_lib.decode_completions(lead.tokenizer, _seed(host, s))
            for s in range(len(self.runs))
        ]
        return ro, completions

    def evaluate(self, params):
        """Each seed's held-out metrics (the prompts and key a separate run uses)."""
        c = self.config
        examples = self.lead.eval_examples()
        keys = jax.random.wrap_key_data(
            jnp.stack([jax.random.key_data(jax.random.key(c.eval.seed))] * len(self.runs))
        )
        _, completions = self.rollout(
            params, [examples] * len(self.runs), keys, self.lead.eval_sampling
        )
        return [run.eval_summary(examples, comp) for run, comp in zip(self.runs, completions)]

    # ----------------------------------------------------------------------------- set-up
    def initial_state(self, log):
        """Stacked initial train states: one shared initial policy, per-seed RNG / critic init."""
        lead = self.lead
        params = lead.initial_params(log)
        sft_dir = workdir_lib.sft_dir(lead.workdir)
        for run in self.runs[1:]:  # the SFT warm start is the same for every seed: copy it
            dst = workdir_lib.sft_dir(run.workdir)
            if workdir_lib.has_sft_model(lead.workdir) and not workdir_lib.has_sft_model(
                run.workdir
            ):
                shutil.rmtree(dst, ignore_errors=True)  # a copy cut short by a kill
                shutil.copytree(sft_dir, dst)
        return [run.init_state(params) for run in self.runs]

    def _restore(self, states, log):
        """(stacked state, metas, step) from the newest step every seed has a checkpoint of;
        later checkpoints of some seeds (a group killed between the seeds' saves) are dropped."""
        steps = [set(run.checkpointer.all_steps()) for run in self.runs]
        common = set.intersection(*steps)
        if not common:
            if any(steps):
                found = {run.workdir: sorted(st) for run, st in zip(self.runs, steps)}
                raise RuntimeError(
                    f"vmapped seeds: no checkpoint step is common to all seeds ({found}); resume "
                    "these seeds as separate runs, or start the group in fresh workdirs (a group "
                    "killed between its seeds' saves needs checkpoint.keep >= 2 to resume)"
                )
            return _stack(states), None, 0
        for step in sorted(common, reverse=True):  # newest first; an unreadable one is skipped
            try:
                loaded = [
                    run.checkpointer.restore(state, step=step)
                    for run, state in zip(self.runs, states)
                ]
            except ckpt_lib.CheckpointRestoreError as e:
                log(f"vmapped seeds: step {step} does not restore for every seed, skipped: {e}")
                continue
            for run in self.runs:
                run.checkpointer.discard_after(step)
            log(f"resumed {len(self.runs)} seeds from step {step}")
            return _stack([st for st, _ in loaded]), [meta for _, meta in loaded], step
        raise ckpt_lib.CheckpointRestoreError(
            f"vmapped seeds: none of the common checkpoint steps {sorted(common)} restores for "
            "every seed; resume the seeds as separate runs"
        )

    # ----------------------------------------------------------------------------- the loop
    def run(self, log=print):
        c = self.config
        done = [workdir_lib.read_done(run.workdir) for run in self.runs]
        finished = [d is not None and d.get("steps", 0) >= c.train.steps for d in done]
        if all(finished):
            log(f"all {len(self.runs)} seeds are finished (done.json); nothing to do")
            self.state = None
            return done
        if any(finished):
            names = [run.workdir for run, f in zip(self.runs, finished) if f]
            raise config_lib.ConfigError(
                f"vmapped seeds: {names} are finished (done.json); leave them out of the group"
            )
        for run in self.runs:
            metrics_lib.write_provenance(run.workdir, run.config)
        self.lead.pool = rl.make_reward_pool(c)
        for run in self.runs[1:]:
            run.pool = self.lead.pool
        try:
            return self._run(log)
        finally:
            self.lead.pool.close()
            for run in self.runs:
                run.writer.close()

    def _run(self, log):
        c = self.config
        sources = [run.make_source() for run in self.runs]
        state, metas, start_step = self._restore(self.initial_state(log), log)
        self.programs = rl_step.RLPrograms(
            c,
            self.lead.model_config,
            self.lead.optimizer,
            self.lead.critic_optimizer,
            seeds=True,
            lora_base=self.lead.lora_base,
        )
        counters = [stages.fresh_counters() for _ in self.runs]
        histories = [[] for _ in self.runs]
        if metas is not None:
            for s, meta in enumerate(metas):
                sources[s].load_state_dict(meta["source"])
                counters[s].update(meta["counters"])
                histories[s] = meta.get("history", [])
        initial = [stages.initial_eval_of(h) for h in histories]  # kept from the first life
        if start_step == 0:
            initial = self.evaluate(state.params)
            for run, ev, hist in zip(self.runs, initial, histories):
                run.writer.scalars(0, ev)
                hist.append({"step": 0, **ev})
            log(
                "held-out accuracy before RL: "
                + ", ".join(
                    f"seed {s} {ev['eval/accuracy']:.3f}" for s, ev in zip(self.seeds, initial)
                )
            )

        t_start = time.time()
        for step in range(start_step, c.train.steps):
            state, outs = self.train_one_step(state, sources, step, counters)
            for run, m, hist in zip(self.runs, outs, histories):
                m["compiles"] = float(self.compiles.count)
                if rl.log_every(step + 1, c.log.every):
                    run.writer.scalars(step + 1, m)
                hist.append(
                    {
                        "step": step + 1,
                        **{k: float(v) for k, v in m.items() if k in rl.HISTORY_KEYS},
                    }
                )
            if c.log.progress and (step + 1) % max(c.log.every, 1) == 0:
                log(
                    f"step {step + 1}: reward " + " ".join(f"{m['train/reward']:.3f}" for m in outs)
                )
            reasons = [
                (seed, stages.stop_reason(c, cnt, step + 1, run.checkpointer.latest_step()))
                for seed, cnt, run in zip(self.seeds, counters, self.runs)
            ]
            bad = [(seed, why) for seed, why in reasons if why]
            if bad:
                msg = f"{bad[0][1]} (seeds {[s for s, _ in bad]} of the vmapped group {self.seeds})"
                logging.error(msg)
                raise rl.TrainingStopped(msg)
            if c.eval.every and (step + 1) % c.eval.every == 0 and step + 1 < c.train.steps:
                for run, ev, hist in zip(self.runs, self.evaluate(state.params), histories):
                    run.writer.scalars(step + 1, ev)
                    hist.append({"step": step + 1, **ev})
            last = step + 1 == c.train.steps
            if (c.checkpoint.every and (step + 1) % c.checkpoint.every == 0) or last:
                if all(cnt["bad_steps"] == 0 for cnt in counters):
                    for s, run in enumerate(self.runs):
                        run.checkpointer.save(
                            step + 1,
                            _seed(state, s),
                            {
                                "source": sources[s].state_dict(),
                                "counters": counters[s],
                                "history": histories[s],
                            },
                        )
        if self.lead.lora_base is not None:
            for s, run in enumerate(self.runs):
                run.export_adapters(_seed(state.params, s))
        finals = self.evaluate(state.params)
        seconds = time.time() - t_start
        summaries = [
            run.finish(ev, ini, cnt, hist, seconds, log=lambda *a: None)
            for run, ev, ini, cnt, hist in zip(self.runs, finals, initial, counters, histories)
        ]
        log(
            "held-out accuracy after RL: "
            + ", ".join(f"seed {s} {ev['eval/accuracy']:.3f}" for s, ev in zip(self.seeds, finals))
        )
        self.state = state
        return summaries

    def train_one_step(self, state, sources, step, counters):
        """One RL step of every seed through the plain trainer's stages, the device work
        vmapped over seeds: a list of per-seed metric dicts, as `Trainer.train_one_step`."""
        c = self.config
        lead, runs = self.lead, self.runs
        group = c.train.samples_per_prompt
        timings = {}
        t0 = time.time()
        examples = [src.next(c.train.prompts_per_step) for src in sources]
        keys = jax.vmap(
            lambda r: jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(r), step), 0)
        )(state.rng)  # a separate run's attempt 0
        ro, completions = self.rollout(state.params, examples, keys, lead.sampling)
        rewards, correct, infos = [], [], []
        for s, (cnt, ex, comp) in enumerate(zip(counters, examples, completions)):
            rows = [e for e in ex for _ in range(group)]
            r, ok, info = stages.score(lead.pool, lead.task, comp, rows)
            # learned reward terms (reward model, judge) per seed, as a separate run has them
            r = lead.with_reward_terms(_seed(ro, s), [e.prompt for e in rows], comp, r, info, group)
            stages.count_reward_failures(cnt, info, fresh_step=True)
            rewards.append(r)
            correct.append(ok)
            infos.append(info)
        greedy = None
        if stages.needs_greedy(c):
            greedy = np.stack(self.greedy_rewards(state.params, examples, counters))
        ro = jax.block_until_ready(ro)
        timings["time/rollout"] = time.time() - t0

        ro_mask, ro_truncated = jax.device_get((ro.mask, ro.truncated))
        shaped = [
            stages.shape_rewards(c, rewards[s], correct[s], infos[s], ro_mask[s], ro_truncated[s])
            for s in range(len(runs))
        ]
        rewards = [x[0] for x in shaped]
        shape_weight = np.stack([x[1] for x in shaped])
        lengths = [x[2] for x in shaped]

        t0 = time.time()
        ro, batch = stages.build_batch(
            c,
            self.programs,
            state,
            ro,
            np.stack(rewards),
            np.stack(correct),
            shape_weight,
            micro_rows=lead.microbatch,
            needs_ref=lead.needs_ref,
            greedy_rewards=greedy,
            stacked=True,
        )
        timings["time/logprob"] = time.time() - t0

        t0 = time.time()
        state, step_metrics = stages.update(
            self.programs,
            state,
            batch,
            seeds=[run.config.train.seed for run in runs],
            step=step,
            epochs=c.train.num_epochs,
            rows=lead.rows,
            minibatch=lead.minibatch,
        )
        timings["time/update"] = time.time() - t0
        per_seed = [
            [{k: v[s] for k, v in m.items()} for m in step_metrics] for s in range(len(runs))
        ]

        kl_coef = np.asarray(state.kl_coef)
        new_kl = [
            float(
                stages.after_update(
                    c,
                    per_seed[s],
                    counters[s],
                    kl_coef[s],
                    rows=lead.rows,
                    needs_ref=lead.needs_ref,
                )
            )
            for s in range(len(runs))
        ]
        state = stages.advance_state(
            state,
            new_kl,
            reset_ref=stages.resets_ref(c, step, lead.needs_ref),
            replicated=lead.replicated,  # the initial state's sharding (one device): no recompiles
        )

        adv, loss_mask = jax.device_get((batch.advantages, batch.mask))
        return state, [
            stages.step_summary(
                run.config,
                run.writer,
                step,
                sources[s],
                per_seed[s],
                (examples[s], completions[s], rewards[s], correct[s], infos[s]),
                adv[s],
                loss_mask[s],
                ro_mask[s],
                ro_truncated[s],
                lengths[s],
                new_kl[s],
                counters[s],
                {},
                dict(timings),
            )
            for s, run in enumerate(runs)
        ]

    def greedy_rewards(self, params, examples, counters):
        """Each seed's greedy baseline (`Trainer.greedy_rewards`), one vmapped greedy rollout."""
        keys = jax.random.wrap_key_data(
            jnp.stack([jax.random.key_data(jax.random.key(0))] * len(self.runs))
        )
        ro, completions = self.rollout(
            params, examples, keys, stages.greedy_sampling(self.lead.sampling)
        )
        out = []
        for s, (cnt, ex, comp) in enumerate(zip(counters, examples, completions)):
            rewards, _, info = stages.score(self.lead.pool, self.lead.task, comp, list(ex))
            rewards = self.lead.with_reward_terms(
                _seed(ro, s), [e.prompt for e in ex], comp, rewards, info, 1
            )
            stages.count_reward_failures(cnt, info)
            out.append(np.repeat(rewards, self.config.train.samples_per_prompt))
        return out


def train_seeds(config, workdirs, seeds, log=print):
    """Runs (or resumes) the seeds `seeds` of `config` as one vmapped program; one summary per
    seed (each also written to its workdir's `done.json`)."""
    return SeedsTrainer(config, workdirs, seeds).run(log=log)
