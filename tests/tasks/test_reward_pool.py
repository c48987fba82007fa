"""RewardPool: exceptions, time-outs, NaNs, worker crashes are counted zeros; hung workers are killed."""

import logging
import os

import numpy as np
import pytest

from jaxrl_llm.tasks import ArithTask, Example, RewardPool, make_task
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
