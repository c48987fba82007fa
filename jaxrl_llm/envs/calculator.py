"""`calculator`: multi-digit integer arithmetic with a calculator tool.

An episode asks one problem, e.g. the first observation ends with "Question: 734*58=?".
The policy may call

    <tool name="calc">734*58</tool>          → observation "42572"

as often as `max_turns` allows and ends with `<answer>42572</answer>`.

- The tool evaluates integers with `+ - *`, parentheses and unary minus only, by the safe
  parser of `jaxrl_llm.tasks.expr` (no `eval`; at most 200 characters, 12 digits per number).
  Anything else (`/`, names, `**`) is a tool error: observation "Error: ...",
  `info["tool_error"] = 1`, reward `turn_reward`.
- `<answer>`: reward 1.0 (`info["correct"] = 1`) when the text is exactly the integer result
  (surrounding whitespace ignored), else 0.0; either way the episode ends.
- No answer within `max_turns` (default 4): reward `timeout_reward` (0.0), `info["max_turns"] = 1`.

`examples(split, n, seed)`: `num_terms` operands of `digits` digits (defaults: two operands of
2-4 digits) joined by operators from `ops` (default "*"); difficulty = digits of the largest
operand. Deterministic per seed; train and test disjoint by a stable hash of the problem.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from jaxrl_llm.envs.base import AnswerOutcome, ToolEnv, ToolError
from jaxrl_llm.tasks import expr
from jaxrl_llm.tasks.base import Example, draw_examples

__all__ = ["CalculatorEnv", "calculate"]


def calculate(text: str) -> int:
    """The value of an integer expression over `+ - *` (raises ToolError otherwise)."""
    if "/" in text:
        raise ToolError("only + - * and parentheses are supported")
    try:
        value = expr.evaluate(text, allow_unary_minus=True)
    except expr.ExprError as e:
        raise ToolError(str(e)) from e
    return int(value)


class CalculatorEnv(ToolEnv):
    """Integer arithmetic problems, a `calc` tool, reward 1 for the right `<answer>`."""

    name = "calculator"
    tools = ("calc",)

    def __init__(
        self,
        *,
        digits: Sequence[int] = (2, 3, 4),
        ops: str = "*",
        num_terms: int = 2,
        test_fraction: float = 0.1,
        max_turns: int = 4,
        instructions: bool = True,
        **kwargs,
    ):
        super().__init__(max_turns=max_turns, **kwargs)
        self.show_instructions = bool(instructions)
        self.digits = tuple(sorted({int(d) for d in digits}))
        if not self.digits or min(self.digits) < 1:
            raise ValueError(f"digits must be positive, got {digits!r}")
        if not ops or set(ops) - set("+-*"):
            raise ValueError(f"ops must be a non-empty string over '+-*', got {ops!r}")
        if num_terms < 2:
            raise ValueError(f"num_terms must be >= 2, got {num_terms}")
        self.ops, self.num_terms, self.test_fraction = ops, int(num_terms), test_fraction

    def _sample(self, rng: random.Random) -> Example:
        ds = [rng.choice(self.digits) for _ in range(self.num_terms)]
        nums = [rng.randrange(10 ** (d - 1), 10**d) for d in ds]
        ops = [rng.choice(self.ops) for _ in range(self.num_terms - 1)]
        text = str(nums[0]) + "".join(o + str(n) for o, n in zip(ops, nums[1:]))
        return Example(
            id=f"calculator:{text}",
            prompt=f"Question: {text}=?",
            answer=str(calculate(text)),
            difficulty=max(ds),
        )

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        return draw_examples(split, n, seed, self._sample, test_fraction=self.test_fraction)

    def instructions(self) -> str:
        if not self.show_instructions:  # the question alone (short prompts for small models)
            return ""
        call = self.parser.format_call("calc", "EXPRESSION")
        return (
            f"Solve the arithmetic problem. You may use a calculator: {call} "
            f"(integers, + - * and parentheses). Give the final result as "
            f"{self.parser.format_answer('NUMBER')}."
        )

    def call_tool(self, name: str, argument: str) -> str:
        return str(calculate(argument))

    def demonstration(self, example: Example, *, use_tool: bool = True) -> list[str]:
        """Expert actions for `example` (SFT warm starts): the `calc` call on the problem, then
        the answer; with `use_tool=False` the answer alone."""
        problem = example.id.split(":", 1)[1]
        answer = self.parser.format_answer(example.answer)
        return [self.parser.format_call("calc", problem), answer] if use_tool else [answer]

    def on_answer(self, answer: str) -> AnswerOutcome:
        correct = answer.strip() == self.example.answer
        return AnswerOutcome(
            reward=1.0 if correct else 0.0,
            observation="Correct." if correct else "Incorrect.",
            info={"correct": int(correct)},
        )
