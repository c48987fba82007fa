"""The chat template's tool-call format (Hermes style, as in Qwen2.5 / Qwen3), and choosing a parser.

`ChatTemplateParser` is a `ToolCallParser` (tools.py) for the format the Qwen2.5 / Qwen3 chat
templates teach their models (the "Hermes" tool format):

    <tool_call>
    {"name": "calc", "arguments": {"expression": "734*58"}}
    </tool_call>
    <answer>42572</answer>                  the final answer, as with `TagParser`

Our tools take ONE string argument. Its JSON name comes from `argument_names[tool]` (defaults:
`calc` → `expression`, `python` → `code`, `search` → `query`; any other tool → `input`). When
the declared name is absent but `arguments` has exactly one entry, that entry is the argument
(models do not always copy the schema's name). The value must be a JSON string.

Rules (each violation gives `kind="invalid"` with a message the environment shows the model):

- Text before the first tag is free (reasoning, `<think>…</think>`). The first `<tool_call>` or
  `<answer>` decides the kind and must be closed (`</tool_call>`, `</answer>`).
- The body of `<tool_call>` is one JSON object with exactly the keys `name` (a string naming
  one of the environment's tools) and `arguments` (an object, see above); the argument,
  stripped, must not be empty. After the first call only one more thing is checked: a second
  `<tool_call>` makes the action invalid (one call per action). Other text after it is ignored.
- `<answer>`: as `TagParser` (stripped, not empty; text after `</answer>` ignored).

`format_call` writes `<\\/` for `</` inside the JSON (a valid JSON escape), so an argument
holding `</tool_call>` cannot close the tag early; `parse(format_call(n, a))` gives back `a`.

Choosing a parser (`env.parser` in the trainer config):

    select_parser("tags" | "chat_template" | "auto", tokenizer) -> ToolCallParser | None
    parser_for_tokenizer(tokenizer)   # ChatTemplateParser when chat_template mentions <tool_call>
    tool_schemas(env)                 # JSON schemas of env.tools, for apply_chat_template(tools=...)
    chat_prompt_with_tools(tokenizer, env, text)
    stop_strings(parser)              # the texts that end an action in this format

Chat turns (`ChatTurns(env, tokenizer, parser)`, used by the trainer's agent whenever the
chat-template parser is chosen and the tokenizer has a chat template): the policy then sees
what a chat model is trained on. `reset` renders the first observation as a user turn with the
tools block (`chat_prompt_with_tools`); each later observation becomes the template's tool turn,
`tool_turn(tokenizer, text)`: the text the template writes after an assistant message up to
the next generation prompt, e.g. for Qwen2.5
`<|im_end|>\n<|im_start|>user\n<tool_response>\n42572\n</tool_response><|im_end|>\n<|im_start|>assistant\n`
(found by rendering a sentinel assistant message with and without the tool message after it,
so any template's own layout is used). The policy's actions are never re-rendered (the trained
tokens are the sampled ids); the final observation (episode over) is not wrapped. With
`max_observation_tokens`, the observation is cut inside the turn so the turn keeps its closing
markers and the generation prompt.

`select_parser` returns None for the environment's own default (`"tags"`, or `"auto"` on a
tokenizer without the Hermes format), so the default config builds environments exactly as before.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

from jaxrl_llm.envs.tools import ParsedAction, TagParser, ToolCallParser

__all__ = [
    "DEFAULT_ARGUMENT_NAMES",
    "PARSER_CHOICES",
    "ChatTemplateParser",
    "ChatTurns",
    "chat_prompt_with_tools",
    "has_hermes_tool_format",
    "parser_for_tokenizer",
    "select_parser",
    "stop_strings",
    "tool_schemas",
    "tool_turn",
]

PARSER_CHOICES = ("tags", "chat_template", "auto")

# The JSON name of each shipped tool's one string argument, and a line describing it.
DEFAULT_ARGUMENT_NAMES: Mapping[str, str] = {
    "calc": "expression",
    "python": "code",
    "search": "query",
}
_DEFAULT_DESCRIPTIONS = {
    "calc": (
        "Evaluates an integer expression with + - * and parentheses.",
        "the expression, e.g. 734*58",
    ),
    "python": ("Runs Python code in a sandbox and returns what it prints.", "the Python program"),
    "search": ("Returns the passage of a small corpus that best matches a query.", "the query"),
}

_OPEN = re.compile(r"<(tool_call|answer)>", re.IGNORECASE)
_TOOL_CALL = re.compile(r"<tool_call>", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ChatTemplateParser:
    """The Hermes tool-call format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
    answers as `<answer>TEXT</answer>` (module docstring)."""

    argument_names: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_ARGUMENT_NAMES), hash=False
    )
    default_argument: str = "input"
    max_argument_chars: int = 4000
    stop_strings: ClassVar[tuple[str, ...]] = ("</tool_call>", "</answer>")

    def argument_name(self, tool: str) -> str:
        return self.argument_names.get(tool, self.default_argument)

    def parse(self, text: str, tools: Collection[str]) -> ParsedAction:
        m = _OPEN.search(text)
        if m is None:
            return ParsedAction.invalid(
                f"no tool call or answer found; write {self.format_call('NAME', 'INPUT')} "
                f"or {self.format_answer('ANSWER')}"
            )
        tag = m.group(1).lower()
        close = text.lower().find(f"</{tag}>", m.end())
        if close < 0:
            return ParsedAction.invalid(f"unclosed <{tag}> tag: missing </{tag}>")
        body = text[m.end() : close].strip()
        if len(body) > self.max_argument_chars:
            return ParsedAction.invalid(f"<{tag}> content longer than {self.max_argument_chars}")
        if tag == "answer":
            if not body:
                return ParsedAction.invalid("empty <answer>")
            return ParsedAction("answer", argument=body)
        n_calls = 1 + len(_TOOL_CALL.findall(text, close))
        if n_calls > 1:
            return ParsedAction.invalid(f"one <tool_call> per action; got {n_calls}")
        return self._parse_call(body, tools)

    def _parse_call(self, body: str, tools: Collection[str]) -> ParsedAction:
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            return ParsedAction.invalid(f"<tool_call> is not valid JSON: {e}")
        if not isinstance(call, dict):
            return ParsedAction.invalid(
                '<tool_call> must hold a JSON object {"name": ..., "arguments": {...}}'
            )
        extra = sorted(set(call) - {"name", "arguments"})
        if extra:
            return ParsedAction.invalid(f"<tool_call> has unexpected keys {extra}")
        name = call.get("name")
        if not isinstance(name, str) or not name:
            return ParsedAction.invalid('<tool_call> needs "name": the tool, as a string')
        if name not in tools:
            avail = ", ".join(sorted(tools)) or "none"
            return ParsedAction.invalid(f"unknown tool {name!r}; available: {avail}")
        args = call.get("arguments")
        key = self.argument_name(name)
        if not isinstance(args, dict):
            return ParsedAction.invalid(
                f'"arguments" of tool {name!r} must be a JSON object like {{"{key}": "..."}}'
            )
        if key not in args and len(args) == 1:
            key = next(iter(args))
        if key not in args or len(args) != 1:
            return ParsedAction.invalid(
                f'tool {name!r} takes {{"{key}": "..."}}; got arguments {sorted(args)}'
            )
        value = args[key]
        if not isinstance(value, str):
            return ParsedAction.invalid(f"argument {key!r} of tool {name!r} must be a string")
        value = value.strip()
        if not value:
            return ParsedAction.invalid(f"empty input to tool {name!r}")
        return ParsedAction("tool", name=name, argument=value)

    def format_call(self, name: str, argument: str) -> str:
        call = {"name": name, "arguments": {self.argument_name(name): argument}}
        body = json.dumps(call, ensure_ascii=False).replace("</", "<\\/")
        return f"<tool_call>\n{body}\n</tool_call>"

    def format_answer(self, answer: str) -> str:
        return f"<answer>{answer}</answer>"


# ----------------------------------------------------------------------------- selection


def _template_text(tokenizer) -> str:
    """The tokenizer's chat template(s) as one string ('' when it has none)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates (e.g. "default", "tool_use")
        return "\n".join(str(t) for t in template.values())
    return template if isinstance(template, str) else ""


