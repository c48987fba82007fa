"""Tests for jaxrl_llm/passk.py: legal metric names, old-name mapping, no import of the trainers.

The estimators themselves are tested in tests/test_evaluation.py (through the re-exports)."""

import re
import subprocess
import sys

import pytest

from jaxrl_llm import passk

# tensorboardX replaces every character outside this set (and warns "illegal name").
LEGAL_TAG = re.compile(r"^[A-Za-z0-9_./\-]+$")


def test_summary_keys_are_legal_tensorboard_tags():
    examples = [{"difficulty": "easy mode"}, {"difficulty": 3}]
    out = passk.summarize_samples(examples, [["a", "b"], ["c", "d"]], [[1, 0], [0, 0]], ks=[1, 2])
    bad = [k for k in out if not LEGAL_TAG.match("eval/" + k)]
    assert bad == []
    assert out["pass_at_1"] == pytest.approx(0.25) and out["pass_at_2"] == pytest.approx(0.5)
    assert {"maj_at_1", "maj_at_2", "mean_at_1", "mean_at_2"} <= set(out)
    assert out["accuracy/difficulty_easy_mode"] == 0.5 and out["accuracy/difficulty_3"] == 0.0


def test_tensorboardx_keeps_the_names():
    from tensorboardX.summary import _clean_tag  # what warns "Summary name ... is illegal"

    out = passk.summarize_samples(None, [["a"] * 4], [[1, 0, 1, 0]], ks=[1, 2, 4])
    assert [k for k in out if _clean_tag("eval/" + k) != "eval/" + k] == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("pass@4", "pass_at_4"),
        ("eval/pass@16", "eval/pass_at_16"),
        ("eval/pass_16", "eval/pass_at_16"),  # tensorboardX's rewrite of 'eval/pass@16'
        ("eval/maj_4", "eval/maj_at_4"),
        ("mean@1", "mean_at_1"),
        ("eval/pass_at_4", "eval/pass_at_4"),
        ("eval/accuracy/difficulty_2", "eval/accuracy/difficulty_2"),
        ("train/kl_2", "train/kl_2"),
        ("eval/accuracy", "eval/accuracy"),
    ],
)
def test_canonical_metric_name(old, new):
    assert passk.canonical_metric_name(old) == new


def test_format_table_reads_old_and_new_names_with_or_without_prefix():
    new = {"pass_at_1": 0.5, "pass_at_2": 0.75, "maj_at_2": 0.5, "mean_at_2": 0.4, "reward": 0.4}
    old = {k.replace("_at_", "@"): v for k, v in new.items()}
    prefixed = {"eval/" + k: v for k, v in new.items()}
    for m in (new, old, prefixed):
        table = passk.format_table(m)
        assert "| 2 | 0.7500 | 0.5000 | 0.4000 |" in table, table
        assert "reward: 0.4" in table and "pass_at" not in table


def test_k_metric():
    assert passk.k_metric("maj", 8) == "maj_at_8"
    with pytest.raises(ValueError, match="kind must be one of"):
        passk.k_metric("best", 1)


def test_the_maths_imports_nothing_from_the_trainers():
    """passk and evaluation load without jaxrl_llm.trainers.rl (the trainer imports them)."""
    code = (
        "import sys, jaxrl_llm.passk, jaxrl_llm.evaluation\n"
        "bad = [m for m in sys.modules if m.startswith('jaxrl_llm.trainers.rl')]\n"
        "assert not bad, bad\n"
        "assert 'jax' not in sys.modules, 'passk and evaluation import jax lazily'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
