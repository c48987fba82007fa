"""Difficulty filter keeps exactly the band; replay importance weights are exact; the bandit
prefers the arm with larger |advantage|; all sources compose and resume."""

import json

import numpy as np
import pytest

from jaxrl_llm.tasks import ArithTask, Example
from jaxrl_llm.tasks.selection import (
    CurriculumSource,
    DifficultyFilter,
    ReplaySource,
    make_prompt_source,
    prompt_stats,
)
from jaxrl_llm.tasks.sources import ExampleStream, TaskSource


def _exs(n, difficulty=lambda i: 0):
    return [
        Example(id=str(i), prompt=f"{i}=", answer=str(i), difficulty=difficulty(i))
        for i in range(n)
    ]


def _stat(ex, rewards, adv=0.0):
    return {"id": ex.id, "rewards": list(rewards), "advantages": adv, "difficulty": ex.difficulty}


# ----------------------------------------------------------------------------- difficulty filter
def test_difficulty_filter_keeps_exactly_the_band():
    exs = _exs(40)
    f = DifficultyFilter(ExampleStream(exs, seed=0), low=0.25, high=0.75)
    # give prompt i the pass rate (i % 5) / 4 ∈ {0, .25, .5, .75, 1} from 4 samples
    f.update([_stat(e, [1.0] * (i % 5) + [0.0] * (4 - i % 5)) for i, e in enumerate(exs) if i < 30])
    in_band = {e.id for i, e in enumerate(exs) if i >= 30 or 1 <= i % 5 <= 3}  # unseen prompts pass
    got = f.next(60)
    assert {e.id for e in got} <= in_band and len(got) == 60
    assert {e.id for e in got} == in_band  # all of the band is visited
    assert f.last_stats["filled"] == 0 and f.last_stats["skipped"] > 0
    assert f.pass_rate("7") == 0.5 and f.pass_rate("35") is None


def test_difficulty_filter_running_mean_and_ema():
    exs = _exs(1)
    f = DifficultyFilter(ExampleStream(exs), low=0.0, high=1.0)
    f.update([_stat(exs[0], [1, 1, 0, 0])])
    f.update([_stat(exs[0], [1, 1, 1, 1])])
    assert f.pass_rate("0") == 0.75
    g = DifficultyFilter(ExampleStream(exs), ema=0.5)
    g.update([_stat(exs[0], [0, 0, 0, 0])])
    g.update([_stat(exs[0], [1, 1, 1, 1])])
    g.update([_stat(exs[0], [1, 1, 1, 1])])
    assert g.pass_rate("0") == 0.75  # 0 → 0.5 → 0.75
    with pytest.raises(ValueError, match="band"):
        DifficultyFilter(ExampleStream(exs), low=0.8, high=0.2)


def test_difficulty_filter_fills_when_band_is_empty():
    exs = _exs(4)
    f = DifficultyFilter(ExampleStream(exs), low=0.4, high=0.6, max_draws_factor=3)
    f.update([_stat(e, [1.0] if i else [0.0]) for i, e in enumerate(exs)])
    got = f.next(2)
    assert len(got) == 2 and f.last_stats["filled"] == 2


# ----------------------------------------------------------------------------- replay
def test_replay_fraction_buffer_and_resume():
    task = ArithTask()
    src = ReplaySource(TaskSource(task, seed=0, num_examples=64), fraction=0.25, capacity=6, seed=1)
    first = src.next(8)
    assert len(first) == 8 and src.replayed() == []  # empty buffer: all fresh
    for i, e in enumerate(first):
        src.add(e, {"logp": np.full((4, 3), -float(i))})
    assert len(src) == 6 and [it.example for it in src.buffer.values()] == first[2:]  # FIFO
    state = json.loads(json.dumps(src.state_dict()))
    fresh = src.next(8)
    rep = src.replayed()
    assert len(fresh) == 6 and len(rep) == 2
    assert all(it.uses == 1 for it in rep) and {it.example.id for it in rep} <= {
        e.id for e in first[2:]
    }
    # max_reuse=1: replayed items are not offered again; 4 left, then 2, then 0
    assert len(src.next(8)) == 6 and len(src.next(8)) == 6 and len(src.next(8)) == 8
    # resume from the JSON state alone: the buffer (examples, payload arrays, use counts) comes
    # back, so the same fresh prompts and the same replayed groups follow
    other = ReplaySource(
        TaskSource(task, seed=0, num_examples=64), fraction=0.25, capacity=6, seed=99
    )
    other.add(first[0], {"logp": np.zeros(1)})  # stale content is dropped by the load
    other.load_state_dict(state)
    assert [it.example for it in other.buffer.values()] == first[2:]
    for i, it in enumerate(other.buffer.values()):
        assert it.uses == 0 and it.payload["logp"].dtype == np.float64
        np.testing.assert_array_equal(it.payload["logp"], np.full((4, 3), -float(i + 2)))
    assert other.next(8) == fresh
    assert [it.example.id for it in other.replayed()] == [it.example.id for it in rep]
    again = ReplaySource(
        TaskSource(task, seed=0, num_examples=64), fraction=0.25, capacity=6, seed=5
    )
    again.load_state_dict(json.loads(json.dumps(other.state_dict())))
    assert [(it.example, it.uses) for it in again.buffer.values()] == [
        (it.example, it.uses) for it in other.buffer.values()
    ]
    with pytest.raises(TypeError, match="cannot store a object"):
        src.add(first[0], {"bad": object()})
        src.state_dict()


