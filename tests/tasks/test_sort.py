"""Sort task: answers by hand, rewards, partial credit, disjoint splits."""

from jaxrl_llm.tasks import Example, SortTask, make_task


def test_examples_answers_and_splits():
    t = SortTask(length=(3, 5), max_value=9)
    train, test = t.examples("train", 200, 0), t.examples("test", 100, 0)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    for e in train:
        values = [int(v) for v in e.prompt[len("sort ") : -1].split(",")]
        assert e.answer == ",".join(map(str, sorted(values))) and e.difficulty == len(values)
        assert t.reward(t.sft_target(e), e) == 1.0
    assert t.difficulties == (3, 5)


def test_rewards_by_hand():
    t = make_task("sort", partial_weight=0.5)
    e = Example(id="s", prompt="sort 4,1,3=", answer="1,3,4", difficulty=3)
    assert t.reward_details("1,3,4", e) == (1.5, {"correct": 1.0, "partial": 1.0})
    assert t.reward_details(" 1, 3, 4\nxx", e) == (1.5, {"correct": 1.0, "partial": 1.0})
    assert t.reward_details("1,4,3", e) == (0.5 * 1 / 3, {"correct": 0.0, "partial": 1 / 3})
    assert t.reward_details("1,3", e) == (0.0, {"correct": 0.0, "partial": 0.0})
    desc = SortTask(descending=True).examples("train", 1, 0)[0]
    assert desc.answer.split(",") == sorted(desc.answer.split(","), key=int, reverse=True)
