"""The RL trainer loop (host side): what `python -m jaxrl_llm.main` runs.

  prompts (B) → generate (G per prompt) → rewards on the host → reference / old log-probs →
  critic values → token rewards → advantages → num_epochs × minibatches of the jitted
  `train_step` (micro-batches scanned inside) → metrics → eval → checkpoint.

The device work is in `rl_step`; this file wires the pieces, owns the resume logic
(orbax state + data position), the NaN guard and the logging.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import checkpoint as ckpt_lib
from jaxrl_llm import metrics as metrics_lib
from jaxrl_llm import models, parallel, passk
from jaxrl_llm import rewards as rewards_lib
from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm import tasks as tasks_lib
from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.models import quant
from jaxrl_llm.parallel import multihost
from jaxrl_llm.trainers import agent as agent_lib
from jaxrl_llm.trainers import async_rollouts as async_lib
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import partial_rollouts as partial_lib
from jaxrl_llm.trainers import rl_step, sft, stages, text
from jaxrl_llm.trainers.state import TrainState, make_optimizer

__all__ = ["Trainer", "train", "TrainingStopped"]


class TrainingStopped(RuntimeError):
    """Raised when a stop rule ends a run (`stages.stop_reason`): the NaN guard or rewards that
    all fail; the message says which checkpoint is kept."""


def build_tokenizer(config, workdir):
    """The run's tokenizer (`models.build_tokenizer` of `config.tokenizer.path`); a folder
    that is not there is a config error naming the field."""
    try:
        return models.build_tokenizer(config.tokenizer.path, workdir)
    except FileNotFoundError as e:
        raise config_lib.ConfigError(
            f"config.tokenizer.path = {config.tokenizer.path!r}: {e}"
        ) from None


def build_model_config(config, tokenizer):
    """The run's `ModelConfig` (`models.build_model_config` of `config.model`); an HF folder
    that is not there is a config error naming the field."""
    try:
        return models.build_model_config(config.model, tokenizer)
    except FileNotFoundError as e:
        raise config_lib.ConfigError(
            f"config.model.hf_path = {config.model.hf_path!r}: {e}"
        ) from None


class Trainer:
    """One RL run in one workdir; `run()` resumes from the workdir's last checkpoint."""

    def __init__(self, config, workdir: str):
        self.config = config
        self.workdir = os.path.abspath(workdir)
        config_lib.validate(config, num_devices=jax.device_count())
        os.makedirs(self.workdir, exist_ok=True)
        self.compiles = metrics_lib.CompileCounter()

        c = config
        self.tokenizer = build_tokenizer(c, self.workdir)
        # An environment (env.name) is the task of a multi-turn run: collect plays episodes.
        self.agent = agent_lib.Agent(c, self.tokenizer) if c.env.name else None
        for field in ("train.pack_budget", "rollout.continuous_slots"):
            section, name = field.split(".")
            if c[section].get(name, 0) and jax.process_count() > 1:
                raise config_lib.ConfigError(
                    f"config.{field} does not combine with several processes yet; set it to 0"
                )
        self.partial = None  # the pool of paused completions (`rollout.partial_budget`)
        if c.rollout.partial_budget:
            if jax.process_count() > 1:
                raise config_lib.ConfigError(
                    "config.rollout.partial_budget does not combine with several processes "
                    "yet; set it to 0"
                )
            self.partial = partial_lib.PartialPool(
                c.train.samples_per_prompt, c.rollout.partial_budget, c.rollout.kv_buckets
            )
        self.task = (
            self.agent.task
            if self.agent is not None
            else tasks_lib.make_task(c.task.name, **c.task.kwargs.to_dict())
        )
        self.model_config = build_model_config(c, self.tokenizer)
        try:
            models.check_tokenizer_fits(self.tokenizer, self.model_config)
        except ValueError as e:
            raise config_lib.ConfigError(
                f"config.tokenizer.path = {c.tokenizer.path!r} does not fit the model: {e}"
            ) from None
        devices = jax.devices()[: c.mesh.num_devices] if c.mesh.num_devices else None
        self.mesh = parallel.make_mesh(
            {k: c.mesh[k] for k in ("data", "fsdp", "tensor")}, devices=devices
        )
        self.rules = tuple(tuple(r) for r in c.mesh.rules) or parallel.DEFAULT_RULES
        # Shardings come from the logical rules, as in the sampler (one layout everywhere).
        self.batch_axes = parallel.batch_axes(self.mesh, self.rules)
        self.replicated = parallel.replicated(self.mesh)
        self.row_sharding = parallel.row_sharding(self.mesh, self.rules)
        sizes = config_lib.derived_sizes(c)
        self.rows, self.minibatch, self.microbatch = (
            sizes["rows"],
            sizes["minibatch"],
            sizes["microbatch"],
        )
        self.sampling = rollout_lib.SamplingParams(
            max_new_tokens=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature,
            top_k=c.rollout.top_k,
            top_p=c.rollout.top_p,
            min_p=c.rollout.min_p,
            stop_token_ids=text.stop_ids(self.tokenizer),
            n=c.train.samples_per_prompt,
        )
        self.eval_sampling = text.eval_sampling_params(c, self.tokenizer)
        self.optimizer = make_optimizer(
            c.optim, c.train.steps * c.train.num_epochs * (self.rows // self.minibatch)
        )
        self.critic_optimizer = (
            make_optimizer(
                dict_to_optim(c.optim, lr=c.critic.lr),
                c.train.steps * c.train.num_epochs * (self.rows // self.minibatch),
            )
            if c.critic.enabled
            else None
        )
        self.needs_ref = stages.needs_reference(c)
        self.learned_reward = self.judge = None  # learned reward terms (RLHF), on request
        try:
            if c.reward_model.path:  # a reward model scored on device in the collect stage
                self.learned_reward = rewards_lib.LearnedReward(
                    c.reward_model.path,
                    vocab=self.tokenizer.get_vocab(),
                    mesh=self.mesh,
                    rules=self.rules,
                )
            if c.judge.path:
                self.judge = rewards_lib.JudgeReward(
                    c.judge.path,
                    template=c.judge.template,
                    verdict=c.judge.verdict,
                    malformed_reward=c.judge.malformed_reward,
                    max_new_tokens=c.judge.max_new_tokens,
                )
        except ValueError as e:
            group = "reward_model" if self.learned_reward is None else "judge"
            raise config_lib.ConfigError(f"config.{group}.path: {e}") from None
        self.checkpointer = ckpt_lib.Checkpointer(self.workdir, keep=c.checkpoint.keep)
        self.writer = metrics_lib.MetricWriter(self.workdir)
        self.pool = None
        self.programs = None
        # LoRA (model.lora_rank > 0): the frozen model (quantised with model.lora_quantize), set
        # by init_state
        self.lora_base = None
        self._lora_merge = None

    # ----------------------------------------------------------------------------- set-up
    def _param_shardings(self, specs, shapes):
        """Shardings by the rules; a mesh axis that does not divide a dimension is replicated
        along it, with a warning (the divisibility rule, docs/scaling.md)."""
        return parallel.logical_to_sharding(specs, self.mesh, self.rules, shapes=shapes)

    def _place(self, params, specs):
        shardings = self._param_shardings(specs, params)
        return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)

    def initial_params(self, log=print):
        """Policy params: a given checkpoint (HF folder), or random init + SFT warm start."""
        c = self.config
        specs = models.logical_axes(self.model_config)
        if c.model.init_checkpoint or c.model.hf_path:
            path = c.model.init_checkpoint or c.model.hf_path
            _, params = models.load_hf(
                path, mesh=self.mesh, rules=self.rules, dtype=c.model.param_dtype
            )
            return self._place(params, specs)
        sft_dir = workdir_lib.sft_dir(self.workdir)
        if workdir_lib.has_sft_model(self.workdir):
            log(f"SFT warm start: reusing {sft_dir}")
            _, params = models.load_hf(sft_dir, mesh=self.mesh, rules=self.rules)
            return self._place(params, specs)
        init = jax.jit(
            models.init_params,
            static_argnums=0,
            out_shardings=self._param_shardings(
                specs,
                jax.eval_shape(lambda: models.init_params(self.model_config, jax.random.key(0))),
            ),
        )
        params = init(self.model_config, jax.random.key(c.sft.seed))
        if c.sft.steps > 0:
            log(f"SFT warm start: {c.sft.steps} steps of batch {c.sft.batch_size}")
            pairs = (
                sft.load_jsonl_pairs(c.sft.data_file)
                if c.sft.data_file
                else self.agent.task.sft_pairs(
                    max(4000, c.sft.batch_size),
                    c.sft.seed,
                    no_tool_fraction=c.sft.flawed_fraction,
                )
                if self.agent is not None
                else sft.sft_pairs(
                    self.task,
                    max(4000, c.sft.batch_size),
                    c.sft.seed,
                    flawed_fraction=c.sft.flawed_fraction,
                )
            )
            pairs, _ = tasks_lib.filter_long_prompts(
                pairs, self.encode, max(c.rollout.prompt_buckets), source="SFT pairs"
            )
            params, loss = sft.sft_train(
                self.model_config,
                params,
                self.tokenizer,
                pairs,
                steps=c.sft.steps,
                batch_size=c.sft.batch_size,
                lr=c.sft.lr,
                warmup_steps=c.sft.warmup_steps,
                seed=c.sft.seed,
                prompt_buckets=c.rollout.prompt_buckets,
                completion_len=c.rollout.max_new_tokens,
                writer=self.writer,
                progress=bool(c.log.progress),
                vocab_block=c.train.vocab_block,
            )
            log(f"SFT done, loss {loss:.4f}")
            host_params = multihost.gather_to_host(params)  # a collective: every process calls it
            if jax.process_index() == 0:
                models.save_hf(sft_dir, self.model_config, host_params)
        return params

    def init_state(self, params) -> TrainState:
        """The train state from the initial params. With LoRA (`model.lora_rank > 0`) the params
        become the frozen `self.lora_base` (outside the state: never donated, never checkpointed)
        and the state's params, optimiser and reference are over fresh adapters (B = 0); with
        `model.lora_quantize` its `lora_targets` kernels are stored quantised (QLoRA)."""
        c = self.config
        base = params
        if c.model.lora_rank:
            self.lora_base, params = base, self.init_adapters(base)
            if c.model.lora_quantize:
                self.lora_base = self.quantize_base(base)
        opt_state = self._sharded_opt_init(self.optimizer, params)
        ref = jax.tree.map(jnp.copy, params) if self.needs_ref else None
        critic_params = critic_opt = None
        if c.critic.lora:
            critic_params = self.init_critic_adapters(base)
            critic_opt = self._sharded_opt_init(self.critic_optimizer, critic_params)
        elif c.critic.enabled:
            vspecs = models.value_logical_axes(self.model_config)
            init_v = jax.jit(
                lambda k, p: models.init_value_params(self.model_config, k, p),
                out_shardings=self._param_shardings(
                    vspecs,
                    jax.eval_shape(
                        lambda: models.init_value_params(self.model_config, jax.random.key(0), base)
                    ),
                ),
            )
            critic_params = init_v(jax.random.key(c.train.seed + 1), base)
            critic_opt = self._sharded_opt_init(self.critic_optimizer, critic_params)
        rep = lambda x: jax.device_put(x, self.replicated)
        return TrainState(
            step=rep(jnp.zeros((), jnp.int32)),
            params=params,
            opt_state=opt_state,
            rng=rep(jax.random.key_data(jax.random.key(c.train.seed))),
            kl_coef=rep(jnp.asarray(c.algo.kl.coef, jnp.float32)),
            ref_params=ref,
            critic_params=critic_params,
            critic_opt_state=critic_opt,
        )

    def init_adapters(self, base):
        """LoRA adapters for `base` (seed `train.seed`), created in their shardings: A like the
        kernels' input axes, B like their output axes."""
        m = self.config.model
        init = lambda key, p: models.init_lora(  # noqa: E731
            self.model_config, p, key, rank=m.lora_rank, alpha=m.lora_alpha, targets=m.lora_targets
        )
        key = jax.random.fold_in(jax.random.key(self.config.train.seed), 0x10A)
        shapes = jax.eval_shape(init, key, base)
        specs = models.lora_logical_axes(self.model_config, shapes)
        return jax.jit(init, out_shardings=self._param_shardings(specs, shapes))(key, base)

    def quantize_base(self, base):
        """QLoRA: `base` with its `model.lora_targets` kernels quantised (`models.quant`, scheme
        `model.lora_quantize`), created in their shardings: the codes laid out like the kernels,
        the block scales likewise where the mesh divides them. Deterministic, so a resumed run or
        the evaluation loader rebuilds the same base from the same weights."""
        m = self.config.model
        fn = lambda p: quant.quantize_params(p, m.lora_quantize, m.lora_targets)  # noqa: E731
        shapes = jax.eval_shape(fn, base)
        specs = quant.quantized_logical_axes(self.model_config, shapes)
        return jax.jit(fn, out_shardings=self._param_shardings(specs, shapes))(base)

    def init_critic_adapters(self, base):
        """A LoRA critic (`critic.lora`): `{"adapters", "value_head"}` on the frozen `base`,
        created in their shardings. The head equals the full critic's of the same seed and the
        adapters start at B = 0, so its first values are the full critic's."""
        m = self.config.model
        key = jax.random.key(self.config.train.seed + 1)

        def init(key, p):
            adapters = models.init_lora(
                self.model_config,
                p,
                jax.random.fold_in(key, 0x10A),
                rank=m.lora_rank,
                alpha=m.lora_alpha,
                targets=m.lora_targets,
            )
            return {
                "adapters": adapters,
                "value_head": models.init_value_head(self.model_config, key),
            }

        shapes = jax.eval_shape(init, key, base)
        specs = {
            "adapters": models.lora_logical_axes(self.model_config, shapes["adapters"]),
            "value_head": models.value_logical_axes(self.model_config)["value_head"],
        }
        return jax.jit(init, out_shardings=self._param_shardings(specs, shapes))(key, base)

    def export_adapters(self, adapters):
        """Writes `adapters` as a PEFT folder, `<workdir>/lora_adapter/` (process 0)."""
        c = self.config
        host = multihost.gather_to_host(adapters)  # a collective: every process calls it
        if jax.process_index() == 0:
            models.save_peft(
                workdir_lib.lora_adapter_dir(self.workdir),
                self.model_config,
                host,
                base_model_name_or_path=c.model.init_checkpoint or c.model.hf_path or None,
            )

    def sampler_params(self, params):
        """The full params the sampler runs: `params` itself, or with LoRA adapters merged into
        the frozen base once per call (`models.merge_lora`, laid out like the base). A QLoRA
        base is dequantised there: the sampler decodes with a dense merged copy."""
        if not isinstance(params, models.LoraAdapters):
            return params
        if self._lora_merge is None:
            dense = quant.map_quantized(lambda k: k.value.qvalue, self.lora_base)
            shardings = jax.tree.map(lambda x: x.sharding, dense)
            self._lora_merge = jax.jit(
                lambda base, ad: models.merge_lora(self.model_config, base, ad),
                out_shardings=shardings,
            )
        return self._lora_merge(self.lora_base, params)

    def _sharded_opt_init(self, optimizer, params):
        """Optimiser state created directly in the shardings of the params it mirrors."""
        shardings = parallel.opt_state_shardings(
            optimizer, params, jax.tree.map(lambda x: x.sharding, params), self.mesh
        )
        return jax.jit(optimizer.init, out_shardings=shardings)(params)

    # ----------------------------------------------------------------------------- rollouts
    def _policy(self, params):
        """The params the multi-turn sampler runs (LoRA adapters merged when present)."""
        merge = getattr(self, "sampler_params", None)
        return params if merge is None else merge(params)

    def encode(self, prompts):
        """Token ids of prompts, as the sampler sees them (BOS included)."""
        return text.encode_prompts(self.tokenizer, prompts)

    def prompt_batch(self, examples):
        ids = text.encode_prompts(self.tokenizer, [e.prompt for e in examples])
        buckets = tuple(self.config.rollout.prompt_buckets)
        if jax.process_count() > 1:  # one bucket on every process: fits the longest prompt anywhere
            longest = multihost.global_max(max(len(i) for i in ids))
            buckets = tuple(b for b in buckets if b >= longest) or buckets
        return rollout_lib.pad_prompts(
            ids, bucket_lengths=buckets, pad_id=int(self.tokenizer.pad_token_id or 0)
        )

    def rollout(self, params, examples, key, sampling):
        """Samples on the whole mesh; with several processes each tokenises and feeds only the
        prompts its devices hold, and every process gets all completions back as text.

        A prompt count the mesh's batch shards do not divide (e.g. the fresh part of a replay
        batch) is padded with copies of the last prompt, whose rows are dropped afterwards.
        Returns (rollout, completions): `finish_rollout(launch_rollout(...))`.
        """
        return self.finish_rollout(self.launch_rollout(params, examples, key, sampling))

    def launch_rollout(self, params, examples, key, sampling):
        """Tokenises the prompts and dispatches the sampler; returns a handle for
        `finish_rollout` while the device works (asynchronous dispatch)."""
        b, single = len(examples), jax.process_count() == 1
        pad = -b % parallel.batch_shards(self.mesh, self.rules)
        examples = list(examples) + [examples[-1]] * pad
        if single:
            prompts = self.prompt_batch(examples)
        else:
            local = self.prompt_batch(examples[multihost.local_rows(self.row_sharding, b + pad)])
            prompts = rollout_lib.PromptBatch(
                tokens=multihost.make_global(local.tokens, self.row_sharding, b + pad),
                mask=multihost.make_global(local.mask, self.row_sharding, b + pad),
            )
        slots = self.config.rollout.get("continuous_slots", 0)
        if slots and not single:
            raise ValueError(
                "config.rollout.continuous_slots does not combine with several processes yet; "
                "set it to 0"
            )
        sample = rollout_lib.generate_continuous if slots else rollout_lib.generate
        ro = sample(
            self.sampler_params(params),
            self.model_config,
            prompts,
            key,
            sampling,
            mesh=self.mesh,
            rules=self.rules,
            **(
                {"slots": slots}
                if slots
                else {
                    "kv_buckets": self.config.rollout.kv_buckets,
                    "row_keys": self.config.rollout.get("row_keys", False),
                }
            ),
        )
        return ro, b * sampling.n, pad

    def finish_rollout(self, handle):
        """(rollout, completions) of a `launch_rollout` handle: padded rows dropped, the
        completions decoded to text (waits for the sampler)."""
        ro, keep, pad = handle
        single = jax.process_count() == 1
        if single:  # padded rows dropped on the device: no round trip through the host
            ro = jax.tree.map(lambda x: x[:keep], ro) if pad else ro
            host = ro
        else:  # every process holds all rows on the host; the kept ones go back as global arrays
            host = multihost.gather_to_host(ro)
            if pad:
                host = jax.tree.map(lambda x: np.asarray(x)[:keep], host)
                ro = jax.device_put(host, self.row_sharding)
        completions = rollout_lib.decode_completions(self.tokenizer, host)
        return ro, completions

    def score(self, completions, examples):
        """(rewards, correct, info) of completions, one example per row (`stages.score`)."""
        return stages.score(
            self.pool, self.task, completions, examples, row_sharding=self.row_sharding
        )

    def with_reward_terms(self, ro, prompts, completions, rewards, info, group: int):
        """The combined reward of a scored rollout (`config.reward_terms`): the task's reward
        with the reward model's score on `ro` (on device) and the judge's verdicts on
        (prompts, completions), combined by `rewards.combine`. Each term is logged as a reward
        component (`reward/task`, `reward/learned`, `reward/judge`); malformed verdicts are
        counted (`info["judge_malformed"]`). `rewards` unchanged without learned terms; the
        verifier's `correct` is never touched."""
        if self.learned_reward is None and self.judge is None:
            return rewards
        c = self.config
        terms, weights = {"task": rewards}, {"task": c.reward_terms.task_weight}
        if self.learned_reward is not None:
            terms["learned"], weights["learned"] = (
                self.learned_reward.rewards(ro, prompts, completions),
                c.reward_model.weight,
            )
        if self.judge is not None:
            terms["judge"], judge_info = self.judge.score(prompts, completions)
            weights["judge"] = c.judge.weight
            info["judge_malformed"] = judge_info["malformed"]
        total, _ = rewards_lib.combine(
            terms,
            weights,
            mode=c.reward_terms.combine,
            group=group,
            normalize=c.reward_model.normalize,
        )
        info.setdefault("components", {}).update({k: np.asarray(v) for k, v in terms.items()})
        return total

    def evaluate(self, params, key_seed: int | None = None):
        """Held-out accuracy (greedy by default) on `eval.size` test prompts."""
        c = self.config
        examples = self.eval_examples()
        key = jax.random.key(c.eval.seed if key_seed is None else key_seed)
        if self.agent is not None:  # episodes: success, turns, tool calls, invalid calls
            return self.agent.evaluate(
                self._policy(params),
                self.model_config,
                examples,
                key,
                self.eval_sampling,
                ks=tuple(c.eval.ks),
            )
        ro, completions = self.rollout(params, examples, key, self.eval_sampling)
        del ro
        return self.eval_summary(examples, completions)

    def eval_examples(self):
        """The `eval.size` held-out prompts (seed `eval.seed`), those longer than the largest
        prompt bucket left out (counted and logged)."""
        c = self.config
        examples = self.task.examples("test", c.eval.size, c.eval.seed)
        examples, _ = tasks_lib.filter_long_prompts(
            examples, self.encode, max(c.rollout.prompt_buckets), source="held-out prompts"
        )
        return examples

    def eval_summary(self, examples, completions):
        """Scores `eval.n` completions per held-out prompt: the `eval/*` metrics."""
        c = self.config
        rep = [e for e in examples for _ in range(c.eval.n)]
        rewards, correct, _ = self.score(completions, rep)
        n = c.eval.n
        per_prompt = correct.reshape(len(examples), n)
        acc = float(per_prompt.mean())
        stderr = float(per_prompt.mean(axis=1).std(ddof=1) / np.sqrt(len(examples)))
        ks = [k for k in c.eval.ks if k <= n] or [1]
        table = lambda x: [list(x[i * n : (i + 1) * n]) for i in range(len(examples))]
        summary = passk.summarize_samples(
            examples, table(completions), table(rewards), ks=ks, correct=per_prompt > 0
        )
        out = {
            f"eval/{k}": float(v)
            for k, v in summary.items()
            if k not in ("num_prompts", "num_samples")
        }
        out.update({"eval/accuracy": acc, "eval/stderr": stderr})
        return out

    def _with_replay(self, source, examples, ro, completions, rewards, correct, info, metrics):
        """Stores the fresh groups and appends the replayed ones (rollout replay).

        Replayed rows keep their behaviour log-probs as `sampler_logp`, which becomes `old_logp`:
        the PPO-style ratio π_θ / π_behaviour is then exactly the importance correction.
        """
        group = self.config.train.samples_per_prompt
        host = multihost.gather_to_host(ro)
        for i, e in enumerate(examples):
            rows = slice(i * group, (i + 1) * group)
            # the rollout rows as a plain dict of numpy arrays: the buffer goes into checkpoints
            group_ro = {
                f.name: None
                if getattr(host, f.name) is None
                else np.asarray(getattr(host, f.name))[rows]
                for f in dataclasses.fields(host)
            }
            source.add(
                e,
                dict(
                    ro=group_ro,
                    completions=list(completions[rows]),
                    rewards=rewards[rows],
                    correct=correct[rows],
                ),
            )
        replayed = source.replayed()
        metrics["data/replayed_groups"] = float(len(replayed))
        if not replayed:
            return examples, ro, completions, rewards, correct, info
        parts = [host] + [rollout_lib.Rollout(**it.payload["ro"]) for it in replayed]
        p_len = max(x.prompt_tokens.shape[1] for x in parts)
        parts = [_left_pad_prompts(x, p_len) for x in parts]
        ro = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
        ro = ro.replace(group_id=np.arange(ro.tokens.shape[0], dtype=np.int32) // group)
        ro = jax.device_put(ro, self.row_sharding)  # a global array on every process
        examples = list(examples) + [it.example for it in replayed]
        completions = list(completions) + [c for it in replayed for c in it.payload["completions"]]
        rewards = np.concatenate([rewards] + [it.payload["rewards"] for it in replayed])
        correct = np.concatenate([correct] + [it.payload["correct"] for it in replayed])
        comps = info.get("components", {})
        info = dict(
            info,
            components={
                k: np.concatenate([v, np.full(len(rewards) - len(v), np.nan, np.float32)])
                for k, v in comps.items()
            },
        )
        return examples, ro, completions, rewards, correct, info

    # ----------------------------------------------------------------------------- the loop
    def run(self, log=print):
        """Trains (or resumes) to `train.steps` and returns the summary written to `done.json`.

        A workdir whose `done.json` already covers `train.steps` is finished: it is left
        unchanged and its summary returned (evaluate it again with `python -m
        jaxrl_llm.evaluation --checkpoint=WORKDIR`).
        """
        c = self.config
        done = workdir_lib.read_done(self.workdir)
        if done is not None and done.get("steps", 0) >= c.train.steps:
            log(
                f"{self.workdir} is finished ({done['steps']} steps, done.json); nothing to do. "
                "To evaluate it again: python -m jaxrl_llm.evaluation --config=... "
                f"--checkpoint={self.workdir}"
            )
            self.state = None
            return done
        metrics_lib.write_provenance(self.workdir, c)
        self.pool = make_reward_pool(c)
        try:
            return self._run(log)
        finally:
            self.pool.close()
            self.writer.close()

    def make_source(self):
        """The training prompt stream (seeded by `train.seed`)."""
        c = self.config
        d = c.data
        band = (d.filter_low, d.filter_high) if (d.filter_low > 0 or d.filter_high < 1) else None
        return tasks_lib.make_prompt_source(
            self.task,
            split="train",
            seed=c.train.seed,
            num_examples=d.num_examples,
            curriculum=d.curriculum,
            filter_band=band,
            replay_fraction=d.replay_fraction,
            replay_capacity=d.replay_capacity,
            encode_fn=self.encode,
            max_prompt_len=max(c.rollout.prompt_buckets),
        )

    def _run(self, log):
        c = self.config
        source = self.make_source()
        params = self.initial_params(log)
        state = self.init_state(params)
        del params  # with QLoRA the dense base is not kept beside the quantised one
        state_shardings = jax.tree.map(lambda x: x.sharding, state)
        batch_sharding = rl_step.TrainBatch(
            prompt_tokens=self.row_sharding,
            prompt_mask=self.row_sharding,
            tokens=self.row_sharding,
            mask=self.row_sharding,
            old_logp=self.row_sharding,
            advantages=self.row_sharding,
            ref_logp=self.row_sharding if self.needs_ref else None,
            old_values=self.row_sharding if c.critic.enabled else None,
            returns=self.row_sharding if c.critic.enabled else None,
            token_mask=self.row_sharding,
        )
        self.programs = rl_step.RLPrograms(
            c,
            self.model_config,
            self.optimizer,
            self.critic_optimizer,
            state_shardings=state_shardings,
            batch_sharding=batch_sharding,
            replicated=self.replicated,
            lora_base=self.lora_base,
        )
        counters = stages.fresh_counters()
        history = []
        start_step = 0
        earlier_seconds = 0.0  # training time of the run's earlier lives (resume)
        if self.checkpointer.latest_step() is not None:
            state, meta = self.checkpointer.restore(state)
            source.load_state_dict(meta["source"])
            counters.update(meta["counters"])
            history = meta.get("history", [])
            earlier_seconds = float(meta.get("seconds", 0.0))
            start_step = int(meta["step"])
            log(f"resumed from step {start_step} ({self.checkpointer.directory})")
        initial_eval = stages.initial_eval_of(history)  # kept from the run's first life
        if start_step == 0:
            initial_eval = self.evaluate(state.params)
            self.writer.scalars(0, initial_eval)
            log(
                f"held-out accuracy before RL: {initial_eval['eval/accuracy']:.3f} "
                f"(± {initial_eval['eval/stderr']:.3f}, {c.eval.size} prompts)"
            )
            history.append({"step": 0, **initial_eval})

        if self.partial is not None and start_step:
            if not self.partial.load(self.workdir, start_step):
                counters["partial_pool_lost"] = counters.get("partial_pool_lost", 0) + 1
        queue = None
        if c.rollout.async_steps:
            queue = collections.deque()
            if start_step:
                saved = async_lib.load_pending(self.workdir, start_step, self.row_sharding)
                if saved is None:
                    counters["async_pending_lost"] = counters.get("async_pending_lost", 0) + 1
                queue.extend(saved or ())
            self.fill_queue(queue, state, source, start_step, counters)

        progress = _progress(c, start_step)
        step = start_step
        t_start = time.time()
        for step in range(start_step, c.train.steps):
            state, m = self.train_one_step(state, source, step, counters, queue)
            m["compiles"] = float(self.compiles.count)
            if log_every(step + 1, c.log.every):
                self.writer.scalars(step + 1, m)
            history.append(
                {"step": step + 1, **{k: float(v) for k, v in m.items() if k in HISTORY_KEYS}}
            )
            if progress is not None:
                progress.set_postfix(
                    reward=f"{m['train/reward']:.3f}", acc=f"{m['train/accuracy']:.3f}"
                )
                progress.update(1)
            msg = stages.stop_reason(c, counters, step + 1, self.checkpointer.latest_step())
            if msg:
                logging.error(msg)
                raise TrainingStopped(msg)
            if c.eval.every and (step + 1) % c.eval.every == 0 and step + 1 < c.train.steps:
                ev = self.evaluate(state.params)
                self.writer.scalars(step + 1, ev)
                history.append({"step": step + 1, **ev})
            last = step + 1 == c.train.steps
            if (c.checkpoint.every and (step + 1) % c.checkpoint.every == 0) or last:
                if counters["bad_steps"] == 0:
                    if queue is not None:  # first, so a committed checkpoint has its queue
                        async_lib.save_pending(self.workdir, step + 1, queue)
                    if self.partial is not None:  # likewise its paused completions
                        self.partial.save(self.workdir, step + 1)
                    self.checkpointer.save(
                        step + 1,
                        state,
                        {
                            "source": source.state_dict(),
                            "counters": counters,
                            "history": history,
                            "seconds": earlier_seconds + time.time() - t_start,
                        },
                    )
                    if queue is not None:
                        async_lib.prune_pending(self.workdir, self.checkpointer.all_steps())
                    if self.partial is not None:
                        self.partial.prune(self.workdir, self.checkpointer.all_steps())
        if progress is not None:
            progress.close()
        if self.lora_base is not None:
            self.export_adapters(state.params)
        final_eval = self.evaluate(state.params)
        summary = self.finish(
            final_eval,
            initial_eval,
            counters,
            history,
            earlier_seconds + time.time() - t_start,
            log,
        )
        self.state = state
        return summary

    def finish(self, final_eval, initial_eval, counters, history, seconds, log=print):
        """Logs the final evaluation and writes `done.json` (what the grid runner looks for)."""
        c = self.config
        self.writer.scalars(c.train.steps, final_eval)
        self.writer.flush()
        summary = {
            "steps": c.train.steps,
            "final_eval": final_eval,
            "initial_eval": initial_eval,
            "counters": counters,
            "seconds": seconds,
            "compiles_after_step_2": _compiles_after_step_2(history),
            "history": history,
        }
        log(
            f"held-out accuracy after RL: {final_eval['eval/accuracy']:.3f} "
            f"(± {final_eval['eval/stderr']:.3f})"
        )
        log(f"TensorBoard logs: tensorboard --logdir {self.workdir}")
        if jax.process_index() == 0:
            workdir_lib.write_done(self.workdir, summary)
        return summary

    def collect(self, state, source, step, counters):
        """The collect stage: a batch of prompts sampled and scored (with DAPO dynamic sampling
        and rollout replay when configured), plus the greedy baseline when the estimator needs
        one. Returns (examples, rollout, completions, rewards, correct, info, greedy_rewards,
        data_metrics)."""
        c = self.config
        group = c.train.samples_per_prompt
        data_metrics = {}

        def sample(attempt):
            key = jax.random.fold_in(
                jax.random.fold_in(jax.random.wrap_key_data(state.rng), step), attempt
            )
            if self.partial is not None:  # rounds over paused and fresh groups
                examples, rows, partial_metrics = self.partial.collect(
                    self, state.params, source, step, key
                )
                data_metrics.update(partial_metrics)
                host_ro = rows.to_rollout()
            else:
                examples = source.next(c.train.prompts_per_step)
            rep = [e for e in examples for _ in range(group)]
            if self.partial is not None:
                ro = jax.device_put(host_ro, self.row_sharding)
                completions = rollout_lib.decode_completions(self.tokenizer, host_ro)
                rewards, correct, info = self.score(completions, rep)
            elif self.agent is not None:  # multi-turn episodes (`trainers/agent.py`)
                ro, completions, rewards, correct, info = self.agent.play(
                    self._policy(state.params),
                    self.model_config,
                    examples,
                    key,
                    self.sampling,
                )
                ro = jax.device_put(ro, self.row_sharding)
            else:
                ro, completions = self.rollout(state.params, examples, key, self.sampling)
                rewards, correct, info = self.score(completions, rep)
            rewards = self.with_reward_terms(
                ro, [e.prompt for e in rep], completions, rewards, info, group
            )
            stages.count_reward_failures(counters, info, fresh_step=attempt == 0)
            return dict(
                examples=examples,
                ro=ro,
                completions=completions,
                rewards=rewards,
                correct=correct,
                info=info,
            ), rewards

        if c.data.dynamic_sampling:
            res = tasks_lib.dynamic_sampling(
                sample, c.train.prompts_per_step, group, c.data.max_attempts
            )
            parts = [(res.batches[a], rows) for a, rows in res.rows_by_attempt.items()]
            examples = [b["examples"][g] for b, rows in parts for g in rows[::group] // group]
            host_parts = [
                jax.tree.map(lambda x, r=rows: np.asarray(x)[r], multihost.gather_to_host(b["ro"]))
                for b, rows in parts
            ]
            ro = jax.device_put(
                jax.tree.map(lambda *xs: np.concatenate(xs), *host_parts), self.row_sharding
            )
            completions = [b["completions"][i] for b, rows in parts for i in rows]
            rewards = np.concatenate([b["rewards"][rows] for b, rows in parts])
            correct = np.concatenate([b["correct"][rows] for b, rows in parts])
            info = {
                "components": {
                    k: np.concatenate([b["info"]["components"][k][rows] for b, rows in parts])
                    for k in parts[0][0]["info"].get("components", {})
                }
            }
            data_metrics.update({f"data/{k}": float(v) for k, v in res.stats.items()})
        else:
            b, _ = sample(0)
            examples, ro, completions = b["examples"], b["ro"], b["completions"]
            rewards, correct, info = b["rewards"], b["correct"], b["info"]
        if c.data.replay_fraction > 0:
            examples, ro, completions, rewards, correct, info = self._with_replay(
                source, examples, ro, completions, rewards, correct, info, data_metrics
            )
        greedy = None
        if stages.needs_greedy(c):
            greedy = self.greedy_rewards(state.params, examples, counters)
        return examples, ro, completions, rewards, correct, info, greedy, data_metrics

    def launch_collect(self, state, source, step: int, params_step: int):
        """Asynchronous collect, first half: draws step `step`'s prompts and dispatches the
        sampler (and the greedy baseline when the estimator needs one) with `state.params`,
        under the key the synchronous collect of `step` uses. Returns a handle for
        `finish_collect`; the state may be donated to an update meanwhile."""
        c = self.config
        examples = source.next(c.train.prompts_per_step)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), step), 0)
        handle = self.launch_rollout(state.params, examples, key, self.sampling)
        greedy = None
        if stages.needs_greedy(c):
            greedy = self.launch_rollout(
                state.params, examples, jax.random.key(0), stages.greedy_sampling(self.sampling)
            )
        return step, params_step, examples, handle, greedy

    def finish_collect(self, launched, counters) -> async_lib.Collected:
        """Asynchronous collect, second half: waits for the completions and scores them (the
        same scoring and failure counting as `collect`)."""
        step, params_step, examples, handle, greedy_handle = launched
        group = self.config.train.samples_per_prompt
        ro, completions = self.finish_rollout(handle)
        rewards, correct, info = self.score(
            completions, [e for e in examples for _ in range(group)]
        )
        rewards = self.with_reward_terms(
            ro,
            [e.prompt for e in examples for _ in range(group)],
            completions,
            rewards,
            info,
            group,
        )
        stages.count_reward_failures(counters, info, fresh_step=True)
        greedy = None
        if greedy_handle is not None:
            greedy_ro, greedy_completions = self.finish_rollout(greedy_handle)
            greedy, _, greedy_info = self.score(greedy_completions, list(examples))
            greedy = self.with_reward_terms(
                greedy_ro,
                [e.prompt for e in examples],
                greedy_completions,
                greedy,
                greedy_info,
                1,
            )
            stages.count_reward_failures(counters, greedy_info)
            greedy = np.repeat(greedy, group)
        return async_lib.Collected(
            step=step,
            params_step=params_step,
            examples=examples,
            ro=ro,
            completions=completions,
            rewards=rewards,
            correct=correct,
            info=info,
            greedy=greedy,
            data_metrics={},
        )

    def fill_queue(self, queue, state, source, step: int, counters) -> None:
        """Collects, with `state`'s parameters (those of `step`), the batches the queue lacks for
        steps `step .. step + async_steps - 1` (the run's start, or a lost queue on resume)."""
        c = self.config
        first = queue[-1].step + 1 if queue else step
        for s in range(first, min(step + c.rollout.async_steps, c.train.steps)):
            queue.append(self.finish_collect(self.launch_collect(state, source, s, step), counters))

    def greedy_rewards(self, params, examples, counters):
        """The reward of one greedy completion per prompt, repeated over its G rows (ReMax's
        baseline): [B * G]. Greedy decoding ignores the key."""
        ro, completions = self.rollout(
            params, examples, jax.random.key(0), stages.greedy_sampling(self.sampling)
        )
        rewards, _, info = self.score(completions, list(examples))
        rewards = self.with_reward_terms(
            ro, [e.prompt for e in examples], completions, rewards, info, 1
        )
        stages.count_reward_failures(counters, info)
        return np.repeat(rewards, self.config.train.samples_per_prompt)

    def train_one_step(self, state, source, step, counters, queue=None):
        """One RL step through the stages (collect → shape → build_batch → update → end);
        returns (state, metrics).

        queue: with `rollout.async_steps = k > 0`, the batches collected ahead
        (`async_rollouts.Collected`, the first one for `step`): the step launches the sampler
        for step `step + k` with the current parameters, trains on the queue's first batch, and
        scores the new completions while the update runs.
        """
        c = self.config
        timings = {}
        t0 = time.time()
        launched = None
        if queue is None:
            examples, ro, completions, rewards, correct, info, greedy, data_metrics = self.collect(
                state, source, step, counters
            )
            ro = jax.block_until_ready(ro)
        else:
            if step + c.rollout.async_steps < c.train.steps:
                launched = self.launch_collect(
                    state, source, step + c.rollout.async_steps, params_step=step
                )
            item = queue.popleft()
            if item.step != step:
                raise RuntimeError(f"async rollouts: step {step} got the batch of step {item.step}")
            examples, ro, completions = item.examples, item.ro, item.completions
            rewards, correct, info = item.rewards, item.correct, item.info
            greedy, data_metrics = item.greedy, {"rollout/staleness": float(item.staleness)}
        timings["time/rollout"] = time.time() - t0

        # policy tokens: the lengths of length shaping and of the step's metrics
        ro_mask, ro_truncated = multihost.gather_to_host((ro.policy_mask(), ro.truncated))
        rewards, shape_weight, lengths = stages.shape_rewards(
            c, rewards, correct, info, ro_mask, ro_truncated
        )

        t0 = time.time()
        ro, batch = stages.build_batch(
            c,
            self.programs,
            state,
            ro,
            rewards,
            correct,
            shape_weight,
            micro_rows=self.microbatch,
            needs_ref=self.needs_ref,
            greedy_rewards=greedy,
        )
        timings["time/logprob"] = time.time() - t0

        t0 = time.time()
        state, step_metrics = stages.update(
            self.programs,
            state,
            batch,
            seeds=c.train.seed,
            step=step,
            epochs=c.train.num_epochs,
            rows=self.rows,
            minibatch=self.minibatch,
            fetch=launched is None,
        )
        if launched is not None:  # the host scores step + k while the device runs the update
            t1 = time.time()
            queue.append(self.finish_collect(launched, counters))
            timings["time/rollout_ahead"] = time.time() - t1
            step_metrics = jax.device_get(step_metrics)
        timings["time/update"] = time.time() - t0 - timings.get("time/rollout_ahead", 0.0)
        new_kl = stages.after_update(
            c, step_metrics, counters, state.kl_coef, rows=self.rows, needs_ref=self.needs_ref
        )
        state = stages.advance_state(
            state,
            new_kl,
            reset_ref=stages.resets_ref(c, step, self.needs_ref),
            replicated=self.replicated,
        )

        adv, loss_mask = multihost.gather_to_host((batch.advantages, batch.mask))
        return state, stages.step_summary(
            c,
            self.writer,
            step,
            source,
            step_metrics,
            (examples, completions, rewards, correct, info),
            adv,
            loss_mask,
            ro_mask,
            ro_truncated,
            lengths,
            float(new_kl),
            counters,
            data_metrics,
            timings,
        )


