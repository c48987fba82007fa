"""The environment contract: `Env`, `StepResult`, the `ToolEnv` base class and the env factory.

An environment is a stateful object for ONE episode at a time, on TEXT (the sampler
tokenises; the environment never sees tokens):

    name: str
    max_turns: int                           # actions per episode; the episode ends after that many
    max_observation_tokens: int | None       # budget over all observations step() returns
    examples(split, n, seed) -> list[Example]   # prompts: 'train' | 'test', deterministic per seed
    reset(example) -> str                    # starts an episode; the first observation (the prompt)
    step(action_text) -> StepResult          # one policy turn; observation, reward, done, info

`StepResult.reward` is the reward of that turn: per-turn rewards (`turn_reward` for each
tool call, `invalid_reward` for a malformed one) and the terminal reward (the answer's score,
or `timeout_reward` when `max_turns` pass without an answer) on the step that ends the episode.
The episode return is the sum over steps.

`info` always holds `turn` (1-based), `invalid_call` (0/1) and `tool_call` (0/1); environments
add their own keys (`tool_error`, `correct`, `max_turns`, `observation_truncated`, ...).
`episode_stats()` sums them over the episode.

`ToolEnv` implements `reset`/`step` around a `ToolCallParser` (tools.py): subclasses give
`tools` (names), `call_tool(name, argument) -> str` (raising `ToolError` for bad input) and `on_answer(answer) -> AnswerOutcome`.
A malformed action (see `TagParser`) is answered with an error observation
("Error: <message>") and counted in `info["invalid_call"]`; it uses a turn.

Observation budget: observations are counted with `count_tokens` (default
`approx_token_count`: words and punctuation marks; pass the policy tokenizer's counter for exact
budgets). An observation that would exceed what is left is cut to fit, and the episode ends
(`info["observation_truncated"] = 1`).

`make_env(name_or_import_path, **kwargs)` builds a shipped environment ('calculator',
'guess_number', 'python_tool', 'retrieval') or calls a user factory 'my_pkg.my_mod:make';
`EnvSpec(name, kwargs, parser).make()` does the same from a config (one fresh env per episode);
`parser` (None: the env's own) is passed as `parser=`, chosen by `env.parser` (chat_tools.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from jaxrl_llm.envs.chat_tools import select_parser
from jaxrl_llm.envs.tools import TagParser, ToolCallParser
from jaxrl_llm.tasks.base import Example

__all__ = [
    "AnswerOutcome",
    "Env",
    "EnvSpec",
    "StepResult",
    "ToolEnv",
    "ToolError",
    "approx_token_count",
    "make_env",
    "register_env",
    "registered_envs",
    "truncate_to_tokens",
]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one `step` returns."""

    observation: str
    reward: float
    done: bool
    info: dict = dataclasses.field(default_factory=dict)


class ToolError(Exception):
    """Raised by `call_tool` for a well-formed call the tool cannot serve (bad input): the
    model sees "Error: <message>" and `info["tool_error"] = 1`; not an invalid call."""


@runtime_checkable
class Env(Protocol):
    """A multi-turn text environment (see the module docstring)."""

    name: str
    max_turns: int
    max_observation_tokens: int | None

    def examples(self, split: str, n: int, seed: int) -> list[Example]: ...

    def reset(self, example: Example) -> str: ...

    def step(self, action: str) -> StepResult: ...


@dataclasses.dataclass(frozen=True)
class AnswerOutcome:
    """How an environment scores an `<answer>`: reward, whether it ends the episode, the
    observation shown, extra info keys."""

    reward: float
    done: bool = True
    observation: str = ""
    info: Mapping[str, float] = dataclasses.field(default_factory=dict)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def approx_token_count(text: str) -> int:
    """Words and punctuation marks: a tokenizer-free stand-in for a token count."""
    return len(_TOKEN.findall(text))


