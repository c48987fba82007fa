"""Tests for experiments/collate.py on fake workdirs with known values: old ones (event files
only, `pass@k` names) and new ones (metrics.jsonl, `pass_at_k` names)."""

import csv
import json
import os

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from experiments import collate
from jaxrl_llm import stats

STEPS = np.arange(0, 41, 2)
A = {"psr": 0.5, "nsr": 0.8}
OFFSET = {0: 0.0, 1: 0.01, 2: 0.02, 3: 0.5}  # seed 3 (nsr only) is an outlier


def _curve(variant, seed):
    y = np.where(
        STEPS == 0, 0.1, stats.sigmoid_curve(np.maximum(STEPS, 1), A[variant], 10.0, 2.0, 0.1)
    )
    return y + OFFSET[seed]


def _write_cell(root, variant, seed, *, resumed=False):
    name = f"advantage={variant},seed={seed}"
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "cell.json"), "w") as f:
        json.dump(
            {
                "name": name,
                "index": 10 * (variant == "nsr") + seed,
                "seed_key": "train.seed",
                "overrides": {"algo.advantage": variant, "train.seed": seed},
            },
            f,
        )
    y = _curve(variant, seed)
    if resumed:  # a first attempt ran to step 20 and died; it resumes from a step-16 checkpoint
        w = SummaryWriter(workdir, filename_suffix=".1")
        for s, v in zip(STEPS, y):
            if s <= 20:  # steps 16..20 are logged again after the resume, with other values
                w.add_scalar(
                    "train/reward", float(v) if s < 16 else 9.0, int(s), walltime=1000.0 + s
                )
        w.close()
    w = SummaryWriter(workdir, filename_suffix=".2")
    for s, v in zip(STEPS, y):
        if not resumed or s >= 16:
            w.add_scalar("train/reward", float(v), int(s), walltime=2000.0 + s)
        w.add_scalar("train/entropy", 1.0 - 0.01 * s, int(s), walltime=2000.0 + s)
    final = float(y[-1])
    if variant == "nsr":  # pass@k as scalars (tensorboardX stores 'eval/pass@4' as 'eval/pass_4')
        for k in (1, 4):
            w.add_scalar(f"eval/pass@{k}", 1 - (1 - final) ** k, int(STEPS[-1]))
    else:  # pass@k from eval.json
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(
                {"step": 40, "n": 4, "metrics": {"pass@1": final, "pass@4": 1 - (1 - final) ** 4}},
                f,
            )
    w.close()
    with open(os.path.join(workdir, "done.json"), "w") as f:
        json.dump({}, f)


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("collate"))
    for seed in range(3):
        _write_cell(root, "psr", seed, resumed=(seed == 1))
    for seed in range(4):
        _write_cell(root, "nsr", seed)
    assert collate.main(["--root", root, "--num-resamples", "500"]) == 0
    return root


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_event_reader_merges_resumed_runs(grid_root):
    scalars = collate.read_event_scalars(os.path.join(grid_root, "advantage=psr,seed=1"))
    steps, values = scalars["train/reward"]
    np.testing.assert_array_equal(steps, STEPS)
    np.testing.assert_allclose(values, _curve("psr", 1), rtol=1e-6)  # the later file wins
    scalars = collate.read_event_scalars(os.path.join(grid_root, "advantage=nsr,seed=0"))
    # The old tags ('eval/pass@4', stored as 'eval/pass_4') are read under today's names.
    assert set(scalars) == {"train/reward", "train/entropy", "eval/pass_at_1", "eval/pass_at_4"}


def test_summary_csv_numbers(grid_root):
    rows = {
        (r["variant"], r["metric"]): r
        for r in _rows(os.path.join(grid_root, "results", "summary.csv"))
    }
    psr = rows[("advantage=psr", "train/reward")]
    finals = [_curve("psr", s)[-1] for s in range(3)]
    assert int(psr["num_seeds"]) == 3 and psr["algo.advantage"] == "psr"
    assert float(psr["iqm"]) == pytest.approx(np.mean(finals), rel=1e-6)  # n=3: IQM = mean
    assert (
        min(finals) - 1e-6
        <= float(psr["ci_low"])
        < float(psr["iqm"])
        < float(psr["ci_high"])
        <= max(finals) + 1e-6
    )
    nsr = rows[("advantage=nsr", "train/reward")]
    finals = sorted(_curve("nsr", s)[-1] for s in range(4))
    assert float(nsr["iqm"]) == pytest.approx(np.mean(finals[1:3]), rel=1e-6)  # outlier trimmed
    assert float(nsr["mean"]) == pytest.approx(np.mean(finals), rel=1e-6)
    ent = rows[("advantage=nsr", "train/entropy")]
    assert float(ent["iqm"]) == pytest.approx(0.6) and float(ent["ci_low"]) == pytest.approx(0.6)