# ----------------------------------------------------------------------------- bandit curriculum
@pytest.mark.parametrize("method", ["ucb", "td_softmax"])
def test_bandit_prefers_arm_with_larger_abs_advantage(method):
    exs = _exs(90, difficulty=lambda i: 1 + i % 3)
    cur = CurriculumSource(exs, method=method, c=0.3, temperature=0.05, alpha=0.5, seed=0)
    rng = np.random.default_rng(0)
    mean_adv = {1: 0.05, 2: 0.6, 3: 0.15}
    late = []
    for step in range(40):
        batch = cur.next(8)
        if step >= 30:
            late += [e.difficulty for e in batch]
        cur.update(
            [_stat(e, [0.0], adv=mean_adv[e.difficulty] + 0.05 * rng.normal()) for e in batch]
        )
    frac = np.mean(np.array(late) == 2)
    assert frac > 0.6, (method, frac)
    if method == "td_softmax":
        assert max(cur.q, key=cur.q.get) == 2


def test_td_update_and_ucb_scores_by_hand():
    exs = _exs(6, difficulty=lambda i: i % 2)
    cur = CurriculumSource(exs, method="td_softmax", alpha=0.5, temperature=1.0)
    cur.update(
        [_stat(exs[0], [0], adv=0.4), _stat(exs[2], [0], adv=0.8), _stat(exs[1], [0], adv=0.2)]
    )
    assert cur.q == pytest.approx({0: 0.5 * 0.6, 1: 0.5 * 0.2}, abs=1e-15)
    p = cur.probabilities()
    np.testing.assert_allclose(p, np.exp([0.3, 0.1]) / np.exp([0.3, 0.1]).sum())
    ucb = CurriculumSource(exs, method="ucb", c=1.0)
    assert ucb.choose_arms(2) == [0, 1]  # unvisited arms first
    ucb.counts = {0: 3, 1: 1}
    ucb.history = {0: [0.5], 1: [0.1]}
    want = [0.5 + np.sqrt(2 * np.log(4) / 3), 0.1 + np.sqrt(2 * np.log(4) / 1)]
    np.testing.assert_allclose(ucb.ucb_scores(), want)


def test_curriculum_resume_and_composition():
    exs = _exs(30, difficulty=lambda i: i % 3)
    a = CurriculumSource(exs, method="td_softmax", seed=3)
    filt = DifficultyFilter(a, low=0.0, high=0.5)
    for _ in range(3):
        batch = filt.next(5)
        filt.update([_stat(e, [float(e.difficulty == 0)], adv=0.1 * e.difficulty) for e in batch])
    state = json.loads(json.dumps(filt.state_dict()))
    want = filt.next(12)
    b = DifficultyFilter(CurriculumSource(exs, method="td_softmax", seed=3), low=0.0, high=0.5)
    b.load_state_dict(state)
    assert b.next(12) == want
    assert all(filt.keeps(e.id) for e in want)


def test_prompt_stats_by_hand():
    exs = [Example("a", "", "", 1), Example("b", "", "", 2)]
    stats = prompt_stats(exs, [1, 0, 0.5, 0.5], [0.5, -1.5, 0.0, 0.0], 2)
    assert stats == [
        {"id": "a", "rewards": [1.0, 0.0], "advantages": 1.0, "difficulty": 1},
        {"id": "b", "rewards": [0.5, 0.5], "advantages": 0.0, "difficulty": 2},
    ]
    assert prompt_stats(exs, [1, 0, 0, 0], [0.3, 0.2], 2)[1]["advantages"] == 0.2
    with pytest.raises(ValueError, match="rows"):
        prompt_stats(exs, [1, 0, 0], [0.3, 0.2], 2)


def test_make_prompt_source_composes_in_order():
    task = ArithTask(digits=(1, 2))
    plain = make_prompt_source(task, seed=1, num_examples=50)
    assert isinstance(plain, TaskSource)
    full = make_prompt_source(
        task,
        seed=1,
        num_examples=50,
        curriculum="ucb",
        filter_band=(0.2, 0.8),
        replay_fraction=0.25,
    )
    assert isinstance(full, ReplaySource) and isinstance(full.source, DifficultyFilter)
    assert isinstance(full.source.source, CurriculumSource) and full.source.source.arms == (1, 2)
    batch = full.next(8)
    full.update(prompt_stats(batch, [1.0] * 8, [0.1] * 8, 1))
    assert all(full.source.pass_rate(e.id) == 1.0 for e in batch)
    with pytest.raises(ValueError, match="curriculum"):
        make_prompt_source(task, curriculum="thompson")
