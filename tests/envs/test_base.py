"""The environment contract: the ToolEnv loop, rewards, budgets, and the factory."""

import pytest

from jaxrl_llm.envs import (
    AnswerOutcome,
    Env,
    EnvSpec,
    StepResult,
    ToolEnv,
    ToolError,
    approx_token_count,
    make_env,
    registered_envs,
    truncate_to_tokens,
)
from jaxrl_llm.tasks import Example

EX = Example(id="e", prompt="Say the word.", answer="yes")


class EchoEnv(ToolEnv):
    """`echo` returns its input; `fail` is a tool error; answer 'yes' scores 0.5."""

    name = "echo"
    tools = ("echo", "fail")

    def examples(self, split, n, seed):
        return [EX][:n]

    def instructions(self):
        return 'Use <tool name="echo">TEXT</tool>.'

    def call_tool(self, name, argument):
        if name == "fail":
            raise ToolError("this tool always fails")
        return argument

    def on_answer(self, answer):
        ok = answer == self.example.answer
        return AnswerOutcome(reward=0.5 if ok else 0.0, observation="ok" if ok else "no")


def make_echo(**kwargs):
    return EchoEnv(**kwargs)


def not_an_env(**kwargs):
    return object()


def test_scripted_episode_rewards_and_info():
    env = EchoEnv(max_turns=5, turn_reward=-0.1, invalid_reward=-0.5)
    assert env.reset(EX) == 'Use <tool name="echo">TEXT</tool>.\n\nSay the word.'
    steps = [
        env.step('<tool name="echo">hello</tool>'),
        env.step('<tool name="fail">x</tool>'),
        env.step("<answer>yes"),
        env.step("<answer>yes</answer>"),
    ]
    assert [s.observation for s in steps] == [
        "hello",
        "Error: this tool always fails",
        "Error: unclosed <answer> tag: missing </answer>",
        "ok",
    ]
    assert [s.reward for s in steps] == [-0.1, -0.1, -0.5, 0.5]
    assert [s.done for s in steps] == [False, False, False, True]
    assert [s.info["invalid_call"] for s in steps] == [0, 0, 1, 0]
    assert [s.info["tool_call"] for s in steps] == [1, 1, 0, 0]
    assert [s.info["turn"] for s in steps] == [1, 2, 3, 4]
    assert steps[1].info["tool_error"] == 1 and "tool_error" not in steps[0].info
    assert env.episode_stats() == {
        "turns": 4,
        "invalid_calls": 1,
        "tool_calls": 2,
        "return": pytest.approx(-0.1 - 0.1 - 0.5 + 0.5),
    }
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("<answer>yes</answer>")
    env.reset(EX)  # a new episode starts clean
    assert env.episode_stats()["turns"] == 0 and env.step("<answer>no</answer>").reward == 0.0


def test_max_turns_ends_the_episode_with_the_timeout_reward():
    env = EchoEnv(max_turns=2, timeout_reward=-1.0)
    env.reset(EX)
    first = env.step("no call here")
    last = env.step('<tool name="echo">a</tool>')
    assert not first.done and "max_turns" not in first.info
    assert last.done and last.info["max_turns"] == 1 and last.reward == -1.0


def test_step_before_reset_fails():
    with pytest.raises(RuntimeError, match="reset"):
        EchoEnv().step("<answer>yes</answer>")


def test_observation_budget_cuts_and_ends():
    env = EchoEnv(max_turns=10, max_observation_tokens=5, count_tokens=lambda s: len(s.split()))
    env.reset(EX)
    a = env.step('<tool name="echo">a b c</tool>')
    b = env.step('<tool name="echo">d e f g</tool>')
    assert (a.observation, a.done, "observation_truncated" in a.info) == ("a b c", False, False)
    assert b.observation.split() == ["d", "e"] and b.done and b.info["observation_truncated"] == 1


def test_token_helpers():
    assert approx_token_count("x = 12 + y3;") == 6  # x = 12 + y3 ;
    assert approx_token_count("") == 0
    assert truncate_to_tokens("one two three", 2, approx_token_count).split() == ["one", "two"]
    assert truncate_to_tokens("one two", 5, approx_token_count) == "one two"
    assert truncate_to_tokens("one two", 0, approx_token_count) == ""


def test_invalid_settings():
    with pytest.raises(ValueError, match="max_turns"):
        EchoEnv(max_turns=0)
    with pytest.raises(ValueError, match="max_observation_tokens"):
        EchoEnv(max_observation_tokens=-1)


def test_make_env_by_name_and_import_path():
    assert set(registered_envs()) >= {"calculator", "guess_number", "python_tool", "retrieval"}
    for name in ("calculator", "guess_number", "retrieval"):
        env = make_env(name, max_turns=3)
        assert isinstance(env, Env) and env.name == name and env.max_turns == 3
    env = make_env("tests.envs.test_base:make_echo", max_turns=7)
    assert isinstance(env, EchoEnv) and env.max_turns == 7
    with pytest.raises(ValueError, match="registered: calculator, guess_number"):
        make_env("nope")
    with pytest.raises(ValueError, match="cannot import"):
        make_env("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="has no callable 'missing'"):
        make_env("tests.envs.test_base:missing")
    with pytest.raises(ValueError, match="lacks"):
        make_env("tests.envs.test_base:not_an_env")


def test_env_spec_makes_fresh_envs():
    spec = EnvSpec.from_config({"name": "calculator", "kwargs": {"max_turns": 2}})
    a, b = spec.make(), spec.make()
    assert a is not b and a.max_turns == b.max_turns == 2
    assert EnvSpec.from_config({"name": "retrieval"}).make().name == "retrieval"
    with pytest.raises(ValueError, match="'name'"):
        EnvSpec.from_config({"name": "calculator", "max_turns": 2})


def test_step_result_defaults():
    r = StepResult("obs", 1.0, True)
    assert r.info == {} and r.info is not StepResult("o", 0.0, False).info
