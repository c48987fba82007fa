"""TaskSource: deterministic epoch-shuffled cycling and exact resume."""

import json

import pytest

from jaxrl_llm.tasks import (
    CURRICULUM_METHODS,
    ArithTask,
    Example,
    PromptSource,
    TaskSource,
    make_prompt_source,
)
from jaxrl_llm.tasks.sources import ExampleStream


def _exs(n):
    return [Example(id=str(i), prompt=f"{i}=", answer=str(i)) for i in range(n)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    src = ExampleStream(_exs(7), seed=0)
    e0, e1 = src.next(7), src.next(7)
    assert sorted(e.id for e in e0) == sorted(e.id for e in e1) == sorted(str(i) for i in range(7))
    assert [e.id for e in e0] != [e.id for e in e1]


def test_resume_replays_the_same_prompts():
    task = ArithTask()
    a = TaskSource(task, "train", seed=5, num_examples=50)
    a.next(37)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-friendly
    expected = a.next(40)  # crosses an epoch boundary
    b = TaskSource(task, "train", seed=5, num_examples=50)
    b.load_state_dict(state)
    assert b.next(40) == expected
    assert isinstance(b, PromptSource)


def test_same_seed_same_stream_and_state_mismatch_rejected():
    assert ExampleStream(_exs(9), seed=1).next(20) == ExampleStream(_exs(9), seed=1).next(20)
    with pytest.raises(ValueError, match="seed"):
        ExampleStream(_exs(9), seed=2).load_state_dict(ExampleStream(_exs(9), seed=1).state_dict())


def test_update_checks_stat_keys():
    src = ExampleStream(_exs(3))
    src.update([{"id": "0", "rewards": [1.0], "advantages": 0.0, "difficulty": 0}])
    with pytest.raises(ValueError, match="advantages"):
        src.update([{"id": "0", "rewards": [1.0], "difficulty": 0}])


def test_long_prompts_are_dropped_at_load_and_counted():
    task = ArithTask(digits=(1, 3))  # prompts like '7+5=' (4 chars) up to '123+456=' (8 chars)

    def encode(prompts):  # one token per character plus a BOS
        return [[0] * (len(p) + 1) for p in prompts]

    exs = task.examples("train", 40, 3)
    short = [e for e in exs if len(e.prompt) + 1 <= 6]
    assert 0 < len(short) < len(exs)
    src = TaskSource(task, "train", seed=3, num_examples=40, encode_fn=encode, max_prompt_len=6)
    assert src.num_dropped == len(exs) - len(short)
    assert src.examples == short
    plain = TaskSource(task, "train", seed=3, num_examples=40)
    assert plain.num_dropped == 0 and plain.examples == exs
    for curriculum in ("", CURRICULUM_METHODS[0]):
        made = make_prompt_source(
            task,
            seed=3,
            num_examples=40,
            curriculum=curriculum,
            encode_fn=encode,
            max_prompt_len=6,
        )
        assert {e.id for e in made.next(3 * len(short))} == {e.id for e in short}
    with pytest.raises(ValueError, match="needs encode_fn"):
        TaskSource(task, "train", num_examples=5, max_prompt_len=6)
