"""Tests for jaxrl_llm/evaluation.py: hand cases, brute-force enumeration, identities, and the CLI
end to end on a tiny random policy saved as an orbax run checkpoint."""

import dataclasses
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import evaluation as ev
from jaxrl_llm.tasks import ArithTask


def _brute_pass_at_k(n, c, k):
    """Fraction of k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = float(ev.pass_at_k(n, c, k))
            assert got == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_hand_values_and_vectorised():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5.
    assert float(ev.pass_at_k(4, 1, 2)) == pytest.approx(0.5)
    # pass@1 is c / n.
    c = np.array([0, 3, 7, 10])
    np.testing.assert_allclose(ev.pass_at_k(10, c, 1), c / 10)
    # n - c < k -> exactly 1; c = 0 -> exactly 0.
    np.testing.assert_array_equal(ev.pass_at_k(10, np.array([9, 0]), 2), [1.0, 0.0])
    # Large n does not overflow, and agrees with the closed form via lgamma.
    n, cc, k = 256, 3, 128
    ref = 1 - math.exp(
        math.lgamma(n - cc + 1)
        - math.lgamma(n - cc - k + 1)
        - math.lgamma(n + 1)
        + math.lgamma(n - k + 1)
    )
    assert float(ev.pass_at_k(n, cc, k)) == pytest.approx(ref, rel=1e-10)
    # Monotone non-decreasing in k.
    vals = [float(ev.pass_at_k(64, 5, k)) for k in range(1, 65)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="exceeds"):
        ev.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        ev.pass_at_k(4, 5, 1)


def test_pass_at_ks_from_table():
    correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    got = ev.pass_at_ks(correct)
    assert list(got) == [1, 2, 4]
    assert got[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert got[2] == pytest.approx((0.5 + 0 + 1) / 3)
    assert got[4] == pytest.approx(2 / 3)


def test_maj_at_k_hand_cases():
    answers = [
        ["1", "2", "2", "1", "3"],  # k=3: "2" wins (2 votes); k=4: tie 1/2 -> "1" seen first
        ["7", None, None, "8", "8"],  # k=3: only "7" votes; k=5: "8" wins 2:1
        [None, None, None, None, None],
    ]  # nobody votes -> wrong
    correct = [[True, False, False, True, False], [False, False, False, True, True], [False] * 5]
    np.testing.assert_array_equal(ev.maj_at_k(answers, correct, 1), [1, 0, 0])
    np.testing.assert_array_equal(ev.maj_at_k(answers, correct, 3), [0, 0, 0])
    np.testing.assert_array_equal(ev.maj_at_k(answers, correct, 4), [1, 0, 0])
    # k=5: "1" and "2" tie 2:2 -> "1" seen first (right); prompt 1: "8" wins 2:1.
    np.testing.assert_array_equal(ev.maj_at_k(answers, correct, 5), [1, 1, 0])
    # A callable verifier gives the same as the table.
    fn = lambda p, a: (p, a) in {(0, "1"), (1, "8")}
    np.testing.assert_array_equal(ev.maj_at_k(answers, fn, 5), [1, 1, 0])


def test_maj_at_k_expected_mode():
    answers = [["a", "b", "b", "c"]]
    correct = [[False, True, True, False]]
    # k=1: expectation over single samples = fraction correct.
    assert ev.maj_at_k(answers, correct, 1, mode="expected")[0] == pytest.approx(0.5)
    # k=n: the only subset is the full set.
    assert ev.maj_at_k(answers, correct, 4, mode="expected")[0] == 1.0
    # k=2 by hand over the 6 pairs (ties -> earlier sample):
    # ab->a, ab->a, ac->a, bb->b, bc->b, bc->b  => 3/6 correct.
    assert ev.maj_at_k(answers, correct, 2, mode="expected")[0] == pytest.approx(0.5)
    # Monte-Carlo branch (forced by max_subsets=1) approximates the exact value.
    mc = ev.maj_at_k(answers, correct, 2, mode="expected", max_subsets=1, num_resamples=4000)
    assert mc[0] == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="mode"):
        ev.maj_at_k(answers, correct, 2, mode="best")


def test_mean_at_k_difficulty_and_diversity():
    rewards = np.array([[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(ev.mean_at_k(rewards, 2), [0.5, 0.0])
    np.testing.assert_allclose(ev.mean_at_k(rewards, 4), [0.5, 0.5])

    correct = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    acc = ev.per_difficulty_accuracy(correct, ["easy", "hard", "easy"])
    assert acc == {
        "easy": {"accuracy": 0.75, "num_prompts": 2},
        "hard": {"accuracy": 0.0, "num_prompts": 1},
    }

    answers = [["4", "4", "4", "4"], ["1", "2", None, None], ["1", "2", "3", "4"]]
    np.testing.assert_allclose(
        ev.answer_entropy(answers),
        [0.0, -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)), math.log(4)],
    )
    np.testing.assert_allclose(
        ev.answer_entropy(answers, count_none=False), [0.0, math.log(2), math.log(4)]
    )
    okt = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 0, 1]], bool)
    np.testing.assert_array_equal(ev.distinct_correct_answers(answers, okt), [1, 2, 2])


def test_fit_entropy_performance_recovers_parameters():
    h = np.linspace(0.05, 1.5, 20)
    a, b = 0.3, 1.2
    r = -a * np.exp(h) + b
    got_a, got_b, r2 = ev.fit_entropy_performance(h, r)
    assert got_a == pytest.approx(a, rel=1e-9) and got_b == pytest.approx(b, rel=1e-9)
    assert r2 == pytest.approx(1.0)
    noisy = r + np.random.default_rng(0).normal(0, 0.05, size=r.shape)
    _, _, r2n = ev.fit_entropy_performance(h, noisy)
    assert 0.5 < r2n < 1.0


def test_summarize_samples_and_eval_json(tmp_path):
    examples = [{"difficulty": 1}, {"difficulty": 2}]
    completions = [["x=4", "x=5", "x=4", "?"], ["a", "b", "c", "d"]]
    answers = [["4", "5", "4", None], ["a", "b", "c", "d"]]
    rewards = [[1, 0, 1, 0], [0, 0, 0, 1]]
    out = ev.summarize_samples(examples, completions, rewards, answers, ks=[1, 2, 4])
    assert out["accuracy"] == pytest.approx(3 / 8)
    assert out["pass_at_1"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["pass_at_2"] == pytest.approx((1 - 1 / 6 + 0.5) / 2)  # c=2: 1 - C(2,2)/C(4,2)
    assert out["pass_at_4"] == pytest.approx(1.0)
    assert out["maj_at_4"] == pytest.approx((1 + 0) / 2)  # "4" wins; a/b/c/d tie -> "a" wrong
    assert out["mean_at_2"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["distinct_correct_answers"] == pytest.approx((1 + 1) / 2)
    assert out["accuracy/difficulty_1"] == 0.5 and out["accuracy/difficulty_2"] == 0.25
    assert out["num_samples"] == 4
    path = ev.write_eval_json(str(tmp_path), out, step=7, n=4)
    back = ev.read_eval_json(str(tmp_path))
    assert back["step"] == 7 and back["metrics"]["pass_at_2"] == pytest.approx(out["pass_at_2"])
    assert json.load(open(path))["n"] == 4
    with pytest.raises(ValueError, match="every k"):
        ev.summarize_samples(examples, completions, rewards, answers, ks=[8])


def test_evaluate_task_with_a_fake_sampler():
    from jaxrl_llm.tasks import ArithTask

    task = ArithTask(digits=(1,), ops="+")
    examples = task.examples("test", 5, 0)
    assert len(examples) == 5
    n, calls = 4, []

    def sample_fn(chunk, index):  # prompt p gets min(p, n) correct samples first
        calls.append((index, len(chunk)))
        out = []
        for e in chunk:
            p = examples.index(e)
            out += [e.answer if s < p else "x\nmore" for s in range(n)]
        return out

    metrics, tables = ev.evaluate_task(
        task, examples, sample_fn, n=n, ks=[1, 2, 4], batch_prompts=2
    )
    assert calls == [(0, 2), (1, 2), (2, 2)]  # the last chunk is padded to 2 prompts
    c = np.array([0, 1, 2, 3, 4])
    np.testing.assert_array_equal(tables["correct"].sum(axis=1), c)
    for k in (1, 2, 4):
        assert metrics[f"pass_at_{k}"] == pytest.approx(np.mean(ev.pass_at_k(n, c, k)))
    assert metrics["maj_at_4"] == pytest.approx(3 / 5)  # p=2 ties 2:2 -> first (correct) wins
    assert metrics["distinct_correct_answers"] == pytest.approx(4 / 5)
    assert "| 4 | 0.8000 |" in ev.format_table(metrics)
    with pytest.raises(ValueError, match="sample_fn returned"):
        ev.evaluate_task(task, examples, lambda ch, i: ["1"], n=n, batch_prompts=2)


# ----------------------------------------------------------------------------- the CLI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "grpo_arith.py")
OVERRIDES = {
    "model.hidden_size": 32,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "model.head_dim": 16,
    "model.intermediate_size": 64,
    "task.reward_workers": 0,
}


def _config():
    spec = importlib.util.spec_from_file_location("grpo_arith_cfg", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("runlocal")
    for key, value in OVERRIDES.items():
        group, name = key.split(".")
        c[group][name] = value
    return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from jaxrl_llm import models
    from jaxrl_llm.checkpoint import Checkpointer
    from jaxrl_llm.trainers import rl
    from jaxrl_llm.trainers.state import TrainState

    workdir = str(tmp_path_factory.mktemp("run"))
    c = _config()
    tokenizer = rl.build_tokenizer(c, workdir)
    params = models.init_params(rl.build_model_config(c, tokenizer), jax.random.key(3))
    state = TrainState(
        step=jnp.asarray(5, jnp.int32),
        params=params,
        opt_state={"mu": params},
        rng=jax.random.key_data(jax.random.key(0)),
        kl_coef=jnp.zeros((), jnp.float32),
    )
    ckpt = Checkpointer(workdir)
    ckpt.save(5, state, {"step": 5})
    ckpt.close()
    return workdir, params


def test_load_policy_reads_only_the_policy(run_dir):
    workdir, params = run_dir
    _, restored, _, _, _, step = ev.load_policy(_config(), workdir)
    assert step == 5
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="neither a run workdir"):
        ev.load_policy(_config(), os.path.dirname(workdir))


def test_cli_writes_eval_json(run_dir):
    workdir, _ = run_dir
    out = os.path.join(workdir, "eval_cli.json")
    cmd = [
        sys.executable,
        "-m",
        "jaxrl_llm.evaluation",
        f"--config={CONFIG}:runlocal",
        f"--checkpoint={workdir}",
        "--n=4",
        "--k=1,2,4",
        "--size=8",
        "--temperature=1.0",
        f"--out={out}",
    ]
    cmd += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device: quicker
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| k | pass@k | maj@k | mean@k |" in proc.stdout
    assert f"evaluating checkpoint step 5 of {workdir}" in proc.stdout
    record = json.load(open(out))
    m = record["metrics"]
    assert (
        record["step"] == 5 and record["n"] == 4 and m["num_prompts"] == 8 and m["num_samples"] == 4
    )
    assert record["checkpoint"] == os.path.abspath(workdir)
    assert m["pass_at_1"] == pytest.approx(m["accuracy"])
    assert 0.0 <= m["pass_at_1"] <= m["pass_at_2"] <= m["pass_at_4"] <= 1.0
    assert all(f"{name}_at_{k}" in m for name in ("pass", "maj", "mean") for k in (1, 2, 4))


@dataclasses.dataclass(frozen=True)
class CoinTask(ArithTask):
    """The arithmetic prompts, but a sample is correct when its first character has an even
    code point: a random policy is right about half the time, so per-prompt counts vary."""

    name: str = "coin"

    def reward_details(self, completion, example):
        ok = float(bool(completion) and ord(completion[0]) % 2 == 0)
        return ok, {"correct": ok}


def make_coin_task(**kwargs):
    return CoinTask(**kwargs)


def test_cli_per_prompt_counts_match_the_means(run_dir):
    """--per_prompt: correct_counts ([P] ints out of n) and prompts; the counts reproduce the
    written pass@1 and, through repro_analysis.per_prompt_pass_at_k, every written pass@k."""
    from experiments import repro_analysis

    workdir, _ = run_dir
    out = os.path.join(workdir, "eval_per_prompt.json")
    n, ks, size = 8, [1, 2, 4, 8], 6
    cmd = [
        sys.executable,
        "-m",
        "jaxrl_llm.evaluation",
        f"--config={CONFIG}:runlocal",
        f"--checkpoint={workdir}",
        f"--n={n}",
        "--k=" + ",".join(map(str, ks)),
        f"--size={size}",
        "--temperature=1.5",
        "--per_prompt",
        f"--out={out}",
        "--config.task.name=tests.test_evaluation:make_coin_task",
    ]
    cmd += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.load(open(out))
    counts, m = record["correct_counts"], record["metrics"]
    assert len(counts) == size and all(isinstance(c, int) and 0 <= c <= n for c in counts)
    assert len(set(counts)) > 1, counts  # the coin task gives varied counts: a real check
    assert len(record["prompts"]) == size and all(isinstance(p, str) for p in record["prompts"])
    assert sum(counts) / (size * n) == pytest.approx(m["pass_at_1"], abs=1e-12)
    assert np.mean(counts) / n == pytest.approx(m["accuracy"], abs=1e-12)
    curves = repro_analysis.per_prompt_pass_at_k(counts, n, ks)  # [P, K]
    assert curves.shape == (size, len(ks))
    for j, k in enumerate(ks):
        assert curves[:, j].mean() == pytest.approx(m[f"pass_at_{k}"], abs=1e-12)
    # The prompts are the task's held-out prompts of the CLI's seed, in order.
    c = _config()
    task = make_coin_task(**c.task.kwargs.to_dict())
    assert record["prompts"] == [e.prompt for e in task.examples("test", size, c.eval.seed)]


def test_write_eval_json_per_prompt_fields(tmp_path):
    path = ev.write_eval_json(
        str(tmp_path), {"pass_at_1": 0.5}, step=None, n=2, per_prompt={"correct_counts": (1, 1)}
    )
    assert json.load(open(path))["correct_counts"] == [1, 1]
    assert "correct_counts" not in ev.read_eval_json(
        os.path.dirname(ev.write_eval_json(str(tmp_path), {}, step=1, n=2, filename="b.json")),
        "b.json",
    )
    with pytest.raises(ValueError, match="fixed field"):
        ev.write_eval_json(str(tmp_path), {}, step=1, n=2, per_prompt={"metrics": [1]})
    with pytest.raises(ValueError, match="correct must be"):
        ev.per_prompt_record([object()], np.zeros((2, 3), bool))


def test_load_policy_skips_an_unreadable_newest_step(run_dir, tmp_path):
    """A truncated array file in the newest step: the policy of the previous step is evaluated."""
    import shutil

    from jaxrl_llm.checkpoint import CheckpointRestoreError

    src, params = run_dir
    workdir = str(tmp_path / "run")
    shutil.copytree(src, workdir)
    ckpt = os.path.join(workdir, "checkpoints")
    shutil.copytree(os.path.join(ckpt, "5"), os.path.join(ckpt, "9"))
    data = [
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(ckpt, "9", "state"))
        if os.path.basename(root) == "d"
        for f in names
    ]
    for f in data:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 3)
    _, restored, _, _, _, step = ev.load_policy(_config(), workdir)
    assert step == 5
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(CheckpointRestoreError, match="step 9: "):
        ev.load_policy(_config(), workdir, step=9)


def test_eval_sampling_params_follow_the_rollout_truncations(tmp_path):
    """The trainer's held-out sampler and the CLI's are one function: top-k / top-p / min-p
    of `rollout` apply to both; temperature and n default to `eval.*`."""
    from jaxrl_llm.trainers import rl, text

    assert ev.eval_sampling_params is text.eval_sampling_params  # one function, not two copies
    c = _config()
    c.rollout.top_k, c.rollout.top_p, c.rollout.min_p = 7, 0.9, 0.05
    c.eval.temperature, c.eval.n = 0.7, 3
    tok = rl.build_tokenizer(c, str(tmp_path))
    sp = ev.eval_sampling_params(c, tok)
    assert (sp.top_k, sp.top_p, sp.min_p) == (7, 0.9, 0.05)
    assert (sp.temperature, sp.greedy, sp.n) == (0.7, False, 3)
    assert sp.max_new_tokens == c.rollout.max_new_tokens
    assert sp.stop_token_ids == (tok.eos_token_id,)
    cli = ev.eval_sampling_params(c, tok, n=64, temperature=0.0)
    assert (cli.greedy, cli.temperature, cli.n, cli.top_k) == (True, 1.0, 64, 7)
