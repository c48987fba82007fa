"""Tests for experiments/repro_headroom.py (the reproductions' driver), experiments/repro_tables.py
(their tables and verdicts) and configs/repro_headroom.py / configs/repro_entropy.py.

- Synthetic grids with per-prompt counts built so that every claim's verdict is known: the
  analyse, crossover and entropy_fit stages must give exactly those verdicts and write the
  stated columns.
- A tiny real run of every stage end to end (20 SFT steps, 2 RL steps, 2 vmapped seeds of two
  variants, n = 8 on 8 prompts; the base config's tiny model), sharing one SFT checkpoint:
  the files exist with their columns, verdicts are in the allowed set, and running the study
  again skips the finished cells.
"""

import csv
import importlib.util
import inspect
import json
import math
import os

import numpy as np
import pytest

from experiments import grid, repro_headroom, repro_tables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    path = os.path.join(ROOT, "configs", name)
    spec = importlib.util.spec_from_file_location("_test_" + name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HEADROOM, ENTROPY = _load("repro_headroom.py"), _load("repro_entropy.py")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _columns(path):
    with open(path) as f:
        return next(csv.reader(f))


# ----------------------------------------------------------------------------- configs


def test_headroom_config_rows_and_sweep():
    from jaxrl_llm.trainers import config as config_lib

    c = HEADROOM.get_config("A,/some/where/sft")
    config_lib.validate(c)
    assert c.model.init_checkpoint == "/some/where/sft"
    assert c.task.kwargs.to_dict() == {"digits": (2,), "ops": "+-*", "num_terms": (2,)}
    assert (c.rollout.max_new_tokens, c.sft.steps, c.sft.flawed_fraction) == (6, 2000, 0.0)
    assert (c.train.steps, c.train.num_epochs, c.algo.kl.coef, c.optim.lr) == (60, 1, 0.0, 1e-4)
    assert (c.train.prompts_per_step, c.train.samples_per_prompt) == (16, 8)
    assert HEADROOM.get_config("B").task.kwargs.digits == (2, 3)
    c3 = HEADROOM.get_config("C")
    assert (c3.task.kwargs.num_terms, c3.rollout.max_new_tokens, c3.model.init_checkpoint) == (
        (3,),
        8,
        "",
    )
    with pytest.raises(ValueError, match="unknown candidate"):
        HEADROOM.get_config("D")
    # The sweep is configs/nsr_repro.py's, unchanged.
    nsr_repro = _load("nsr_repro.py")
    assert grid.load_sweep(os.path.join(ROOT, "configs", "repro_headroom.py")) == grid.load_sweep(
        os.path.join(ROOT, "configs", "nsr_repro.py")
    )
    assert list(HEADROOM.VARIANTS) == ["psr", "nsr", "w_reinforce", "grpo", "ppo"]
    base = nsr_repro.get_config("x")
    for key in ("algo.policy_loss", "algo.aggregation", "algo.w_lambda", "eval.n", "eval.ks"):
        group, name = key.split(".")
        assert c[group][name] == base[group][name], key


def test_entropy_config_and_the_preregistered_loss_defaults():
    from jaxrl_llm.losses import registry
    from jaxrl_llm.trainers import config as config_lib

    c = ENTROPY.get_config("/sft")
    config_lib.validate(c)
    assert c.model.init_checkpoint == "/sft" and c.algo.advantage == "grpo"
    assert (c.train.steps, c.train.minibatch_size, c.eval.every, c.eval.size, c.eval.n) == (
        100,
        32,
        20,
        128,
        8,
    )
    assert c.task.kwargs.to_dict() == {"digits": (2,), "ops": "+-*", "num_terms": (2,)}
    cells = grid.load_sweep(os.path.join(ROOT, "configs", "repro_entropy.py"))
    assert cells == list(ENTROPY.VARIANTS.values()) and len(cells) == 5
    for variant in cells:  # each variant is a valid config
        v = ENTROPY.get_config("/sft")
        for key, value in variant.items():
            config_lib.apply_override(v, key, repr(value) if not isinstance(value, str) else value)
        config_lib.validate(v)
    # The Cov arms run with the losses' defaults: those must be the pre-registered values.
    for loss, expected in ENTROPY.PREREGISTERED_LOSS_KWARGS.items():
        params = inspect.signature(registry.POLICY_LOSSES[loss]).parameters
        assert {k: params[k].default for k in expected} == expected, loss


# ----------------------------------------------------------------------------- synthetic grids

N, P = 16, 40


def _write_cell(grid_root, overrides, seed, counts, prompts, scalars=None):
    cell = grid.make_cells([{**overrides, "train.seed": seed}], grid_root)[0]
    os.makedirs(cell.workdir, exist_ok=True)
    record = {"name": cell.name, "overrides": cell.overrides, "seed_key": "train.seed"}
    json.dump(
        record | {"index": 0, "fixed": {}, "config": "x"}, open(cell.workdir + "/cell.json", "w")
    )
    json.dump({"step": 2}, open(os.path.join(cell.workdir, "done.json"), "w"))
    with open(os.path.join(cell.workdir, "metrics.jsonl"), "w") as f:
        for step, values in sorted((scalars or {0: {"train/entropy": 1.0}}).items()):
            f.write(json.dumps({"step": step, "scalars": values}) + "\n")
    _write_eval(cell.workdir, counts, prompts)


def _write_eval(workdir, counts, prompts):
    from experiments.repro_analysis import per_prompt_pass_at_k

    os.makedirs(workdir, exist_ok=True)
    ks = [1, 2, 4, 8, 16]
    curve = per_prompt_pass_at_k(counts, N, ks).mean(0)
    record = {
        "step": 2,
        "n": N,
        "metrics": {f"pass_at_{k}": float(v) for k, v in zip(ks, curve)},
        "correct_counts": [int(c) for c in counts],
        "prompts": prompts,
    }
    json.dump(record, open(os.path.join(workdir, "eval.json"), "w"))


def _headroom_root(root):
    """Counts built so that N1, N2, P1, P2, W1, M1 and X2, X3, X4 are reproduced and X1 is
    inconclusive (GRPO and PPO equal the base model)."""
    prompts = [f"{p}+1=" for p in range(P)]
    base = np.arange(P) % 5  # 0..4 correct of 16: coverage 0.8
    variants = {
        "nsr": np.minimum(base + 2, N),
        "psr": np.where(base >= 2, 8, 0),  # sharper: pass@1 up, coverage down to 0.6
        "w_reinforce": np.minimum(base + 4, N),
        "grpo": base,
        "ppo": base,
    }
    for name, counts in variants.items():
        for seed in range(3):
            c = counts.copy()
            c[seed] = min(c[seed] + 1, N) if name != "grpo" and name != "ppo" else c[seed]
            entropy = {s: {"train/entropy": 1.0 - 0.1 * s - 0.01 * seed} for s in range(1, 4)}
            _write_cell(root + "/grid", HEADROOM.VARIANTS[name], seed, c, prompts, entropy)
    _write_eval(root + "/base", base, prompts)
    json.dump({"pilot_dir": root + "/no_pilot"}, open(root + "/study.json", "w"))


def test_analyse_and_crossover_give_the_built_verdicts(tmp_path):
    root = str(tmp_path)
    _headroom_root(root)
    assert (
        repro_headroom.main(["--root", root, "--stage", "analyse", "--num_resamples", "300"]) == 0
    )
    out = os.path.join(root, "analysis")
    for name in ("summary.md", "pass_at_k.png", "paired_vs_base.png", "entropy.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert _columns(out + "/passk_iqm.csv") == list(repro_tables.PASSK_FIELDS)
    assert _columns(out + "/paired_vs_base.csv") == list(repro_tables.DIFF_FIELDS)
    assert _columns(out + "/entropy.csv") == list(repro_tables.ENTROPY_FIELDS)
    passk = _rows(out + "/passk_iqm.csv")
    assert [r["variant"] for r in passk if r["k"] == "1"] == [
        "base",
        "psr",
        "nsr",
        "w_reinforce",
        "grpo",
        "ppo",
    ]
    assert {r["k"] for r in passk} == {"1", "2", "4", "8", "16"}
    base_row = next(r for r in passk if r["variant"] == "base" and r["k"] == "16")
    assert float(base_row["iqm"]) == pytest.approx(0.8)
    pairs = {(r["variant"], r["against"]) for r in _rows(out + "/pairwise.csv")}
    assert pairs == {("w_reinforce", x) for x in ("psr", "nsr", "grpo", "ppo")} | {("nsr", "psr")}
    verdicts = {r["claim"]: r["verdict"] for r in _rows(out + "/verdicts.csv")}
    assert verdicts == {c: "reproduced" for c in ("N1", "N2", "P1", "P2", "W1", "M1")}
    zero = [r for r in _rows(out + "/paired_vs_base.csv") if r["variant"] == "grpo"]
    assert all(abs(float(r[c])) < 1e-12 for r in zero for c in ("diff", "ci_low", "ci_high"))

    assert (
        repro_headroom.main(["--root", root, "--stage", "crossover", "--num_resamples", "300"]) == 0
    )
    rows = {r["variant"]: r for r in _rows(root + "/crossover.csv")}
    assert _columns(root + "/crossover.csv") == [
        "variant",
        "point",
        "lo",
        "hi",
        "frac_no_crossover",
        "verdict",
    ]
    assert rows["nsr"]["verdict"] == "no crossover within k <= 16" and rows["nsr"]["point"] == "inf"
    assert rows["psr"]["verdict"] == "crossover within k <= 16"
    assert 1 < float(rows["psr"]["point"]) < 16
    assert rows["grpo"]["verdict"] == "inconclusive" and float(rows["grpo"]["point"]) == 1
    xv = {r["claim"]: r["verdict"] for r in _rows(root + "/crossover_verdicts.csv")}
    assert xv == {"X1": "inconclusive", "X2": "reproduced", "X3": "reproduced", "X4": "reproduced"}
    assert os.path.getsize(root + "/crossover.png") > 0 and os.path.exists(root + "/crossover.md")


def test_analyse_refuses_unpaired_prompts(tmp_path):
    root = str(tmp_path)
    _headroom_root(root)
    _write_eval(root + "/base", np.zeros(P, int), [f"other {p}" for p in range(P)])
    with pytest.raises(ValueError, match="other prompts"):
        repro_headroom.main(["--root", root, "--stage", "analyse", "--num_resamples", "50"])


def test_verdict_rules_by_hand():
    assert repro_tables.verdict(True, False) == ("reproduced", "")
    assert repro_tables.verdict(False, True) == ("not reproduced", "")
    assert repro_tables.verdict(False, False)[0] == "inconclusive"
    assert repro_tables.verdict(True, True)[0] == "inconclusive"  # reported, not judged
    cat = repro_tables.crossover_category
    assert cat(20.0, 0.01, 0.1, 1) == "crossover within k <= K"
    assert cat(20.0, 0.03, 0.1, 1) == "inconclusive"
    assert cat(None, 0.99, 0.1, 1) == "no crossover within k <= K"
    assert cat(1.0, 0.0, -0.05, 1) == "never leads"
    assert cat(1.0, 0.0, 0.0, 1) == "inconclusive"


def test_missing_variants_are_inconclusive_with_a_note(tmp_path):
    root = str(tmp_path)
    _headroom_root(root)
    import shutil

    for d in os.listdir(root + "/grid"):
        if d.startswith("advantage=psr"):
            shutil.rmtree(os.path.join(root, "grid", d))
    repro_headroom.main(["--root", root, "--stage", "analyse", "--num_resamples", "50"])
    rows = {r["claim"]: r for r in _rows(root + "/analysis/verdicts.csv")}
    for claim in ("P1", "P2", "W1", "M1"):
        assert rows[claim]["verdict"] == "inconclusive" and "psr" in rows[claim]["note"]
    assert rows["N2"]["verdict"] == "reproduced"


def test_entropy_fit_gives_the_built_verdicts(tmp_path):
    """GRPO: entropy falls and R = -0.5 exp(H) + 1.5 exactly: E1a, E1b reproduced; the Cov
    arms end with more entropy and more correct samples (E2, E3), clip-higher with more
    entropy (E4)."""
    root = str(tmp_path)
    prompts = [f"{p}*3=" for p in range(P)]
    base = np.arange(P) % 5
    final_h = {
        "grpo": 0.2,
        "clip_higher": 0.5,
        "clip_cov": 0.6,
        "kl_cov": 0.6,
        "entropy_bonus": 0.4,
    }
    extra = {"grpo": 0, "clip_higher": 0, "clip_cov": 3, "kl_cov": 3, "entropy_bonus": 0}
    for name, overrides in ENTROPY.VARIANTS.items():
        for seed in range(5):
            scalars = {}
            for step in range(0, 101):
                h = 1.0 - (1.0 - final_h[name]) * step / 100 + 0.01 * seed
                values = {"train/entropy": h, "train/accuracy": 1.5 - 0.5 * math.exp(h)}
                if step % 20 == 0:
                    values["eval/accuracy"] = 1.5 - 0.5 * math.exp(h)
                if name in ("clip_cov", "kl_cov"):
                    values["train/cov_frac"] = 0.01
                scalars[step] = values
            counts = np.minimum(base + extra[name] + (seed == 0), N)
            _write_cell(root + "/grid", overrides, seed, counts, prompts, scalars)
    json.dump({"stage": "entropy_study"}, open(root + "/entropy_study.json", "w"))
    assert (
        repro_headroom.main(["--root", root, "--stage", "entropy_fit", "--num_resamples", "300"])
        == 0
    )
    out = root + "/analysis"
    verdicts = {r["claim"]: r["verdict"] for r in _rows(out + "/verdicts.csv")}
    assert verdicts == {
        "E1a": "reproduced",
        "E1b": "reproduced",
        "E2 (clip_cov)": "reproduced",
        "E2 (kl_cov)": "reproduced",
        "E3 (clip_cov)": "reproduced",
        "E3 (kl_cov)": "reproduced",
        "E4 (clip_higher)": "reproduced",
    }
    runs = _rows(out + "/entropy_fit_runs.csv")
    assert _columns(out + "/entropy_fit_runs.csv") == [
        "variant",
        "seed",
        "a",
        "b",
        "r2",
        "rmse",
        "identifiable",
        "note",
    ]
    g = [r for r in runs if r["variant"] == "grpo"]
    # H is the mean entropy of the 5 logged steps up to each evaluation: close to, not exactly,
    # the entropy at that step, so a is near 0.5 and the fit near perfect.
    assert len(g) == 5 and all(float(r["a"]) == pytest.approx(0.5, rel=0.02) for r in g)
    assert all(float(r["r2"]) > 0.99 for r in g)
    assert {r["variant"] for r in _rows(out + "/vs_grpo.csv")} == set(ENTROPY.VARIANTS) - {"grpo"}
    for name in (
        "final_entropy.csv",
        "entropy_fit.csv",
        "entropy_fit_secondary.csv",
        "entropy.png",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0, name


# ----------------------------------------------------------------------------- tiny real run

TINY = ["--sft_steps", "20", "--n", "8", "--size", "8", "--num_resamples", "200"]
TINY_STUDY = TINY + [
    "--seeds",
    "2",
    "--steps",
    "2",
    "--variants",
    "nsr,psr",
    "--set",
    "train.prompts_per_step=4",
    "--set",
    "train.samples_per_prompt=4",
    "--set",
    "eval.size=8",
    "--ignore_pilot_rule",
]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """One tiny SFT checkpoint, its pilot evaluation, and a tiny study on it (shared)."""
    root = str(tmp_path_factory.mktemp("repro"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("XLA_FLAGS", raising=False)  # one CPU device in the subprocesses: quicker
        assert repro_headroom.main(["--root", root, "--stage", "pilot", *TINY]) == 0
        assert repro_headroom.main(["--root", root, "--stage", "study", *TINY_STUDY]) == 0
    return root


def test_tiny_pilot_record(tiny_root, capsys):
    pdir = repro_headroom.pilot_dir(tiny_root, "A", 20)
    record = json.load(open(os.path.join(pdir, "pilot.json")))
    sha = repro_headroom.sha256_file(os.path.join(pdir, "sft", "model.safetensors"))
    assert record["sha256"] == sha and len(sha) == 64
    assert record["sha256_recorded"] == repro_headroom.RECORDED_SHA256
    assert record["sha256_matches"] is False and record["recorded_settings"] is False
    assert isinstance(record["acceptance"]["accept"], bool)
    assert set(record["pass_at_k"]) == {f"pass_at_{k}" for k in (1, 2, 4, 8)}
    ev = json.load(open(os.path.join(pdir, "eval.json")))
    assert len(ev["correct_counts"]) == 8 and ev["n"] == 8
    # A second pilot reuses the checkpoint and the evaluation, and says whether the hash matches.
    assert repro_headroom.main(["--root", tiny_root, "--stage", "pilot", *TINY]) == 0
    assert "DIFFERS FROM the pilot record's" in capsys.readouterr().out


def test_tiny_study_resumes_and_refuses_a_rejected_pilot(tiny_root, capsys):
    grid_root = os.path.join(tiny_root, "grid")
    cells = sorted(os.listdir(grid_root))
    assert [c for c in cells if c != "results"] == [
        "advantage=nsr,seed=0",
        "advantage=nsr,seed=1",
        "advantage=psr,seed=0",
        "advantage=psr,seed=1",
    ]
    for c in cells[:-1] if "results" in cells else cells:
        ev = json.load(open(os.path.join(grid_root, c, "eval.json")))
        assert len(ev["correct_counts"]) == 8 and ev["n"] == 8
    base = json.load(open(os.path.join(tiny_root, "base", "eval.json")))
    assert base["prompts"] == ev["prompts"]
    mtimes = {c: os.path.getmtime(os.path.join(grid_root, c, "done.json")) for c in cells[:4]}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("XLA_FLAGS", raising=False)
        assert repro_headroom.main(["--root", tiny_root, "--stage", "study", *TINY_STUDY]) == 0
    out = capsys.readouterr().out
    assert out.count("[grid] skip") == 4 and "[study] skip   base" in out
    assert mtimes == {c: os.path.getmtime(os.path.join(grid_root, c, "done.json")) for c in mtimes}
    no_flag = [a for a in TINY_STUDY if a != "--ignore_pilot_rule"]
    if not json.load(open(repro_headroom.pilot_dir(tiny_root, "A", 20) + "/pilot.json"))[
        "acceptance"
    ]["accept"]:
        with pytest.raises(SystemExit, match="no RL runs"):
            repro_headroom.main(["--root", tiny_root, "--stage", "study", *no_flag])


def test_tiny_analyse_and_crossover(tiny_root):
    assert repro_headroom.main(["--root", tiny_root, "--stage", "analyse", *TINY]) == 0
    out = os.path.join(tiny_root, "analysis")
    assert _columns(out + "/passk_iqm.csv") == list(repro_tables.PASSK_FIELDS)
    assert {r["variant"] for r in _rows(out + "/passk_iqm.csv")} == {"base", "nsr", "psr"}
    assert {r["variant"] for r in _rows(out + "/paired_vs_base.csv")} == {"nsr", "psr"}
    verdicts = _rows(out + "/verdicts.csv")
    assert [r["claim"] for r in verdicts] == ["N1", "N2", "P1", "P2", "W1", "M1"]
    assert all(r["verdict"] in repro_tables.VERDICTS for r in verdicts)
    assert "w_reinforce" in next(r for r in verdicts if r["claim"] == "W1")["note"]
    entropy = _rows(out + "/entropy.csv")
    assert {r["step"] for r in entropy} == {"1", "2"} and {r["variant"] for r in entropy} == {
        "nsr",
        "psr",
    }
    for name in ("summary.md", "pass_at_k.png", "paired_vs_base.png", "entropy.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert "Study prompts also among the pilot's prompts" in open(out + "/summary.md").read()
    assert repro_headroom.main(["--root", tiny_root, "--stage", "crossover", *TINY]) == 0
    rows = _rows(os.path.join(tiny_root, "crossover.csv"))
    assert {r["variant"] for r in rows} == {"nsr", "psr"}
    allowed = {c.replace("K", "8") for c in repro_tables.CROSSOVER_CATEGORIES}
    assert all(r["verdict"] in allowed for r in rows)
    xv = _rows(os.path.join(tiny_root, "crossover_verdicts.csv"))
    assert [r["claim"] for r in xv] == ["X1", "X2", "X3", "X4"]
    assert all(r["verdict"] in repro_tables.VERDICTS for r in xv)
