"""retrieval: the corpus answers every question; a hand-checked episode."""

from jaxrl_llm.envs.retrieval import (
    CORPUS,
    QUESTIONS,
    RetrievalEnv,
    _passage_words,
    normalize_answer,
    search,
    synthetic_corpus,
)


def quillon_example():
    env = RetrievalEnv(test_fraction=0.0)
    (ex,) = [e for e in env.examples("train", 100, 0) if "Quillon bridge?" in e.prompt]
    return env, ex


def test_every_question_is_answered_by_its_search_result():
    for question, answers, idx in QUESTIONS:
        assert search(question) == idx, question
        passage = normalize_answer(" ".join(CORPUS[idx]))
        assert normalize_answer(answers[0]) in passage, question


def test_search_scores_by_word_overlap():
    assert search("Quillon bridge builder") == 1
    assert search("which lake") == 0
    assert search("zebra xylophone") is None
    assert search("the of in") is None  # stop words only


def test_scripted_episode():
    env, ex = quillon_example()
    assert env.reset(ex).endswith("Question: Who built the Quillon bridge?")
    steps = [
        env.step('<tool name="search">zebra xylophone</tool>'),
        env.step('<tool name="search">Quillon bridge builder</tool>'),
        env.step("<answer>The ada  Brenning.</answer>"),
    ]
    assert steps[0].observation == "No passage matches."
    assert steps[1].observation == (
        "Quillon bridge: The Quillon bridge crosses the river Sel at Marrow. It was completed "
        "in 1887 and was built by the engineer Ada Brenning."
    )
    assert [s.reward for s in steps] == [0.0, 0.0, 1.0]
    assert [s.done for s in steps] == [False, False, True]
    assert [s.info["invalid_call"] for s in steps] == [0, 0, 0]


def test_wrong_answer_invalid_call_and_turn_limit():
    env, ex = quillon_example()
    env.reset(ex)
    assert env.step("<answer>Brenning</answer>").reward == 0.0
    env.reset(ex)
    bad = env.step("<tool name=search>bridge</tool>")
    assert bad.info["invalid_call"] == 1 and bad.observation.startswith("Error: <tool> needs")
    env.step('<tool name="search">bridge</tool>')
    last = env.step('<tool name="search">bridge</tool>')
    assert last.done and last.info["max_turns"] == 1 and env.episode_stats()["invalid_calls"] == 1


def test_examples_split_and_shuffle():
    env = RetrievalEnv()
    train, test = env.examples("train", 100, 0), env.examples("test", 100, 0)
    assert len(train) + len(test) == len(QUESTIONS) and test
    assert not {e.id for e in train} & {e.id for e in test}
    assert env.examples("train", 100, 1) != train
    assert sorted(e.id for e in env.examples("train", 100, 1)) == sorted(e.id for e in train)
    assert env.examples("train", 3, 0) == train[:3]


def replay(env, example, actions):
    env.reset(example)
    return [env.step(a) for a in actions]


def test_demonstrations_replay_to_the_expected_reward():
    for synthetic in (0, 300):
        env = RetrievalEnv(test_fraction=0.0, synthetic=synthetic)
        examples = env.examples("train", 1000, 0)
        assert len(examples) == (synthetic or len(QUESTIONS))
        for ex in examples:
            demo = env.demonstration(ex)
            assert demo[0].startswith('<tool name="search">') and len(demo) == 2
            steps = replay(env, ex, demo)
            idx = ex.meta_dict()["passage"]
            assert steps[0].observation == ": ".join(env.corpus[idx]), ex.prompt
            assert steps[0].info["tool_call"] == 1 and not steps[0].done
            assert steps[1].done and steps[1].reward == 1.0, ex.prompt
            no_tool = replay(env, ex, env.demonstration(ex, use_tool=False))
            assert len(no_tool) == 1 and no_tool[0].reward == 1.0 and no_tool[0].done


def test_quillon_demonstration():
    env, ex = quillon_example()
    assert env.demonstration(ex) == [
        '<tool name="search">Quillon bridge</tool>',
        "<answer>Ada Brenning</answer>",
    ]
    assert env.demonstration(ex, use_tool=False) == ["<answer>Ada Brenning</answer>"]


def test_synthetic_corpus():
    corpus, questions = synthetic_corpus(300, seed=0)
    assert (corpus, questions) == synthetic_corpus(300, seed=0) != synthetic_corpus(300, seed=1)
    assert len({title.split()[0] for title, _ in corpus}) == 300  # distinct places
    words = _passage_words(corpus)
    for question, (answer,), idx in questions:
        assert search(question, words) == idx, question  # the question's words find it
        assert answer in corpus[idx][1]
    env = RetrievalEnv(synthetic=300, instructions=False)
    train, test = env.examples("train", 1000, 0), env.examples("test", 1000, 0)
    assert len(train) + len(test) == 300 and 50 < len(test) < 100
    assert not {e.id for e in train} & {e.id for e in test}
    ex = test[0]
    assert env.reset(ex) == ex.prompt and ex.prompt.startswith("Question: ")
    title, text = corpus[ex.meta_dict()["passage"]]
    assert env.step(f'<tool name="search">{title}</tool>').observation == f"{title}: {text}"
