"""Tool-call parsing: the policy's action text → a `ParsedAction`. A replaceable piece.

An environment never reads the action text itself; it asks its `ToolCallParser`. Any object
with `parse(text, tools) -> ParsedAction` and `format_call(name, argument) -> str`,
`format_answer(answer) -> str` (used for prompts and scripted tests) can replace the default.
A parser may also name `stop_strings` (the texts that end an action in its format; the trainer
adds them to `env.stop_strings`). The chat template's format (`<tool_call>` JSON, as Qwen's
templates write it) is `chat_tools.ChatTemplateParser`.

The default `TagParser` reads one call per action, in this format:

    <tool name="calc">734*58</tool>        a tool call: name, then the argument text
    <answer>42572</answer>                 the final answer

Rules (each violation gives `kind="invalid"` with a message the environment shows the model):

- Text before the first tag is free (reasoning); text after the first closed call is ignored
  (a sampler stops at `</tool>` / `</answer>`).
- The first `<tool` or `<answer>` decides the kind. It must be closed (`</tool>`,
  `</answer>`); a `<tool` tag needs `name="..."` naming one of the environment's tools.
- The argument / answer is the text between the tags, stripped of surrounding whitespace,
  and must not be empty.
- No tag at all is invalid ("no tool call or answer").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from typing import ClassVar, Literal, Protocol, runtime_checkable

__all__ = ["ParsedAction", "TagParser", "ToolCallParser"]

ActionKind = Literal["tool", "answer", "invalid"]


@dataclasses.dataclass(frozen=True)
class ParsedAction:
    """One parsed action. `name`: the tool ('' for answers); `argument`: tool input or answer
    text; `error`: why the action is invalid ('' otherwise)."""

    kind: ActionKind
    name: str = ""
    argument: str = ""
    error: str = ""

    @classmethod
    def invalid(cls, error: str) -> ParsedAction:
        return cls("invalid", error=error)


@runtime_checkable
class ToolCallParser(Protocol):
    """Turns action text into a `ParsedAction`; `tools` are the names the environment offers."""

    def parse(self, text: str, tools: Collection[str]) -> ParsedAction: ...

    def format_call(self, name: str, argument: str) -> str: ...

    def format_answer(self, answer: str) -> str: ...


_OPEN = re.compile(r"<(tool|answer)\b([^>]*)(>?)", re.IGNORECASE)
_NAME = re.compile(r"""^\s*name\s*=\s*(?:"([^"]*)"|'([^']*)')\s*$""")


@dataclasses.dataclass(frozen=True)
class TagParser:
    """The default format: `<tool name="NAME">ARG</tool>` or `<answer>TEXT</answer>`."""

    max_argument_chars: int = 4000
    stop_strings: ClassVar[tuple[str, ...]] = ("</tool>", "</answer>")

    def parse(self, text: str, tools: Collection[str]) -> ParsedAction:
        m = _OPEN.search(text)
        if m is None:
            return ParsedAction.invalid(
                f"no tool call or answer found; write {self.format_call('NAME', 'INPUT')} "
                f"or {self.format_answer('ANSWER')}"
            )
        tag, attrs, closed_bracket = m.group(1).lower(), m.group(2), m.group(3)
        if not closed_bracket:
            return ParsedAction.invalid(f"unterminated <{tag} tag (missing '>')")
        close = text.lower().find(f"</{tag}>", m.end())
        if close < 0:
            return ParsedAction.invalid(f"unclosed <{tag}> tag: missing </{tag}>")
        body = text[m.end() : close].strip()
        if len(body) > self.max_argument_chars:
            return ParsedAction.invalid(f"<{tag}> content longer than {self.max_argument_chars}")
        if tag == "answer":
            if attrs.strip():
                return ParsedAction.invalid("<answer> takes no attributes")
            if not body:
                return ParsedAction.invalid("empty <answer>")
            return ParsedAction("answer", argument=body)
        nm = _NAME.match(attrs)
        if nm is None:
            return ParsedAction.invalid('<tool> needs exactly one attribute name="TOOL"')
        name = nm.group(1) if nm.group(1) is not None else nm.group(2)
        if name not in tools:
            avail = ", ".join(sorted(tools)) or "none"
            return ParsedAction.invalid(f"unknown tool {name!r}; available: {avail}")
        if not body:
            return ParsedAction.invalid(f"empty input to tool {name!r}")
        return ParsedAction("tool", name=name, argument=body)

    def format_call(self, name: str, argument: str) -> str:
        return f'<tool name="{name}">{argument}</tool>'

    def format_answer(self, answer: str) -> str:
        return f"<answer>{answer}</answer>"
