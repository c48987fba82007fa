"""The config schema: pinned defaults, per-field checks, cross-field rules and the CLI's errors."""

import glob
import importlib.util
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxrl_llm import main as main_lib
from jaxrl_llm.trainers import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# base_config() as it was before the schema became a table of fields: same keys, values, types.
FROZEN_DEFAULTS = {
    "algo.advantage": "grpo",
    "algo.aggregation": "token-mean",
    "algo.clip_high": 0.2,
    "algo.clip_low": 0.2,
    "algo.ddof": 1,
    "algo.dpo_beta": 0.1,
    "algo.dpo_label_smoothing": 0.0,
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
    "algo.rollout_correction": "",
    "algo.rollout_correction_level": "token",
    "algo.rollout_correction_low": 0.0,
    "algo.rollout_correction_threshold": 2.0,
    "algo.whiten_advantages": False,
    "algo.value_clip": 0.2,
    "algo.vf_coef": 0.5,
    "algo.w_lambda": 0.1,
    "checkpoint.every": 20,
    "checkpoint.keep": 2,
    "critic.enabled": False,
    "critic.lora": False,
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
    "env.credit": "episode",
    "env.gae_over_observations": False,
    "env.kwargs": {},
    "env.max_action_tokens": 0,
    "env.max_observation_tokens": 32,
    "env.max_turns": 4,
    "env.name": "",
    "env.parser": "tags",
    "env.step_timeout_s": 10.0,
    "env.stop_strings": ("</tool>", "</answer>"),
    "env.turn_gamma": 1.0,
    "env.workers": 16,
    "eval.every": 0,
    "eval.ks": (1, 2, 4),
    "eval.n": 4,
    "eval.seed": 12345,
    "eval.size": 200,
    "eval.temperature": 1.0,
    "judge.malformed_reward": 0.0,
    "judge.max_new_tokens": 8,
    "judge.path": "",
    "judge.template": "Question: {prompt}\nAnswer: {completion}\nIs the answer correct? Reply yes or no.\nVerdict:",
    "judge.verdict": "yes_no",
    "judge.weight": 1.0,
    "log.every": 1,
    "log.progress": True,
    "log.samples": 4,
    "mesh.data": 1,
    "mesh.fsdp": -1,
    "mesh.num_devices": 0,
    "mesh.rules": (),
    "mesh.tensor": 1,
    "model.architecture": "qwen2",
    "model.attention": "xla",
    "model.decode_attention": "xla",
    "model.dtype": "float32",
    "model.head_dim": 32,
    "model.hf_path": "",
    "model.hidden_size": 128,
    "model.init_checkpoint": "",
    "model.intermediate_size": 384,
    "model.lora_alpha": 16.0,
    "model.lora_quantize": "",
    "model.lora_rank": 0,
    "model.lora_targets": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.num_layers": 2,
    "model.param_dtype": "float32",
    "model.remat": False,
    "model.remat_policy": "full",
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
    "reward_model.normalize": "none",
    "reward_model.path": "",
    "reward_model.weight": 1.0,
    "reward_terms.combine": "sum",
    "reward_terms.task_weight": 1.0,
    "rollout.async_steps": 0,
    "rollout.continuous_slots": 0,
    "rollout.partial_budget": 0,
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
    "task.reward_step_budget_s": 0.0,
    "task.max_failed_reward_steps": 3,
    "task.reward_workers": 2,
    "tokenizer.path": "builtin",
    "train.logprob_chunk": 256,
    "train.max_bad_steps": 5,
    "train.pack_budget": 0,
    "train.micro_tokens": 0,
    "rollout.kv_buckets": 0,
    "rollout.row_keys": False,
    "train.vocab_block": 8192,
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


def _recipes():
    """(path, arg) of every shipped RL recipe, full and runlocal. Reward-model (`rm_*`) and
    offline preference (`dpo_*`) recipes have their own trainers and schemas, tested there."""
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        if os.path.basename(path).startswith(("rm_", "dpo_")):
            continue
        if os.path.basename(path) == "grpo_hf_gsm8k.py":
            out += [(path, "/ckpt/model,data=/data/gsm8k"), (path, "/ckpt/model,runlocal")]
        elif os.path.basename(path) == "rlhf_arith.py":  # the reward-model folder is made below
            out += [(path, "{rm}"), (path, "{rm},runlocal")]
        else:
            out += [(path, None), (path, "runlocal")]
    return out


@pytest.mark.parametrize("path, arg", _recipes(), ids=lambda x: os.path.basename(str(x)))
def test_every_shipped_recipe_validates(path, arg, tmp_path):
    if arg and "{rm}" in arg:  # a folder that passes the reward-model check (not loaded here)
        (tmp_path / "reward_model.json").write_text("{}")
        arg = arg.format(rm=tmp_path)
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config_lib.validate(module.get_config(arg), num_devices=8)


def test_schema_declares_every_field_once():
    fields = dict(config_lib._fields())
    assert set(fields) == {k for k in FROZEN_DEFAULTS if not k.startswith("task.kwargs.")} | {
        "task.kwargs"
    }
    assert all(f.help for f in fields.values())


def _loose(**overrides):
    """The runlocal base config, not type-safe, with dotted-key overrides of any type."""
    c = ml_collections.ConfigDict(config_lib.base_config(runlocal=True).to_dict(), type_safe=False)
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def test_loose_base_config_validates():
    config_lib.validate(_loose(), num_devices=8)


def test_numpy_scalars_are_accepted():
    c = _loose(**{"train.seed": np.int64(3), "optim.lr": np.float32(1e-3)})
    c.log.progress, c.eval.ks = np.bool_(False), (np.int32(1), np.int64(2))
    config_lib.validate(c, num_devices=8)


BAD = [
    # ranges
    ("optim.lr", -1e-4, "config.optim.lr = -0.0001 must be >= 0"),
    ("checkpoint.keep", 0, "config.checkpoint.keep = 0 must be >= 1"),
    ("checkpoint.every", -1, "config.checkpoint.every = -1 must be >= 0"),
    ("rollout.temperature", 0.0, "config.rollout.temperature = 0.0 must be > 0"),
    ("rollout.temperature", -1.0, "config.rollout.temperature = -1.0 must be > 0"),
    ("rollout.top_p", 0.0, "config.rollout.top_p = 0.0 must be in (0, 1]"),
    ("rollout.top_p", 1.5, "config.rollout.top_p = 1.5 must be in (0, 1]"),
    ("rollout.top_k", -1, "config.rollout.top_k = -1 must be >= 0"),
    ("rollout.min_p", 1.0, "config.rollout.min_p = 1.0 must be in [0, 1)"),
    ("rollout.min_p", -0.1, "config.rollout.min_p = -0.1 must be in [0, 1)"),
    ("eval.n", 0, "config.eval.n = 0 must be >= 1"),
    ("eval.temperature", -0.5, "config.eval.temperature = -0.5 must be >= 0"),
    ("task.reward_workers", -1, "config.task.reward_workers = -1 must be >= 0"),
    ("task.reward_timeout_s", 0.0, "config.task.reward_timeout_s = 0.0 must be > 0"),
    ("optim.b2", 1.0, "config.optim.b2 = 1.0 must be in [0, 1)"),
    ("algo.kl.coef", -0.1, "config.algo.kl.coef = -0.1 must be >= 0"),
    ("data.replay_fraction", 1.0, "config.data.replay_fraction = 1.0 must be in [0, 1)"),
    ("train.steps", 0, "config.train.steps = 0 must be > 0"),
    # tuples
    ("eval.ks", (0, 1), "config.eval.ks = (0, 1) has an entry 0; each entry must be >= 1"),
    (
        "eval.ks",
        (1, "2"),
        "config.eval.ks = (1, '2') has an entry '2'; each entry must be an integer",
    ),
    ("rollout.prompt_buckets", (), "config.rollout.prompt_buckets = () must not be empty"),
    ("rollout.prompt_buckets", 64, "config.rollout.prompt_buckets = 64 must be a tuple, not a int"),
    # types
    ("log.progress", "False", "config.log.progress = 'False' must be True or False, not a str"),
    ("critic.enabled", 1, "config.critic.enabled = 1 must be True or False, not a int"),
    ("optim.lr", "3e-4", "config.optim.lr = '3e-4' must be a number, not a str"),
    ("optim.lr", float("nan"), "config.optim.lr = nan must be a number, not a float"),
    ("optim.lr", float("inf"), "config.optim.lr = inf must be a finite number"),
    ("train.steps", 2.5, "config.train.steps = 2.5 must be an integer, not a float"),
    ("train.steps", True, "config.train.steps = True must be an integer, not a bool"),
    ("model.hf_path", None, "config.model.hf_path = None must be a string, not a NoneType"),
    ("task.kwargs", 3, "config.task.kwargs = 3 must be a group of keyword arguments"),
    # choices
    ("algo.ddof", 2, "config.algo.ddof = 2 is not one of [0, 1]"),
    ("model.architecture", "gpt2", "config.model.architecture = 'gpt2' is not one of ['llama',"),
    ("data.curriculum", "random", "config.data.curriculum = 'random' is not one of"),
    # rules between fields
    ("model.num_kv_heads", 3, "config.model.num_kv_heads = 3 does not divide model.num_heads = 4"),
    ("algo.dual_clip", 0.5, "config.algo.dual_clip = 0.5 must be 0 (off) or > 1"),
    ("mesh.data", 0, "config.mesh.data = 0 must be >= 1, or -1 for the rest of the devices"),
    ("mesh.data", -1, "config.mesh sizes {'data': -1, 'fsdp': -1, 'tensor': 1}: at most one"),
    ("data.filter_low", 0.6, "config.data.filter_low = 0.6, filter_high = 0.5: need 0 <="),
]


@pytest.mark.parametrize("key, value, message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_field_is_a_one_line_error(key, value, message):
    extra = {"data.filter_high": 0.5} if key == "data.filter_low" else {}
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(_loose(**{key: value}, **extra), num_devices=8)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_and_missing_fields():
    c = _loose(**{"algo.clip_hihg": 0.3})
    with pytest.raises(
        config_lib.ConfigError,
        match=r"unknown field config\.algo\.clip_hihg; valid "
        r"fields of config\.algo: advantage, aggregation, clip_high",
    ):
        config_lib.validate(c)
    c = _loose()
    del c.optim["lr"]
    with pytest.raises(config_lib.ConfigError, match=r"config\.optim\.lr is missing"):
        config_lib.validate(c)
    config_lib.validate(_loose(**{"task.kwargs.anything": 1}))  # an open keyword group


def test_registry_names_and_check_config_come_from_the_loss_registry(monkeypatch):
    from jaxrl_llm.losses import registry

    monkeypatch.setitem(registry.ADVANTAGES, "my_estimator", registry.ADVANTAGES["rloo"])
    config_lib.validate(_loose(**{"algo.advantage": "my_estimator"}))
    assert "my_estimator" in config_lib.ADVANTAGE_NAMES  # the old name reads the registry
    assert set(config_lib.AGGREGATIONS) == set(registry.AGGREGATIONS)

    seen = []

    def check_config(c):
        seen.append(c.algo.advantage)
        if c.algo.advantage == "remax":
            raise ValueError("config.algo.advantage = 'remax' needs greedy rewards")

    monkeypatch.setattr(registry, "check_config", check_config, raising=False)
    config_lib.validate(_loose())
    with pytest.raises(config_lib.ConfigError, match="'remax' needs greedy rewards"):
        config_lib.validate(_loose(**{"algo.advantage": "remax"}))
    assert seen == ["grpo", "remax"]


def test_describe_lists_every_field_with_help_and_recipe_values():
    text = config_lib.describe()
    lines = text.splitlines()
    assert len(lines) == len(dict(config_lib._fields()))
    line = next(x for x in lines if x.startswith("config.rollout.top_p = 1.0 "))
    assert "nucleus mass kept" in line and "[in (0, 1]]" in line
    c = config_lib.base_config(runlocal=True)
    line = next(x for x in config_lib.describe(c).splitlines() if "config.train.steps" in x)
    assert line.startswith("config.train.steps = 30 ") and line.endswith("(default 150)")


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("optim.lr", "3e-4", 3e-4),
        ("optim.lr", "1", 1.0),
        ("train.steps", "7", 7),
        ("log.progress", "False", False),
        ("log.progress", "t", True),
        ("log.progress", None, True),
        ("rollout.prompt_buckets", "(32, 64)", (32, 64)),
        ("rollout.prompt_buckets", "32,64", (32, 64)),
        ("rollout.prompt_buckets", "128", (128,)),
        ("model.hf_path", "/ckpt/x", "/ckpt/x"),
        ("task.kwargs.ops", "+-", "+-"),
    ],
)
def test_apply_override_converts_to_the_field_type(key, text, expected):
    c = config_lib.base_config()
    config_lib.apply_override(c, key, text)
    value = c
    for part in key.split("."):
        value = value[part]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "key, text, message",
    [
        (
            "optim.lrr",
            "1",
            "unknown field config.optim.lrr; valid fields of config.optim: b1, b2, ",
        ),
        ("optimm.lr", "1", "unknown field config.optimm.lr; valid fields of config: algo, "),
        ("optim.lr.x", "1", "unknown field config.optim.lr.x: config.optim.lr is not a group"),
        ("algo.kl", "1", "config.algo.kl is a group; set its fields: coef, horizon"),
        ("optim.lr", "abc", "config.optim.lr = 'abc' must be a number"),
        ("train.steps", "2.5", "config.train.steps = '2.5' must be an integer"),
        ("log.progress", "maybe", "config.log.progress = 'maybe' must be true or false"),
        ("optim.lr", None, "config.optim.lr needs a value: --config.optim.lr=VALUE"),
    ],
)
def test_apply_override_errors(key, text, message):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.apply_override(config_lib.base_config(), key, text)
    assert str(e.value).startswith(message), str(e.value)


