"""The config schema: pinned defaults, per-field checks, cross-field rules and the CLI's errors."""

import ml_collections
import pytest

from jaxrl_llm.trainers import config as config_lib

# base_config() as it was before the schema became a table of fields: same keys, values, types.
FROZEN_DEFAULTS = {
    "algo.advantage": "grpo",
    "algo.aggregation": "token-mean",
    "algo.clip_high": 0.2,
    "algo.clip_low": 0.2,
    "algo.ddof": 1,
    "algo.dual_clip": 0.0,
    "algo.entropy_coef": 0.0,
    "algo.eps": 1e-06,
    "algo.forking_tokens": 0.0,
    "algo.gamma": 1.0,
    "algo.kl.coef": 0.0,
    "algo.kl.horizon": 10000,
    "algo.kl.kind": "k3",
    "algo.kl.log": False,
    "algo.kl.placement": "loss",
    "algo.kl.ref_reset_every": 0,
    "algo.kl.target": 0.0,
    "algo.lam": 1.0,
    "algo.loss_kwargs": {},
    "algo.norm_constant": 0.0,
    "algo.policy_loss": "ppo_clip",
    "algo.recompute_old_logp": False,
    "algo.value_clip": 0.2,
    "algo.vf_coef": 0.5,
    "algo.w_lambda": 0.1,
    "checkpoint.every": 20,
    "checkpoint.keep": 2,
    "critic.enabled": False,
    "critic.lr": 0.0005,
    "critic.warmup_steps": 0,
    "data.curriculum": "",
    "data.dynamic_sampling": False,
    "data.filter_high": 1.0,
    "data.filter_low": 0.0,
    "data.laser_alpha": 0.5,
    "data.laser_target": 0,
    "data.mask_truncated": False,
    "data.max_attempts": 4,
    "data.num_examples": 10000,
    "data.overlong_buffer": 0,
    "data.overlong_penalty": 1.0,
    "data.replay_capacity": 256,
    "data.replay_fraction": 0.0,
    "eval.every": 0,
    "eval.ks": (1, 2, 4),
    "eval.n": 4,
    "eval.seed": 12345,
    "eval.size": 200,
    "eval.temperature": 1.0,
    "log.every": 1,
    "log.progress": True,
    "log.samples": 4,
    "mesh.data": 1,
    "mesh.fsdp": -1,
    "mesh.num_devices": 0,
    "mesh.rules": (),
    "mesh.tensor": 1,
    "model.architecture": "qwen2",
    "model.dtype": "float32",
    "model.head_dim": 32,
    "model.hf_path": "",
    "model.hidden_size": 128,
    "model.init_checkpoint": "",
    "model.intermediate_size": 384,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.num_layers": 2,
    "model.param_dtype": "float32",
    "model.remat": False,
    "model.rope_theta": 10000.0,
    "model.tie_embeddings": True,
    "optim.b1": 0.9,
    "optim.b2": 0.99,
    "optim.clip_norm": 1.0,
    "optim.eps": 1e-08,
    "optim.lr": 0.0001,
    "optim.schedule": "constant",
    "optim.warmup_steps": 5,
    "optim.weight_decay": 0.0,
    "rollout.max_new_tokens": 6,
    "rollout.min_p": 0.0,
    "rollout.prompt_buckets": (16, 32, 64, 128, 256, 512),
    "rollout.temperature": 1.0,
    "rollout.top_k": 0,
    "rollout.top_p": 1.0,
    "sft.batch_size": 32,
    "sft.data_file": "",
    "sft.flawed_fraction": 0.4,
    "sft.lr": 0.001,
    "sft.seed": 0,
    "sft.steps": 2500,
    "sft.warmup_steps": 20,
    "task.kwargs.digits": (1, 2),
    "task.kwargs.ops": "+",
    "task.name": "arith",
    "task.reward_timeout_s": 10.0,
    "task.reward_workers": 2,
    "tokenizer.path": "builtin",
    "train.logprob_chunk": 0,
    "train.max_bad_steps": 5,
    "train.microbatch_size": 0,
    "train.minibatch_size": 0,
    "train.num_epochs": 1,
    "train.prompts_per_step": 16,
    "train.samples_per_prompt": 8,
    "train.seed": 0,
    "train.steps": 150,
}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def test_base_config_defaults_are_pinned():
    flat = _flat(config_lib.base_config().to_dict())
    assert flat == FROZEN_DEFAULTS
    for key, value in FROZEN_DEFAULTS.items():
        assert type(flat[key]) is type(value), key


def test_runlocal_changes_only_train_steps():
    flat = _flat(config_lib.base_config(runlocal=True).to_dict())
    assert flat == {**FROZEN_DEFAULTS, "train.steps": 30}


def test_base_config_is_locked():
    c = config_lib.base_config()
    assert isinstance(c.algo.kl, ml_collections.ConfigDict)
    with pytest.raises(AttributeError):
        c.optim.lrr = 1.0
    with pytest.raises(AttributeError):
        c.algo.kl.coeff = 1.0
