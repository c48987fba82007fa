"""Agents in the RL trainer: an environment as the run's task, episodes in the collect stage,
and the evaluation of agents.

    config.env.name = "calculator"      # or "my_pkg.my_mod:make"; config.env.kwargs for it
    config.env.parser = "auto"          # tool-call format: tags | chat_template | auto (chat_tools.py)
    agent = Agent(config, tokenizer)    # the Trainer builds it when env.name is set
    ro, completions, rewards, correct, info = agent.play(params, model_config, examples, key, sampling)
    metrics = agent.evaluate(params, model_config, examples, key, sampling)   # eval/* of agents

- `EnvTask` stands in for `task` wherever the trainer reads one (prompt sources, SFT pairs):
  its examples' `prompt` is the environment's first observation (instructions + question), so
  prompt buckets and filters see what the policy sees; the environment is reset with the
  original example (`EnvTask.original`).
- With the chat-template tool format (`env.parser`) and a tokenizer that has a chat template,
  every environment is wrapped in `chat_tools.ChatTurns`: the prompt is the chat template's
  user turn with the tools block, each observation the template's tool turn (SFT transcripts
  included), so a chat model sees the layout it was trained on.
- `play` runs `rollout.multiturn.run_episodes`: `Rollout.loss_mask` marks the policy tokens,
  the reward of a row is its episode return, "correct" the environment's verdict. `info`
  carries the reward pool's counters (env errors and time-outs count as reward errors and
  time-outs, so the trainer's fail-streak rule applies) and per-row components (`turns`,
  `tool_calls`, `invalid_calls`, logged as `reward/<name>`).
- `evaluate`: success rate (`eval/accuracy`, with `eval/stderr`), pass@k over episodes, turns
  used, tool calls per episode, invalid-call rate and the share of episodes with a valid tool
  call and no invalid one; with `tools_disabled=True` every tool call is answered by a tool
  error (the same checkpoint without its tool, as a baseline).
- SFT warm start: an environment with `demonstration(example, use_tool=...)` (expert actions)
  gives SFT targets: the transcript of those actions with the environment's real observations;
  `sft.flawed_fraction` of them answer without the tool.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxrl_llm import passk
from jaxrl_llm.envs import chat_tools
from jaxrl_llm.envs.base import EnvSpec, ToolError
from jaxrl_llm.rollout import multiturn

__all__ = ["Agent", "EnvTask", "turn_params"]


class EnvTask:
    """An environment presented as a task (examples, SFT targets); see the module docstring."""

    def __init__(self, spec: EnvSpec, wrap=None):
        self.spec = spec
        self.name = spec.name
        # `wrap(env)`: what the policy sees of each environment (e.g. `chat_tools.ChatTurns`)
        self._wrap = wrap or (lambda env: env)
        self._template = self._wrap(spec.make())
        self._originals: dict[str, object] = {}

    def examples(self, split: str, n: int, seed: int):
        out = []
        for e in self._template.examples(split, n, seed):
            self._originals[e.id] = e
            out.append(dataclasses.replace(e, prompt=self._template.reset(e)))
        return out

    def original(self, example):
        """The environment's own example behind an `examples()` entry."""
        return self._originals.get(example.id, example)

    def make_env(self, *, tools_disabled: bool = False):
        env = self.spec.make()  # disabled below on the environment itself, then wrapped
        if tools_disabled:
            if not hasattr(env, "call_tool"):
                raise ValueError(f"env {self.name!r} has no call_tool to disable")

            def disabled(name, argument):
                raise ToolError("tools are disabled; answer directly")

            env.call_tool = disabled
        return self._wrap(env)

    def sft_target(self, example, *, use_tool: bool = True) -> str:
        """The transcript (actions and the environment's observations) of the expert actions."""
        demo = getattr(self._template, "demonstration", None)
        if demo is None:
            raise ValueError(
                f"env {self.name!r} has no demonstration(example, use_tool=...) for SFT targets; "
                "set sft.steps = 0 and give model.init_checkpoint, or sft.data_file"
            )
        env = self._wrap(self.spec.make())
        env.reset(self.original(example))
        parts = []
        for action in demo(self.original(example), use_tool=use_tool):
            parts.append(action)
            result = env.step(action)
            if result.done:
                break
            parts.append(result.observation)
        return "".join(parts)

    def sft_pairs(self, n: int, seed: int, *, no_tool_fraction: float = 0.0):
        """(first observation, transcript) pairs; `no_tool_fraction` of them skip the tool."""
        rng = np.random.default_rng([seed, 17])
        return [
            (e.prompt, self.sft_target(e, use_tool=bool(rng.random() >= no_tool_fraction)))
            for e in self.examples("train", n, seed)
        ]


