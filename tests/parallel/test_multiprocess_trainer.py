"""The RL `Trainer` in two jax.distributed processes (gloo, 4 CPU devices each) = one process.

Both runs: 3 GRPO steps of 8 prompts × 2 samples with a KL term, mesh (data 2, fsdp 4),
an evaluation before and after; the reward (the fraction of digits in a completion) is
non-zero for an untrained model, so the updates are real. Checks: `jax.process_count() == 2`
in the workers; every sampler call fed process 0 the first half of the prompts and process 1
the second half, exactly those of the one-process run; both workers report the same history,
equal to the one-process history within rtol 1e-4 / atol 1e-6 (collectives reorder sums; with
Adam's eps = 1 the update is SGD-like and does not amplify them).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from jaxrl_llm import models

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "parallel", "mp_trainer_worker.py")
TIME_LIMIT_S = 480


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(args, devices, log_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  log = open(log_path, "w")
  return subprocess.Popen([sys.executable, WORKER] + args, env=env, cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT), log


def test_two_process_trainer_matches_one_process(tmp_path):
  tok = models.build_builtin_tokenizer(str(tmp_path / "tok"))
  addr = f"127.0.0.1:{_free_port()}"
  common = [f"--tokenizer={tok}"]
  runs = [_launch(common + [f"--process_id={i}", "--num_processes=2",
                            f"--coordinator_address={addr}", f"--workdir={tmp_path / 'mp'}",
                            f"--record={tmp_path / f'p{i}.json'}"], 4, tmp_path / f"log{i}")
          for i in range(2)]
  runs.append(_launch(common + [f"--workdir={tmp_path / 'sp'}",
                                f"--record={tmp_path / 'ref.json'}"], 8, tmp_path / "logref"))
  try:
    for p, _ in runs:
      p.wait(timeout=TIME_LIMIT_S)
  finally:
    for p, log in runs:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()
  for (p, _), name in zip(runs, ("log0", "log1", "logref")):
    assert p.returncode == 0, (tmp_path / name).read_text()[-4000:]
  ref = json.loads((tmp_path / "ref.json").read_text())
  workers = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]

  assert ref["process_count"] == 1
  assert [w["process_count"] for w in workers] == [2, 2]
  assert [w["process_index"] for w in workers] == [0, 1]
  # 1 eval + 3 steps + 1 eval sampler calls; each process fed exactly its half of each
  assert len(ref["fed"]) == 5
  for full, first, second in zip(ref["fed"], workers[0]["fed"], workers[1]["fed"]):
    assert first == full[:len(full) // 2] and second == full[len(full) // 2:]

  assert workers[0]["history"] == workers[1]["history"]
  assert workers[0]["final_eval"] == ref["final_eval"]
  for got, want in zip(workers[0]["history"], ref["history"]):
    assert set(got) == set(want)
    for k in want:
      if k != "compiles":     # the workers also compile the global-array assembly
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
  train = [h for h in ref["history"] if "train/grad_norm" in h]
  assert len(train) == 3 and all(h["train/grad_norm"] > 0.1 and h["train/reward"] > 0
                                 for h in train)
  assert train[0]["train/entropy"] != train[-1]["train/entropy"]   # the policy moved
