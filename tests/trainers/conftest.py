"""One small SFT checkpoint shared by every trainer test (built once per session)."""

import os

import pytest

from jaxrl_llm.trainers import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_config(**overrides):
    """The runlocal base config with dotted-key overrides (unlocked copy)."""
    c = config_lib.base_config(runlocal=True)
    c.unlock()
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    c.log.progress = False
    # Trainer tests run on one device: the 8-device meshes are covered by tests/parallel, and
    # 8 virtual devices on a 2-core machine only add collective waits here.
    c.mesh.num_devices = 1
    return c


@pytest.fixture(scope="session")
def sft_checkpoint(tmp_path_factory):
    """(model folder, tokenizer folder) of a partly-skilled SFT model (sampled accuracy 20-80 %)."""
    from jaxrl_llm.trainers import rl

    workdir = str(tmp_path_factory.mktemp("sft"))
    # The SFT settings are pinned here, not taken from `runlocal`, so a smaller laptop recipe
    # never moves the learning tests that start from this checkpoint.
    c = small_config(
        **{
            "train.steps": 1,
            "sft.steps": 2500,
            "sft.batch_size": 32,
            "sft.lr": 1e-3,
            "sft.warmup_steps": 20,
            "sft.seed": 0,
            "sft.flawed_fraction": 0.4,
        }
    )
    trainer = rl.Trainer(c, workdir)
    trainer.initial_params(log=lambda *a: None)
    model_dir = os.path.join(workdir, "sft")
    tok_dir = os.path.join(workdir, "tokenizer")
    assert os.path.exists(os.path.join(model_dir, "config.json"))
    return model_dir, tok_dir


@pytest.fixture(scope="session")
def reward_model_checkpoint(tmp_path_factory):
    """(summary, folder) of the `rm_arith:runlocal` reward model (trained once per session)."""
    import importlib.util

    from jaxrl_llm.trainers import reward_model as rm

    spec = importlib.util.spec_from_file_location(
        "rm_arith", os.path.join(REPO, "configs/rm_arith.py")
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    workdir = tmp_path_factory.mktemp("reward_model")
    lines = []
    summary = rm.run(recipe.get_config("runlocal"), str(workdir), log_fn=lines.append)
    summary["log"] = lines
    return summary, str(workdir / "reward_model")


def recipe_overrides(sft):
    model_dir, tok_dir = sft
    return {"model.init_checkpoint": model_dir, "tokenizer.path": tok_dir, "mesh.num_devices": 1}
