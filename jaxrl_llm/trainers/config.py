"""The config schema shared by every recipe, and its validation.

Recipes in `configs/` start from `base_config(runlocal)` and change a few
fields. The returned ConfigDict is locked: an unknown key fails at once.
`validate(config)` checks registry names and batch divisibility; the trainer
calls it before building anything, so a bad config never reaches the compiler.
"""

from __future__ import annotations

import ml_collections

__all__ = ["base_config", "validate", "ConfigError", "derived_sizes"]


class ConfigError(ValueError):
    """A config field holds a value the trainer cannot use."""


ADVANTAGE_NAMES = (
    "gae",
    "grpo",
    "dr_grpo",
    "lite_ppo",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "psr",
    "nsr",
    "w_reinforce",
)
POLICY_LOSS_NAMES = ("ppo_clip", "reinforce", "gspo", "cispo", "clip_cov", "kl_cov")
AGGREGATIONS = (
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
KL_KINDS = ("k1", "k2", "k3", "abs")
KL_PLACEMENTS = ("loss", "reward")
SCHEDULES = ("constant", "cosine", "linear")
DTYPES = ("float32", "bfloat16", "float16")


def base_config(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The full schema with defaults (a GRPO recipe on the arithmetic task)."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict(
        dict(
            hf_path="",  # a local HF folder; empty: build the inline tiny model below
            architecture="qwen2",
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
            intermediate_size=384,
            rope_theta=10000.0,
            tie_embeddings=True,
            dtype="float32",
            param_dtype="float32",
            remat=False,
            init_checkpoint="",  # params to start RL from (an SFT checkpoint folder); empty: SFT warm start below
        )
    )
    c.tokenizer = ml_collections.ConfigDict(dict(path="builtin"))
    c.task = ml_collections.ConfigDict(
        dict(
            name="arith",  # registry name or "my_pkg.my_mod:make"
            kwargs=ml_collections.ConfigDict(dict(digits=(1, 2), ops="+")),
            reward_workers=2,
            reward_timeout_s=10.0,
        )
    )
    c.rollout = ml_collections.ConfigDict(
        dict(
            max_new_tokens=6,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            prompt_buckets=(16, 32, 64, 128, 256, 512),
        )
    )
    c.algo = ml_collections.ConfigDict(
        dict(
            advantage="grpo",
            policy_loss="ppo_clip",
            aggregation="token-mean",
            clip_low=0.2,
            clip_high=0.2,
            dual_clip=0.0,  # dual_clip 0: off
            eps=1e-6,
            ddof=1,
            gamma=1.0,
            lam=1.0,
            w_lambda=0.1,
            norm_constant=0.0,  # seq-mean-token-sum-norm divisor; 0: max_new_tokens
            entropy_coef=0.0,
            forking_tokens=0.0,  # top entropy fraction kept in the policy gradient; 0: off
            recompute_old_logp=False,  # recompute old log-probs with a forward pass instead of the sampler's
            vf_coef=0.5,
            value_clip=0.2,
            loss_kwargs=ml_collections.ConfigDict(),  # extra keywords for the policy loss (e.g. clip_cov ranges)
            kl=ml_collections.ConfigDict(
                dict(
                    coef=0.0,
                    kind="k3",
                    placement="loss",
                    target=0.0,
                    horizon=10000,  # target > 0: adaptive controller (Ziegler et al.)
                    ref_reset_every=0,  # reset the reference to the policy every N steps; 0: never
                    log=False,  # compute the KL diagnostic even with coef 0
                )
            ),
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            prompts_per_step=16,
            samples_per_prompt=8,
            num_epochs=1,
            minibatch_size=0,
            microbatch_size=0,  # rows (of N = B*G); 0: the whole batch
            steps=150,
            seed=0,
            logprob_chunk=0,  # 0: the whole sequence in one chunk
            max_bad_steps=5,
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            schedule="constant",
            warmup_steps=5,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.0,
            clip_norm=1.0,
        )
    )
    c.critic = ml_collections.ConfigDict(dict(enabled=False, lr=5e-4, warmup_steps=0))
    c.sft = ml_collections.ConfigDict(
        dict(
            steps=2500,
            batch_size=32,
            lr=1e-3,
            warmup_steps=20,
            seed=0,
            data_file="",
            flawed_fraction=0.4,  # fraction of SFT targets given a flaw the verifier rejects (sft.py)
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            dynamic_sampling=False,
            max_attempts=4,  # DAPO: resample until B informative groups
            overlong_buffer=0,
            overlong_penalty=1.0,  # DAPO soft overlong penalty in tokens; 0: off
            mask_truncated=False,  # leave truncated completions out of the loss
            laser_target=0,
            laser_alpha=0.5,  # LASER target-length step reward; 0: off
            curriculum="",  # "" | "ucb" | "td_softmax" over difficulty arms
            filter_low=0.0,
            filter_high=1.0,  # keep prompts whose pass rate is in the band
            num_examples=10000,  # size of the training prompt pool
            replay_fraction=0.0,
            replay_capacity=256,  # reuse recent rollout groups (importance-corrected)
        )
    )
    # num_devices: use the first N devices of this process's machine (0: all of them).
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, rules=(), num_devices=0))
    c.checkpoint = ml_collections.ConfigDict(dict(every=20, keep=2))
    c.log = ml_collections.ConfigDict(dict(every=1, samples=4, progress=True))
    # Held-out accuracy = mean over `n` samples at `temperature` (0: greedy) of each prompt.
    c.eval = ml_collections.ConfigDict(
        dict(every=0, size=200, seed=12345, n=4, ks=(1, 2, 4), temperature=1.0)
    )

    if runlocal:
        c.train.steps = 30
    c.lock()
    return c


