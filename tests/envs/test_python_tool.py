"""python_tool: hand-checked episodes (real sandbox when root, a stand-in otherwise) and
refusal to start without a sandbox."""

import os
import random

import pytest

from jaxrl_llm.envs import SandboxLimits, SandboxResult, SandboxUnavailable, make_env
from jaxrl_llm.envs.python_tool import (
    PythonToolEnv,
    _count_primes_below,
    _problem,
    strip_code_fence,
)
from jaxrl_llm.tasks import Example

EX = Example(
    id="p",
    prompt="Question: What is the sum of the squares of the integers from 1 to 10?",
    answer="385",
)


class ScriptedSandbox:
    """Records the programs it is given and answers with fixed results."""

    def __init__(self, results):
        self.results, self.programs, self.checked = list(results), [], False

    def check(self):
        self.checked = True

    def run(self, source):
        self.programs.append(source)
        return self.results.pop(0)


def test_episode_with_a_stand_in_sandbox():
    sb = ScriptedSandbox(
        [
            SandboxResult("385\n", "", 0, False, None),
            SandboxResult("", "", None, True, "timeout"),
        ]
    )
    env = PythonToolEnv(sandbox=sb)
    assert sb.checked and env.reset(EX).endswith(EX.prompt)
    steps = [
        env.step('<tool name="python">```python\nprint(sum(i*i for i in range(11)))\n```</tool>'),
        env.step('<tool name="python">while True: pass</tool>'),
        env.step('<tool name="bash">ls</tool>'),
        env.step("<answer>385</answer>"),
    ]
    assert sb.programs == ["print(sum(i*i for i in range(11)))", "while True: pass"]
    assert [s.observation for s in steps] == [
        "385",
        "[timed out]",
        "Error: unknown tool 'bash'; available: python",
        "Correct.",
    ]
    assert [s.reward for s in steps] == [0.0, 0.0, 0.0, 1.0]
    assert [s.done for s in steps] == [False, False, False, True]
    assert [s.info["invalid_call"] for s in steps] == [0, 0, 1, 0]


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")
def test_episode_in_the_real_sandbox():
    env = PythonToolEnv(limits=SandboxLimits(wall_s=1.0))
    env.reset(EX)
    ok = env.step('<tool name="python">print(sum(i * i for i in range(1, 11)))</tool>')
    crash = env.step('<tool name="python">print("before")\n1 / 0</tool>')
    loop = env.step('<tool name="python">while True:\n    pass</tool>')
    last = env.step("<answer>385</answer>")
    assert ok.observation == "385"
    assert crash.observation.startswith("before\n[stderr]\nTraceback")
    assert "ZeroDivisionError" in crash.observation and crash.observation.endswith("[exit code 1]")
    assert loop.observation == "[timed out]" and not loop.done
    assert (last.reward, last.done) == (1.0, True)
    assert env.episode_stats() == {"turns": 4, "invalid_calls": 0, "tool_calls": 3, "return": 1.0}


def test_refuses_to_start_without_a_sandbox(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxUnavailable, match="needs root"):
        PythonToolEnv()
    with pytest.raises(SandboxUnavailable):
        make_env("python_tool")


def test_strip_code_fence():
    assert strip_code_fence("```python\nx = 1\nprint(x)\n```") == "x = 1\nprint(x)"
    assert strip_code_fence("```\nprint(1)```") == "print(1)"
    assert strip_code_fence("print('```')") == "print('```')"


def test_problems_match_independent_references():
    assert _count_primes_below(7919) == 999  # 7919 is the 1000th prime
    assert _count_primes_below(3) == 1 and _count_primes_below(2) == 0
    q, v = _problem(0, random.Random(0))
    n = int(q.split()[-1].rstrip("?"))
    assert v == n * (n + 1) * (2 * n + 1) // 6
    q, v = _problem(1, random.Random(0))
    n = int(q.split()[-1].rstrip("?"))
    assert v == sum(all(k % d for d in range(2, int(k**0.5) + 1)) for k in range(2, n))
    q, v = _problem(2, random.Random(0))
    k = int(q.split("**")[-1].rstrip("?"))
    assert v == sum(int(c) for c in str(2**k))


def test_examples():
    env = PythonToolEnv(sandbox=ScriptedSandbox([]))
    train, test = env.examples("train", 30, 0), env.examples("test", 10, 0)
    assert train == env.examples("train", 30, 0) and len(test) == 10
    assert not {e.id for e in train} & {e.id for e in test}
    assert {e.difficulty for e in train} == {0, 1, 2}


def test_demonstrations_replay_to_the_answer_in_the_real_sandbox():
    """Each family's demonstration program prints the reference value (computed here in
    trusted code); the transcript's answer earns reward 1; without the tool, the answer alone."""
    env = PythonToolEnv(limits=SandboxLimits(wall_s=5.0))
    examples = env.examples("train", 30, seed=0)
    for family in (0, 1, 2):
        ex = next(e for e in examples if e.difficulty == family)
        env.reset(ex)
        call, answer = env.demonstration(ex)
        assert call.startswith('<tool name="python">') and "_" not in call
        out = env.step(call)
        assert (out.observation, out.done, out.info["tool_call"]) == (ex.answer, False, 1)
        last = env.step(answer)
        assert (last.reward, last.done, last.info["correct"]) == (1.0, True, 1), ex
    assert env.demonstration(ex, use_tool=False) == [f"<answer>{ex.answer}</answer>"]


def test_instructions_false_gives_the_question_alone():
    env = PythonToolEnv(sandbox=ScriptedSandbox([]), instructions=False)
    assert env.reset(EX) == EX.prompt
    assert PythonToolEnv(sandbox=ScriptedSandbox([])).reset(EX).endswith("\n\n" + EX.prompt)
