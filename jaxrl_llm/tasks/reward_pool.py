"""`RewardPool`: score completions in spawn-context worker processes with a per-call time limit.

Reward functions never crash training. For each completion the pool calls
`task.reward_details` (or `task.reward`) in a worker process; the outcome is

    finite float          → that value (float32, never rounded)
    exception             → 0.0, counted in info['errors']
    past `timeout_s`      → 0.0, counted in info['timeouts']; the worker is killed and replaced
    NaN / ±inf            → 0.0, counted in info['nans']
    worker died (crash)   → 0.0, counted in info['errors']; the worker is replaced
    budget spent          → 0.0, counted in info['budget_skipped'] (see below)

and every non-zero count is logged (python `logging`, logger `jaxrl_llm.tasks.reward_pool`).
Each worker holds one item at a time, so the time limit applies to exactly one
reward call. Workers load the task once per task (pickled by the parent, keyed
by its bytes); loading, including a task's optional `warmup()`, has its own
generous limit `load_timeout_s` and is not counted in the per-call limit.

A call can also have a time budget for all its completions (`step_budget_s`,
in the constructor or per call): once it is spent, no further completion is
started; each one not yet started is scored 0.0 and counted in
info['budget_skipped'], and those in flight keep their own `timeout_s` (a hung
one is killed and counted in info['timeouts'] as usual). So a call returns
within about `step_budget_s + timeout_s` even when every reward call hangs,
instead of `timeout_s × completions / workers`. The budget starts when the
first completion is handed to a worker, so task loading is not counted.

`reward_failure_streak(prev, info, num_rows)` is the stop rule's counter: the
number of consecutive calls in which every reward failed.

`num_workers=0` scores in the calling process, without a per-call time limit
(tests, debugging); exceptions and NaNs are still zeros and counted, and the
budget is checked between completions.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import pickle
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxrl_llm.tasks.base import Example, reward_details

__all__ = ["RewardPool", "score_in_process", "reward_failure_streak"]

logger = logging.getLogger(__name__)


def _worker_main(conn) -> None:
    """Worker loop: ('task', key, blob) loads a task; ('score', i, completion, example) scores one item."""
    task, key = None, None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        kind = msg[0]
        if kind == "stop":
            return
        if kind == "task":
            try:
                key, task = msg[1], pickle.loads(msg[2])
                warmup = getattr(task, "warmup", None)
                if warmup is not None:
                    warmup()
                conn.send(("task_ok", key, None))
            except BaseException:  # noqa: BLE001 - reported to the parent
                task = None
                conn.send(("task_err", key, traceback.format_exc()))
        elif kind == "score":
            _, idx, completion, example = msg
            try:
                total, comps = reward_details(task, completion, example)
                conn.send(("ok", idx, total, comps))
            except Exception:  # noqa: BLE001 - a reward error is a counted zero
                conn.send(("err", idx, traceback.format_exc(limit=8)))


@dataclasses.dataclass
class _Worker:
    proc: Any
    conn: Any
    state: str  # 'load' | 'idle' | 'busy'
    key: str | None
    t0: float
    idx: int = -1


class _Tally:
    """Rewards, components and counters of one `score` call."""

    def __init__(self, n: int):
        self.rewards = np.zeros((n,), np.float32)
        self.components: dict[str, np.ndarray] = {}
        self.errors = self.timeouts = self.nans = self.budget_skipped = 0
        self.first_error: str | None = None
        self.n = n

    def ok(self, i: int, total: float, comps: dict[str, float]) -> None:
        total = float(total)
        if not math.isfinite(total):
            self.nans += 1
            total = 0.0
        self.rewards[i] = total
        for name, v in comps.items():
            arr = self.components.setdefault(name, np.zeros((self.n,), np.float32))
            v = float(v)
            arr[i] = v if math.isfinite(v) else 0.0

    def error(self, tb: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = tb

    def info(self) -> dict:
        return {
            "errors": self.errors,
            "timeouts": self.timeouts,
            "nans": self.nans,
            "budget_skipped": self.budget_skipped,
            "components": self.components,
        }

    def log(self, task_name: str) -> None:
        if self.errors or self.timeouts or self.nans or self.budget_skipped:
            logger.warning(
                "reward %s on %d completions: %d errors, %d time-outs, %d NaN/inf, "
                "%d skipped when the step budget was spent (all scored 0.0)%s",
                task_name,
                self.n,
                self.errors,
                self.timeouts,
                self.nans,
                self.budget_skipped,
                f"; first error:\n{self.first_error}" if self.first_error else "",
            )


def reward_failure_streak(prev_streak: int, info: dict, num_rows: int) -> int:
    """`prev_streak + 1` when every one of `num_rows` rewards of a step failed, else 0.

    Failed: errors + timeouts + NaN/inf + budget-skipped (`RewardPool.score`'s
    info) ≥ num_rows. A trainer stops when the streak reaches its limit: a
    reward function that always fails gives zero advantages and no learning.
    A step with no rows keeps the streak as it is.
    """
    if num_rows <= 0:
        return int(prev_streak)
    failed = sum(int(info.get(k, 0)) for k in ("errors", "timeouts", "nans", "budget_skipped"))
    return int(prev_streak) + 1 if failed >= num_rows else 0


def _check_budget(budget_s: float | None) -> None:
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"step_budget_s must be > 0 or None, got {budget_s}")


def score_in_process(
    task: Any,
    completions: Sequence[str],
    examples: Sequence[Example],
    *,
    step_budget_s: float | None = None,
) -> tuple[np.ndarray, dict]:
    """`RewardPool(num_workers=0).score`: no processes, no per-call time limit.

    With `step_budget_s`, completions not started once it is spent are skipped
    (0.0, counted in info['budget_skipped']); a running call is not interrupted.
    """
    _check(completions, examples)
    _check_budget(step_budget_s)
    tally = _Tally(len(completions))
    t0 = time.monotonic()
    for i, (c, ex) in enumerate(zip(completions, examples)):
        if step_budget_s is not None and time.monotonic() - t0 >= step_budget_s:
            tally.budget_skipped = len(completions) - i
            break
        try:
            total, comps = reward_details(task, c, ex)
        except Exception:  # noqa: BLE001
            tally.error(traceback.format_exc(limit=8))
            continue
        tally.ok(i, total, comps)
    tally.log(getattr(task, "name", type(task).__name__))
    return tally.rewards, tally.info()


def _check(completions, examples) -> None:
    if len(completions) != len(examples):
        raise ValueError(f"len(completions)={len(completions)} != len(examples)={len(examples)}")
    if not all(isinstance(c, str) for c in completions):
        raise TypeError("completions must be strings (decoded text)")


class RewardPool:
    """A spawn-context process pool that scores completions with a per-call time limit.

    >>> pool = RewardPool(num_workers=2, timeout_s=5.0)
    >>> rewards, info = pool.score(task, completions, examples)   # float32 [N], counters
    >>> pool.close()
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        *,
        load_timeout_s: float = 120.0,
        step_budget_s: float | None = None,
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        _check_budget(step_budget_s)
        self.step_budget_s = step_budget_s
        self.num_workers, self.timeout_s, self.load_timeout_s = (
            num_workers,
            timeout_s,
            load_timeout_s,
        )
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = [self._spawn() for _ in range(num_workers)]
        self.total_restarts = 0

    # -------------------------------------------------------------- processes
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main, args=(child,), daemon=True, name="reward-worker"
        )
        proc.start()
        child.close()
        return _Worker(proc=proc, conn=parent, state="idle", key=None, t0=time.monotonic())

    def _kill(self, w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=10)
        w.conn.close()

    def _replace(self, w: _Worker) -> _Worker:
        self._kill(w)
        self.total_restarts += 1
        new = self._spawn()
        self._workers[self._workers.index(w)] = new
        return new

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.proc.pid for w in self._workers]

    def _send(self, w: _Worker, msg) -> bool:
        try:
            w.conn.send(msg)
            return True
        except (BrokenPipeError, OSError, EOFError):
            return False

    # -------------------------------------------------------------- scoring
    def score(
        self,
        task: Any,
        completions: Sequence[str],
        examples: Sequence[Example],
        *,
        step_budget_s: float | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Rewards float32 [N] and info {'errors', 'timeouts', 'nans', 'budget_skipped': int,
        'components': {name: float32 [N]}}.

        `step_budget_s` overrides the pool's budget for this call (None: the
        pool's; `math.inf`: none); see the module doc.
        """
        budget = self.step_budget_s if step_budget_s is None else step_budget_s
        _check_budget(budget)
        if budget is not None and math.isinf(budget):
            budget = None
        if self.num_workers == 0:
            return score_in_process(task, completions, examples, step_budget_s=budget)
        _check(completions, examples)
        if self._workers is None:
            raise RuntimeError("RewardPool is closed")
        try:
            blob = pickle.dumps(task)
        except Exception as e:
            raise TypeError(
                f"task {getattr(task, 'name', task)!r} cannot be pickled for the reward workers "
                f"(define it and its reward functions at module level): {e}"
            ) from e
        key = hashlib.blake2b(blob, digest_size=16).hexdigest()
        try:
            tally = self._score(task, blob, key, completions, examples, budget)
        except BaseException:
            # Replies still in flight belong to this call: restart every worker that owes one.
            for w in list(self._workers):
                if w.state != "idle":
                    self._replace(w)
            raise
        tally.log(getattr(task, "name", type(task).__name__))
        return tally.rewards, tally.info()

    def _score(self, task, blob, key, completions, examples, budget) -> _Tally:
        tally = _Tally(len(completions))
        pending = collections.deque(range(len(completions)))
        done, load_failures = 0, 0
        budget_end = math.inf  # set when the first completion is handed to a worker
        while done < len(completions):
            now = time.monotonic()
            if pending and now >= budget_end:
                logger.warning(
                    "reward step budget %.1fs spent: skipping %d of %d completions",
                    budget,
                    len(pending),
                    len(completions),
                )
                tally.budget_skipped += len(pending)
                done += len(pending)
                pending.clear()
                if done == len(completions):
                    break
            for w in list(self._workers):
                if w.state == "idle" and w.key != key:
                    if not self._send(w, ("task", key, blob)):
                        self._replace(w)
                        continue
                    w.state, w.t0 = "load", now
                if w.state == "idle" and pending:
                    i = pending.popleft()
                    if not self._send(w, ("score", i, completions[i], examples[i])):
                        pending.appendleft(i)
                        self._replace(w)
                        continue
                    w.state, w.idx, w.t0 = "busy", i, now
                    if budget is not None and budget_end == math.inf:
                        budget_end = now + budget
            active = [w for w in self._workers if w.state in ("load", "busy")]
            if not active:
                continue
            deadline = min(
                w.t0 + (self.timeout_s if w.state == "busy" else self.load_timeout_s)
                for w in active
            )
            if pending:
                deadline = min(deadline, budget_end)
            by_conn = {w.conn: w for w in active}
            ready = mp_connection.wait(list(by_conn), timeout=max(0.0, deadline - time.monotonic()))
            for conn in ready:
                w = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    msg = ("died",)
                if msg[0] == "died":
                    if w.state == "busy":
                        tally.error(
                            f"reward worker {w.proc.pid} died (exit code {w.proc.exitcode})"
                        )
                        done += 1
                    else:
                        load_failures += 1
                    self._replace(w)
                elif msg[0] == "task_ok":
                    w.state, w.key = "idle", msg[1]
                elif msg[0] == "task_err":
                    w.state, w.key = "idle", None
                    raise RuntimeError(
                        f"a reward worker could not load task {getattr(task, 'name', task)!r} "
                        f"(is it importable from a module, not __main__?):\n{msg[2]}"
                    )
                elif msg[0] == "ok":
                    tally.ok(msg[1], msg[2], msg[3])
                    done += 1
                    w.state = "idle"
                elif msg[0] == "err":
                    tally.error(msg[2])
                    done += 1
                    w.state = "idle"
            now = time.monotonic()
            for w in list(self._workers):
                if w.state == "busy" and now - w.t0 > self.timeout_s:
                    logger.warning(
                        "reward call on item %d exceeded %.1fs: killing worker %d",
                        w.idx,
                        self.timeout_s,
                        w.proc.pid,
                    )
                    tally.timeouts += 1
                    done += 1
                    self._replace(w)
                elif w.state == "load" and now - w.t0 > self.load_timeout_s:
                    load_failures += 1
                    self._replace(w)
            if load_failures > 2 * self.num_workers:
                raise RuntimeError(
                    f"reward workers failed to start or load task {getattr(task, 'name', task)!r} "
                    f"{load_failures} times (a script that creates a RewardPool needs an "
                    "`if __name__ == '__main__':` guard, as for any spawn-context pool)"
                )
        return tally

    def close(self) -> None:
        """Stops and joins the workers (killing any that do not stop within 5 s)."""
        if self._workers is None:
            return
        for w in self._workers:
            self._send(w, ("stop",))
        for w in self._workers:
            w.proc.join(timeout=5)
            self._kill(w)
        self._workers = None

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