def _choice(field, value, allowed):
    if value not in allowed:
        raise ConfigError(f"config.{field} = {value!r} is not one of {sorted(allowed)}")


def derived_sizes(c) -> dict:
    """N, minibatch and micro-batch row counts, checked for divisibility."""
    n = c.train.prompts_per_step * c.train.samples_per_prompt
    mb = c.train.minibatch_size or n
    mu = c.train.microbatch_size or mb
    return dict(rows=n, minibatch=mb, microbatch=mu)


def validate(c, num_devices: int | None = None) -> None:
    """Fails with a message naming the field and the valid values."""
    from jaxrl_llm.tasks import registered_tasks  # pylint: disable=g-import-not-at-top

    _choice("algo.advantage", c.algo.advantage, ADVANTAGE_NAMES)
    _choice("algo.policy_loss", c.algo.policy_loss, POLICY_LOSS_NAMES)
    _choice("algo.aggregation", c.algo.aggregation, AGGREGATIONS)
    _choice("algo.kl.kind", c.algo.kl.kind, KL_KINDS)
    _choice("algo.kl.placement", c.algo.kl.placement, KL_PLACEMENTS)
    _choice("optim.schedule", c.optim.schedule, SCHEDULES)
    _choice("model.dtype", c.model.dtype, DTYPES)
    _choice("model.param_dtype", c.model.param_dtype, DTYPES)
    if ":" not in c.task.name:
        _choice("task.name", c.task.name, tuple(registered_tasks()))
    _choice("data.curriculum", c.data.curriculum, ("", "ucb", "td_softmax"))
    if not 0.0 <= c.data.filter_low <= c.data.filter_high <= 1.0:
        raise ConfigError(
            f"config.data.filter_low = {c.data.filter_low}, filter_high = "
            f"{c.data.filter_high}: need 0 <= filter_low <= filter_high <= 1"
        )
    if c.data.overlong_buffer >= c.rollout.max_new_tokens:
        raise ConfigError(
            f"config.data.overlong_buffer = {c.data.overlong_buffer} must be smaller "
            f"than rollout.max_new_tokens = {c.rollout.max_new_tokens}"
        )
    if c.data.replay_fraction:
        if not 0.0 < c.data.replay_fraction < 1.0:
            raise ConfigError(
                f"config.data.replay_fraction = {c.data.replay_fraction} must be in [0, 1)"
            )
        if (
            c.algo.policy_loss == "reinforce"
            or c.data.dynamic_sampling
            or c.critic.enabled
            or c.algo.recompute_old_logp
        ):
            raise ConfigError(
                "config.data.replay_fraction > 0 needs a ratio-based policy loss "
                "(ppo_clip, gspo, cispo, clip_cov, kl_cov: the ratio to the stored "
                "behaviour log-probs is the importance correction, so no "
                "algo.recompute_old_logp), no dynamic sampling and no critic"
            )
    if c.algo.advantage == "gae" and not c.critic.enabled:
        raise ConfigError("config.algo.advantage = 'gae' needs config.critic.enabled = True")
    for field in (
        "train.prompts_per_step",
        "train.samples_per_prompt",
        "train.num_epochs",
        "train.steps",
        "rollout.max_new_tokens",
    ):
        group, name = field.split(".")
        if c[group][name] <= 0:
            raise ConfigError(f"config.{field} = {c[group][name]} must be > 0")
    if c.algo.advantage in ("grpo", "rloo", "reinforce_pp_baseline", "lite_ppo", "dr_grpo") and (
        c.train.samples_per_prompt < 2
    ):
        raise ConfigError(
            f"config.train.samples_per_prompt = {c.train.samples_per_prompt}: "
            f"'{c.algo.advantage}' needs a group of at least 2"
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
                f"{batch_shards} batch shards of the mesh (mesh.data * mesh.fsdp)"
            )
        if c.train.prompts_per_step % batch_shards:
            raise ConfigError(
                f"config.train.prompts_per_step = {c.train.prompts_per_step} does not divide over "
                f"the {batch_shards} batch shards of the mesh (mesh.data * mesh.fsdp)"
            )


def _batch_shards(c, num_devices):
    sizes = {k: c.mesh[k] for k in ("data", "fsdp", "tensor")}
    known = 1
    for v in sizes.values():
        if v != -1:
            known *= v
    if num_devices % known:
        raise ConfigError(f"config.mesh sizes {sizes} do not divide the {num_devices} devices")
    for k, v in sizes.items():
        if v == -1:
            sizes[k] = num_devices // known
    return sizes["data"] * sizes["fsdp"]
