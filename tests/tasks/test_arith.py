"""Arithmetic task: determinism, disjoint splits, hand-checked rewards, registry."""

import pickle

import pytest

from jaxrl_llm import tasks
from jaxrl_llm.tasks import Example
from jaxrl_llm.tasks.arith import ArithTask


def test_examples_deterministic_and_seed_dependent():
    t = ArithTask(digits=(1, 2), ops="+-*", num_terms=(2, 3))
    a, b = t.examples("train", 200, seed=3), t.examples("train", 200, seed=3)
    assert a == b
    assert t.examples("train", 200, seed=4) != a
    assert len(a) == 200 and len({e.id for e in a}) == 200


def test_train_test_disjoint_across_seeds():
    t = ArithTask(digits=(1,), ops="+-", num_terms=(2,))  # 200 problems in all
    train = {e.prompt for s in range(3) for e in t.examples("train", 500, seed=s)}
    test = {e.prompt for s in range(3) for e in t.examples("test", 500, seed=s)}
    assert train and test and not (train & test)
    assert len(train) + len(test) == 200  # every problem lands in exactly one split


def test_answers_and_difficulty_by_hand():
    t = ArithTask(digits=(1, 2), ops="+-*", num_terms=(2, 3))
    for e in t.examples("train", 300, seed=0):
        text = e.prompt[:-1]
        assert e.prompt.endswith("=") and e.id == f"arith:{text}"
        # independent check with Python arithmetic on the digits-and-operators string
        assert int(e.answer) == eval(text, {"__builtins__": {}})  # noqa: S307 - test oracle on generated text
        nums = text.replace("+", " ").replace("-", " ").replace("*", " ").split()
        digits = max(len(n) for n in nums)
        assert e.difficulty == digits + len(nums) - 2
    assert t.difficulties == (1, 2, 3)


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("30", "30", 1.0),
        (" 30", "30", 1.0),
        ("30\n12", "30", 1.0),
        ("12\n30", "30", 0.0),
        ("3O", "30", 0.0),
        ("", "30", 0.0),
        ("-4", "-4", 1.0),
        ("4", "-4", 0.0),
        ("30 ", "30", 1.0),
        ("300", "30", 0.0),
    ],
)
def test_reward_hand_cases(completion, answer, expected):
    t = ArithTask()
    ex = Example(id="x", prompt="?=", answer=answer)
    assert t.reward(completion, ex) == expected
    assert isinstance(t.reward(completion, ex), float)


def test_format_weight_component():
    t = ArithTask(format_weight=0.25)
    ex = Example(id="x", prompt="1+2=", answer="3")
    assert t.reward_details("3", ex) == (1.25, {"correct": 1.0, "format": 1.0})
    assert t.reward_details("-7", ex) == (0.25, {"correct": 0.0, "format": 1.0})
    assert t.reward_details("three", ex) == (0.0, {"correct": 0.0, "format": 0.0})


def test_sft_target_is_answer_and_task_pickles():
    t = ArithTask()
    e = t.examples("train", 1, 0)[0]
    assert t.sft_target(e) == e.answer
    t2 = pickle.loads(pickle.dumps(t))
    assert t2 == t and t2.reward(e.answer, e) == 1.0


def test_knob_validation():
    with pytest.raises(ValueError, match="ops"):
        ArithTask(ops="+^")
    with pytest.raises(ValueError, match="num_terms"):
        ArithTask(num_terms=1)


def test_registry_and_import_path():
    assert isinstance(tasks.make_task("arith", digits=1), ArithTask)
    t = tasks.make_task("jaxrl_llm.tasks.testing:make_faulty", sleep_s=2.0)
    assert t.name == "faulty" and t.sleep_s == 2.0
    with pytest.raises(ValueError, match="registered: .*arith.*countdown"):
        tasks.make_task("nope")
    with pytest.raises(ValueError, match="cannot import"):
        tasks.make_task("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="no callable"):
        tasks.make_task("jaxrl_llm.tasks.testing:nothing_here")


def test_per_difficulty_accuracy():
    exs = [Example("a", "", "", 1), Example("b", "", "", 2), Example("c", "", "", 1)]
    # two samples per example, grouped per example
    acc = tasks.per_difficulty_accuracy(exs, [1, 0, 1, 1, 0, 0])
    assert acc == {1: 0.25, 2: 1.0}
