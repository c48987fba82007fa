"""LoRA in the RL trainer: the update trains adapters only and is the chain rule of the full
update through the merge; a LoRA GRPO run learns on the arithmetic task (the recipes'
learning test) with adapter-only state, a frozen base and a reference with the adapter off."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_llm import models
from jaxrl_llm.models import lora
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl_step
from jaxrl_llm.trainers.state import TrainState, completion_logprobs
from tests.trainers.conftest import recipe_overrides
from tests.trainers.test_rl_step import _settings
from tests.trainers.test_rl_step import setup as setup  # noqa: F401 (the module fixture)


def _sgd_step(mc, params, batch, s, num_micro, base=None):
    opt = optax.sgd(1.0)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        kl_coef=jnp.asarray(0.05, jnp.float32),
    )
    fn = jax.jit(
        functools.partial(
            rl_step.train_step,
            model_config=mc,
            s=s,
            num_micro=num_micro,
            optimizer=opt,
            critic_optimizer=None,
            policy_warmup=0,
        )
    )
    new_state, metrics = fn(state, batch, base)
    grads = jax.tree.map(lambda a, b: a - b, params, new_state.params)  # sgd(1): Δ = −grad
    return new_state, grads, metrics


def assert_chain_rule(adapters, g_full, g_ad, targets, num_layers, *, min_grad):
    """The adapters' gradients `g_ad` are the chain rule of the merged kernels' `g_full`
    through W' = W + s A B: dA = s dW' Bᵀ, dB = s Aᵀ dW' (per layer, kernels flattened to
    [in, out]); `min_grad` guards against a vacuous check (B's gradient must not vanish)."""
    sc = adapters.scale
    for target in targets:
        group = "mlp" if target == "down_proj" else "attn"
        a = np.asarray(adapters.layers[group][target]["a"], np.float64)
        b = np.asarray(adapters.layers[group][target]["b"], np.float64)
        gw = np.asarray(g_full["layers"][group][target]["kernel"], np.float64)
        r = a.shape[-1]
        for layer in range(num_layers):
            a2, b2 = a[layer].reshape(-1, r), b[layer].reshape(r, -1)
            gw2 = gw[layer].reshape(a2.shape[0], b2.shape[1])
            want_a = (sc * gw2 @ b2.T).reshape(a[layer].shape)
            want_b = (sc * a2.T @ gw2).reshape(b[layer].shape)
            got_a = np.asarray(g_ad.layers[group][target]["a"][layer])
            got_b = np.asarray(g_ad.layers[group][target]["b"][layer])
            assert np.abs(want_b).max() > min_grad
            np.testing.assert_allclose(got_a, want_a, rtol=1e-3, atol=1e-3 * np.abs(want_a).max())
            np.testing.assert_allclose(got_b, want_b, rtol=1e-3, atol=1e-3 * np.abs(want_b).max())


def test_lora_update_is_the_chain_rule_of_the_full_update(setup):  # noqa: F811
    mc, params, batch = setup
    s = _settings("token-mean", kl=0.05, entropy=0.01)
    targets = ("q_proj", "o_proj", "down_proj")
    adapters = lora.init_lora(mc, params, jax.random.key(1), rank=2, alpha=4.0, targets=targets)
    # a trained-looking adapter (B != 0), so both factors get gradients
    b_key = jax.random.key(2)
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            0.05 * jax.random.normal(jax.random.fold_in(b_key, x.size), x.shape)
            if jax.tree_util.keystr(p).endswith("['b']")
            else x
        ),
        adapters,
    )
    merged = lora.merge(mc, params, adapters)
    _, g_full, m_full = _sgd_step(mc, merged, batch, s, 2)
    new_state, g_ad, m_lora = _sgd_step(mc, adapters, batch, s, 2, base=params)
    assert isinstance(new_state.params, lora.LoraAdapters)
    # the same forward: the same loss and diagnostics
    for k in ("loss/total", "entropy", "kl"):
        np.testing.assert_allclose(m_lora[k], m_full[k], rtol=1e-5, atol=1e-6)
    assert_chain_rule(adapters, g_full, g_ad, targets, mc.num_layers, min_grad=1e-5)


