"""Partial rollouts in the trainer (`rollout.partial_budget`): each token keeps the log-prob of
the parameters that drew it across pauses, only complete groups are trained on, resume
reproduces the uninterrupted run, a lost pool file is counted, bad combinations are refused."""

import json
import os
import shutil
import types

import jax
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.rollout import SamplingParams, pad_prompts
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl, seeds
from jaxrl_llm.trainers.partial_rollouts import PartialPool
from tests.rollout.test_sampler import CONFIG, teacher_forced_logp
from tests.trainers.conftest import small_config
from tests.trainers.test_async import QUIET, _assert_same_run, _config, _history, _run_killed_after

T, BUDGET, B, G = 12, 3, 4, 2
SAMPLING = SamplingParams(T, temperature=1.0, n=G, stop_token_ids=(3, 7, 11, 20))


def _params(seed):
    init = jax.jit(
        lambda key: jax.tree.map(
            lambda x: x * 4.0 if x.ndim >= 2 else x, models.init_params(CONFIG, key)
        )
    )
    return init(jax.random.key(seed))


class _Source:
    """Prompts of 1 to 5 tokens, in order."""

    def __init__(self):
        self.i = 0

    def next(self, n):
        out = [list(range(5 + (self.i + k) % 7, 6 + (self.i + k) % 7 + k % 5)) for k in range(n)]
        self.i += n
        return out


def _trainer():
    return types.SimpleNamespace(
        config=types.SimpleNamespace(train=types.SimpleNamespace(prompts_per_step=B)),
        sampling=SAMPLING,
        model_config=CONFIG,
        prompt_batch=lambda examples: pad_prompts(examples, bucket_lengths=(8, 16)),
        sampler_params=lambda p: p,
    )


def test_each_segment_keeps_the_logp_of_the_params_that_drew_it():
    """Steps alternate between two parameter sets; every batch token's sampler log-prob equals
    a teacher-forced pass under the parameters of its version, and batches hold only
    finished groups; some rows are resumed across versions."""
    params = [_params(0), _params(1)]
    pool, source, trainer = PartialPool(G, BUDGET), _Source(), _trainer()
    resumed = 0
    for step in range(6):
        examples, rows, metrics = pool.collect(
            trainer, params[step % 2], source, step, jax.random.key(step)
        )
        ro = rows.to_rollout()
        assert len(examples) == B and ro.tokens.shape == (B * G, T)
        np.testing.assert_array_equal(ro.group_id, np.repeat(np.arange(B), G))
        lengths = ro.mask.sum(axis=1)
        assert ((lengths == T) | ~ro.truncated).all()  # finished: a stop id or T tokens
        assert ((rows.versions >= 0) == (ro.mask > 0)).all()
        assert (rows.versions <= step).all()
        for v in (0, 1):  # the tokens each parameter set drew
            _, want = teacher_forced_logp(params[v], ro, SAMPLING.temperature)
            drawn = (rows.versions >= 0) & (rows.versions % 2 == v)
            np.testing.assert_allclose(
                ro.sampler_logp[drawn], np.asarray(want)[drawn], atol=1e-4, err_msg=str(step)
            )
        mixed = (rows.versions.max(1) > np.where(ro.mask > 0, rows.versions, 99).min(1)).mean()
        assert metrics["rollout/partial_resumed_frac"] == mixed
        resumed += mixed > 0
        assert metrics["rollout/partial_rounds"] >= 1
    assert resumed >= 1  # some batch held rows drawn by both parameter sets


@pytest.fixture(scope="module")
def partial_reference(sft_checkpoint, tmp_path_factory):
    """(config, trainer, summary, workdir, the collected rollouts) of an uninterrupted 4-step
    `partial_budget = 2` run that logs and checkpoints every step (shared by the tests below)."""
    c = _config(
        sft_checkpoint,
        **{"rollout.partial_budget": 2, "checkpoint.every": 1, "train.steps": 4, "log.every": 1},
    )
    workdir = str(tmp_path_factory.mktemp("partial_ref"))
    trainer = rl.Trainer(c, workdir)
    seen = []
    collect = trainer.collect

    def spy(*args):
        out = collect(*args)
        seen.append(out[1])
        return out

    trainer.collect = spy
    summary = trainer.run(**QUIET)
    return c, trainer, summary, workdir, seen


def test_a_partial_run_trains_on_whole_groups_and_logs_staleness(partial_reference):
    c, _, summary, workdir, seen = partial_reference
    assert sorted(_history(summary)) == [1, 2, 3, 4]
    t = c.rollout.max_new_tokens
    for ro in seen:
        lengths = np.asarray(ro.mask).sum(axis=1)
        assert ((lengths == t) | ~np.asarray(ro.truncated)).all()
    with open(workdir_lib.path(workdir, workdir_lib.METRICS_JSONL)) as f:
        rows = [json.loads(line)["scalars"] for line in f if '"rollout/partial_rounds"' in line]
    assert len(rows) == 4
    assert max(r["rollout/partial_staleness_max"] for r in rows) >= 1
    assert max(r["rollout/partial_resumed_frac"] for r in rows) > 0
    assert rows[0]["rollout/partial_rounds"] >= 3  # 6 tokens at 2 per round


def test_partial_resume_reproduces_the_uninterrupted_run(tmp_path, partial_reference, monkeypatch):
    c, ref, reference, _, _ = partial_reference

    killed = str(tmp_path / "killed")
    _run_killed_after(c, killed, 2, monkeypatch)
    assert os.path.exists(workdir_lib.partial_rollouts_file(killed, 2))
    lost = str(tmp_path / "lost")  # the same killed run (deterministic), for the lost-file case
    shutil.copytree(killed, lost)
    resumed = rl.Trainer(c, killed)
    summary = resumed.run(**QUIET)
    _assert_same_run(reference, summary, ref.state, resumed.state)
    assert "partial_pool_lost" not in summary["counters"]

    with open(workdir_lib.partial_rollouts_file(lost, 2), "wb") as f:
        f.write(b"not a pickle")
    summary = rl.Trainer(c, lost).run(**QUIET)
    assert summary["counters"]["partial_pool_lost"] == 1
    assert sorted(_history(summary)) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"rollout.async_steps": 1}, "rollout.async_steps = 1"),
        ({"rollout.continuous_slots": 4}, "rollout.continuous_slots = 4"),
        ({"data.dynamic_sampling": True}, "data.dynamic_sampling = True"),
        ({"data.replay_fraction": 0.25}, "data.replay_fraction = 0.25"),
        ({"rollout.partial_budget": -1}, "config.rollout.partial_budget"),
    ],
)
def test_bad_partial_configs_fail_before_building(overrides, named):
    c = small_config(**{"rollout.partial_budget": 2, **overrides})
    with pytest.raises(config_lib.ConfigError, match=named.replace(".", r"\.")):
        config_lib.validate(c)


def test_vmapped_seeds_refuse_partial_rollouts(tmp_path):
    c = small_config(**{"rollout.partial_budget": 2})
    with pytest.raises(config_lib.ConfigError, match="cannot run as vmapped seeds"):
        seeds.SeedsTrainer(c, [str(tmp_path / "a"), str(tmp_path / "b")], [0, 1])
