"""`python_tool`: compute a value by writing Python, run in the sandbox.

The first observation asks for a number that is tedious by hand and easy with code, e.g.
"Question: What is the number of primes below 7919?". The policy may call

    <tool name="python">print(sum(1 for n in range(2, 7919) if all(n % d for d in range(2, int(n**0.5) + 1))))</tool>
        → "999"

- `python` runs the argument (a surrounding Markdown code fence is removed) as a fresh program
  in a `Sandbox` (sandbox.py: no network, read-only file system, resource limits, wall-clock
  time-out). The observation is the program's output (`SandboxResult.as_observation`): stdout,
  then "[stderr]" and the traceback, "[exit code N]", "[timed out]" or "[killed: ...]".
  A crash or a time-out is an observation, never an exception; reward `turn_reward`.
- `<answer>`: reward 1.0 (`info["correct"] = 1`) when it is the right integer, else 0.0;
  the episode ends.
- No answer within `max_turns` (default 4): reward `timeout_reward` (0.0).

The environment refuses to start without a working sandbox: the constructor calls
`sandbox.check()`, which raises `SandboxUnavailable` (not root, namespaces unavailable, ...).
The reference answers are computed here, in trusted code, never by running model output.

`examples(split, n, seed)`: three families (difficulty 0, 1, 2): the sum of the squares of
1..N; the number of primes below N; the sum of the decimal digits of 2**K. Deterministic per
seed; train and test disjoint by a stable hash of the question.
"""

from __future__ import annotations

import random
import re

from jaxrl_llm.envs.base import AnswerOutcome, ToolEnv
from jaxrl_llm.envs.sandbox import Sandbox, SandboxLimits
from jaxrl_llm.tasks.base import Example, draw_examples

__all__ = ["DEMO_CODE", "PythonToolEnv", "strip_code_fence"]

_FENCE = re.compile(r"^```[A-Za-z0-9_+-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def strip_code_fence(code: str) -> str:
    """`code` without one surrounding Markdown fence (```python ... ```)."""
    m = _FENCE.match(code.strip())
    return m.group(1) if m else code


def _count_primes_below(n: int) -> int:
    sieve = bytearray([1]) * n
    sieve[:2] = b"\x00\x00"
    for p in range(2, int(n**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytearray(len(range(p * p, n, p)))
    return sum(sieve)


def _problem(family: int, rng: random.Random) -> tuple[str, int]:
    if family == 0:
        n = rng.randrange(100, 1000)
        return f"What is the sum of the squares of the integers from 1 to {n}?", sum(
            i * i for i in range(1, n + 1)
        )
    if family == 1:
        n = rng.randrange(1000, 20000)
        return f"What is the number of primes below {n}?", _count_primes_below(n)
    k = rng.randrange(100, 500)
    return f"What is the sum of the decimal digits of 2**{k}?", sum(map(int, str(2**k)))


# One short program per family for demonstrations (`demonstration`).
DEMO_CODE = {
    0: "print(sum(i*i for i in range(1,{x}+1)))",
    1: "print(sum(all(k%d for d in range(2,int(k**.5)+1)) for k in range(2,{x})))",
    2: "print(sum(map(int,str(2**{x}))))",
}


class PythonToolEnv(ToolEnv):
    """Numeric questions, a sandboxed `python` tool, reward 1 for the right `<answer>`."""

    name = "python_tool"
    tools = ("python",)

    def __init__(
        self,
        *,
        sandbox: Sandbox | None = None,
        limits: SandboxLimits | None = None,
        families: tuple[int, ...] = (0, 1, 2),
        test_fraction: float = 0.1,
        max_turns: int = 4,
        max_output_chars: int = 1000,
        instructions: bool = True,
        **kwargs,
    ):
        super().__init__(max_turns=max_turns, **kwargs)
        self.show_instructions = bool(instructions)
        if not families or set(families) - {0, 1, 2}:
            raise ValueError(f"families must be a non-empty subset of (0, 1, 2), got {families}")
        self.families = tuple(families)
        self.test_fraction = test_fraction
        self.max_output_chars = int(max_output_chars)
        self.sandbox = sandbox if sandbox is not None else Sandbox(limits)
        self.sandbox.check()  # fail closed: no environment without isolation

    def _sample(self, rng: random.Random) -> Example:
        family = rng.choice(self.families)
        question, value = _problem(family, rng)
        return Example(
            id=f"python_tool:{question}",
            prompt=f"Question: {question}",
            answer=str(value),
            difficulty=family,
        )

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        return draw_examples(split, n, seed, self._sample, test_fraction=self.test_fraction)

    def instructions(self) -> str:
        if not self.show_instructions:  # the question alone (short prompts for small models)
            return ""
        return (
            "Answer the question. You may run Python code with "
            f"{self.parser.format_call('python', 'CODE')}; you see what it prints. "
            f"Give the final integer as {self.parser.format_answer('NUMBER')}."
        )

    def demonstration(self, example: Example, *, use_tool: bool = True) -> list[str]:
        """Expert actions for `example` (SFT warm starts): one short program printing the value
        (`DEMO_CODE` of its family, with the question's last integer), then the answer; with
        `use_tool=False` the answer alone."""
        answer = self.parser.format_answer(example.answer)
        if not use_tool:
            return [answer]
        question = example.id.split(":", 1)[1]
        code = DEMO_CODE[int(example.difficulty)].format(x=re.findall(r"\d+", question)[-1])
        return [self.parser.format_call("python", code), answer]

    def call_tool(self, name: str, argument: str) -> str:
        result = self.sandbox.run(strip_code_fence(argument))
        return result.as_observation(max_chars=self.max_output_chars)

    def on_answer(self, answer: str) -> AnswerOutcome:
        correct = answer.strip() == self.example.answer
        return AnswerOutcome(
            reward=1.0 if correct else 0.0,
            observation="Correct." if correct else "Incorrect.",
            info={"correct": int(correct)},
        )
