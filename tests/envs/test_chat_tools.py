"""The chat template's tool-call format (Hermes `<tool_call>` JSON), choosing a parser from a
tokenizer or `env.parser`, tool schemas for `apply_chat_template`, and the stop strings."""

import copy
import json

import pytest

from jaxrl_llm.envs import chat_tools
from jaxrl_llm.envs.base import EnvSpec, register_env
from jaxrl_llm.envs.calculator import CalculatorEnv
from jaxrl_llm.envs.chat_tools import ChatTemplateParser
from jaxrl_llm.envs.tools import ParsedAction, TagParser
from jaxrl_llm.models.tokenizer import build_builtin_tokenizer, load_tokenizer
from jaxrl_llm.tasks.base import Example
from jaxrl_llm.trainers import agent as agent_lib
from jaxrl_llm.trainers import config as config_lib

TOOLS = ("calc", "search")
P = ChatTemplateParser()

# The tools block of the Qwen2.5 chat template, shortened (same tags and JSON layout).
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% endif %}"
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PLAIN_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Three char-level tokenizers built here: Hermes tools template, plain template, none."""
    path = build_builtin_tokenizer(tmp_path_factory.mktemp("tok"))
    hermes, plain, bare = load_tokenizer(path), load_tokenizer(path), load_tokenizer(path)
    hermes.chat_template = HERMES_TEMPLATE
    plain.chat_template = PLAIN_TEMPLATE
    assert bare.chat_template is None
    return hermes, plain, bare


# ----------------------------------------------------------------------------- the format


def test_format_call_is_the_hermes_layout():
    assert P.format_call("calc", "734*58") == (
        '<tool_call>\n{"name": "calc", "arguments": {"expression": "734*58"}}\n</tool_call>'
    )
    assert P.format_answer("42572") == "<answer>42572</answer>"
    assert '"query": "who"' in P.format_call("search", "who")
    assert '"input": "x"' in P.format_call("other", "x")  # undeclared tools: "input"


@pytest.mark.parametrize(
    "argument",
    ["734*58", 'say "hi"', "a\nb\tc", "back\\slash", "naïve ∑", "x </tool_call> y", "{'a': 1}"],
)
def test_round_trip_of_calls(argument):
    tools = ("calc", "other")
    for name in tools:
        text = "Let me compute.\n" + P.format_call(name, argument)
        assert P.parse(text, tools) == ParsedAction("tool", name=name, argument=argument)


def test_round_trip_of_answers_and_custom_argument_names():
    assert P.parse("<think>easy</think>" + P.format_answer("42"), TOOLS) == ParsedAction(
        "answer", argument="42"
    )
    custom = ChatTemplateParser(argument_names={"calc": "expr"})
    call = custom.format_call("calc", "2*3")
    assert json.loads(call.split("\n")[1]) == {"name": "calc", "arguments": {"expr": "2*3"}}
    assert custom.parse(call, TOOLS) == ParsedAction("tool", name="calc", argument="2*3")


def test_reads_what_a_qwen_model_writes():
    text = (
        "<think>\nI should use the calculator.\n</think>\n\n<tool_call>\n"
        '{"name": "calc", "arguments": {"expression": " 734 * 58 "}}\n</tool_call>'
    )
    assert P.parse(text, TOOLS) == ParsedAction("tool", name="calc", argument="734 * 58")
    # one argument under another name is that argument; text after the call is ignored
    other = '<tool_call>{"name":"calc","arguments":{"expr":"1+2"}}</tool_call> trailing'
    assert P.parse(other, TOOLS) == ParsedAction("tool", name="calc", argument="1+2")


@pytest.mark.parametrize(
    "text, message",
    [
        ("the answer is 5", "no tool call or answer found"),
        ("<tool_call>\n{\"name\": 'calc'}\n</tool_call>", "not valid JSON"),
        (
            '<tool_call>{"name": "calc", "arguments": {"expression": "1"}</tool_call>',
            "not valid JSON",
        ),
        ("<tool_call></tool_call>", "not valid JSON"),
        ('<tool_call>["calc", "1+2"]</tool_call>', "must hold a JSON object"),
        (
            '<tool_call>{"name": "rm", "arguments": {"input": "-rf"}}</tool_call>',
            "unknown tool 'rm'",
        ),
        ('<tool_call>{"arguments": {"expression": "1+2"}}</tool_call>', 'needs "name"'),
        ('<tool_call>{"name": 3, "arguments": {"expression": "1"}}</tool_call>', 'needs "name"'),
        ('<tool_call>{"name": "calc"}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "calc", "arguments": "1+2"}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "calc", "arguments": ["1+2"]}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "calc", "arguments": {}}</tool_call>', 'takes {"expression"'),
        (
            '<tool_call>{"name": "calc", "arguments": {"a": "1", "b": "2"}}</tool_call>',
            'takes {"expression"',
        ),
        (
            '<tool_call>{"name": "calc", "arguments": {"expression": 12}}</tool_call>',
            "must be a string",
        ),
        (
            '<tool_call>{"name": "calc", "arguments": {"expression": "  "}}</tool_call>',
            "empty input to tool 'calc'",
        ),
        (
            '<tool_call>{"name": "calc", "arguments": {"expression": "1"}, "id": 1}</tool_call>',
            "unexpected keys ['id']",
        ),
        ('<tool_call>\n{"name": "calc", "arguments": {"expression": "1"}}', "unclosed <tool_call>"),
        (P.format_call("calc", "1+2") + "\n" + P.format_call("calc", "3"), "one <tool_call> per"),
        ("<answer>  </answer>", "empty <answer>"),
        ("<answer>42", "unclosed <answer>"),
        ('<tool name="calc">1+2</tool>', "no tool call or answer found"),
    ],
)
def test_malformed_actions_are_invalid_with_a_message(text, message):
    act = P.parse(text, TOOLS)
    assert act.kind == "invalid" and message in act.error, act
    assert (act.name, act.argument) == ("", "")


def test_overlong_argument_is_invalid():
    act = ChatTemplateParser(max_argument_chars=20).parse(P.format_call("calc", "1+" * 20), TOOLS)
    assert act.kind == "invalid" and "longer than 20" in act.error


# ----------------------------------------------------------------------------- choosing a parser


def test_detection_from_the_tokenizer(tokenizers):
    hermes, plain, bare = tokenizers
    assert chat_tools.has_hermes_tool_format(hermes)
    assert not chat_tools.has_hermes_tool_format(plain)
    assert not chat_tools.has_hermes_tool_format(bare)
    assert isinstance(chat_tools.parser_for_tokenizer(hermes), ChatTemplateParser)
    assert isinstance(chat_tools.parser_for_tokenizer(plain), TagParser)
    assert isinstance(chat_tools.parser_for_tokenizer(bare), TagParser)

    class Named:  # several named templates, one of them the tool-use one
        chat_template = {"default": PLAIN_TEMPLATE, "tool_use": HERMES_TEMPLATE}

    assert isinstance(chat_tools.parser_for_tokenizer(Named()), ChatTemplateParser)


def test_select_parser(tokenizers):
    hermes, plain, _ = tokenizers
    assert chat_tools.select_parser("tags", hermes) is None  # the environment's own
    assert chat_tools.select_parser("auto", plain) is None
    assert chat_tools.select_parser("auto", None) is None
    assert isinstance(chat_tools.select_parser("auto", hermes), ChatTemplateParser)
    assert isinstance(chat_tools.select_parser("chat_template", plain), ChatTemplateParser)
    with pytest.raises(ValueError, match=r"env.parser = 'xml' is not one of \['auto', "):
        chat_tools.select_parser("xml", hermes)


def test_tool_schemas_render_in_the_chat_template(tokenizers):
    hermes, plain, bare = tokenizers
    env = CalculatorEnv()
    (schema,) = chat_tools.tool_schemas(env)
    assert schema["type"] == "function" and schema["function"]["name"] == "calc"
    params = schema["function"]["parameters"]
    assert params["required"] == ["expression"]
    assert params["properties"]["expression"]["type"] == "string"
    first = env.reset(Example(id="c", prompt="Question: 12*3=?", answer="36"))
    text = chat_tools.chat_prompt_with_tools(hermes, env, first)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    listed = text.split("<tools>")[2].split("</tools>")[0]  # [1] is the "<tools></tools>" line
    assert json.loads(listed) == schema
    assert "Question: 12*3=?<|im_end|>" in text
    no_tools = chat_tools.chat_prompt_with_tools(plain, env, first)
    assert no_tools.startswith("<|im_start|>user\n") and "<tools>" not in no_tools
    assert chat_tools.chat_prompt_with_tools(bare, env, first) == first


# ----------------------------------------------------------------------------- environments


def test_calculator_episode_in_the_chat_template_format(tokenizers):
    hermes, _, _ = tokenizers
    spec = EnvSpec.from_config({"name": "calculator", "parser": "auto"}, tokenizer=hermes)
    env = spec.make()
    assert isinstance(env.parser, ChatTemplateParser)
    first = env.reset(Example(id="calculator:734*58", prompt="Question: 734*58=?", answer="42572"))
    assert '<tool_call>\n{"name": "calc", "arguments": {"expression": "EXPRESSION"}}' in first
    assert "<answer>NUMBER</answer>" in first
    old = env.step('<tool name="calc">734*58</tool>')  # the tag format is not read here
    assert old.info["invalid_call"] == 1 and old.observation.startswith("Error: no tool call")
    call = env.step(
        'I will use the tool.\n<tool_call>\n{"name": "calc", "arguments": {"expression": '
        '"734*58"}}\n</tool_call>'
    )
    assert (call.observation, call.reward, call.done) == ("42572", 0.0, False)
    assert call.info["tool_call"] == 1 and call.info["tool"] == "calc"
    last = env.step("<answer>42572</answer>")
    assert (last.reward, last.done, last.info["correct"]) == (1.0, True, 1)
    assert env.episode_stats() == {"turns": 3, "invalid_calls": 1, "tool_calls": 1, "return": 1.0}


def test_env_spec_default_keeps_the_tag_format(tokenizers):
    hermes, _, _ = tokenizers
    for cfg in ({"name": "calculator"}, {"name": "calculator", "parser": "tags"}):
        spec = EnvSpec.from_config(cfg, tokenizer=hermes)
        assert spec.parser is None and type(spec.make().parser) is TagParser


def test_an_env_without_a_parser_argument_refuses_a_chosen_parser():
    class Plain:
        name, max_turns, max_observation_tokens = "plain", 1, None
        examples = reset = step = None

    register_env("plain_no_parser_test", lambda: Plain())
    assert EnvSpec.from_config({"name": "plain_no_parser_test"}).make().name == "plain"
    spec = EnvSpec.from_config({"name": "plain_no_parser_test", "parser": "chat_template"})
    with pytest.raises(ValueError, match="takes no parser= argument.*env.parser = 'tags'"):
        spec.make()


# ----------------------------------------------------------------------------- config and stops


def test_stop_strings():
    base = ("</tool>", "</answer>")
    assert chat_tools.stop_strings(None, base) == base
    assert chat_tools.stop_strings(TagParser(), base) == base
    assert chat_tools.stop_strings(ChatTemplateParser(), base) == base + ("</tool_call>",)
    assert chat_tools.stop_strings(ChatTemplateParser(), ()) == ("</tool_call>", "</answer>")


def _env_config(**env):
    c = config_lib.base_config(runlocal=True)
    c.env.name = "calculator"
    for k, v in env.items():
        setattr(c.env, k, v)
    return c


def test_config_field_is_validated():
    for kind in ("tags", "chat_template", "auto"):
        config_lib.validate(_env_config(parser=kind))
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(_env_config(parser="xml"))
    assert str(e.value) == (
        "config.env.parser = 'xml' is not one of ['auto', 'chat_template', 'tags']"
    )


def test_agent_uses_the_configured_parser_and_its_stop_strings(tokenizers):
    hermes, plain, _ = tokenizers
    enc = lambda s: tuple(hermes.encode(s, add_special_tokens=False))  # noqa: E731
    default = agent_lib.Agent(_env_config(), hermes)
    assert default.parser is None
    assert default.turns.stop_sequences == (enc("</tool>"), enc("</answer>"))
    for config, tok in (  # chat turns: room for the template's tool turn (61 characters)
        (_env_config(parser="auto", max_observation_tokens=100), hermes),
        (_env_config(parser="chat_template", max_observation_tokens=100), plain),
    ):
        agent = agent_lib.Agent(config, tok)
        assert isinstance(agent.parser, ChatTemplateParser)
        assert agent.turns.stop_sequences == (enc("</tool>"), enc("</answer>"), enc("</tool_call>"))
        (e,) = agent.task.examples("train", 1, 0)
        orig = agent.task.original(e)
        problem = orig.id.split(":", 1)[1]
        assert '"arguments": {"expression": "EXPRESSION"}' in e.prompt
        # chat turns: the prompt is the template's user turn (tools block and all), each
        # observation the template's tool turn
        env = agent.task.spec.make()
        assert e.prompt == chat_tools.chat_prompt_with_tools(tok, env, env.reset(orig))
        assert e.prompt.endswith("<|im_start|>assistant\n")
        assert agent.task.sft_target(e) == (
            P.format_call("calc", problem)
            + chat_tools.tool_turn(tok, orig.answer)
            + P.format_answer(orig.answer)
        )
    assert agent_lib.Agent(_env_config(parser="auto"), plain).parser is None


# ----------------------------------------------------------------------------- chat turns
QWEN_TOOL_TURNS = (  # the Qwen2.5 template's rendering of tool messages (shortened)
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_TOOL_ROLE = (
    "{%- for message in messages %}{%- if message.role == 'tool' %}"
    "{{ raise_exception('no tool role') }}{%- endif %}{{ message.content }}{%- endfor %}"
)


def test_tool_turn_is_the_templates_own_layout(tokenizers):
    hermes, plain, _ = tokenizers
    assert chat_tools.tool_turn(hermes, "42572") == (
        "<|im_end|>\n<|im_start|>tool\n42572<|im_end|>\n<|im_start|>assistant\n"
    )
    qwen = copy.copy(plain)
    qwen.chat_template = QWEN_TOOL_TURNS
    assert chat_tools.tool_turn(qwen, "42572") == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n42572\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    refusing = copy.copy(plain)
    refusing.chat_template = NO_TOOL_ROLE
    with pytest.raises(ValueError, match="cannot render a tool message.*env.parser = 'tags'"):
        chat_tools.ChatTurns(EnvSpec.from_config({"name": "calculator"}).make(), refusing, P)


def test_agent_without_a_chat_template_keeps_plain_observations(tokenizers):
    _, _, bare = tokenizers
    agent = agent_lib.Agent(_env_config(parser="chat_template"), bare)
    (e,) = agent.task.examples("train", 1, 0)
    orig = agent.task.original(e)
    problem = orig.id.split(":", 1)[1]
    assert agent.task.sft_target(e) == (
        P.format_call("calc", problem) + orig.answer + P.format_answer(orig.answer)
    )


def test_chat_turns_in_multi_turn_episodes(tokenizers):
    """`run_episodes` on a wrapped environment: the prompt tokens are the chat prompt's, the
    observation tokens after each non-final action are the template's tool turn, and none of
    them is a policy token."""
    import jax

    from jaxrl_llm import models
    from jaxrl_llm.rollout import SamplingParams
    from jaxrl_llm.rollout.multiturn import TurnParams, run_episodes

    hermes, _, _ = tokenizers
    config = models.ModelConfig.tiny(vocab_size=len(hermes))
    params = models.init_params(config, jax.random.key(0))
    agent = agent_lib.Agent(_env_config(parser="chat_template", max_observation_tokens=100), hermes)
    (e,) = agent.task.examples("train", 1, 0)
    ro, stats, _ = run_episodes(
        params,
        config,
        agent.task.make_env,
        [agent.task.original(e)],
        jax.random.key(1),
        SamplingParams(max_new_tokens=320, n=2),
        TurnParams(max_turns=3, max_action_tokens=4, max_observation_tokens=100),
        tokenizer=hermes,
        bucket_lengths=(1024,),
    )
    prompt = hermes.encode(e.prompt, add_special_tokens=False)
    for r in range(2):
        got = [t for t, m in zip(ro.prompt_tokens[r], ro.prompt_mask[r]) if m]
        assert got[-len(prompt) :] == prompt
        assert stats.turns[r] >= 2  # a random policy's actions are invalid calls, not answers
        obs = ro.tokens[r][(ro.mask[r] > 0) & (ro.loss_mask[r] == 0)]
        text = hermes.decode(obs, skip_special_tokens=True)
        assert text.startswith("<|im_end|>\n<|im_start|>tool\nError:")
        # each error observation was cut inside its turn: the generation prompt survives
        assert text.count("<|im_start|>assistant\n") == stats.turns[r] - 1
        assert text.endswith("<|im_start|>assistant\n") and not stats.obs_truncated[r]
    with pytest.raises(ValueError, match="max_observation_tokens = 10 leaves no room"):
        agent_lib.Agent(_env_config(parser="chat_template", max_observation_tokens=10), hermes)
