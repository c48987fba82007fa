"""Built-in char tokenizer round trip; load_tokenizer padding / pad fallback; chat template helper."""

import pytest

from jaxrl_llm.models import build_builtin_tokenizer, chat_prompt, load_tokenizer
from jaxrl_llm.models.tokenizer import BUILTIN_CHARACTERS


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    return load_tokenizer(build_builtin_tokenizer(tmp_path_factory.mktemp("tok")))


def test_builtin_ids_and_round_trip(builtin):
    tok = builtin
    assert len(tok) == 4 + len(BUILTIN_CHARACTERS) <= 128
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "left"
    # '0' is the first character after the 4 special tokens; 'a' follows digits and 11 operators
    assert tok("0a")["input_ids"] == [4, 4 + 10 + 11]
    text = "Q: 12*(3+4) = ?\nA: 84. Done!"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and 3 not in ids  # one token per char, nothing unknown
    assert tok.decode(ids) == text
    assert tok.decode([1] + ids + [2], skip_special_tokens=True) == text
    assert tok("€")["input_ids"] == [3]  # <unk>


def test_builtin_left_padding(builtin):
    enc = builtin(["7+8", "9"], padding=True)
    assert enc["input_ids"][1] == [0, 0, builtin.convert_tokens_to_ids("9")]
    assert enc["attention_mask"] == [[1, 1, 1], [0, 0, 1]]


def test_pad_falls_back_to_eos_and_chat_template(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hi": 2}, unk_token="<unk>"))
    PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == "</s>" and tok.pad_token_id == 1 and tok.padding_side == "left"

    assert (
        chat_prompt(tok, "2+2?", system="Be brief.") == "Be brief.\n2+2?"
    )  # no template: plain text
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert (
        chat_prompt(tok, "2+2?", system="Be brief.") == "<system>Be brief.\n<user>2+2?\n<assistant>"
    )
    assert (
        chat_prompt(tok, [{"role": "user", "content": "x"}], add_generation_prompt=False)
        == "<user>x\n"
    )
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "absent")