HISTORY_KEYS = (
    "train/reward",
    "train/accuracy",
    "train/entropy",
    "train/kl",
    "train/loss/total",
    "train/grad_norm",
    "train/response_length",
    "compiles",
    "data/replayed_groups",
    "data/frac_dropped",
    "data/attempts",
)


def _compiles_after_step_2(history):
    counts = [h["compiles"] for h in history if "compiles" in h]
    return counts[-1] - counts[1] if len(counts) >= 2 else None


def _left_pad_prompts(ro, length):
    pad = length - ro.prompt_tokens.shape[1]
    if pad == 0:
        return ro
    widen = lambda x: np.concatenate([np.zeros((x.shape[0], pad), x.dtype), x], axis=1)
    return ro.replace(prompt_tokens=widen(ro.prompt_tokens), prompt_mask=widen(ro.prompt_mask))


def log_every(step, every):
    return every > 0 and step % every == 0


def _progress(c, start):
    if not c.log.progress or jax.process_index() != 0:
        return None
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    return tqdm(total=c.train.steps, initial=start, desc="RL", dynamic_ncols=True)


def dict_to_optim(optim, **overrides):
    d = optim.to_dict()
    d.update(overrides)
    import ml_collections  # pylint: disable=g-import-not-at-top

    return ml_collections.ConfigDict(d)


def make_reward_pool(config):
    """The reward process pool of a run (`task.reward_*` settings)."""
    t = config.task
    return tasks_lib.RewardPool(
        num_workers=t.reward_workers,
        timeout_s=t.reward_timeout_s,
        step_budget_s=t.reward_step_budget_s or None,
    )


def train(config, workdir, log=print):
    """Runs (or resumes) one RL run; returns the summary dict. Logs from process 0 only."""
    if jax.process_index() != 0:
        log = lambda *args, **kwargs: None  # noqa: E731
    return Trainer(config, workdir).run(log=log)
