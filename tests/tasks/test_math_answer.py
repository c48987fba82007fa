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


# A LaTeX answer without \boxed is read whole, not as its last digit group.
@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("so \\(2^{10}\\)", "2^{10}"),
        ("hence \\[\\sqrt{2}\\]", "\\sqrt{2}"),
        ("$$x = \\frac{3}{4}$$", "x = \\frac{3}{4}"),
        ("so the answer is 2^{10}.", "2^{10}"),  # no delimiters: the LaTeX token, not '10'
        ("it is \\sqrt{2}", "\\sqrt{2}"),
        ("Since $2^{10} = 1024$, the answer is 1024.", "1024"),  # a number after the span wins
        ("He pays $5 and then $10 more, 15 in all", "15"),  # money, not math
        ("($10)($5)", "5"),  # '$' before a digit does not close a span
        ("costs $10 and $x$ then", "x"),
        ("the price is \\$5 and \\$7", "7"),  # escaped dollars are text
        ("then \\text{5 apples}", "5"),  # an unbalanced token falls back to the number
        ("<<2^3=8>>8 cookies", "8"),  # GSM8K calculator notes are ignored
    ],
)
def test_auto_extracts_latex_without_boxed(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "completion,gold,equal",
    [
        ("$\\frac{1}{2}$", "2", False),  # was read as '2' and rewarded
        ("$\\frac{1}{2}$", "0.5", True),  # was read as '2' and rejected
        ("$2^{10}$", "1024", True),
        ("$2^{10}$", "10", False),
        ("2^{10}", "1024", True),
        ("$\\sqrt{2}$", "2", False),
        ("\\sqrt{2}", "2", False),
        ("\\(\\sqrt{2}\\)", "\\sqrt{2}", True),
    ],
)
def test_latex_answers_compare_as_latex(completion, gold, equal):
    assert answers_equal(extract_answer(completion), gold) is equal