def turn_params(config, tokenizer, parser=None) -> multiturn.TurnParams:
    """`TurnParams` from `config.env`; stop strings tokenised once (no special tokens):
    `env.stop_strings`, then the closing tags of `parser`'s format not among them."""
    e = config.env
    stops = chat_tools.stop_strings(parser, tuple(e.stop_strings))
    return multiturn.TurnParams(
        max_turns=int(e.max_turns),
        max_action_tokens=int(e.max_action_tokens),
        max_observation_tokens=int(e.max_observation_tokens),
        stop_sequences=tuple(tuple(tokenizer.encode(s, add_special_tokens=False)) for s in stops),
        step_timeout_s=float(e.step_timeout_s),
        workers=int(e.workers),
    )


class Agent:
    """The multi-turn side of one run (built by the Trainer when `config.env.name` is set)."""

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        # env.parser: None keeps the environment's own tool-call format (the default "tags").
        self.parser = chat_tools.select_parser(config.env.get("parser", "tags"), tokenizer)
        wrap = None
        if isinstance(self.parser, chat_tools.ChatTemplateParser) and getattr(
            tokenizer, "chat_template", None
        ):  # a chat model sees chat turns: prompts with the tools block, tool turns
            budget = int(config.env.max_observation_tokens)
            wrap = lambda env: chat_tools.ChatTurns(env, tokenizer, self.parser, budget)  # noqa: E731
        spec = EnvSpec(config.env.name, config.env.kwargs.to_dict(), self.parser)
        self.task = EnvTask(spec, wrap)
        self.turns = turn_params(config, tokenizer, self.parser)

    def episodes(self, params, model_config, examples, key, sampling, *, tools_disabled=False):
        """`run_episodes` on `examples` (EnvTask examples): (rollout, stats, completions)."""
        return multiturn.run_episodes(
            params,
            model_config,
            lambda: self.task.make_env(tools_disabled=tools_disabled),
            [self.task.original(e) for e in examples],
            key,
            sampling,
            self.turns,
            tokenizer=self.tokenizer,
            bucket_lengths=tuple(self.config.rollout.prompt_buckets),
        )

    def play(self, params, model_config, examples, key, sampling):
        """The collect stage's episodes: (rollout, completions, rewards, correct, info)."""
        ro, stats, completions = self.episodes(params, model_config, examples, key, sampling)
        info = {
            "num_rows": len(completions),
            "errors": int(stats.errors.sum()),
            "timeouts": int(stats.timeouts.sum()),
            "components": {
                "correct": stats.correct,
                "turns": stats.turns.astype(np.float32),
                "tool_calls": stats.tool_calls.astype(np.float32),
                "invalid_calls": stats.invalid_calls.astype(np.float32),
                "obs_truncated": stats.obs_truncated.astype(np.float32),
            },
            "episodes": stats,
        }
        return ro, completions, stats.returns.astype(np.float32), stats.correct, info

    def evaluate(
        self, params, model_config, examples, key, sampling, *, ks=(1,), tools_disabled=False
    ):
        """`eval/*` metrics of `sampling.n` episodes per example (module docstring)."""
        _, stats, completions = self.episodes(
            params, model_config, examples, key, sampling, tools_disabled=tools_disabled
        )
        n, p = int(sampling.n), len(examples)
        per_prompt = stats.correct.reshape(p, n)
        table = lambda x: [list(x[i * n : (i + 1) * n]) for i in range(p)]  # noqa: E731
        summary = passk.summarize_samples(
            examples,
            table(completions),
            table(stats.returns),
            ks=[k for k in ks if k <= n] or [1],
            correct=per_prompt > 0,
        )
        out = {f"eval/{k}": float(v) for k, v in summary.items() if k.startswith("pass_at_")}
        ep = stats.summary(prefix="eval/")
        out.update(
            {
                "eval/accuracy": float(per_prompt.mean()),
                "eval/stderr": float(
                    per_prompt.mean(axis=1).std(ddof=1) / np.sqrt(p) if p > 1 else 0.0
                ),
                "eval/reward": float(stats.returns.mean()),
                "eval/turns": ep["eval/turns"],
                "eval/tool_calls": ep["eval/tool_calls"],
                "eval/invalid_call_rate": ep["eval/invalid_call_rate"],
                "eval/valid_tool_call_rate": ep["eval/valid_tool_call_rate"],
                "eval/env_errors": ep["eval/errors"] + ep["eval/timeouts"],
            }
        )
        return out


def to_device(ro, sharding):
    """The host rollout placed by rows like the trainer's batch (None fields stay None)."""
    return jax.device_put(ro, sharding)