def truncate_to_tokens(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of `text` with `count_tokens(prefix) <= budget` (binary search)."""
    if count_tokens(text) <= budget:
        return text
    lo, hi = 0, len(text)  # count(text[:lo]) <= budget < count(text[:hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid
    return text[:lo]


class ToolEnv:
    """Base class: the reset/step loop, tool-call parsing, turn and observation budgets."""

    name: str = "tool_env"
    tools: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        max_turns: int = 4,
        max_observation_tokens: int | None = 1024,
        parser: ToolCallParser | None = None,
        count_tokens: Callable[[str], int] | None = None,
        turn_reward: float = 0.0,
        invalid_reward: float = 0.0,
        timeout_reward: float = 0.0,
    ):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if max_observation_tokens is not None and max_observation_tokens < 0:
            raise ValueError(f"max_observation_tokens must be >= 0, got {max_observation_tokens}")
        self.max_turns = int(max_turns)
        self.max_observation_tokens = max_observation_tokens
        self.parser = parser if parser is not None else TagParser()
        self.count_tokens = count_tokens or approx_token_count
        self.turn_reward = float(turn_reward)
        self.invalid_reward = float(invalid_reward)
        self.timeout_reward = float(timeout_reward)
        self.example: Example | None = None
        self.turn = 0
        self.done = False
        self._obs_tokens = 0
        self._stats: dict[str, float] = {}

    # ------------------------------------------------------------------ subclass hooks

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        raise NotImplementedError

    def instructions(self) -> str:
        """Text put before the example's prompt in the first observation."""
        return ""

    def call_tool(self, name: str, argument: str) -> str:
        raise NotImplementedError

    def on_answer(self, answer: str) -> AnswerOutcome:
        raise NotImplementedError

    def on_reset(self, example: Example) -> None:
        """Per-episode state set-up (called by `reset`)."""

    # ------------------------------------------------------------------ the contract

    def reset(self, example: Example) -> str:
        self.example = example
        self.turn = 0
        self.done = False
        self._obs_tokens = 0
        self._stats = {"turns": 0, "invalid_calls": 0, "tool_calls": 0, "return": 0.0}
        self.on_reset(example)
        head = self.instructions()
        return f"{head}\n\n{example.prompt}" if head else example.prompt

    def step(self, action: str) -> StepResult:
        if self.example is None:
            raise RuntimeError(f"{self.name}: call reset(example) before step()")
        if self.done:
            raise RuntimeError(f"{self.name}: the episode is over; call reset(example)")
        self.turn += 1
        info: dict[str, Any] = {"turn": self.turn, "invalid_call": 0, "tool_call": 0}
        act = self.parser.parse(action, self.tools)
        done = False
        if act.kind == "invalid":
            obs, reward = f"Error: {act.error}", self.invalid_reward
            info["invalid_call"] = 1
        elif act.kind == "tool":
            reward = self.turn_reward
            info["tool_call"] = 1
            info["tool"] = act.name
            try:
                obs = self.call_tool(act.name, act.argument)
            except ToolError as e:
                obs = f"Error: {e}"
                info["tool_error"] = 1
        else:
            outcome = self.on_answer(act.argument)
            obs, reward, done = outcome.observation, float(outcome.reward), outcome.done
            info.update(outcome.info)
        if not done and self.turn >= self.max_turns:
            done = True
            reward += self.timeout_reward
            info["max_turns"] = 1
        obs, done = self._spend_budget(obs, done, info)
        self.done = done
        s = self._stats
        s["turns"] = self.turn
        s["invalid_calls"] += info["invalid_call"]
        s["tool_calls"] += info["tool_call"]
        s["return"] += reward
        return StepResult(observation=obs, reward=float(reward), done=done, info=info)

    def episode_stats(self) -> dict[str, float]:
        """turns, invalid_calls, tool_calls and return of the current episode so far."""
        return dict(self._stats)

    def _spend_budget(self, obs: str, done: bool, info: dict) -> tuple[str, bool]:
        if self.max_observation_tokens is None:
            return obs, done
        left = self.max_observation_tokens - self._obs_tokens
        n = self.count_tokens(obs)
        if n > left:
            obs = truncate_to_tokens(obs, left, self.count_tokens)
            n = self.count_tokens(obs)
            info["observation_truncated"] = 1
            done = True
        self._obs_tokens += n
        return obs, done


# ----------------------------------------------------------------------------- factory

_REGISTRY: dict[str, Callable[..., Any]] = {}

_BUILTIN = {
    "calculator": "jaxrl_llm.envs.calculator:CalculatorEnv",
    "guess_number": "jaxrl_llm.envs.guess_number:GuessNumberEnv",
    "python_tool": "jaxrl_llm.envs.python_tool:PythonToolEnv",
    "retrieval": "jaxrl_llm.envs.retrieval:RetrievalEnv",
}
_REQUIRED = ("name", "max_turns", "max_observation_tokens", "examples", "reset", "step")


def register_env(name: str, factory: Callable[..., Any]) -> None:
    """Adds `factory(**kwargs) -> Env` under `name`."""
    _REGISTRY[name] = factory


def registered_envs() -> tuple[str, ...]:
    return tuple(sorted({**_BUILTIN, **_REGISTRY}))


def _resolve(import_path: str) -> Callable[..., Any]:
    module_name, _, attr = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"env import path {import_path!r}: cannot import {module_name!r}: {e}"
        ) from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"env import path {import_path!r}: {module_name} has no callable {attr!r}")
    return factory


