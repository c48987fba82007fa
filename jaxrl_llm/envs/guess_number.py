"""`guess_number`: find a secret integer from higher/lower feedback; fewer guesses earn more.

The first observation says the range ("... an integer between 1 and 100 ..."). Each action is
one guess, `<answer>50</answer>`:

- too small → observation "Higher.", too large → "Lower."; reward `turn_reward` (0.0); the
  episode goes on.
- right at turn t → observation "Correct.", reward 1 − (t − 1)/max_turns (1.0 at the first
  turn, 1/max_turns at the last), `info["correct"] = 1`, the episode ends.
- not an integer in the range → observation "Error: ...", reward `invalid_reward`,
  `info["invalid_call"] = 1` (the turn is used). The env has no tools: a `<tool>` call is
  invalid too.
- no right guess within `max_turns` (default 8; binary search needs at most 7 for 1..100):
  reward `timeout_reward` (0.0), `info["max_turns"] = 1`.

`examples(split, n, seed)`: secrets drawn uniformly from [low, high], deterministic per seed;
train and test hold disjoint secrets (stable hash), so a split has about
(1 − test_fraction)·(high − low + 1) distinct examples at most.

`demonstration(example, use_tool=True)` (SFT warm starts): the expert's guesses, a binary
search (the middle `(lo + hi) // 2` of the interval the feedback leaves); with
`use_tool=False` the flawed player's: a linear scan up from `low`, one number per turn (it runs
out of turns for secrets above `low + max_turns - 1`). The env has no tool, so `use_tool`
names the expert / flawed choice the trainer's `sft.flawed_fraction` makes.
`instructions=False` makes the first observation the range sentence alone (short prompts for
small models).
"""

from __future__ import annotations

import random

from jaxrl_llm.envs.base import AnswerOutcome, ToolEnv
from jaxrl_llm.tasks.base import Example, draw_examples

__all__ = ["GuessNumberEnv"]


class GuessNumberEnv(ToolEnv):
    """Guess a secret integer in [low, high] with higher/lower feedback."""

    name = "guess_number"
    tools = ()

    def __init__(
        self,
        *,
        low: int = 1,
        high: int = 100,
        test_fraction: float = 0.2,
        max_turns: int = 8,
        instructions: bool = True,
        **kwargs,
    ):
        super().__init__(max_turns=max_turns, **kwargs)
        if high <= low:
            raise ValueError(f"need low < high, got {low}, {high}")
        self.show_instructions = bool(instructions)
        self.low, self.high, self.test_fraction = int(low), int(high), test_fraction

    def _sample(self, rng: random.Random) -> Example:
        secret = rng.randint(self.low, self.high)
        return Example(
            id=f"guess_number:{self.low}-{self.high}:{secret}",
            prompt=f"I am thinking of an integer between {self.low} and {self.high}. Guess it.",
            answer=str(secret),
        )

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        return draw_examples(split, n, seed, self._sample, test_fraction=self.test_fraction)

    def instructions(self) -> str:
        if not self.show_instructions:
            return ""
        return (
            f"Guess with {self.parser.format_answer('NUMBER')}. After each wrong guess you are "
            f"told 'Higher.' or 'Lower.'. You have {self.max_turns} guesses; fewer is better."
        )

    def demonstration(self, example: Example, *, use_tool: bool = True) -> list[str]:
        """Guesses for `example` (SFT warm starts): binary search, or with `use_tool=False` a
        linear scan from `low` (at most `max_turns` guesses; see the module docstring)."""
        secret = int(example.answer)
        guesses, lo, hi = [], self.low, self.high
        if use_tool:
            while True:
                guesses.append(mid := (lo + hi) // 2)
                if mid == secret:
                    break
                lo, hi = (mid + 1, hi) if secret > mid else (lo, mid - 1)
        else:
            guesses = list(range(self.low, min(secret, self.low + self.max_turns - 1) + 1))
        return [self.parser.format_answer(str(g)) for g in guesses]

    def on_answer(self, answer: str) -> AnswerOutcome:
        try:
            guess = int(answer.strip())
        except ValueError:
            guess = None
        if guess is None or not self.low <= guess <= self.high:
            return AnswerOutcome(
                reward=self.invalid_reward,
                done=False,
                observation=f"Error: a guess is an integer between {self.low} and {self.high}",
                info={"invalid_call": 1},
            )
        secret = int(self.example.answer)
        if guess == secret:
            reward = 1.0 - (self.turn - 1) / self.max_turns
            return AnswerOutcome(reward=reward, observation="Correct.", info={"correct": 1})
        return AnswerOutcome(
            reward=self.turn_reward,
            done=False,
            observation="Higher." if secret > guess else "Lower.",
        )
