"""The RL step's stages: every registered estimator is runnable by the trainer's config check,
and ReMax's greedy baseline reaches the estimator."""

import numpy as np
import pytest

from jaxrl_llm.losses import registry
from tests.trainers.conftest import recipe_overrides, small_config


@pytest.mark.parametrize("name", list(registry.ADVANTAGES))
def test_every_registered_estimator_passes_the_config_check(name):
    entry = registry.ADVANTAGES[name]
    required = {f"algo.{field}": allowed[0] for field, allowed in entry.requires.items()}
    c = small_config(**{"algo.advantage": name, "critic.enabled": entry.needs_critic, **required})
    registry.check_config(c)
    for field, allowed in entry.requires.items():
        wrong = small_config(**{"algo.advantage": name, **required})
        wrong.algo[field] = next(v for v in registry._KINDS[field] if v not in allowed)
        with pytest.raises(ValueError, match=f"config.algo.{field}"):
            registry.check_config(wrong)
    if entry.min_group > 1:
        c.train.samples_per_prompt = 1
        with pytest.raises(ValueError, match="config.train.samples_per_prompt = 1"):
            registry.check_config(c)
    if entry.needs_critic:
        c = small_config(**{"algo.advantage": name, "critic.enabled": False})
        with pytest.raises(ValueError, match="critic.enabled"):
            registry.check_config(c)


def test_unknown_loss_option_is_a_config_error():
    c = small_config(**{"algo.policy_loss": "ppo_clip"})
    c.algo.loss_kwargs = {"k_ratio": 0.1}
    with pytest.raises(ValueError, match="k_ratio"):
        registry.check_config(c)


def test_remax_trains_against_its_greedy_baseline(tmp_path, sft_checkpoint, monkeypatch):
    from jaxrl_llm.trainers import rl

    seen = []
    original = rl.rl_step.compute_advantages

    def spy(config, rollout, rewards, kl_coef=0.0, greedy_rewards=None, correct=None):
        out = original(config, rollout, rewards, kl_coef, greedy_rewards, correct)
        seen.append((np.asarray(rewards), np.asarray(greedy_rewards), np.asarray(out[1])))
        return out

    monkeypatch.setattr(rl.rl_step, "compute_advantages", spy)
    c = small_config(
        **{
            **recipe_overrides(sft_checkpoint),
            "algo.advantage": "remax",
            "train.steps": 2,
            "train.prompts_per_step": 8,
            "eval.size": 8,
            "checkpoint.every": 0,
        }
    )
    summary = rl.train(c, str(tmp_path), log=lambda *a: None)
    assert len(seen) == 2 and summary["steps"] == 2
    group = c.train.samples_per_prompt
    for rewards, greedy, adv in seen:
        assert greedy.shape == rewards.shape == (8 * group,)
        # one greedy completion per prompt: its reward repeats over the prompt's rows
        assert np.all(greedy.reshape(8, group) == greedy.reshape(8, group)[:, :1])
        assert set(np.unique(greedy)) <= {0.0, 1.0}
        np.testing.assert_allclose(adv[:, 0], rewards - greedy, atol=1e-6)
    # a partly skilled model: the greedy baseline is neither always right nor always wrong
    all_greedy = np.concatenate([g for _, g, _ in seen])
    assert 0.0 < all_greedy.mean() < 1.0


def test_whiten_advantages_reaches_the_estimator():
    import jax.numpy as jnp

    from jaxrl_llm.losses import advantages as A
    from jaxrl_llm.rollout import Rollout
    from jaxrl_llm.trainers import rl_step

    rng = np.random.default_rng(0)
    n, t = 8, 5
    mask = (np.arange(t)[None] < rng.integers(1, t + 1, size=n)[:, None]).astype(np.float32)
    ro = Rollout(
        prompt_tokens=np.zeros((n, 2), np.int32),
        prompt_mask=np.ones((n, 2), np.int32),
        tokens=np.zeros((n, t), np.int32),
        mask=mask,
        sampler_logp=np.zeros((n, t), np.float32),
        group_id=np.arange(n) // 4,
        truncated=np.zeros(n, bool),
    )
    rewards = rng.integers(0, 2, size=n).astype(np.float32)
    plain = small_config(**{"train.samples_per_prompt": 4})
    whitened = small_config(**{"train.samples_per_prompt": 4, "algo.whiten_advantages": True})
    _, adv, _, _ = rl_step.compute_advantages(plain, ro, rewards)
    _, adv_w, _, _ = rl_step.compute_advantages(whitened, ro, rewards)
    np.testing.assert_allclose(adv_w, A.whiten(jnp.asarray(adv), mask), rtol=1e-5, atol=1e-6)
    assert not np.allclose(adv_w, adv)
