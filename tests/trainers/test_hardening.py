"""The trainer's answers to bad inputs and interrupted lives: a tokenizer that does not fit the
model, rewards that always fail, a corrupted newest checkpoint, a finished workdir run again,
a resumed run's initial evaluation. Each case ends in a clear error or is survived."""

import glob
import os

import pytest

from tests.trainers.conftest import small_config

TINY = {
    "sft.steps": 0,
    "train.prompts_per_step": 4,
    "train.samples_per_prompt": 2,
    "eval.size": 4,
    "eval.n": 1,
    "task.reward_workers": 0,
    "model.hidden_size": 32,
    "model.intermediate_size": 64,
    "model.head_dim": 8,
}


def _config(**overrides):
    return small_config(**{**TINY, **overrides})


def _quiet(*args, **kwargs):
    del args, kwargs


def test_tokenizer_larger_than_the_model_vocab_fails_at_load(tmp_path):
    import jax

    from jaxrl_llm import models
    from jaxrl_llm.trainers import config as config_lib
    from jaxrl_llm.trainers import rl

    tok_dir = str(tmp_path / "tok")
    models.build_builtin_tokenizer(tok_dir)
    n = len(models.load_tokenizer(tok_dir))
    small = models.ModelConfig(
        vocab_size=n - 5, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
        intermediate_size=64,
    )  # fmt: skip
    model_dir = str(tmp_path / "model")
    models.save_hf(model_dir, small, models.init_params(small, jax.random.key(0)))
    c = _config(**{"model.hf_path": model_dir, "tokenizer.path": tok_dir})
    with pytest.raises(config_lib.ConfigError, match=f"{n} tokens .* vocab_size is {n - 5}"):
        rl.Trainer(c, str(tmp_path / "run"))


def test_rewards_that_all_fail_stop_the_run_at_the_last_good_checkpoint(tmp_path):
    from jaxrl_llm.trainers import rl

    c = _config(
        **{
            "task.name": "tests.trainers.faulty_rewards:make",
            "task.max_failed_reward_steps": 2,
            "train.steps": 6,
            "checkpoint.every": 1,
        }
    )
    c.task.kwargs = type(c.task.kwargs)({"always_raise": True})
    with pytest.raises(rl.TrainingStopped) as err:
        rl.train(c, str(tmp_path), log=_quiet)
    msg = str(err.value)
    assert "every reward call failed" in msg and "2 steps in a row" in msg, msg
    assert "last good checkpoint (step 1)" in msg, msg
    assert not os.path.exists(tmp_path / "done.json")


def test_finished_workdir_is_left_unchanged_and_a_resumed_run_keeps_its_initial_eval(tmp_path):
    from jaxrl_llm import workdir as workdir_lib
    from jaxrl_llm.trainers import rl

    wd = str(tmp_path)
    first = rl.train(_config(**{"train.steps": 1, "checkpoint.every": 1}), wd, log=_quiet)
    assert first["initial_eval"] is not None
    done_file = workdir_lib.path(wd, workdir_lib.DONE_JSON)
    before = open(done_file, "rb").read()
    lines = []
    again = rl.train(_config(**{"train.steps": 1, "checkpoint.every": 1}), wd, log=lines.append)
    assert open(done_file, "rb").read() == before
    assert again == first
    assert any("is finished" in line for line in lines), lines
    # asking for more steps resumes; the evaluation before RL is the first life's
    more = rl.train(_config(**{"train.steps": 2, "checkpoint.every": 1}), wd, log=_quiet)
    assert more["steps"] == 2
    assert more["initial_eval"] == first["initial_eval"]


def test_a_corrupted_newest_checkpoint_resumes_from_the_one_before(tmp_path):
    from jaxrl_llm import workdir as workdir_lib
    from jaxrl_llm.trainers import rl

    wd = str(tmp_path)
    rl.train(_config(**{"train.steps": 2, "checkpoint.every": 1}), wd, log=_quiet)
    os.remove(workdir_lib.path(wd, workdir_lib.DONE_JSON))
    step2 = os.path.join(workdir_lib.checkpoint_dir(wd), "2")
    files = [f for f in glob.glob(os.path.join(step2, "**", "*"), recursive=True)]
    data = max((f for f in files if os.path.isfile(f)), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 3)
    lines = []
    summary = rl.train(_config(**{"train.steps": 3, "checkpoint.every": 1}), wd, log=lines.append)
    assert summary["steps"] == 3
    assert any("resumed from step 1" in line for line in lines), lines


def test_a_save_cut_short_leaves_no_sft_model(tmp_path, monkeypatch):
    import jax

    from jaxrl_llm import models
    from jaxrl_llm import workdir as workdir_lib
    from jaxrl_llm.models import hf_io

    cfg = models.ModelConfig(
        vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
        intermediate_size=32,
    )  # fmt: skip
    params = models.init_params(cfg, jax.random.key(0))
    real = hf_io._write_safetensors

    def killed(path, tensors):
        real(path, dict(list(tensors.items())[:1]))  # part of the weights, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_io, "_write_safetensors", killed)
    with pytest.raises(KeyboardInterrupt):
        models.save_hf(workdir_lib.sft_dir(str(tmp_path)), cfg, params)
    assert not workdir_lib.has_sft_model(str(tmp_path))
    monkeypatch.setattr(hf_io, "_write_safetensors", real)
    models.save_hf(workdir_lib.sft_dir(str(tmp_path)), cfg, params)
    assert workdir_lib.has_sft_model(str(tmp_path))


def test_stop_reason_names_the_checkpoint_it_keeps():
    from jaxrl_llm.trainers import stages

    c = _config(**{"train.max_bad_steps": 2})
    counters = {**stages.fresh_counters(), "bad_steps": 2}
    assert "(step 3) is kept" in stages.stop_reason(c, counters, 4, 3)
    assert "no checkpoint had been written yet" in stages.stop_reason(c, counters, 2, None)
    assert stages.stop_reason(c, stages.fresh_counters(), 2, None) is None


def test_nan_params_stop_the_run_and_say_no_checkpoint_was_written(tmp_path):
    import jax
    import jax.numpy as jnp

    from jaxrl_llm import models
    from jaxrl_llm.trainers import rl

    c = _config(**{"train.max_bad_steps": 2, "train.steps": 5, "checkpoint.every": 10})
    tok = models.build_tokenizer("builtin", str(tmp_path))
    cfg = models.build_model_config(c.model, tok)
    params = jax.tree.map(
        lambda x: jnp.full_like(x, jnp.nan), models.init_params(cfg, jax.random.key(0))
    )
    models.save_hf(str(tmp_path / "nan_model"), cfg, params)
    c.model.init_checkpoint = str(tmp_path / "nan_model")
    with pytest.raises(rl.TrainingStopped, match="no checkpoint had been written yet"):
        rl.train(c, str(tmp_path / "run"), log=_quiet)
    assert not os.path.exists(tmp_path / "run" / "done.json")
