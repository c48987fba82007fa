"""Preference pairs: file layouts, bad rows, and the synthetic arithmetic preference task."""

import json
import logging

import numpy as np
import pytest

from jaxrl_llm.tasks import datafiles
from jaxrl_llm.tasks.preference_data import (
    ArithPreferenceTask,
    PreferencePair,
    length_stats,
    load_preference_pairs,
    pairwise_accuracy,
    wrong_answers,
)


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def _msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def test_columns_layout_and_meta(tmp_path):
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "2+3=", "chosen": "5", "rejected": "6", "id": 7},
            {"prompt": "1+1=", "chosen": "2", "rejected": "11"},
        ],
    )
    pairs = load_preference_pairs(path)
    assert pairs == [PreferencePair("2+3=", "5", "6"), PreferencePair("1+1=", "2", "11")]
    assert pairs[0].meta == {"id": 7}


def test_chat_message_layouts(tmp_path):
    rows = [
        # UltraFeedback-binarized style: the user turn inside both lists (and a prompt string)
        {
            "prompt": "Hi?",
            "chosen": _msgs(("user", "Hi?"), ("assistant", "Hello!")),
            "rejected": _msgs(("user", "Hi?"), ("assistant", "Go away.")),
            "score_chosen": 9.0,
        },
        # multi-turn: the prompt is every shared message
        {
            "chosen": _msgs(("system", "Be brief."), ("user", "2+2?"), ("assistant", "4")),
            "rejected": _msgs(("system", "Be brief."), ("user", "2+2?"), ("assistant", "five")),
        },
        # TRL conversational: the prompt as messages, the lists hold only the answers
        {
            "prompt": _msgs(("user", "Name a colour.")),
            "chosen": _msgs(("assistant", "Red.")),
            "rejected": _msgs(("assistant", "Seven.")),
        },
        # answers only, with a text prompt
        {
            "prompt": "Say yes.",
            "chosen": _msgs(("assistant", "Yes.")),
            "rejected": _msgs(("assistant", "No.")),
        },
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows))
    pairs = load_preference_pairs(str(path))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("Hi?", "Hello!", "Go away."),
        ("Be brief.\n2+2?", "4", "five"),
        ("Name a colour.", "Red.", "Seven."),
        ("Say yes.", "Yes.", "No."),
    ]
    assert pairs[0].meta["score_chosen"] == 9.0
    assert pairs[1].meta["prompt_messages"] == _msgs(("system", "Be brief."), ("user", "2+2?"))
    # a chat template as the renderer
    templ = load_preference_pairs(
        str(path), render=lambda m: "".join(f"<{x['role']}>{x['content']}" for x in m)
    )
    assert templ[1].prompt == "<system>Be brief.<user>2+2?"


def test_hh_layout(tmp_path):
    head = "\n\nHuman: What is 2+2?\n\nAssistant:"
    path = _write_jsonl(
        tmp_path / "hh.jsonl", [{"chosen": head + " 4.", "rejected": head + " 5, I think."}]
    )
    (pair,) = load_preference_pairs(path)
    assert (pair.prompt, pair.chosen, pair.rejected) == (head, " 4.", " 5, I think.")


def test_parquet_with_custom_keys(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = str(tmp_path / "p.parquet")
    datasets.Dataset.from_dict(
        {"question": ["3+4=", "9+1="], "good": ["7", "10"], "bad": ["8", "1"]}
    ).to_parquet(path)
    pairs = load_preference_pairs(
        path, prompt_key="question", chosen_key="good", rejected_key="bad"
    )
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("3+4=", "7", "8"),
        ("9+1=", "10", "1"),
    ]


BAD_ROWS = [
    '{"prompt": "a", "chosen": "x"}',  # missing rejected
    '{"prompt": "a", "chosen": 3, "rejected": "y"}',  # not text
    '{"prompt": "a", "chosen": "x", "rejected": "x"}',  # identical
    '{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],'
    ' "rejected": [{"role": "user", "content": "other q"}, {"role": "assistant", "content": "b"}]}',
    '{"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "r"}]}',
    '{"chosen": [{"role": "user"}], "rejected": []}',  # malformed messages
    '{"chosen": "no marker here", "rejected": "no marker there"}',  # HH without a turn
    "{not json",
    "[1, 2]",
]


