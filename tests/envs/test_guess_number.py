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
