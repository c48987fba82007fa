"""Preference pairs for reward models and offline preference losses.

    pairs = load_preference_pairs(path)              # json / jsonl / parquet
    pairs = ArithPreferenceTask(noise=0.1).pairs("train", n=2000, seed=0)
    acc = pairwise_accuracy(chosen_scores, rejected_scores)

A `PreferencePair(prompt, chosen, rejected, meta)` holds text: the prompt and the
preferred (chosen) and dispreferred (rejected) completions; `meta` keeps the row's
other fields.

File layouts (one row each; the first that fits is used):

1. Text columns `prompt`, `chosen`, `rejected` (TRL's "standard" layout).
2. Chat-message lists, `chosen: [{"role": "user", "content": ...}, {"role":
   "assistant", "content": ...}]` and the same for `rejected`, as in
   UltraFeedback-binarized style sets. The prompt is the shared prefix of the two
   conversations (every message before the last one, which must be equal in
   both), the completion is the last message, which must be an assistant turn.
   A `prompt` column may hold the shared prefix instead (a message list, TRL's
   "conversational" layout; or a string used as the one user turn when the
   lists hold only the answers). The prefix is turned into text by `render`
   (default: the contents joined by newlines, as `models.chat_prompt` does for a
   tokenizer without a chat template; pass `render=lambda m:
   tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)` to use
   a chat template); `meta["prompt_messages"]` keeps the messages.
3. Text `chosen` / `rejected` without a prompt, Anthropic-HH style
   ("\\n\\nHuman: …\\n\\nAssistant: …"): the prompt is the common prefix up to
   and including its last "\\n\\nAssistant:", the completions the rest.

A row that fits none of them (a missing or non-text field, a malformed message,
conversations that differ before the last turn, identical chosen and rejected
completions, an empty completion) is skipped and counted by `tasks.datafiles`
(one warning; `DataError` past `max_bad_fraction`).

The synthetic task, `ArithPreferenceTask`, runs offline: arithmetic prompts of
`ArithTask`, the chosen completion is the correct answer, the rejected one a wrong
answer one edit away (off by one or ten, one digit changed, inserted or deleted,
the sign dropped or added). Lengths are decorrelated from correctness: a fraction
`same_length_fraction` of the wrong answers has the answer's length, and the rest
is longer as often as shorter (a running balance, so |#longer − #shorter| ≤ 1
plus the few answers that cannot be shortened), hence P(chosen shorter | lengths
differ) ≈ 0.5 and a length-only scorer is at chance. The training split swaps
chosen and rejected with probability `noise` (`meta["flipped"]`); the test split
is clean and balanced the same way. Train and test prompts are disjoint (ArithTask's
hash split).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrl_llm.tasks import datafiles
from jaxrl_llm.tasks.arith import ArithTask
from jaxrl_llm.tasks.base import check_split, stable_hash

__all__ = [
    "PreferencePair",
    "parse_preference_row",
    "load_preference_pairs",
    "render_messages",
    "ArithPreferenceTask",
    "wrong_answers",
    "pairwise_accuracy",
    "length_stats",
]

_HH_MARKER = "\n\nAssistant:"


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) completion."""

    prompt: str
    chosen: str
    rejected: str
    meta: dict = dataclasses.field(default_factory=dict, compare=False)


def render_messages(messages: Sequence[dict]) -> str:
    """The contents of `messages` joined by newlines (a prompt without a chat template)."""
    return "\n".join(m["content"] for m in messages)


def _messages(value, field: str) -> list[dict]:
    if not value:
        raise datafiles.BadRow(f"field {field!r} is an empty message list")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise datafiles.BadRow(f"{field}[{j}] is {type(m).__name__}, not a message object")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise datafiles.BadRow(
                f"{field}[{j}] needs text 'role' and 'content' (got {sorted(m)})"
            )
        out.append({"role": role, "content": content})
    return out