def test_pass_at_k_fits_markdown_and_plots(grid_root):
    out = os.path.join(grid_root, "results")
    passk = {(r["variant"], int(r["k"])): r for r in _rows(os.path.join(out, "passk.csv"))}
    for variant in ("psr", "nsr"):
        seeds = range(3) if variant == "psr" else range(4)
        finals = sorted(_curve(variant, s)[-1] for s in seeds)
        p4 = sorted(1 - (1 - f) ** 4 for f in finals)
        expect = np.mean(p4) if variant == "psr" else np.mean(p4[1:3])
        assert float(passk[(f"advantage={variant}", 4)]["iqm"]) == pytest.approx(expect, rel=1e-5)
    assert sorted({k for _, k in passk}) == [1, 4]
    metrics = {r["metric"] for r in _rows(os.path.join(out, "summary.csv"))}
    assert "eval/pass_at_4" in metrics and not any("@" in m or "pass_4" in m for m in metrics)

    fits = {r["variant"]: r for r in _rows(os.path.join(out, "fits.csv"))}
    psr = fits["advantage=psr"]  # seed mean = curve + 0.01
    assert psr["metric"] == "train/reward"
    assert float(psr["asymptote"]) == pytest.approx(0.51, rel=1e-3)
    assert float(psr["midpoint"]) == pytest.approx(10.0, rel=1e-2)
    assert float(psr["exponent"]) == pytest.approx(2.0, rel=1e-2)
    assert float(psr["r0"]) == pytest.approx(0.11, rel=1e-5)

    ent = {r["variant"]: r for r in _rows(os.path.join(out, "entropy_fit.csv"))}
    assert (
        ent["advantage=psr"]["performance"] == "train/reward"
        and int(ent["advantage=psr"]["num_points"]) == 21
    )

    md = open(os.path.join(out, "summary.md")).read()
    assert "| advantage=psr | 3 |" in md and "| advantage=nsr | 4 |" in md and "k=4" in md
    for name in ("curve_train_reward.png", "curve_train_entropy.png", "pass_at_k.png"):
        with open(os.path.join(out, name), "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_reduce_options():
    v = np.array([0.1, 0.5, 0.3])
    assert collate.reduce_series(v, "final") == 0.3
    assert collate.reduce_series(v, "best") == 0.5
    assert collate.reduce_series(v, "last:2") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="--reduce"):
        collate.reduce_series(v, "median")
    assert collate.canonical_tag("eval/pass_16") == "eval/pass_at_16"
    assert collate.canonical_tag("eval/pass@16") == "eval/pass_at_16"
    assert collate.canonical_tag("eval/pass_at_16") == "eval/pass_at_16"
    assert collate.canonical_tag("train/kl_2x") == "train/kl_2x"


def _cell(variant, seed, scalars, done=True):
    return collate.CellRun(
        name=f"{variant},{seed}",
        workdir="",
        index=seed,
        overrides={"algo.advantage": variant, "train.seed": seed},
        seed_key="train.seed",
        scalars=scalars,
        eval=None,
        done=done,
    )


def test_entropy_fit_table_recovers_law():
    steps = np.arange(10)
    h = np.linspace(1.2, 0.1, 10)
    cells = []
    for seed, shift in enumerate(
        (-0.05, 0.05)
    ):  # seed mean of H is h; R is linear in exp(H) per seed
        hs = np.log(np.exp(h) + shift)
        cells.append(
            _cell(
                "nsr",
                seed,
                {"train/entropy": (steps, hs), "eval/accuracy": (steps, -0.3 * np.exp(hs) + 1.2)},
            )
        )
    rows = collate.entropy_fit_table(cells, "eval/accuracy")
    # Seed means: mean exp(H_s) = exp(h) exactly, but mean H_s != h; compare with the fit on the means.
    from jaxrl_llm.evaluation import fit_entropy_performance

    hm = np.mean([c.scalars["train/entropy"][1] for c in cells], axis=0)
    rm = np.mean([c.scalars["eval/accuracy"][1] for c in cells], axis=0)
    a, b, r2 = fit_entropy_performance(hm, rm)
    assert rows[0]["a"] == pytest.approx(a) and rows[0]["b"] == pytest.approx(b)
    assert rows[0]["a"] == pytest.approx(0.3, rel=0.02) and rows[0]["b"] == pytest.approx(
        1.2, rel=0.02
    )
    assert rows[0]["num_points"] == 10 and r2 > 0.999
    # Variants are separated; a variant missing the entropy tag has no row.
    cells.append(_cell("psr", 0, {"eval/accuracy": (steps, np.ones(10))}))
    assert [r["variant"] for r in collate.entropy_fit_table(cells, "eval/accuracy")] == [
        "advantage=nsr"
    ]


