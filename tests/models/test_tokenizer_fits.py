"""A tokenizer that can produce ids past the model's vocabulary is refused, naming both sizes."""

import pytest

from jaxrl_llm import models


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    path = models.build_builtin_tokenizer(str(tmp_path_factory.mktemp("tok")))
    return models.load_tokenizer(path)


def test_builtin_tokenizer_fits_its_own_and_a_padded_vocab(builtin):
    assert len(builtin) == 100
    models.check_tokenizer_fits(builtin, models.ModelConfig.tiny(vocab_size=100))
    models.check_tokenizer_fits(builtin, models.ModelConfig.tiny(vocab_size=128))


def test_more_tokens_than_the_vocab_is_refused(builtin):
    with pytest.raises(ValueError) as e:
        models.check_tokenizer_fits(builtin, models.ModelConfig.tiny(vocab_size=64))
    assert str(e.value).startswith(
        "the tokenizer has 100 tokens but the model's vocab_size is 64: ids 64..99 have no embedding"
    )


class _Tokenizer:
    """32 ids, with the bos, eos and pad ids given."""

    bos_token, eos_token, pad_token = "<bos>", "<eos>", "<pad>"

    def __init__(self, **ids):
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 1, 2, 0
        for name, value in ids.items():
            setattr(self, name, value)

    def __len__(self):
        return 32


@pytest.mark.parametrize("name", ["bos", "eos", "pad"])
def test_special_token_past_the_vocab_is_refused(name):
    tokenizer = _Tokenizer(**{f"{name}_token_id": 40})
    models.check_tokenizer_fits(_Tokenizer(), models.ModelConfig.tiny(vocab_size=32))
    with pytest.raises(ValueError) as e:
        models.check_tokenizer_fits(tokenizer, models.ModelConfig.tiny(vocab_size=32))
    assert str(e.value) == (
        f"the tokenizer's {name} token '<{name}>' has id 40, outside the model's vocab_size = 32"
    )