def _from_messages(prompt, chosen, rejected, render):
    prefix = []
    if isinstance(prompt, list):
        prefix = _messages(prompt, "prompt")
    elif prompt is not None and not isinstance(prompt, str):
        raise datafiles.BadRow(f"field 'prompt' is {type(prompt).__name__}, not text or messages")
    full_c = prefix + _messages(chosen, "chosen")
    full_r = prefix + _messages(rejected, "rejected")
    for name, conv in (("chosen", full_c), ("rejected", full_r)):
        if conv[-1]["role"] != "assistant":
            raise datafiles.BadRow(
                f"the last {name} message is {conv[-1]['role']!r}, not assistant"
            )
    if full_c[:-1] != full_r[:-1]:
        raise datafiles.BadRow("chosen and rejected conversations differ before the last turn")
    shared = full_c[:-1]
    if not shared:
        if not isinstance(prompt, str):
            raise datafiles.BadRow("no prompt: no shared messages and no text 'prompt' field")
        shared = [{"role": "user", "content": prompt}]
    return render(shared), full_c[-1]["content"], full_r[-1]["content"], shared


def _from_hh(chosen: str, rejected: str):
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(_HH_MARKER, 0, n)  # the last turn marker inside the shared prefix
    if cut < 0:
        raise datafiles.BadRow(
            "no 'prompt' field and the shared prefix of chosen and rejected has no "
            f"{_HH_MARKER!r} turn"
        )
    cut += len(_HH_MARKER)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def parse_preference_row(
    record: dict,
    *,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    render: Callable[[list[dict]], str] = render_messages,
) -> PreferencePair:
    """One row in any of the module's layouts → `PreferencePair`; `BadRow` when it fits none."""
    missing = [k for k in (chosen_key, rejected_key) if record.get(k) is None]
    if missing:
        raise datafiles.BadRow(
            f"preference rows need {chosen_key!r} and {rejected_key!r}; missing {missing} "
            f"(found {sorted(record)})"
        )
    prompt, chosen, rejected = record.get(prompt_key), record[chosen_key], record[rejected_key]
    meta = {k: v for k, v in record.items() if k not in (prompt_key, chosen_key, rejected_key)}
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected, shared = _from_messages(prompt, chosen, rejected, render)
        meta["prompt_messages"] = shared
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            prompt, chosen, rejected = _from_hh(chosen, rejected)
        elif not isinstance(prompt, str):
            raise datafiles.BadRow(f"field {prompt_key!r} is {type(prompt).__name__}, not text")
    else:
        raise datafiles.BadRow(
            f"{chosen_key!r} and {rejected_key!r} must both be text or both message lists "
            f"(got {type(chosen).__name__} and {type(rejected).__name__})"
        )
    if not chosen or not rejected:
        raise datafiles.BadRow("an empty chosen or rejected completion")
    if chosen == rejected:
        raise datafiles.BadRow("chosen and rejected completions are identical")
    return PreferencePair(prompt, chosen, rejected, meta)


def load_preference_pairs(
    path: str,
    *,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    render: Callable[[list[dict]], str] = render_messages,
    max_bad_fraction: float = datafiles.MAX_BAD_FRACTION,
    report: datafiles.LoadReport | None = None,
) -> list[PreferencePair]:
    """Preference pairs of a json / jsonl / parquet file (layouts and bad rows: module doc).

    Raises `tasks.DataError` (a ValueError) for an unusable file or too many bad rows;
    pass a `datafiles.LoadReport` to read the counts afterwards.
    """

    def parse(record):
        return parse_preference_row(
            record,
            prompt_key=prompt_key,
            chosen_key=chosen_key,
            rejected_key=rejected_key,
            render=render,
        )

    return datafiles.read_rows(path, parse, max_bad_fraction=max_bad_fraction, report=report)


# ------------------------------------------------------------------ the synthetic task
def wrong_answers(answer: int) -> dict[str, dict[str, list[int]]]:
    """Wrong answers one edit from `answer`: {length relation: {edit kind: [values]}}.

    Relations `same`, `longer`, `shorter` compare `len(str(wrong))` with
    `len(str(answer))`; edit kinds `off_by` (±1, ±10), `digit` (one digit changed),
    `insert` / `delete` (one digit), `sign` (negated).
    """
    s = str(answer)
    sign, digits = ("-", s[1:]) if answer < 0 else ("", s)
    edits: dict[str, set[int]] = {"off_by": {answer + d for d in (-10, -1, 1, 10)}}
    edits["sign"] = {-answer}
    edits["digit"] = {
        int(sign + digits[:j] + c + digits[j + 1 :])
        for j in range(len(digits))
        for c in "0123456789"
        if not (j == 0 and c == "0" and len(digits) > 1)
    }
    edits["insert"] = {
        int(sign + digits[:j] + c + digits[j:])
        for j in range(len(digits) + 1)
        for c in "0123456789"
        if not (j == 0 and c == "0")
    }
    edits["delete"] = {
        int(sign + digits[:j] + digits[j + 1 :]) for j in range(len(digits)) if len(digits) > 1
    }
    out: dict[str, dict[str, list[int]]] = {"same": {}, "longer": {}, "shorter": {}}
    for kind, values in edits.items():
        for v in sorted(values - {answer}):
            d = len(str(v)) - len(s)
            rel = "same" if d == 0 else ("longer" if d > 0 else "shorter")
            out[rel].setdefault(kind, []).append(v)
    return out