def has_hermes_tool_format(tokenizer) -> bool:
    """Whether the tokenizer's chat template writes tool calls as `<tool_call>` blocks."""
    return "<tool_call>" in _template_text(tokenizer)


def parser_for_tokenizer(tokenizer, **kwargs: Any) -> ToolCallParser:
    """`ChatTemplateParser(**kwargs)` when the chat template uses the Hermes tool format,
    else `TagParser()`."""
    return ChatTemplateParser(**kwargs) if has_hermes_tool_format(tokenizer) else TagParser()


def select_parser(kind: str, tokenizer=None) -> ToolCallParser | None:
    """The parser for `env.parser = kind`; None means the environment's own default.

    `"tags"`: None (the shipped environments use `TagParser`); `"chat_template"`:
    `ChatTemplateParser()`; `"auto"`: `ChatTemplateParser()` when `tokenizer`'s chat template
    mentions `<tool_call>`, else None.
    """
    if kind not in PARSER_CHOICES:
        raise ValueError(f"env.parser = {kind!r} is not one of {sorted(PARSER_CHOICES)}")
    if kind == "chat_template" or (kind == "auto" and has_hermes_tool_format(tokenizer)):
        return ChatTemplateParser()
    return None


def stop_strings(parser: ToolCallParser | None, base: Sequence[str] = ()) -> tuple[str, ...]:
    """`base` followed by the parser's closing tags (`parser.stop_strings`) not already in it."""
    out = [s for s in base if s]
    for s in getattr(parser, "stop_strings", ()) if parser is not None else ():
        if s not in out:
            out.append(s)
    return tuple(out)


