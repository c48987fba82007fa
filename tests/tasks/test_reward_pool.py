"""RewardPool: exceptions, time-outs, NaNs, worker crashes are counted zeros; hung workers are killed.

A step budget bounds a whole call: completions not started when it is spent are counted zeros.
"""

import logging
import math
import os
import time

import numpy as np
import pytest

from jaxrl_llm.tasks import (
    ArithTask,
    Example,
    RewardPool,
    make_task,
    reward_failure_streak,
    score_in_process,
)
from jaxrl_llm.tasks.testing import FaultyTask, UnloadableTask

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def pool():
    p = RewardPool(num_workers=2, timeout_s=TIMEOUT_S)
    yield p
    p.close()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _examples(n):
    return [Example(id=str(i), prompt="", answer="") for i in range(n)]


def test_faults_are_counted_zeros_and_hung_worker_is_gone(pool, caplog):
    task = FaultyTask(sleep_s=60.0)
    completions = ["0.25", "raise", "sleep", "nan", "1.5", "inf", "-0.75", "raise"]
    pids_before = set(pool.pids)
    with caplog.at_level(logging.WARNING, logger="jaxrl_llm.tasks.reward_pool"):
        rewards, info = pool.score(task, completions, _examples(len(completions)))
    assert rewards.dtype == np.float32 and rewards.shape == (8,)
    np.testing.assert_array_equal(rewards, np.float32([0.25, 0, 0, 0, 1.5, 0, -0.75, 0]))
    assert (info["errors"], info["timeouts"], info["nans"]) == (2, 1, 2)
    np.testing.assert_array_equal(
        info["components"]["half"], np.float32([0.125, 0, 0, 0, 0.75, 0, -0.375, 0])
    )
    # exactly one worker was replaced, and the hung process no longer exists
    pids_after = set(pool.pids)
    gone = pids_before - pids_after
    assert len(gone) == 1 and len(pids_after) == 2
    assert not _pid_exists(gone.pop())
    assert "1 time-outs" in caplog.text and "reward function failed on purpose" in caplog.text


def test_crashing_worker_is_replaced_and_pool_keeps_working(pool):
    task = FaultyTask()
    rewards, info = pool.score(task, ["exit", "2.0", "3.0"], _examples(3))
    np.testing.assert_array_equal(rewards, np.float32([0, 2, 3]))
    assert (info["errors"], info["timeouts"], info["nans"]) == (1, 0, 0)
    assert all(_pid_exists(p) for p in pool.pids)


def test_fractional_rewards_stay_float(pool):
    task = FaultyTask()
    values = ["0.1", "0.3333333", "2.5e-3", "-1e-7"]
    rewards, _ = pool.score(task, values, _examples(4))
    np.testing.assert_array_equal(rewards, np.float32([0.1, 0.3333333, 2.5e-3, -1e-7]))


def test_user_task_by_import_path_in_workers(pool):
    task = make_task("jaxrl_llm.tasks.testing:make_faulty")
    rewards, info = pool.score(task, ["0.5", "nan"], _examples(2))
    np.testing.assert_array_equal(rewards, np.float32([0.5, 0.0]))
    assert info["nans"] == 1


def test_pool_matches_in_process_on_arith(pool):
    task = ArithTask(digits=(1, 2), format_weight=0.5)
    exs = task.examples("train", 40, seed=1)
    completions = [e.answer if i % 3 else " 7x" for i, e in enumerate(exs)]
    r_pool, info_pool = pool.score(task, completions, exs)
    r_local, info_local = RewardPool(num_workers=0).score(task, completions, exs)
    np.testing.assert_array_equal(r_pool, r_local)
    for name in ("correct", "format"):
        np.testing.assert_array_equal(info_pool["components"][name], info_local["components"][name])
    expected = np.float32([1.5 if i % 3 else 0.0 for i in range(40)])
    np.testing.assert_array_equal(r_pool, expected)


def test_in_process_counts_errors_and_nans():
    rewards, info = RewardPool(num_workers=0).score(
        FaultyTask(), ["raise", "nan", "0.5"], _examples(3)
    )
    np.testing.assert_array_equal(rewards, np.float32([0, 0, 0.5]))
    assert (info["errors"], info["timeouts"], info["nans"]) == (1, 0, 1)


def test_unpicklable_task_is_a_clear_error(pool):
    class Local(FaultyTask):
        pass

    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.score(Local(), ["1"], _examples(1))


def test_length_mismatch_rejected(pool):
    with pytest.raises(ValueError, match="len\\(completions\\)"):
        pool.score(FaultyTask(), ["1", "2"], _examples(1))


