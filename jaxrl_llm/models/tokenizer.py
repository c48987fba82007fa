"""Tokenizers: any HF tokenizer folder, and a built-in character-level one for synthetic tasks.

    tokenizer = load_tokenizer(path)          # transformers.AutoTokenizer, left padding, pad → eos fallback
    text = chat_prompt(tokenizer, "2+3=?")    # the chat template when the tokenizer has one
    build_builtin_tokenizer(path)             # writes a char-level HF tokenizer folder (vocab < 128)
    check_tokenizer_fits(tokenizer, config)   # ValueError if an id can reach past the model's vocab

Tokenizers are host-side objects; they never enter jitted code.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from typing import Any

__all__ = [
    "load_tokenizer",
    "chat_prompt",
    "build_builtin_tokenizer",
    "check_tokenizer_fits",
    "BUILTIN_SPECIAL_TOKENS",
    "BUILTIN_CHARACTERS",
]

BUILTIN_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# digits, operators, letters, punctuation, space and newline (one token each)
BUILTIN_CHARACTERS = (
    string.digits
    + "+-*/=<>()^%"
    + string.ascii_lowercase
    + string.ascii_uppercase
    + ".,:;!?'\"_[]{}#@&$|~`\\"
    + " \n"
)


def load_tokenizer(path: str | os.PathLike, **kwargs: Any):
    """`transformers.AutoTokenizer` from a local folder, padding on the left.

    The pad token falls back to the eos token when the tokenizer has none.
    Extra keyword arguments go to `AutoTokenizer.from_pretrained`.
    """
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder {path} does not exist (local folders only)")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer at {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_tokenizer_fits(tokenizer, model_config) -> None:
    """Raises `ValueError` when `tokenizer` can produce an id `model_config` has no row for.

    That is: more tokens than `model_config.vocab_size` (`len(tokenizer)` counts
    added tokens), or a bos / eos / pad id >= `vocab_size`. A model whose vocab
    is larger than its tokenizer (padded embedding tables) fits. Unchecked, an
    id past the table gathers garbage: losses go NaN and every update is skipped.
    """
    vocab = int(model_config.vocab_size)
    size = len(tokenizer)
    if size > vocab:
        raise ValueError(
            f"the tokenizer has {size} tokens but the model's vocab_size is {vocab}: ids "
            f"{vocab}..{size - 1} have no embedding (use the tokenizer the model was trained with)"
        )
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None and not 0 <= int(token_id) < vocab:
            token = getattr(tokenizer, f"{name}_token", None)
            raise ValueError(
                f"the tokenizer's {name} token {token!r} has id {token_id}, outside the model's "
                f"vocab_size = {vocab}"
            )


def chat_prompt(
    tokenizer,
    messages: str | Sequence[dict],
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Prompt text for `messages` (a user string or a list of `{"role", "content"}` dicts).

    Uses `tokenizer.apply_chat_template` when the tokenizer has a chat
    template; otherwise the contents joined by newlines (the plain-text
    convention of the built-in tokenizer).
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    messages = list(messages)
    if system is not None:
        messages = [{"role": "system", "content": system}] + messages
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return "\n".join(m["content"] for m in messages)


def build_builtin_tokenizer(path: str | os.PathLike) -> str:
    """Write a character-level HF tokenizer folder to `path` and return the path.

    Vocabulary: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then one token per
    character of `BUILTIN_CHARACTERS` (digits, operators, letters,
    punctuation, space, newline); 100 tokens in all. Unknown characters map to
    `<unk>`; decoding concatenates characters. `load_tokenizer(path)` reads it
    like any HF tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(BUILTIN_SPECIAL_TOKENS)}
    for ch in BUILTIN_CHARACTERS:
        vocab[ch] = len(vocab)
    assert len(vocab) <= 128, len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
    return path
