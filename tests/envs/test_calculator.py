"""calculator: hand-checked episodes and the safe evaluator."""

import pytest

from jaxrl_llm.envs import ToolError
from jaxrl_llm.envs.calculator import CalculatorEnv, calculate
from jaxrl_llm.tasks import Example

EX = Example(id="calculator:734*58", prompt="Question: 734*58=?", answer="42572")  # 40600 + 1972


def test_scripted_episode():
    env = CalculatorEnv()
    first = env.reset(EX)
    assert first.endswith("Question: 734*58=?") and '<tool name="calc">' in first
    actions = [
        'Multiply first. <tool name="calc">734*58</tool>',
        '<tool name="calc">734/58</tool>',
        '<tool name="calculator">734*58</tool>',
        "<answer>42572</answer>",
    ]
    steps = [env.step(a) for a in actions]
    assert [s.observation for s in steps] == [
        "42572",
        "Error: only + - * and parentheses are supported",
        "Error: unknown tool 'calculator'; available: calc",
        "Correct.",
    ]
    assert [s.reward for s in steps] == [0.0, 0.0, 0.0, 1.0]
    assert [s.done for s in steps] == [False, False, False, True]
    assert [s.info["invalid_call"] for s in steps] == [0, 0, 1, 0]
    assert steps[1].info["tool_error"] == 1 and steps[3].info["correct"] == 1
    assert env.episode_stats() == {"turns": 4, "invalid_calls": 1, "tool_calls": 2, "return": 1.0}


def test_wrong_answer_and_running_out_of_turns():
    env = CalculatorEnv(max_turns=2)
    env.reset(EX)
    wrong = env.step("<answer>42562</answer>")
    assert (wrong.reward, wrong.done, wrong.info["correct"]) == (0.0, True, 0)
    env.reset(EX)
    env.step("<answer>")
    last = env.step('<tool name="calc">7*8</tool>')
    assert last.observation == "56" and last.done and last.info["max_turns"] == 1
    assert last.reward == 0.0 and env.episode_stats()["invalid_calls"] == 1


def test_calculate_is_integer_arithmetic_only():
    assert calculate("(2+3)*-4") == -20
    assert calculate(" 12 - 30 ") == -18
    assert calculate("999999*999999") == 999998000001
    for bad in ("__import__('os')", "2**10", "1/2", "1 2", "", "1.5*2", "(1+2"):
        with pytest.raises(ToolError):
            calculate(bad)


def test_examples_are_deterministic_disjoint_and_correct():
    env = CalculatorEnv(digits=(2, 3), ops="+-*", num_terms=3)
    train = env.examples("train", 50, seed=0)
    assert train == env.examples("train", 50, seed=0) != env.examples("train", 50, seed=1)
    test = env.examples("test", 20, seed=0)
    assert len(train) == 50 and len(test) == 20
    assert not {e.id for e in train} & {e.id for e in test}
    for e in train:
        text = e.prompt.removeprefix("Question: ").removesuffix("=?")
        assert int(e.answer) == eval(text)  # the test's own reference (trusted input)
        assert e.difficulty in (2, 3)
