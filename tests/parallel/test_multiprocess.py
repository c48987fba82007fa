"""Two processes on localhost (jax.distributed, gloo CPU collectives) = one process.

Each worker (`mp_worker.py`) has 4 virtual CPU devices; together they form one 8-device
mesh (data = 2 across the processes, fsdp = 4 inside each). Three RL steps: sample,
score on the host, advantages, sharded update. The reference runs the same function in
this process on 8 devices with the same global batch.

Checks: `jax.process_count() == 2` in both workers; each fed only its half of the
prompts; identical metrics in both workers (they are replicated); the same metrics,
sampled tokens as the one-process run (rtol 2e-5, atol 1e-6: collectives reorder
sums) and the same final state within atol 1e-5 (1 % of one Adam step of lr 1e-3: Adam's
g / (sqrt(v) + eps) amplifies reordered sums of near-zero gradients); the orbax
checkpoint both workers wrote together restores in this process onto another mesh, bit
for bit what the workers held.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrl_llm.parallel import multihost as mh
from tests.parallel import mp_worker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIME_LIMIT_S = 420
RTOL, ATOL = 2e-5, 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("multiprocess"))
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
    )
    addr = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(REPO, "tests", "parallel", "mp_worker.py"),
                f"--process_id={i}",
                "--num_processes=2",
                f"--coordinator_address={addr}",
                f"--out={out}",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        reference = mp_worker.run_steps(None)  # meanwhile: one process, 8 devices
        logs = []
        for p in procs:
            logs.append(p.communicate(timeout=TIME_LIMIT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    workers = [json.load(open(os.path.join(out, f"process_{i}.json"))) for i in range(2)]
    return reference, workers, out


def test_two_processes_each_fed_its_half(runs):
    reference, workers, _ = runs
    assert reference["process_count"] == 1 and reference["devices"] == 8
    for i, w in enumerate(workers):
        assert w["process_index"] == i
        assert w["process_count"] == 2  # jax.process_count() inside the worker
        assert w["local_devices"] == 4 and w["devices"] == 8
    B = mp_worker.B
    for step in range(mp_worker.STEPS):
        assert workers[0]["loaded"][step] == list(range(0, B // 2))
        assert workers[1]["loaded"][step] == list(range(B // 2, B))
        assert reference["loaded"][step] == list(range(B))


def test_same_metrics_as_one_process(runs):
    reference, workers, _ = runs
    ref = reference["history"]
    assert len(ref) == mp_worker.STEPS
    for w in workers:
        assert w["history"] == workers[0]["history"]  # replicated metrics: bit-identical
        for step, (got, want) in enumerate(zip(w["history"], ref)):
            assert got["tokens_sum"] == want["tokens_sum"], step  # the same sampled tokens
            assert set(got) == set(want)
            for k in want:
                np.testing.assert_allclose(
                    got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=f"{step} {k}"
                )
    # not a vacuous comparison: the policy moved and the rewards/gradients were non-zero
    assert ref[0]["param_sq"] != ref[-1]["param_sq"]
    assert all(h["grad_norm"] > 1e-3 and 0 < h["reward"] < 1 for h in ref)
    assert len({h["tokens_sum"] for h in ref}) == mp_worker.STEPS


def test_multiprocess_checkpoint_restores_on_another_mesh(runs):
    """Both workers wrote their shards into one orbax checkpoint; restore it here on
    (data, fsdp, tensor) = (1, 4, 2) and compare with the one-process final state."""
    from jaxrl_llm import checkpoint as ckpt_lib
    from jaxrl_llm import models
    from jaxrl_llm.parallel import make_mesh
    from jaxrl_llm.parallel import sharding as S

    reference, workers, out = runs
    state = reference["state"]
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    p_shard = models.param_shardings(_model_config(), mesh)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=S.replicated(mesh)), state
    )
    target = target.replace(
        params=jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state.params, p_shard
        )
    )
    ckpt = ckpt_lib.Checkpointer(os.path.join(out, "ckpt"))
    restored, meta = ckpt.restore(target)
    ckpt.close()
    assert meta["step"] == mp_worker.STEPS
    q = restored.params["layers"]["attn"]["q_proj"]["kernel"]
    assert (
        q.sharding.mesh.shape == mesh.shape
        and q.sharding.spec == p_shard["layers"]["attn"]["q_proj"]["kernel"].spec
    )
    host = jax.device_get(restored)
    sums = {
        jax.tree_util.keystr(path): float(np.sum(np.asarray(x, np.float64)))
        for path, x in jax.tree_util.tree_flatten_with_path(host)[0]
    }
    assert sums == workers[0]["final_sums"] == workers[1]["final_sums"]  # exact round trip
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
        host,
        jax.device_get(state),
    )


def _model_config():
    from jaxrl_llm import models

    return models.ModelConfig.tiny(vocab_size=mp_worker.VOCAB)


def test_distributed_kwargs_from_flags_and_environment():
    assert mh.distributed_kwargs(env={}) == {}  # nothing given: jax auto-detects (TPU pods)
    env = {mh.ENV_COORDINATOR: "10.0.0.1:1234", mh.ENV_NUM_PROCESSES: "4", mh.ENV_PROCESS_ID: "3"}
    assert mh.distributed_kwargs(env=env) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    assert mh.distributed_kwargs("h:1", 2, 0, env=env) == {  # flags win
        "coordinator_address": "h:1",
        "num_processes": 2,
        "process_id": 0,
    }
    with pytest.raises(ValueError, match=r"missing \['num_processes', 'process_id'\]"):
        mh.distributed_kwargs("h:1", env={})
    with pytest.raises(ValueError, match=r"process_id = 2 must be in \[0, num_processes = 2\)"):
        mh.distributed_kwargs("h:1", 2, 2, env={})


def test_row_helpers_in_one_process():
    """process_rows / make_global / host_local_rows on one process: all rows, round trip."""
    from jaxrl_llm.parallel import make_mesh
    from jaxrl_llm.parallel import sharding as S

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rows = S.row_sharding(mesh)
    assert mh.process_rows(rows, 8) == (0, 8)
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    g = mh.make_global(x, rows, 8)
    assert g.sharding.spec == rows.spec and g.addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(mh.host_local_rows(g), x)
    np.testing.assert_array_equal(mh.gather_to_host(g), x)
    with pytest.raises(ValueError, match=r"passed 6 rows; its share of the 8-row batch is rows"):
        mh.make_global(x[:6], rows, 8)