def test_summarize_groups_seeds_and_uses_only_finished_when_asked():
    steps = np.arange(3)
    cells = [
        _cell("psr", s, {"train/reward": (steps, np.array([0.0, 0.1, v]))})
        for s, v in enumerate((0.2, 0.4, 0.6))
    ]
    cells.append(_cell("psr", 3, {"train/reward": (steps, np.array([0.0, 0.1, 5.0]))}, done=False))
    rows = collate.summarize(cells, num_resamples=200)
    assert len(rows) == 1 and rows[0]["num_seeds"] == 4 and rows[0]["variant"] == "advantage=psr"
    assert rows[0]["iqm"] == pytest.approx(0.5)  # middle two of (0.2, 0.4, 0.6, 5.0)
    rows = collate.summarize([c for c in cells if c.done], reduce="last:2", num_resamples=200)
    assert rows[0]["iqm"] == pytest.approx(np.mean([0.15, 0.25, 0.35]))
    assert rows[0]["values"] == "0.15;0.25;0.35"


# ----------------------------------------------------------------------------- new workdirs


def _write_new_cell(root, variant, seed):
    """A cell as today's trainer writes it: MetricWriter (event files + metrics.jsonl), new
    names, eval.json with pass_at_k."""
    from jaxrl_llm import evaluation, metrics, workdir

    name = f"advantage={variant},seed={seed}"
    w = os.path.join(root, name)
    workdir.write_cell(
        w,
        {
            "name": name,
            "index": 10 * (variant == "nsr") + seed,
            "seed_key": "train.seed",
            "overrides": {"algo.advantage": variant, "train.seed": seed},
        },
    )
    y = _curve(variant, seed)
    writer = metrics.MetricWriter(w)
    for s, v in zip(STEPS, y):
        writer.scalars(int(s), {"train/reward": float(v), "train/entropy": 1.0 - 0.01 * s})
    final = float(y[-1])
    writer.scalars(int(STEPS[-1]), {f"eval/pass_at_{k}": 1 - (1 - final) ** k for k in (1, 4)})
    writer.close()
    if variant == "psr":
        evaluation.write_eval_json(
            w, {"pass_at_1": final, "pass_at_4": 1 - (1 - final) ** 4}, step=40, n=4
        )
    workdir.write_done(w, {})
    return w


def test_new_workdirs_are_read_from_metrics_jsonl(tmp_path, monkeypatch):
    new_root, old_root = str(tmp_path / "new"), str(tmp_path / "old")
    for seed in range(3):
        _write_new_cell(new_root, "psr", seed)
        _write_cell(old_root, "psr", seed)
    for seed in range(4):
        _write_new_cell(new_root, "nsr", seed)
        _write_cell(old_root, "nsr", seed)
    old = collate.collate(old_root, num_resamples=300, curves=[])

    def no_event_files(workdir):
        raise AssertionError(f"read the event files of {workdir}")

    monkeypatch.setattr(collate, "read_event_scalars", no_event_files)
    new = collate.collate(new_root, num_resamples=300, curves=[])
    # The same numbers from the JSONL files as from the old event files and old names.
    key = lambda rows, *f: {tuple(r[x] for x in f): r for r in rows}
    for k, r in key(old["summary"], "variant", "metric").items():
        got = key(new["summary"], "variant", "metric")[k]
        assert got["iqm"] == pytest.approx(r["iqm"], rel=1e-6), k
    for k, r in key(old["passk"], "variant", "k").items():
        assert key(new["passk"], "variant", "k")[k]["iqm"] == pytest.approx(r["iqm"], rel=1e-6)
    assert {r["k"] for r in new["passk"]} == {1, 4}
    md = open(new["paths"]["summary.md"]).read()
    assert "eval/pass_at" not in md.split("pass@k:")[0]  # @k metrics only in the pass@k table


def test_run_resumed_across_the_upgrade_merges_old_event_files(tmp_path):
    """Steps 0..20 logged by an old version (event files, old names), the run resumed from a
    step-16 checkpoint by today's version (metrics.jsonl): every step is read, JSONL wins."""
    from jaxrl_llm import metrics

    w = str(tmp_path / "cell")
    old = SummaryWriter(w, filename_suffix=".old")
    for s in STEPS[STEPS <= 20]:
        old.add_scalar("train/reward", 9.0 if s >= 16 else float(s), int(s), walltime=1000.0 + s)
        old.add_scalar("eval/pass@1", 0.5, int(s), walltime=1000.0 + s)
    old.close()
    writer = metrics.MetricWriter(w)
    for s in STEPS[STEPS >= 16]:
        writer.scalars(int(s), {"train/reward": float(s), "eval/pass_at_1": 0.75})
    writer.close()
    scalars = collate.read_cell_scalars(w)
    steps, values = scalars["train/reward"]
    np.testing.assert_array_equal(steps, STEPS)
    np.testing.assert_array_equal(values, STEPS.astype(float))
    steps, values = scalars["eval/pass_at_1"]
    np.testing.assert_array_equal(steps, STEPS)
    assert set(scalars) == {"train/reward", "eval/pass_at_1"}
    np.testing.assert_array_equal(values, np.where(STEPS >= 16, 0.75, 0.5))
