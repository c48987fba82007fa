"""The default tag parser, and that a different parser can replace it."""

import json

import pytest

from jaxrl_llm.envs import ParsedAction, TagParser, ToolCallParser
from jaxrl_llm.envs.calculator import CalculatorEnv
from jaxrl_llm.tasks import Example

TOOLS = ("calc", "search")


def parse(text):
    return TagParser().parse(text, TOOLS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('<tool name="calc">1+2</tool>', ParsedAction("tool", "calc", "1+2")),
        (
            "I think... <tool name='search'>  lake  </tool> then",
            ParsedAction("tool", "search", "lake"),
        ),
        ('<tool name="calc">1</tool> <answer>3</answer>', ParsedAction("tool", "calc", "1")),
        ("<answer> 42 </answer>", ParsedAction("answer", "", "42")),
        ("so the result is <answer>a\nb</answer>", ParsedAction("answer", "", "a\nb")),
        ('<TOOL name="calc">7</TOOL>', ParsedAction("tool", "calc", "7")),
    ],
)
def test_valid_calls(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ('<tool name="calc">1+2', "unclosed <tool> tag: missing </tool>"),
        ("<answer>42", "unclosed <answer> tag: missing </answer>"),
        ('<tool name="calc"', "unterminated <tool tag (missing '>')"),
        ('<tool name="rm">x</tool>', "unknown tool 'rm'; available: calc, search"),
        ('<tool name="calc"></tool>', "empty input to tool 'calc'"),
        ("<answer>   </answer>", "empty <answer>"),
        ("<tool>1+2</tool>", '<tool> needs exactly one attribute name="TOOL"'),
        ('<tool name="calc" x="1">1</tool>', '<tool> needs exactly one attribute name="TOOL"'),
        ('<answer id="1">2</answer>', "<answer> takes no attributes"),
        ('<tools name="calc">1</tools>', "no tool call or answer found"),
        ("", "no tool call or answer found"),
    ],
)
def test_malformed_calls_are_invalid_with_a_message(text, message):
    act = parse(text)
    assert act.kind == "invalid" and act.name == "" and act.argument == ""
    assert act.error.startswith(message)


def test_no_tools_offered_and_overlong_argument():
    assert TagParser().parse('<tool name="calc">1</tool>', ()).error == (
        "unknown tool 'calc'; available: none"
    )
    act = TagParser(max_argument_chars=5).parse("<answer>123456</answer>", ())
    assert act.kind == "invalid" and "longer than 5" in act.error


def test_format_round_trips():
    p = TagParser()
    assert isinstance(p, ToolCallParser)
    assert p.parse(p.format_call("calc", "2*3"), TOOLS) == ParsedAction("tool", "calc", "2*3")
    assert p.parse(p.format_answer("6"), TOOLS) == ParsedAction("answer", "", "6")


class JsonParser:
    """A replacement format: {"tool": NAME, "input": ARG} or {"answer": TEXT}."""

    def parse(self, text, tools):
        try:
            obj = json.loads(text)
        except ValueError as e:
            return ParsedAction.invalid(f"not JSON: {e}")
        if "answer" in obj:
            return ParsedAction("answer", argument=str(obj["answer"]))
        if obj.get("tool") not in tools:
            return ParsedAction.invalid(f"unknown tool {obj.get('tool')!r}")
        return ParsedAction("tool", obj["tool"], str(obj.get("input", "")))

    def format_call(self, name, argument):
        return json.dumps({"tool": name, "input": argument})

    def format_answer(self, answer):
        return json.dumps({"answer": answer})


def test_an_environment_takes_another_parser():
    env = CalculatorEnv(parser=JsonParser())
    first = env.reset(Example(id="c", prompt="Question: 12*3=?", answer="36"))
    assert '{"tool": "calc", "input": "EXPRESSION"}' in first
    assert env.step('{"tool": "calc", "input": "12*3"}').observation == "36"
    bad = env.step('<tool name="calc">12*3</tool>')
    assert bad.info["invalid_call"] == 1 and bad.observation.startswith("Error: not JSON")
    last = env.step('{"answer": "36"}')
    assert (last.reward, last.done) == (1.0, True)
