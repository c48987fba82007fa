"""QLoRA in the RL trainer (`model.lora_quantize`): the update on a quantised base is plain
LoRA's on the dequantised base (the chain rule of the full update through the merge), a short
GRPO run trains the adapters while the quantised base stays bit-identical, and the config
refuses a quantised base without LoRA."""

import os

import jax
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.models import lora, quant
from jaxrl_llm.trainers import config as config_lib
from tests.trainers.conftest import recipe_overrides, small_config
from tests.trainers.test_lora_trainer import _sgd_step, assert_chain_rule
from tests.trainers.test_rl_step import _settings
from tests.trainers.test_rl_step import setup as setup  # noqa: F401 (the module fixture)


def test_qlora_update_is_lora_on_the_dequantised_base(setup):  # noqa: F811
    mc, params, batch = setup
    s = _settings("token-mean", kl=0.05, entropy=0.01)
    targets = ("q_proj", "o_proj", "down_proj")
    qbase = quant.quantize_params(params, "nf4", targets)
    deq = quant.dequantize_params(qbase)
    adapters = lora.init_lora(mc, qbase, jax.random.key(1), rank=2, alpha=4.0, targets=targets)
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            0.05 * jax.random.normal(jax.random.key(x.size), x.shape)
            if jax.tree_util.keystr(p).endswith("['b']")
            else x
        ),
        adapters,
    )
    codes = jax.tree.map(np.asarray, qbase)
    new_q, g_q, m_q = _sgd_step(mc, adapters, batch, s, 2, base=qbase)
    _, g_d, m_d = _sgd_step(mc, adapters, batch, s, 2, base=deq)
    assert isinstance(new_q.params, lora.LoraAdapters)  # the state holds adapters only
    for k in ("loss/total", "entropy", "kl"):
        np.testing.assert_allclose(m_q[k], m_d[k], rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(g_q), jax.tree.leaves(g_d)):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, rtol=1e-3, atol=1e-3 * np.abs(y).max())
    # the chain rule of the full update on the merged (dequantised + adapter) model
    _, g_full, _ = _sgd_step(mc, lora.merge(mc, qbase, adapters), batch, s, 2)
    assert_chain_rule(adapters, g_full, g_q, targets, mc.num_layers, min_grad=1e-5)
    for x, y in zip(jax.tree.leaves(qbase), jax.tree.leaves(codes)):
        np.testing.assert_array_equal(np.asarray(x), y)  # the base is an input, never updated


def test_qlora_grpo_trains_adapters_on_a_bit_identical_quantised_base(tmp_path, sft_checkpoint):
    """3 GRPO steps with a KL term (so the reference pass runs: the dequantised base, adapter
    off), nf4 on all seven projections: the adapters move, the quantised base is the one the
    SFT weights quantise to, bit for bit, before and after; the state and checkpoints hold the
    adapters only; the evaluation loader rebuilds the same quantised base and merged policy."""
    from jaxrl_llm import evaluation
    from jaxrl_llm import workdir as workdir_lib
    from jaxrl_llm.trainers import rl

    c = small_config(
        **recipe_overrides(sft_checkpoint),
        **{
            "train.steps": 3,
            "train.prompts_per_step": 8,
            "train.samples_per_prompt": 4,
            "checkpoint.every": 0,
            "eval.size": 8,
            "task.reward_workers": 1,
            "model.lora_rank": 4,
            "model.lora_targets": lora.TARGETS,
            "model.lora_quantize": "nf4",
            "optim.lr": 1e-3,
            "algo.kl.coef": 0.01,
        },
    )
    workdir = str(tmp_path / "run")
    trainer = rl.Trainer(c, workdir)
    _, sft_params = models.load_hf(sft_checkpoint[0])
    want_base = quant.quantize_params(sft_params, "nf4", lora.TARGETS)
    out = trainer.run(log=lambda *a: None)

    base = trainer.lora_base
    for sub in base["layers"].values():
        for name, leaf in sub.items():
            if name.endswith("_proj"):
                assert quant.is_quantized(leaf["kernel"]) and leaf["kernel"].scheme == "nf4"
    assert jax.tree.structure(base) == jax.tree.structure(want_base)
    for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(want_base)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert quant.nbytes(base) < 0.45 * quant.nbytes(sft_params)

    train = [h for h in out["history"] if "train/reward" in h]
    assert len(train) == 3 and all(np.isfinite(h["train/loss/total"]) for h in train)
    assert train[-1]["train/grad_norm"] > 0
    state = trainer.state
    assert isinstance(state.params, lora.LoraAdapters)
    n_adapter = lora.num_params(state.params)
    assert sum(x.size for x in jax.tree.leaves(state.opt_state)) <= 2 * n_adapter + 8
    b = [np.asarray(ab["b"]) for g in state.params.layers.values() for ab in g.values()]
    assert all(np.abs(x).max() > 0 for x in b)  # every target's B moved off zero
    ref_b = [np.asarray(ab["b"]) for g in state.ref_params.layers.values() for ab in g.values()]
    assert not any(x.any() for x in ref_b)  # the reference: the dequantised base exactly

    # checkpoints hold adapters; the loader quantises the base again and merges
    ckpt = workdir_lib.checkpoint_dir(workdir)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt) for f in fs)
    # four adapter copies (params, Adam's two moments, the reference) and metadata, no base
    assert size <= 4 * 4 * n_adapter + 65536 < 4 * 4 * n_adapter + quant.nbytes(base)
    mc, params, _, mesh, rules, step = evaluation.load_policy(c, workdir)
    assert step == 3
    rebuilt = evaluation._lora_base(c, workdir, mc, mesh, rules)  # pylint: disable=protected-access
    assert jax.tree.structure(rebuilt) == jax.tree.structure(base)
    for x, y in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(base)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the loader merges on its own mesh (every device): equal up to float32 rounding
    want = lora.merge(mc, base, state.params)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"model.lora_quantize": "int8"},
            r"config.model.lora_quantize = 'int8' .* needs model.lora_rank > 0 .* "
            r"allowed: '', 'int8', 'int4', 'nf4'",
        ),
        (
            {"model.lora_quantize": "fp8", "model.lora_rank": 4},
            r"config.model.lora_quantize = 'fp8' is not one of \['', 'int4', 'int8', 'nf4'\]",
        ),
    ],
)
def test_qlora_config_errors_name_the_field(overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match) as e:
        config_lib.validate(small_config(**overrides))
    assert "\n" not in str(e.value)
