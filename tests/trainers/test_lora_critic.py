"""A LoRA critic (`critic.lora`): the value model is a second adapter plus a value head on the
policy's frozen base. Its value-loss gradient is the chain rule of the full critic's through
the merge; at initialisation it is the full critic of the same seed; a PPO run with it trains
the critic's adapters and head only and leaves the base untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.models import lora
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl_step
from jaxrl_llm.trainers.state import completion_values, critic_model
from tests.trainers.conftest import recipe_overrides, small_config
from tests.trainers.test_lora_trainer import assert_chain_rule
from tests.trainers.test_rl_step import _settings
from tests.trainers.test_rl_step import setup as setup  # noqa: F401 (the module fixture)

TARGETS = ("q_proj", "v_proj", "down_proj")


def _critic(mc, params, key, trained: bool):
    adapters = lora.init_lora(mc, params, jax.random.fold_in(key, 1), rank=2, alpha=4.0,
                              targets=TARGETS)  # fmt: skip
    if trained:  # B != 0, so both factors get gradients
        adapters = jax.tree_util.tree_map_with_path(
            lambda p, x: (
                0.05 * jax.random.normal(jax.random.fold_in(key, x.size), x.shape)
                if jax.tree_util.keystr(p).endswith("['b']")
                else x
            ),
            adapters,
        )
    return {"adapters": adapters, "value_head": models.init_value_head(mc, key)}


def test_lora_critic_loss_gradient_is_the_chain_rule_of_the_full_critic(setup):  # noqa: F811
    mc, params, batch = setup
    rng = np.random.default_rng(1)
    batch = batch.replace(
        old_values=jnp.asarray(rng.normal(size=batch.mask.shape), jnp.float32),
        returns=jnp.asarray(rng.normal(size=batch.mask.shape), jnp.float32),
    )
    s = _settings("token-mean")
    num_tokens, num_seqs = rl_step.batch_counts(batch.mask)
    kw = dict(model_config=mc, s=s, num_tokens=num_tokens, num_seqs=num_seqs)
    critic = _critic(mc, params, jax.random.key(3), trained=True)
    full = critic_model(mc, critic, params)
    loss = lambda p, base: rl_step.critic_micro_loss(p, batch, base=base, **kw)[0]  # noqa: E731
    g_full = jax.jit(jax.grad(loss))(full, None)
    g_lora = jax.jit(jax.grad(loss))(critic, params)
    np.testing.assert_allclose(
        g_lora["value_head"]["kernel"], g_full["value_head"]["kernel"], rtol=1e-5, atol=1e-7
    )
    assert_chain_rule(
        critic["adapters"], g_full, g_lora["adapters"], TARGETS, mc.num_layers, min_grad=1e-6
    )
    # only the critic's own leaves: the frozen base gets no gradient argument at all
    assert set(g_lora) == {"adapters", "value_head"}


def test_fresh_lora_critic_is_the_full_critic_of_the_same_seed(setup):  # noqa: F811
    mc, params, batch = setup
    key = jax.random.key(5)
    full = models.init_value_params(mc, key, params)
    fresh = critic_model(mc, _critic(mc, params, key, trained=False), params)
    for x, y in zip(jax.tree.leaves(fresh), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    args = (batch.prompt_tokens, batch.prompt_mask, batch.tokens)
    np.testing.assert_array_equal(
        completion_values(mc, _critic(mc, params, key, False), *args, base=params),
        completion_values(mc, full, *args),
    )
    with pytest.raises(ValueError, match="needs the frozen base"):
        critic_model(mc, _critic(mc, params, key, False))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"critic.lora": True, "critic.enabled": True}, "model.lora_rank > 0"),
        ({"critic.lora": True, "model.lora_rank": 4}, "critic.enabled = True"),
    ],
)
def test_lora_critic_config_errors_name_the_fields(overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match) as e:
        config_lib.validate(small_config(**overrides))
    assert "\n" not in str(e.value)


def test_ppo_with_a_lora_critic_trains_adapters_and_head_only(tmp_path, sft_checkpoint):
    from jaxrl_llm.trainers import rl

    c = small_config(
        **recipe_overrides(sft_checkpoint),
        **{
            "train.steps": 3,
            "train.prompts_per_step": 4,
            "train.samples_per_prompt": 2,
            "checkpoint.every": 0,
            "eval.size": 8,
            "eval.every": 0,
            "task.reward_workers": 1,
            "algo.advantage": "gae",
            "critic.enabled": True,
            "critic.lora": True,
            "model.lora_rank": 4,
            "model.lora_targets": ("q_proj", "v_proj"),
        },
    )
    trainer = rl.Trainer(c, str(tmp_path / "run"))
    params = trainer.initial_params(log=lambda *a: None)
    first = trainer.init_state(params)
    critic0 = jax.tree.map(np.asarray, first.critic_params)
    base0 = jax.tree.map(np.asarray, trainer.lora_base)
    # the critic's state: adapters + a head, no second model copy
    n_critic = sum(x.size for x in jax.tree.leaves(first.critic_params))
    n_base = sum(x.size for x in jax.tree.leaves(base0))
    assert n_critic == lora.num_params(first.critic_params["adapters"]) + mc_hidden(trainer) + 1
    assert n_critic < n_base / 10
    out = trainer.run(log=lambda *a: None)
    train = [h for h in out["history"] if "train/reward" in h]
    assert len(train) == 3 and all(np.isfinite(h["train/loss/total"]) for h in train)
    critic = trainer.state.critic_params
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(critic))
    for x, y in zip(jax.tree.leaves(trainer.lora_base), jax.tree.leaves(base0)):
        np.testing.assert_array_equal(np.asarray(x), y)  # the frozen base is untouched
    b = np.concatenate([np.ravel(x["b"]) for x in jax.tree.leaves(
        critic["adapters"].layers, is_leaf=lambda t: isinstance(t, dict) and "b" in t)])  # fmt: skip
    assert np.abs(b).max() > 0  # the critic's adapters moved off B = 0
    assert not np.array_equal(np.asarray(critic["value_head"]["kernel"]),
                              critic0["value_head"]["kernel"])  # fmt: skip


def mc_hidden(trainer):
    return trainer.model_config.hidden_size