def test_split_overrides():
    argv = ["prog", "--config=configs/x.py:runlocal", "--config.optim.lr=0.1", "--workdir=/w"]
    argv += ["--config.train.steps", "3", "--noconfig.log.progress", "--config.model.remat"]
    argv += ["--config.rollout.prompt_buckets=(16, 32)", "--seeds=1,2"]
    rest, overrides = main_lib.split_overrides(argv)
    assert rest == ["prog", "--config=configs/x.py:runlocal", "--workdir=/w", "--seeds=1,2"]
    assert overrides == [
        ("optim.lr", "0.1"),
        ("train.steps", "3"),
        ("log.progress", "false"),
        ("model.remat", None),
        ("rollout.prompt_buckets", "(16, 32)"),
    ]


def test_quiet_logs_hides_library_info_unless_verbose(monkeypatch):
    import logging

    for name in main_lib._QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    main_lib.quiet_logs(1)
    assert logging.getLogger("orbax").level == logging.NOTSET
    main_lib.quiet_logs(0)
    for name in ("orbax", "absl", "jax._src", "transformers"):
        assert logging.getLogger(name).level == logging.WARNING, name


def _cli(*args, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_llm.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not os.path.exists(tmp_path / "checkpoints")
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config.optim.lrr=1"],
            "config error: unknown field config.optim.lrr; valid fields of config.optim: b1, b2, "
            "clip_norm, eps, lr, schedule, warmup_steps, weight_decay",
        ),
        (["--config.optim.lr=abc"], "config error: config.optim.lr = 'abc' must be a number"),
        (["--config.optim.lr=-1"], "config error: config.optim.lr = -1.0 must be >= 0"),
        (
            ["--config.checkpoint.keep", "0"],
            "config error: config.checkpoint.keep = 0 must be >= 1",
        ),
        (
            ["--config.log.progress=maybe"],
            "config error: config.log.progress = 'maybe' must be true or false",
        ),
    ],
)
def test_cli_config_error_is_one_line_with_status_2(tmp_path, args, message):
    out = _cli(
        "--config=configs/grpo_arith.py:runlocal", f"--workdir={tmp_path}", *args, tmp_path=tmp_path
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == message


def test_cli_unreadable_recipe_is_a_config_error(tmp_path):
    out = _cli(
        "--config=configs/no_such_recipe.py:runlocal", f"--workdir={tmp_path}", tmp_path=tmp_path
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        "config error: --config=configs/no_such_recipe.py:runlocal: cannot read the recipe file "
        "configs/no_such_recipe.py"
    )


def test_cli_helpconfig_lists_every_field(tmp_path):
    out = _cli("--config=configs/dapo_arith.py:runlocal", "--helpconfig", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(dict(config_lib._fields()))
    assert any(x.startswith("config.data.dynamic_sampling = True ") for x in lines)
