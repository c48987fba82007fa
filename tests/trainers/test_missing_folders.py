"""A model or tokenizer folder that is not there stops the trainer at start-up with a config
error naming the field (the CLI prints it in one line and exits 2), not a traceback."""

import subprocess
import sys

import pytest

from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl
from tests.trainers.conftest import small_config


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"tokenizer.path": "/no/such/tokenizer"},
            r"config\.tokenizer\.path = '/no/such/tokenizer': tokenizer folder",
        ),  # fmt: skip
        (
            {"model.hf_path": "/no/such/model"},
            r"config\.model\.hf_path = '/no/such/model': no HF config\.json",
        ),  # fmt: skip
    ],
)
def test_missing_folders_are_config_errors(tmp_path, overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        rl.Trainer(small_config(**overrides), str(tmp_path))


def test_the_cli_says_it_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_llm.main", "--config=configs/grpo_arith.py"]
        + [f"--workdir={tmp_path}", "--config.model.hf_path=/no/such/model"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("config error: config.model.hf_path = '/no/such/model'")
    assert "Traceback" not in out.stderr