def tool_schemas(env, parser: ToolCallParser | None = None) -> list[dict]:
    """OpenAI/HF-style function schemas of `env.tools`, one string argument each.

    Argument names follow `parser` (a `ChatTemplateParser`; default: its defaults).
    Descriptions: `env.tool_descriptions[name]` (a string, or (tool, argument) strings) when the
    environment has it, else a line for the shipped tools, else "The NAME tool.".
    """
    if not isinstance(parser, ChatTemplateParser):
        parser = ChatTemplateParser()
    own = getattr(env, "tool_descriptions", None) or {}
    out = []
    for name in env.tools:
        desc = own.get(name) or _DEFAULT_DESCRIPTIONS.get(name) or f"The {name} tool."
        tool_desc, arg_desc = (desc, "the tool's input") if isinstance(desc, str) else desc
        key = parser.argument_name(name)
        out.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": tool_desc,
                    "parameters": {
                        "type": "object",
                        "properties": {key: {"type": "string", "description": arg_desc}},
                        "required": [key],
                    },
                },
            }
        )
    return out


def chat_prompt_with_tools(
    tokenizer, env, text: str, *, parser: ToolCallParser | None = None
) -> str:
    """`text` (e.g. `env.reset(example)`) as a user turn rendered by the chat template with the
    environment's tool schemas (`apply_chat_template(..., tools=...)`); `text` unchanged when
    the tokenizer has no chat template."""
    if not _template_text(tokenizer):
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        tools=tool_schemas(env, parser) or None,
        tokenize=False,
        add_generation_prompt=True,
    )


_SENTINEL = "\u2063ASSISTANT-TURN-END\u2063"


def tool_turn(tokenizer, text: str) -> str:
    """`text` as the chat template's tool message between two assistant turns: what the template
    writes after an assistant message's content, through the next generation prompt."""
    head = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        full = tokenizer.apply_chat_template(
            head + [{"role": "tool", "content": text}], tokenize=False, add_generation_prompt=True
        )
    except Exception as e:  # a template that refuses tool messages (jinja raise_exception)
        raise ValueError(
            f"the tokenizer's chat template cannot render a tool message ({e}); use "
            "env.parser = 'tags'"
        ) from None
    at = full.find(_SENTINEL)
    if at < 0 or text not in full[at:]:
        raise ValueError(
            "the tokenizer's chat template does not render an assistant message followed by a "
            "tool message; use env.parser = 'tags'"
        )
    return full[at + len(_SENTINEL) :]


class ChatTurns:
    """`env` as chat turns (module docstring): `reset` and `step` render the observations with
    `tokenizer`'s chat template; everything else is the wrapped environment's.

    `max_observation_tokens` (the sampler's cut, `env.max_observation_tokens`): the
    observation inside a tool turn is shortened so the whole turn fits, keeping the turn's
    closing markers and the next generation prompt (a cut after wrapping would drop them).
    """

    def __init__(
        self, env, tokenizer, parser: ToolCallParser | None = None, max_observation_tokens=None
    ):
        self.env, self.tokenizer, self.parser = env, tokenizer, parser
        self.budget = None
        frame = self._count(tool_turn(tokenizer, ""))  # fails here for a template without tools
        if max_observation_tokens is not None:
            self.budget = int(max_observation_tokens) - frame
            if self.budget < 1:
                raise ValueError(
                    f"env.max_observation_tokens = {max_observation_tokens} leaves no room in the "
                    f"chat template's tool turn ({frame} tokens without the observation); raise it"
                )

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def reset(self, example) -> str:
        first = self.env.reset(example)
        return chat_prompt_with_tools(self.tokenizer, self.env, first, parser=self.parser)

    def step(self, action: str):
        result = self.env.step(action)
        if result.done:
            return result
        obs = result.observation
        if self.budget is not None:
            from jaxrl_llm.envs.base import truncate_to_tokens  # base imports this module

            obs = truncate_to_tokens(obs, self.budget, self._count)
        return dataclasses.replace(result, observation=tool_turn(self.tokenizer, obs))

    def __getattr__(self, name):  # examples, episode_stats, tools, demonstration, ...
        if name == "env":  # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.env, name)
