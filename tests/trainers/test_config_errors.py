"""Bad configs fail before anything compiles, naming the field and the valid values."""

import os
import subprocess
import sys

import pytest

from jaxrl_llm.metrics import CompileCounter
from jaxrl_llm.trainers import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**overrides):
    c = config_lib.base_config(runlocal=True)
    c.unlock()
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"algo.advantage": "grpoo"},
            r"algo\.advantage = 'grpoo' is not one of .*'dr_grpo'.*'w_reinforce'",
        ),
        ({"algo.policy_loss": "ppo"}, r"algo\.policy_loss = 'ppo' is not one of .*'ppo_clip'"),
        ({"algo.aggregation": "mean"}, r"algo\.aggregation = 'mean' is not one of .*'token-mean'"),
        (
            {"algo.kl.kind": "k4"},
            r"algo\.kl\.kind = 'k4' is not one of \['abs', 'k1', 'k2', 'k3'\]",
        ),
        ({"algo.kl.placement": "both"}, r"algo\.kl\.placement = 'both' is not one of"),
        (
            {"algo.kl.placement": "reward", "algo.kl.coef": 0.1},
            r"algo\.kl\.placement = 'reward' has no effect with config\.algo\.advantage = 'grpo'",
        ),
        ({"optim.schedule": "step"}, r"optim\.schedule = 'step' is not one of"),
        ({"task.name": "chess"}, r"task\.name = 'chess' is not one of .*'arith'"),
        ({"train.minibatch_size": 12}, r"minibatch_size = 12 does not divide .* = 128 rows"),
        (
            {"train.minibatch_size": 32, "train.microbatch_size": 12},
            r"microbatch_size = 12 does not divide minibatch_size = 32",
        ),
        (
            {"train.prompts_per_step": 6, "mesh.fsdp": 4, "mesh.data": 2},
            r"prompts_per_step = 6 does not divide over the 8 batch shards",
        ),
        ({"mesh.fsdp": 3}, r"mesh sizes .* do not divide the 8 devices"),
        ({"algo.advantage": "gae"}, r"'gae' needs config\.critic\.enabled = True"),
        ({"train.samples_per_prompt": 1}, r"samples_per_prompt = 1: 'grpo' needs a group"),
        (
            {"algo.advantage": "online_dpo", "algo.policy_loss": "reinforce"},
            r"algo\.aggregation = 'token-mean': algo\.advantage = 'online_dpo' needs one of "
            r"\['seq-mean-token-sum'\]",
        ),
        (
            {
                "algo.advantage": "online_dpo",
                "algo.aggregation": "seq-mean-token-sum",
                "algo.policy_loss": "gspo",
            },
            r"algo\.policy_loss = 'gspo'.*needs one of \['reinforce', 'ppo_clip'\]",
        ),
        ({"algo.dpo_beta": 0.0}, r"algo\.dpo_beta = 0\.0"),
    ],
)
def test_bad_config_fails_before_compiling(tmp_path, overrides, message):
    from jaxrl_llm.trainers import rl

    counter = CompileCounter()
    with pytest.raises(config_lib.ConfigError, match=message):
        rl.Trainer(_config(**overrides), str(tmp_path))
    assert counter.count == 0
    assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_override_key_fails_at_start(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxrl_llm.main",
            "--config=configs/grpo_arith.py:runlocal",
            f"--workdir={tmp_path}",
            "--config.algo.clip_hihg=0.3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith(
        "config error: unknown field config.algo.clip_hihg; valid fields of config.algo: "
    )
    assert len(out.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "checkpoints")


def test_bad_registry_name_from_cli(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxrl_llm.main",
            "--config=configs/grpo_arith.py:runlocal",
            f"--workdir={tmp_path}",
            "--config.algo.advantage=nope",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "config.algo.advantage = 'nope' is not one of" in out.stderr