@dataclasses.dataclass(frozen=True)
class ArithPreferenceTask:
    """Synthetic preference pairs over arithmetic: correct answer (chosen) vs one wrong answer.

    noise: probability that a training pair's labels are swapped (test pairs are clean).
    same_length_fraction: fraction of wrong answers with the answer's length; the rest is
      longer as often as shorter (module doc).
    digits, ops, num_terms, test_fraction: of the underlying `ArithTask`.
    """

    digits: tuple = (1, 2)
    ops: str = "+"
    num_terms: tuple = (2,)
    noise: float = 0.0
    same_length_fraction: float = 0.5
    test_fraction: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if not 0.0 <= self.same_length_fraction <= 1.0:
            raise ValueError(
                f"same_length_fraction must be in [0, 1], got {self.same_length_fraction}"
            )

    @property
    def arith(self) -> ArithTask:
        return ArithTask(
            digits=self.digits,
            ops=self.ops,
            num_terms=self.num_terms,
            test_fraction=self.test_fraction,
        )

    def pairs(self, split: str, n: int, seed: int) -> list[PreferencePair]:
        """`n` pairs of `split` (prompts cycle, each time with a fresh wrong answer)."""
        check_split(split)
        examples = self.arith.examples(split, n, seed)
        if not examples:
            raise ValueError(f"the {split} split of {self.arith} holds no problem")
        rng = random.Random(stable_hash(f"preference:{seed}:{split}"))
        noise = self.noise if split == "train" else 0.0
        balance = 0  # (#wrong longer) − (#wrong shorter) so far
        out = []
        for i in range(n):
            ex = examples[i % len(examples)]
            cands = wrong_answers(int(ex.answer))
            if "-" not in self.ops:  # no negative results: a negated answer is a giveaway
                cands = {r: {k: v for k, v in c.items() if k != "sign"} for r, c in cands.items()}
            if rng.random() < self.same_length_fraction and cands["same"]:
                rel = "same"
            else:
                first = rng.choice(("longer", "shorter")) if balance == 0 else None
                first = first or ("shorter" if balance > 0 else "longer")
                other = "longer" if first == "shorter" else "shorter"
                rel = first if cands[first] else other
                balance += 1 if rel == "longer" else -1
            kind = rng.choice(sorted(cands[rel]))
            wrong = str(rng.choice(cands[rel][kind]))
            flipped = rng.random() < noise
            chosen, rejected = (wrong, ex.answer) if flipped else (ex.answer, wrong)
            meta = {
                "id": ex.id,
                "answer": ex.answer,
                "difficulty": ex.difficulty,
                "wrong_length": rel,
                "wrong_kind": kind,
                "flipped": flipped,
            }
            out.append(PreferencePair(ex.prompt, chosen, rejected, meta))
        return out


# ------------------------------------------------------------------ host-side statistics
def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    """Fraction of pairs scored chosen > rejected; a tie counts one half."""
    c = np.asarray(chosen_scores, np.float64)
    r = np.asarray(rejected_scores, np.float64)
    if c.shape != r.shape or c.ndim != 1 or c.size == 0:
        raise ValueError(f"expected two equal non-empty [N] arrays, got {c.shape}, {r.shape}")
    return float(np.mean((c > r) + 0.5 * (c == r)))


def length_stats(pairs: Sequence[PreferencePair], length: Callable[[str], Any] = len) -> dict:
    """Fractions of pairs whose chosen completion is shorter / longer / as long as the rejected."""
    d = np.array([np.sign(length(p.chosen) - length(p.rejected)) for p in pairs])
    diff = max(int(np.sum(d != 0)), 1)
    return {
        "chosen_shorter": float(np.mean(d < 0)),
        "chosen_longer": float(np.mean(d > 0)),
        "same_length": float(np.mean(d == 0)),
        "chosen_shorter_given_different": float(np.sum(d < 0) / diff),
    }
