"""guess_number: hand-checked episodes; fewer guesses earn more."""

from jaxrl_llm.envs.guess_number import GuessNumberEnv
from jaxrl_llm.tasks import Example


def secret(n):
    return Example(id=f"guess_number:1-100:{n}", prompt="Guess it.", answer=str(n))


def test_scripted_episode():
    env = GuessNumberEnv(max_turns=8)
    assert "<answer>NUMBER</answer>" in env.reset(secret(37))
    actions = [
        "<answer>50</answer>",
        "<answer>25</answer>",
        "<answer>abc</answer>",
        '<tool name="hint">x</tool>',
        "<answer>37</answer>",
    ]
    steps = [env.step(a) for a in actions]
    assert [s.observation for s in steps] == [
        "Lower.",
        "Higher.",
        "Error: a guess is an integer between 1 and 100",
        "Error: unknown tool 'hint'; available: none",
        "Correct.",
    ]
    assert [s.done for s in steps] == [False, False, False, False, True]
    assert [s.info["invalid_call"] for s in steps] == [0, 0, 1, 1, 0]
    assert [s.reward for s in steps] == [0.0, 0.0, 0.0, 0.0, 1.0 - 4 / 8]
    assert env.episode_stats()["invalid_calls"] == 2


def test_fewer_turns_earn_more():
    env = GuessNumberEnv(max_turns=4)
    rewards = []
    for wrong in range(4):
        env.reset(secret(10))
        for _ in range(wrong):
            assert env.step("<answer>90</answer>").observation == "Lower."
        last = env.step("<answer>10</answer>")
        assert last.done and last.info["correct"] == 1
        rewards.append(last.reward)
    assert rewards == [1.0, 0.75, 0.5, 0.25]


def test_out_of_range_and_out_of_turns():
    env = GuessNumberEnv(low=1, high=10, max_turns=2)
    env.reset(Example(id="g", prompt="", answer="7"))
    assert env.step("<answer>11</answer>").info["invalid_call"] == 1
    last = env.step("<answer>6</answer>")
    assert last.observation == "Higher." and last.done and last.info["max_turns"] == 1
    assert last.reward == 0.0


def test_examples():
    env = GuessNumberEnv()
    train, test = env.examples("train", 30, 0), env.examples("test", 10, 0)
    assert train == env.examples("train", 30, 0) and len(train) == 30
    assert not {e.answer for e in train} & {e.answer for e in test}
    assert all(1 <= int(e.answer) <= 100 for e in train + test)
    assert len(env.examples("train", 1000, 0)) < 100  # the split runs out of secrets


def replay(env, example, actions):
    env.reset(example)
    return [env.step(a) for a in actions]


def test_binary_search_demonstration_replays_to_its_reward():
    env = GuessNumberEnv(max_turns=8)
    assert env.demonstration(secret(37)) == [
        f"<answer>{g}</answer>" for g in (50, 25, 37)
    ]  # 1..100: 50 is too high, 25 too low, 37
    for n in range(1, 101):  # binary search finds every secret in <= 7 of the 8 turns
        steps = replay(env, secret(n), env.demonstration(secret(n)))
        assert steps[-1].done and steps[-1].info["correct"] == 1, n
        assert len(steps) <= 7 and not any(s.done for s in steps[:-1])
        assert steps[-1].reward == 1.0 - (len(steps) - 1) / 8
        assert sum(s.info["invalid_call"] for s in steps) == 0


def test_linear_demonstration_is_the_flawed_player():
    env = GuessNumberEnv(low=1, high=15, max_turns=5)
    ex = lambda n: Example(id=f"g{n}", prompt="", answer=str(n))  # noqa: E731
    assert env.demonstration(ex(3), use_tool=False) == [f"<answer>{g}</answer>" for g in (1, 2, 3)]
    steps = replay(env, ex(3), env.demonstration(ex(3), use_tool=False))
    assert [s.observation for s in steps] == ["Higher.", "Higher.", "Correct."]
    assert steps[-1].reward == 1.0 - 2 / 5
    # above low + max_turns - 1 it runs out of turns: reward 0, the turn limit reached
    demo = env.demonstration(ex(12), use_tool=False)
    assert demo == [f"<answer>{g}</answer>" for g in range(1, 6)]
    steps = replay(env, ex(12), demo)
    assert steps[-1].done and steps[-1].info["max_turns"] == 1 and steps[-1].reward == 0.0
    # the expert needs at most 4 guesses on 1..15 (a full binary tree of depth 4)
    turns = [len(env.demonstration(ex(n))) for n in range(1, 16)]
    assert max(turns) == 4 and sorted(turns) == [1] + [2] * 2 + [3] * 4 + [4] * 8


def test_instructions_off_gives_the_range_sentence_alone():
    env = GuessNumberEnv(low=1, high=15, instructions=False)
    (ex,) = env.examples("train", 1, 0)
    assert env.reset(ex) == "I am thinking of an integer between 1 and 15. Guess it."
