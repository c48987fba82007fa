"""SFT warm start reporting: `sft/loss` to a MetricWriter or a callable, a tqdm bar; none of it
changes the trained params (bit-identical for the same seed)."""

import json

import jax
import numpy as np
import pytest

from tests.trainers.conftest import small_config

STEPS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from jaxrl_llm import models
    from jaxrl_llm.trainers import rl, sft

    c = small_config(
        **{
            "model.hidden_size": 32,
            "model.num_layers": 1,
            "model.num_heads": 2,
            "model.num_kv_heads": 1,
            "model.head_dim": 16,
            "model.intermediate_size": 64,
        }
    )
    tokenizer = rl.build_tokenizer(c, str(tmp_path_factory.mktemp("tok")))
    model_config = rl.build_model_config(c, tokenizer)
    from jaxrl_llm import tasks

    task = tasks.make_task(c.task.name, **c.task.kwargs.to_dict())
    pairs = sft.sft_pairs(task, 64, 0)

    def train(**kwargs):
        params = models.init_params(model_config, jax.random.key(0))
        return sft.sft_train(
            model_config,
            params,
            tokenizer,
            pairs,
            steps=STEPS,
            batch_size=8,
            lr=1e-3,
            warmup_steps=3,
            seed=0,
            prompt_buckets=c.rollout.prompt_buckets,
            completion_len=c.rollout.max_new_tokens,
            **kwargs,
        )

    return train, train()


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_metric_writer_gets_sft_loss_and_params_are_unchanged(setup, tmp_path, capsys):
    from jaxrl_llm import metrics

    train, (params_plain, loss_plain) = setup
    writer = metrics.MetricWriter(str(tmp_path))
    params, loss = train(writer=writer, write_every=5, progress=True)
    writer.close()
    _assert_same(params, params_plain)
    assert loss == loss_plain
    steps, values = metrics.read_scalars_jsonl(str(tmp_path))["sft/loss"]
    np.testing.assert_array_equal(steps, [5, 10, STEPS])
    assert values[-1] == pytest.approx(loss_plain) and np.all(np.isfinite(values))
    lrs = metrics.read_scalars_jsonl(str(tmp_path))["sft/lr"][1]
    assert 0 < lrs[0] <= 1e-3 and lrs[-1] < lrs[0]  # cosine decay after the warm-up
    err = capsys.readouterr().err
    assert "SFT warm start" in err and f"{STEPS}/{STEPS}" in err  # the tqdm bar


def test_callable_log_fn_and_no_bar_by_default(setup, capsys):
    train, (params_plain, _) = setup
    calls = []
    params, _ = train(writer=lambda step, d: calls.append((step, sorted(d))), write_every=4)
    _assert_same(params, params_plain)
    assert [s for s, _ in calls] == [4, 8, 12] and calls[0][1] == ["sft/loss", "sft/lr"]
    assert "SFT warm start" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="write_every"):
        train(writer=print, write_every=0)


def test_sft_loss_lines_are_json(setup, tmp_path):
    from jaxrl_llm import metrics

    train, _ = setup
    writer = metrics.MetricWriter(str(tmp_path))
    train(writer=writer, write_every=STEPS)
    writer.close()
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [x["step"] for x in lines if "step" in x] == [STEPS]