def test_bad_rows_skipped_and_counted(tmp_path, caplog):
    good = [{"prompt": f"{i}+0=", "chosen": str(i), "rejected": str(i + 1)} for i in range(91)]
    path = _write_jsonl(tmp_path / "mixed.jsonl", good + BAD_ROWS)
    report = datafiles.LoadReport(source="test")
    with caplog.at_level(logging.WARNING):
        pairs = load_preference_pairs(path, report=report)
    assert len(pairs) == 91
    assert report.rows == 100 and len(report.bad) == len(BAD_ROWS)
    reasons = " | ".join(why for _, why in report.bad)
    for needle in (
        "missing",
        "both be text",
        "identical",
        "differ before",
        "not assistant",
        "'role' and 'content'",
        "Assistant:",
        "invalid JSON",
        "not a JSON object",
    ):
        assert needle in reasons, needle
    assert "skipped 9 of 100 rows" in caplog.text


def test_too_many_bad_rows_is_a_data_error(tmp_path):
    good = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 5
    path = _write_jsonl(tmp_path / "bad.jsonl", good + BAD_ROWS)
    with pytest.raises(datafiles.DataError, match="max_bad_fraction"):
        load_preference_pairs(path)
    assert len(load_preference_pairs(path, max_bad_fraction=0.9)) == 5
    with pytest.raises(datafiles.DataError, match="does not exist"):
        load_preference_pairs(str(tmp_path / "missing.jsonl"))


# ------------------------------------------------------------------ synthetic task
def test_wrong_answers_are_one_edit_and_classified():
    w = wrong_answers(45)
    assert 44 in w["same"]["off_by"] and 55 in w["same"]["off_by"]
    assert sorted(w["shorter"]["delete"]) == [4, 5]
    assert 145 in w["longer"]["insert"] and -45 in w["longer"]["sign"]
    assert w["shorter"].get("digit") is None
    assert wrong_answers(7)["shorter"] == {}  # a one-digit answer cannot be shortened
    assert 100 in wrong_answers(99)["longer"]["off_by"]
    for rel, kinds in wrong_answers(-30).items():
        for values in kinds.values():
            assert -30 not in values
            for v in values:
                d = len(str(v)) - 3
                assert {"same": d == 0, "longer": d > 0, "shorter": d < 0}[rel]


def test_synthetic_pairs_correct_vs_wrong_disjoint_and_deterministic():
    task = ArithPreferenceTask(digits=(1, 2), ops="+-")
    train = task.pairs("train", 600, seed=0)
    test = task.pairs("test", 300, seed=0)
    assert train == task.pairs("train", 600, seed=0)
    assert train != task.pairs("train", 600, seed=1)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    for p in train + test:
        assert p.chosen == str(eval(p.prompt[:-1]))  # noqa: S307 - our own arithmetic
        assert p.rejected != p.chosen and p.rejected.lstrip("-").isdigit()
    kinds = {p.meta["wrong_kind"] for p in test}
    assert kinds == {"off_by", "digit", "insert", "delete", "sign"}
    assert "sign" not in {p.meta["wrong_kind"] for p in ArithPreferenceTask().pairs("test", 300, 0)}


def test_length_is_decorrelated_from_correctness():
    train = ArithPreferenceTask().pairs("train", 4000, seed=0)
    s = length_stats(train)
    assert abs(s["chosen_shorter_given_different"] - 0.5) < 0.02, s
    assert abs(s["same_length"] - 0.5) < 0.04, s
    test = ArithPreferenceTask(noise=0.3).pairs("test", 500, seed=3)
    t = length_stats(test)
    # the held-out split: exactly balanced up to one pair, and clean despite noise=0.3
    n_diff = 500 * (1 - t["same_length"])
    assert abs(t["chosen_shorter"] - t["chosen_longer"]) * 500 <= 1.0, t
    assert n_diff > 150
    assert not any(p.meta["flipped"] for p in test)
    # a length-only scorer is at chance on it (ties count one half)
    for sign in (1, -1):
        acc = pairwise_accuracy(
            [sign * len(p.chosen) for p in test], [sign * len(p.rejected) for p in test]
        )
        assert acc == pytest.approx(0.5, abs=0.002)


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_label_noise_rate(noise):
    pairs = ArithPreferenceTask(noise=noise).pairs("train", 4000, seed=1)
    flipped = np.array([p.meta["flipped"] for p in pairs])
    wrong_chosen = np.array([p.chosen != p.meta["answer"] for p in pairs])
    np.testing.assert_array_equal(flipped, wrong_chosen)
    # binomial standard error at n=4000 is <= 0.008: 4 sigma
    assert abs(flipped.mean() - noise) < 0.03
    # flips keep the length balance
    assert abs(length_stats(pairs)["chosen_shorter_given_different"] - 0.5) < 0.03


def test_pairwise_accuracy_and_bad_args():
    assert pairwise_accuracy([1.0, 2.0, 0.0, 1.0], [0.0, 3.0, -1.0, 1.0]) == 0.625
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="noise"):
        ArithPreferenceTask(noise=1.5)
    with pytest.raises(ValueError, match="split"):
        ArithPreferenceTask().pairs("valid", 3, 0)
