"""Answer extraction and equivalence on a table of tricky cases."""

from fractions import Fraction

import pytest

from jaxrl_llm.tasks.math_answer import (
    answers_equal,
    extract_answer,
    extract_boxed,
    extract_hash,
    extract_last_number,
    normalize_answer,
    to_number,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("\\boxed{\\frac{a}{\\sqrt{b}}} and later \\boxed{7}", "7"),  # the last one
        ("nested \\boxed{{x}^{2}}", "{x}^{2}"),
        ("\\boxed 5 is it", "5"),
        ("\\fbox{12}", "12"),
        ("unbalanced \\boxed{3", None),
        ("no box", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_hash_and_last_number():
    assert extract_hash("She pays 3*4=<<3*4=12>>12.\n#### 12") == "12"
    assert extract_hash("#### 1,000\nextra") == "1,000"
    assert extract_hash("no marker 12") is None
    assert extract_last_number("he had 3 apples, then 1,234.5 and −7 left") == "-7"
    assert extract_last_number("pay $1,250 today.") == "1,250"
    assert extract_last_number("ratio 3/4") == "3/4"
    assert extract_last_number("none") is None


def test_extract_answer_priority_and_modes():
    text = "The sum is 5.\n#### 6\nso \\boxed{7} and 8"
    assert extract_answer(text) == "7"
    assert extract_answer(text, "hash") == "6"
    assert extract_answer(text, "last_number") == "8"
    assert extract_answer("#### 6 then 9") == "6 then 9"
    with pytest.raises(ValueError, match="extract mode"):
        extract_answer(text, "first")


@pytest.mark.parametrize(
    "pred,gold,equal",
    [
        # fractions
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{3}{4}", "3/4", True),
        ("2/4", "\\frac{1}{2}", True),
        ("-\\frac{1}{4}", "-0.25", True),
        ("1/3", "0.3333333", True),  # within rel_tol 1e-6
        ("0.333", "1/3", False),
        ("2", "\\frac{1}{2}", False),
        # LaTeX
        ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
        ("x^2+1", "1+x^2", True),
        ("(1,2)", "(1,2)", True),
        ("$\\left(3\\right)$", "3", True),
        ("\\pi", "3.14159", False),
        # units and money
        ("5\\text{ cm}", "5", True),
        ("18 dollars", "18", True),
        ("\\$5.00", "5", True),
        ("10\\%", "10", True),
        ("x = 5", "5", True),
        # negatives
        ("-3", "-3", True),
        ("−7", "-7", True),
        ("3", "-3", False),
        ("-12", "12", False),
        # thousands separators
        ("1,000", "1000", True),
        ("1,234,567.5", "1234567.5", True),
        ("1.000", "1", True),
        ("1,000", "1", False),
        # nothing extracted
        (None, "3", False),
        ("", "3", False),
    ],
)
def test_answers_equal_table(pred, gold, equal):
    assert answers_equal(pred, gold) is equal


def test_normalize_and_to_number_by_hand():
    assert normalize_answer(" $1,234$. ") == "1234"
    assert normalize_answer("\\text{12} apples") == "12"
    assert to_number("\\frac{-3}{6}") == Fraction(-1, 2)
    assert to_number("2.50") == Fraction(5, 2)
    assert to_number("1/0") is None and to_number("x") is None


def test_end_to_end_on_model_like_text():
    text = "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72"
    assert answers_equal(extract_answer(text), "72")
    assert not answers_equal(extract_answer("so the answer is 71."), "72")
