"""Countdown: generator, safe verifier (rejects invalid and unsafe input), SFT targets."""

import pytest

from jaxrl_llm.tasks import CountdownTask, Example, expr, make_task
from jaxrl_llm.tasks.countdown import check_solution


def _ex(numbers, target):
    return Example(
        id="c",
        prompt="",
        answer=str(target),
        difficulty=len(numbers),
        meta=(("numbers", tuple(numbers)), ("solution", "")),
    )


@pytest.mark.parametrize(
    "completion,valid,correct",
    [
        ("3*5+7", True, True),
        (" (5*3)+7 \nmore text", True, True),
        ("3*5+7=22", True, True),
        ("7+5*3", True, True),
        ("3+5+7", True, False),  # valid, wrong value
        ("3*5+7+7", False, False),  # 7 used twice
        ("3*5", False, False),  # not all numbers used
        ("35-13", False, False),  # concatenated digits are other numbers
        ("3*5+8", False, False),  # a number not given
        ("(3*5+7", False, False),  # unbalanced
        ("3*5+-7", False, False),  # unary minus is not allowed
        ("3**5+7", False, False),
        ("3 5 7", False, False),
        ("", False, False),
        ("__import__('os').system('echo hi')", False, False),
        ("3*5+7; import os", False, False),
        ("lambda: 22", False, False),
        ("9" * 500, False, False),  # too long
        ("((((((((((((((((((3))))))))))))))))))*5+7", False, False),  # too deep
        ("7/(5-5)+3", False, False),  # division by zero
        ("3.0*5+7", False, False),
    ],
)
def test_verifier_table(completion, valid, correct):
    assert check_solution(completion, (3, 5, 7), 22) == (valid, correct)


def test_division_is_exact_rational():
    assert check_solution("8/(3-8/3)", (8, 3, 8, 3), 24) == (True, True)  # 8/(1/3) = 24 exactly
    assert check_solution("7/2+3", (7, 2, 3), 6) == (True, False)  # 6.5, not 6


def test_parser_never_evaluates_python():
    with pytest.raises(expr.ExprError):
        expr.evaluate("__import__('os')")
    assert expr.evaluate("2*(3+4)-10/4") == expr.Fraction(23, 2)
    assert expr.parse_expr("-(2+3)", allow_unary_minus=True)[0] == -5


def test_generator_deterministic_disjoint_and_solvable():
    t = CountdownTask(num_numbers=(3, 4), ops="+-*/")
    train, test = t.examples("train", 300, 0), t.examples("test", 300, 0)
    assert train == t.examples("train", 300, 0)
    key = lambda e: (tuple(sorted(e.meta_dict()["numbers"])), e.answer)  # noqa: E731
    assert not {key(e) for e in train} & {key(e) for e in test}
    for e in train + test:
        assert t.reward(t.sft_target(e), e) == 1.0
        assert e.difficulty == len(e.meta_dict()["numbers"]) and 0 <= int(e.answer) <= 99
        assert e.prompt == f"{','.join(map(str, e.meta_dict()['numbers']))} to {e.answer}="
    assert set(t.difficulties) == {3, 4} == {e.difficulty for e in train}


def test_format_component_and_use_all():
    t = make_task("countdown", format_weight=0.1)
    ex = _ex((3, 5, 7), 22)
    assert t.reward_details("3+5+7", ex) == (0.1, {"correct": 0.0, "valid": 1.0})
    assert t.reward_details("3*5+7", ex) == (1.1, {"correct": 1.0, "valid": 1.0})
    loose = CountdownTask(use_all=False)
    assert loose.reward("3*5+7", _ex((3, 5, 7, 9), 22)) == 1.0
    assert loose.reward("3*5+7+7", _ex((3, 5, 7, 9), 22)) == 0.0