def test_task_that_fails_to_load_in_workers_is_a_clear_error_and_pool_recovers(pool):
    with pytest.raises(RuntimeError, match="(?s)could not load task.*cannot be loaded in a worker"):
        pool.score(UnloadableTask(), ["1", "2", "3"], _examples(3))
    rewards, info = pool.score(FaultyTask(), ["1", "2", "3"], _examples(3))
    np.testing.assert_array_equal(rewards, np.float32([1, 2, 3]))
    assert info["errors"] == 0


HANG = FaultyTask(sleep_s=3600.0)  # 'sleep' never returns within any limit


def test_step_budget_bounds_a_call_whose_rewards_all_hang(caplog):
    """20 hanging completions, 2 workers, 1 s each: 10 s without a budget, ~budget + 1 s with it."""
    n, timeout_s, budget_s = 20, 1.0, 1.5
    with RewardPool(num_workers=2, timeout_s=timeout_s, step_budget_s=budget_s) as pool:
        pool.score(FaultyTask(), ["1"], _examples(1))  # workers up and loaded: not timed
        pids_before = set(pool.pids)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="jaxrl_llm.tasks.reward_pool"):
            rewards, info = pool.score(HANG, ["sleep"] * n, _examples(n))
        elapsed = time.monotonic() - t0
        pids_after = set(pool.pids)
    np.testing.assert_array_equal(rewards, np.zeros((n,), np.float32))
    assert info["errors"] == 0 and info["nans"] == 0
    # 2 in flight when the budget started; at most 2 more started before it was spent
    assert 2 <= info["timeouts"] <= 4
    assert info["timeouts"] + info["budget_skipped"] == n
    # within budget + one time limit (+ slack for respawning on a busy machine), not 10 s
    assert elapsed < budget_s + timeout_s + 3.0, elapsed
    gone = pids_before - pids_after
    assert len(gone) == 2 and not any(_pid_exists(p) for p in gone)
    assert f"{info['budget_skipped']} skipped when the step budget was spent" in caplog.text
    assert reward_failure_streak(0, info, n) == 1


def test_per_call_budget_keeps_finished_rewards_and_skips_the_rest(pool):
    comps = ["0.5", "sleep", "sleep", "sleep", "sleep", "0.25"]
    rewards, info = pool.score(HANG, comps, _examples(6), step_budget_s=0.5)
    np.testing.assert_array_equal(rewards, np.float32([0.5, 0, 0, 0, 0, 0]))
    assert info["errors"] == 0 and 1 <= info["timeouts"] <= 2
    assert info["timeouts"] + info["budget_skipped"] == 5
    assert reward_failure_streak(3, info, 6) == 0  # one reward succeeded: the streak ends
    # a budget that is not reached changes nothing; math.inf lifts one
    for budget in (30.0, math.inf):
        rewards, info = pool.score(
            FaultyTask(), ["1", "2", "3"], _examples(3), step_budget_s=budget
        )
        np.testing.assert_array_equal(rewards, np.float32([1, 2, 3]))
        assert info["budget_skipped"] == info["timeouts"] == 0


def test_in_process_budget_is_checked_between_completions():
    task = FaultyTask(sleep_s=0.4)  # 'sleep' returns 1.0 after 0.4 s
    rewards, info = score_in_process(task, ["sleep"] * 3 + ["1"], _examples(4), step_budget_s=0.6)
    # item 0 ends at 0.4 s (< 0.6: item 1 starts), item 1 at 0.8 s: items 2 and 3 are skipped
    np.testing.assert_array_equal(rewards, np.float32([1, 1, 0, 0]))
    assert info["budget_skipped"] == 2 and info["errors"] == info["timeouts"] == 0
    with pytest.raises(ValueError, match="step_budget_s"):
        RewardPool(num_workers=0, step_budget_s=0.0)


def test_reward_failure_streak_by_hand():
    ok = {"errors": 0, "timeouts": 0, "nans": 0, "budget_skipped": 0}
    every = {"errors": 3, "timeouts": 2, "nans": 1, "budget_skipped": 2}  # 8 of 8 failed
    most = {**every, "errors": 2}  # 7 of 8
    streak = 0
    for info, expected in [(every, 1), (every, 2), (most, 0), (every, 1), (ok, 0)]:
        streak = reward_failure_streak(streak, info, 8)
        assert streak == expected
    assert reward_failure_streak(4, {"errors": 2}, 2) == 5  # missing keys count as 0
    assert reward_failure_streak(4, ok, 0) == 4  # an empty step keeps the streak