@pytest.mark.parametrize("recipe", ["grpo_arith"])
def test_lora_grpo_learns(recipe, tmp_path, sft_checkpoint):
    from jaxrl_llm.trainers import rl
    from tests.trainers.test_recipes_learn import load_recipe

    c = load_recipe(recipe)
    c.unlock()
    for key, value in recipe_overrides(sft_checkpoint).items():
        group, field = key.split(".")
        c[group][field] = value
    c.log.progress = False
    c.checkpoint.every = 0
    c.model.lora_rank = 8
    c.model.lora_alpha = 16.0
    c.model.lora_targets = lora.TARGETS
    c.optim.lr = 1e-3
    c.algo.kl.log = True  # the reference pass runs (base with the adapter off)
    trainer = rl.Trainer(c, str(tmp_path))
    summary = trainer.run(log=lambda *a: None)
    before, after = summary["initial_eval"], summary["final_eval"]
    assert 0.2 <= before["eval/accuracy"] <= 0.8, before
    gain = after["eval/accuracy"] - before["eval/accuracy"]
    print(
        f"LoRA {recipe}: held-out accuracy {before['eval/accuracy']:.3f} -> {after['eval/accuracy']:.3f}"
    )
    se = float(np.hypot(before["eval/stderr"], after["eval/stderr"]))
    assert gain >= 0.05 and gain > 2 * se, (before["eval/accuracy"], after["eval/accuracy"], se)
    compiles = [h["compiles"] for h in summary["history"] if "compiles" in h]
    assert compiles[-1] == compiles[1], f"recompiled after step 2: {compiles}"

    # state: adapters only; the base is the SFT checkpoint, untouched
    state = trainer.state
    assert isinstance(state.params, lora.LoraAdapters)
    assert isinstance(state.ref_params, lora.LoraAdapters)
    n_adapter = lora.num_params(state.params)
    assert n_adapter == lora.lora_param_count(trainer.model_config, rank=8, targets=lora.TARGETS)
    opt_sizes = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert opt_sizes <= 2 * n_adapter + 8  # Adam's two moments over the adapters (+ counters)
    _, sft_params = models.load_hf(sft_checkpoint[0])
    for x, y in zip(jax.tree.leaves(trainer.lora_base), jax.tree.leaves(sft_params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the final adapters are exported in PEFT's layout
    from jaxrl_llm import workdir as workdir_lib

    exported = models.load_peft(workdir_lib.lora_adapter_dir(str(tmp_path)), trainer.model_config)
    assert exported.alpha == 16.0 and exported.targets == lora.TARGETS
    for x, y in zip(jax.tree.leaves(exported), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the reference is the base exactly (B = 0; no reset configured)
    for x in jax.tree.leaves(
        {k: v["b"] for g in state.ref_params.layers.values() for k, v in g.items()}
    ):
        assert not np.asarray(x).any()


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_lora_checkpoints_hold_adapters_and_resume_exactly(tmp_path, sft_checkpoint):
    """Checkpoints hold the adapters only (far smaller than the base); a run stopped at step 2
    and resumed (the base read again from its folder) continues with the same metrics as an
    uninterrupted one; the evaluation CLI's loader gives the merged policy."""
    from jaxrl_llm import workdir as workdir_lib
    from jaxrl_llm.trainers import rl
    from tests.trainers.conftest import small_config

    def config(steps):
        c = small_config(
            **recipe_overrides(sft_checkpoint),
            **{
                "train.steps": steps,
                "train.prompts_per_step": 8,
                "train.samples_per_prompt": 4,
                "checkpoint.every": 2,
                "checkpoint.keep": 10,
                "eval.size": 16,
                "task.reward_workers": 1,
                "model.lora_rank": 4,
                "model.lora_targets": ("q_proj", "v_proj", "up_proj"),
                "optim.lr": 1e-3,
                "optim.warmup_steps": 0,  # the schedule must not depend on train.steps
                "algo.kl.coef": 0.01,  # the reference pass and a KL term in the loss
            },
        )
        return c

    keys = ("train/reward", "train/loss/total", "train/grad_norm", "train/kl")
    hist = lambda s: {h["step"]: h for h in s["history"] if "train/reward" in h}  # noqa: E731
    trainer = rl.Trainer(config(4), str(tmp_path / "a"))
    straight = hist(trainer.run(log=lambda *a: None))
    rl.train(config(2), str(tmp_path / "b"), log=lambda *a: None)
    resumed = hist(rl.train(config(4), str(tmp_path / "b"), log=lambda *a: None))
    for step in (3, 4):
        for k in keys:
            assert resumed[step][k] == straight[step][k], (step, k)
    assert straight[4]["train/grad_norm"] > 0

    _, base = models.load_hf(sft_checkpoint[0])
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(base))
    ckpt = os.path.join(workdir_lib.checkpoint_dir(str(tmp_path / "a")))
    steps = [d for d in os.listdir(ckpt) if d.isdigit()]
    assert steps, os.listdir(ckpt)
    for d in steps:
        assert _dir_bytes(os.path.join(ckpt, d)) < base_bytes / 4, d

    # the evaluation CLI's loader merges the checkpoint's adapters into the run's base
    from jaxrl_llm import evaluation

    _, params, *_, step = evaluation.load_policy(config(4), str(tmp_path / "a"))
    assert step == 4
    want = lora.merge(trainer.model_config, trainer.lora_base, trainer.state.params)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    q = ("layers", "attn", "q_proj", "kernel")
    get = lambda t: t[q[0]][q[1]][q[2]][q[3]]  # noqa: E731
    assert not np.array_equal(np.asarray(get(params)), np.asarray(get(base)))


def test_lora_update_on_an_8_device_mesh_equals_one_device(setup):  # noqa: F811
    """`RLPrograms(lora_base=...)` on a (data 2, fsdp 2, tensor 2) mesh, base and adapters laid
    out by their logical axes and the batch split by rows: the update and the log-probs equal
    the one-device ones (there 2 micro-batches, here 1: accumulation is exact)."""
    from jaxrl_llm import parallel

    mc, params, batch = setup
    c = config_lib.base_config()
    c.unlock()
    c.rollout.max_new_tokens = batch.tokens.shape[1]
    c.algo.kl.coef = 0.05
    s = rl_step.LossSettings.from_config(c)
    adapters = lora.init_lora(
        mc, params, jax.random.key(1), rank=2, alpha=4.0, targets=("q_proj", "o_proj", "up_proj")
    )
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            0.05 * jax.random.normal(jax.random.key(x.size), x.shape)
            if jax.tree_util.keystr(p).endswith("['b']")
            else x
        ),
        adapters,
    )
    want_state, _, want_m = _sgd_step(mc, adapters, batch, s, 2, base=params)

    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = parallel.DEFAULT_RULES
    rows, repl = parallel.row_sharding(mesh, rules), parallel.replicated(mesh)
    shard = lambda tree, specs: jax.device_put(  # noqa: E731
        tree, parallel.logical_to_sharding(specs, mesh, rules, shapes=tree)
    )
    base = shard(params, models.logical_axes(mc))
    ad = shard(adapters, models.lora_logical_axes(mc, adapters))
    assert ad.layers["attn"]["q_proj"]["a"].sharding.spec[1] == "fsdp"
    opt = optax.sgd(1.0)
    ad_sh = jax.tree.map(lambda x: x.sharding, ad)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), repl),
        params=ad,
        opt_state=jax.jit(
            opt.init, out_shardings=parallel.opt_state_shardings(opt, ad, ad_sh, mesh)
        )(ad),
        rng=jax.device_put(jax.random.key_data(jax.random.key(0)), repl),
        kl_coef=jax.device_put(jnp.asarray(0.05, jnp.float32), repl),
    )
    batch_sh = jax.tree.map(lambda _: rows, batch)
    programs = rl_step.RLPrograms(
        c,
        mc,
        opt,
        None,
        state_shardings=jax.tree.map(lambda x: x.sharding, state),
        batch_sharding=batch_sh,
        replicated=repl,
        lora_base=base,
    )
    sharded = jax.device_put(batch, batch_sh)
    logp = programs.logprobs(ad, sharded, 4)
    want_logp = completion_logprobs(
        mc,
        lora.merge(mc, params, adapters),
        batch.prompt_tokens,
        batch.prompt_mask,
        batch.tokens,
    )[0]
    np.testing.assert_allclose(np.asarray(logp), np.asarray(want_logp), rtol=1e-5, atol=1e-5)
    new_state, m = programs.train_step(state, sharded)
    assert new_state.params.layers["attn"]["q_proj"]["a"].sharding.is_equivalent_to(
        ad_sh.layers["attn"]["q_proj"]["a"], 3
    )
    np.testing.assert_allclose(m["loss/total"], want_m["loss/total"], rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want_state.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