def make_env(name_or_import_path: str, **kwargs: Any) -> Any:
    """A fresh environment from the registry or an import path 'pkg.module:factory'.

    Raises ValueError listing the registered environments for an unknown name, and when an
    import path does not resolve or its factory does not return an `Env`.
    """
    if name_or_import_path in _REGISTRY:
        factory = _REGISTRY[name_or_import_path]
    elif name_or_import_path in _BUILTIN:
        factory = _resolve(_BUILTIN[name_or_import_path])
    elif ":" in name_or_import_path:
        factory = _resolve(name_or_import_path)
    else:
        raise ValueError(
            f"unknown env {name_or_import_path!r}; registered: {', '.join(registered_envs())}; "
            "or give an import path 'my_pkg.my_module:make'"
        )
    env = factory(**kwargs)
    missing = [m for m in _REQUIRED if not hasattr(env, m)]
    if missing:
        raise ValueError(
            f"env from {name_or_import_path!r} lacks {missing} (see jaxrl_llm.envs.Env)"
        )
    return env


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """A config's description of an environment: `name` (registry name or 'pkg.mod:make'),
    the factory's keyword arguments, and an optional tool-call `parser` (None: the
    environment's own default). `make()` returns a fresh env (one per episode)."""

    name: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    parser: ToolCallParser | None = None

    def make(self) -> Any:
        kwargs = dict(self.kwargs)
        if self.parser is not None:
            if "parser" in kwargs:
                raise ValueError(f"env {self.name!r}: a parser in both kwargs and EnvSpec.parser")
            kwargs["parser"] = self.parser
        try:
            return make_env(self.name, **kwargs)
        except TypeError as e:
            if self.parser is None or "parser" not in str(e):
                raise
            raise ValueError(
                f"env {self.name!r} takes no parser= argument, so env.parser cannot choose its "
                f"tool-call format ({e}); use env.parser = 'tags'"
            ) from e

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], tokenizer=None) -> EnvSpec:
        """From a mapping with `name` and optional `kwargs` and `parser` (e.g. `config.env`
        fields): `parser` is 'tags' | 'chat_template' | 'auto' (`chat_tools.select_parser`;
        'auto' reads `tokenizer`'s chat template)."""
        unknown = set(cfg) - {"name", "kwargs", "parser"}
        if "name" not in cfg or unknown:
            raise ValueError(
                f"env config needs 'name' and optional 'kwargs', 'parser'; got keys {sorted(cfg)}"
            )
        parser = select_parser(str(cfg.get("parser") or "tags"), tokenizer)
        return cls(str(cfg["name"]), dict(cfg.get("kwargs") or {}), parser)
