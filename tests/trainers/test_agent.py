"""Agents in the trainer: an environment as the task (examples, SFT transcripts, tools
disabled), the collect stage playing episodes, and the evaluation of agents."""

import jax
import numpy as np
import pytest

from jaxrl_llm.envs.base import EnvSpec
from jaxrl_llm.trainers import agent as agent_lib
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import rl, stages
from tests.trainers.conftest import small_config


def test_env_task_prompt_is_the_first_observation_and_sft_replays_the_env():
    task = agent_lib.EnvTask(EnvSpec("calculator", {"digits": (2,)}))
    (e,) = task.examples("train", 1, 0)
    orig = task.original(e)
    assert e.prompt.endswith(orig.prompt) and e.prompt.startswith("Solve the arithmetic")
    problem = orig.id.split(":", 1)[1]
    assert task.sft_target(e) == (
        f'<tool name="calc">{problem}</tool>{orig.answer}<answer>{orig.answer}</answer>'
    )
    assert task.sft_target(e, use_tool=False) == f"<answer>{orig.answer}</answer>"
    pairs = task.sft_pairs(200, 0, no_tool_fraction=0.25)
    no_tool = np.mean([not t.startswith("<tool") for _, t in pairs])
    assert 0.15 < no_tool < 0.35


def test_tools_disabled_answers_every_call_with_a_tool_error():
    task = agent_lib.EnvTask(EnvSpec("calculator", {}))
    (e,) = task.examples("test", 1, 0)
    env = task.make_env(tools_disabled=True)
    env.reset(task.original(e))
    r = env.step('<tool name="calc">2*3</tool>')
    assert r.observation.startswith("Error: tools are disabled") and r.info["tool_error"] == 1
    live = task.make_env()
    live.reset(task.original(e))
    assert live.step('<tool name="calc">2*3</tool>').observation == "6"


def test_env_config_is_validated():
    c = small_config(**{"env.name": "no_such_env"})
    with pytest.raises(config_lib.ConfigError, match="env.name"):
        config_lib.validate(c)
    c = small_config(**{"env.name": "calculator", "env.credit": "turn", "algo.advantage": "rloo"})
    with pytest.raises(config_lib.ConfigError, match="env.credit"):
        config_lib.validate(c)


def test_collect_plays_episodes_and_evaluates_agents(tmp_path):
    c = small_config(
        **{
            "env.name": "calculator",
            "env.kwargs": {"digits": (2,)},
            "env.max_turns": 2,
            "env.max_observation_tokens": 8,
            "rollout.max_new_tokens": 24,
            "rollout.prompt_buckets": (256,),
            "train.prompts_per_step": 2,
            "train.samples_per_prompt": 2,
            "sft.steps": 0,
            "eval.size": 2,
            "eval.n": 2,
            "eval.ks": (1, 2),
        }
    )
    tr = rl.Trainer(c, str(tmp_path))
    state = tr.init_state(tr.initial_params(log=lambda *a: None))
    counters = stages.fresh_counters()
    examples, ro, completions, rewards, correct, info, _, _ = tr.collect(
        state, tr.make_source(), 0, counters
    )
    host = jax.device_get(ro)
    assert host.loss_mask is not None and host.loss_mask.shape == host.mask.shape
    assert (host.loss_mask <= host.mask).all() and (
        host.sampler_logp[host.loss_mask == 0] == 0
    ).all()
    np.testing.assert_array_equal(rewards, host.turn_rewards.sum(1))
    np.testing.assert_array_equal(info["components"]["turns"], (host.turn_ids.max(1) + 1))
    assert len(completions) == 4 and counters["reward_errors"] == 0
    ev = tr.evaluate(state.params)
    for k in ("eval/accuracy", "eval/pass_at_2", "eval/turns", "eval/tool_calls"):
        assert k in ev
    assert 1.0 <= ev["eval/turns"] <= 2.0
    assert 0.0 <= ev["eval/invalid_call_rate"] <= 1.0


def _episodes_and_update(tmp_path, **mesh):
    """The collect of a one-step calculator run on the given mesh (its episodes, rewards and
    the parameters it sampled with), and its parameters after the RL step, on the host."""
    c = small_config(
        **{
            "env.name": "calculator",
            "env.kwargs": {"digits": (2,)},
            "env.max_turns": 2,
            "env.max_observation_tokens": 8,
            "rollout.max_new_tokens": 24,
            "rollout.prompt_buckets": (256,),
            "train.prompts_per_step": 8,
            "train.samples_per_prompt": 2,
            "train.steps": 1,
            "sft.steps": 0,
            # every reward of the untrained model is 0: the entropy term makes the step move
            "algo.entropy_coef": 0.01,
            "optim.warmup_steps": 0,
            "eval.size": 2,
            "eval.n": 1,
            "eval.ks": (1,),
            "checkpoint.every": 0,
        }
    )
    c.mesh.update(mesh)  # after small_config, which pins one device
    tr = rl.Trainer(c, str(tmp_path))
    collected, collect = [], tr.collect

    def spy(state, source, step, counters):
        out = collect(state, source, step, counters)
        # to the host now: the update donates the state
        collected.append(jax.device_get((out[1], out[3], state.params)))
        return out

    tr.collect = spy
    tr.run(log=lambda *a: None)
    assert len(collected) == 1
    ro, rewards, init = collected[0]
    return ro, rewards, init, jax.device_get(tr.state.params)


def test_episodes_and_update_are_the_same_on_an_8_device_mesh(tmp_path):
    """Multi-turn collect and update on data 2 x fsdp 4 equal the one-device run: the same
    sampled ids, observations and masks, log-probs and parameters up to float rounding."""
    ro1, r1, init, p1 = _episodes_and_update(tmp_path / "one", num_devices=1)
    ro8, r8, _, p8 = _episodes_and_update(tmp_path / "eight", num_devices=8, data=2, fsdp=4)
    assert ro8.turn_ids.max() >= 1  # episodes with a second turn took part
    for name in ("tokens", "mask", "loss_mask", "turn_ids"):
        np.testing.assert_array_equal(getattr(ro8, name), getattr(ro1, name), err_msg=name)
    np.testing.assert_array_equal(r8, r1)
    np.testing.assert_allclose(ro8.sampler_logp, ro1.sampler_logp, rtol=1e-4, atol=1e-5)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p1, init)
    assert max(jax.tree.leaves(moved)) > 1e-5  # the step changed the parameters
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), p8, p1)


def test_calculator_without_instructions_prompts_with_the_question_alone():
    task = agent_lib.EnvTask(EnvSpec("calculator", {"instructions": False}))
    (e,) = task.examples("train", 1, 3)
    assert e.prompt == task.original(e).prompt and e.prompt.startswith("Question: ")


def test_env_runs_refuse_vmapped_seeds(tmp_path):
    from jaxrl_llm.trainers import seeds

    c = small_config(**{"env.name": "calculator"})
    with pytest.raises(config_lib.ConfigError, match="env.name"):
        seeds._check(c, [str(tmp_path / "a"), str(tmp_path / "b")], [0, 1])
