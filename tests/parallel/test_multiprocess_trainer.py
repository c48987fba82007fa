"""The RL `Trainer` in two jax.distributed processes (gloo, 2 CPU devices each) = one process;
also with multi-turn calculator episodes (the last test).

Both runs: 3 GRPO steps of 8 prompts × 2 samples with a KL term, mesh (data 2, fsdp 2),
an evaluation before and after; the reward (the fraction of digits in a completion) is
non-zero for an untrained model, so the updates are real; a second case replays a quarter of
each batch's groups from the rollout buffer, a third runs DAPO dynamic sampling. Checks: `jax.process_count() == 2`
in the workers; every sampler call fed process 0 the first half of the prompts and process 1
the second half, exactly those of the one-process run; both workers report the same history,
equal to the one-process history within rtol 1e-4 / atol 1e-6 (collectives reorder sums; with
Adam's eps = 1 the update is SGD-like and does not amplify them).

The one-process reference runs after the two workers, not beside them, so that a 2-core
machine runs two processes at a time. A worker that outlives its time limit prints every
thread's stack into its log (SIGUSR1 → faulthandler) before it is killed, and the failure
shows the tails of all logs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxrl_llm import models

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "parallel", "mp_trainer_worker.py")
TIME_LIMIT_S = 420  # per phase (the two workers; then the reference); ~40 s each when idle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, devices, log_path):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, WORKER, f"--stack_dump_after={TIME_LIMIT_S - 60}"] + args,
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    ), log


def _wait_all(runs, logs):
    """Waits for every process; on time-out dumps their stacks, kills them and fails with the logs."""
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        for p, _ in runs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                break
        stuck = [p for p, _ in runs if p.poll() is None]
        for p in stuck:
            p.send_signal(signal.SIGUSR1)
        if stuck:
            time.sleep(5)
    finally:
        for p, log in runs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    report = "\n".join(
        f"==== {name} (exit {p.returncode})\n{logs[name].read_text()[-6000:]}"
        for (p, _), name in zip(runs, logs)
    )
    assert all(p.returncode == 0 for p, _ in runs), report


@pytest.mark.parametrize(
    "replay,dynamic",
    [(0.0, False), (0.25, False), (0.0, True)],
    ids=["plain", "replay", "dynamic_sampling"],
)
def test_two_process_trainer_matches_one_process(tmp_path, replay, dynamic):
    tok = models.build_builtin_tokenizer(str(tmp_path / "tok"))
    addr = f"127.0.0.1:{_free_port()}"
    common = [f"--tokenizer={tok}", f"--replay_fraction={replay}"] + (
        ["--dynamic_sampling"] if dynamic else []
    )
    logs = {f"log{i}": tmp_path / f"log{i}" for i in range(2)}
    _wait_all(
        [
            _launch(
                common
                + [
                    f"--process_id={i}",
                    "--num_processes=2",
                    f"--coordinator_address={addr}",
                    f"--workdir={tmp_path / 'mp'}",
                    f"--record={tmp_path / f'p{i}.json'}",
                ],
                2,
                logs[f"log{i}"],
            )
            for i in range(2)
        ],
        logs,
    )
    logs = {"logref": tmp_path / "logref"}
    _wait_all(
        [
            _launch(
                common + [f"--workdir={tmp_path / 'sp'}", f"--record={tmp_path / 'ref.json'}"],
                4,
                logs["logref"],
            )
        ],
        logs,
    )
    ref = json.loads((tmp_path / "ref.json").read_text())
    workers = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]

    assert ref["process_count"] == 1
    assert [w["process_count"] for w in workers] == [2, 2]
    assert [w["process_index"] for w in workers] == [0, 1]
    # 1 eval + 3 steps (+ any extra dynamic-sampling calls) + 1 eval sampler calls; each
    # process fed exactly its half of each
    assert len(ref["fed"]) == 5 + sum(
        h.get("data/attempts", 1) - 1 for h in ref["history"] if "train/reward" in h
    )
    assert [len(w["fed"]) for w in workers] == [len(ref["fed"])] * 2
    # with replay, 2 of the 8 groups of steps 2 and 3 come from the buffer, not the sampler: 6
    # fresh prompts, padded to 8 (the mesh's 4 batch shards) with copies of the last one
    assert all(len(f) == 8 for f in ref["fed"])
    for f in ref["fed"][2:4]:
        assert (f[5:] == [f[5]] * 3) == bool(replay)
    for full, first, second in zip(ref["fed"], workers[0]["fed"], workers[1]["fed"]):
        assert first == full[: len(full) // 2] and second == full[len(full) // 2 :]

    assert workers[0]["history"] == workers[1]["history"]
    assert workers[0]["final_eval"] == ref["final_eval"]
    for got, want in zip(workers[0]["history"], ref["history"]):
        assert set(got) == set(want)
        for k in want:
            if k != "compiles":  # the workers also compile the global-array assembly
                np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    train = [h for h in ref["history"] if "train/grad_norm" in h]
    assert len(train) == 3 and all(
        h["train/grad_norm"] > 0.1 and h["train/reward"] > 0 for h in train
    )
    assert train[0]["train/entropy"] != train[-1]["train/entropy"]  # the policy moved
    if replay:
        assert [h["data/replayed_groups"] for h in train] == [0.0, 2.0, 2.0]
    if dynamic:  # groups were dropped and re-sampled, every attempt gathered across processes
        assert sum(h["data/attempts"] for h in train) > 3
        assert any(h["data/frac_dropped"] > 0 for h in train)


def test_two_process_multi_turn_matches_one_process(tmp_path):
    """Calculator episodes (two turns at most) in the trainer's collect stage, 3 steps on
    (data 2, fsdp 2) in two processes: the workers agree with each other and with the
    one-process run (history within rtol 1e-4, the final evaluation)."""
    tok = models.build_builtin_tokenizer(str(tmp_path / "tok"))
    addr = f"127.0.0.1:{_free_port()}"
    common = [f"--tokenizer={tok}", "--env"]
    logs = {f"log{i}": tmp_path / f"log{i}" for i in range(2)}
    _wait_all(
        [
            _launch(
                common
                + [
                    f"--process_id={i}",
                    "--num_processes=2",
                    f"--coordinator_address={addr}",
                    f"--workdir={tmp_path / 'mp'}",
                    f"--record={tmp_path / f'p{i}.json'}",
                ],
                2,
                logs[f"log{i}"],
            )
            for i in range(2)
        ],
        logs,
    )
    logs = {"logref": tmp_path / "logref"}
    _wait_all(
        [
            _launch(
                common + [f"--workdir={tmp_path / 'sp'}", f"--record={tmp_path / 'ref.json'}"],
                4,
                logs["logref"],
            )
        ],
        logs,
    )
    ref = json.loads((tmp_path / "ref.json").read_text())
    workers = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert [w["process_count"] for w in workers] == [2, 2]
    assert workers[0]["history"] == workers[1]["history"]
    assert workers[0]["final_eval"] == ref["final_eval"]
    for got, want in zip(workers[0]["history"], ref["history"]):
        assert set(got) == set(want)
        for k in want:
            if k != "compiles":
                np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    train = [h for h in ref["history"] if "train/grad_norm" in h]
    assert len(train) == 3 and all(h["train/grad_norm"] > 0 for h in train)
    # some episodes took a second turn (an observation appended mid-completion), the same
    # ones in every process
    assert max(ref["max_turns_per_step"]) == 2
    assert [w["max_turns_per_step"] for w in workers] == [ref["max_turns_per_step"]] * 2
