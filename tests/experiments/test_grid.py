"""Tests for experiments/grid.py: expansion, naming, commands, skip / resume, parallel, failures.

The launched program is `tests/experiments/fake_train.py`, a stand-in trainer that
writes tensorboardX scalars, resumes from its workdir and can fail on request.
"""

import json
import os

import pytest

from experiments import grid

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_train.py")


def test_parsing_and_expansion(tmp_path):
    assert grid.parse_value("1e-6") == 1e-6 and grid.parse_value("psr") == "psr"
    assert grid.parse_value("True") is True and grid.parse_value("(2, 4)") == (2, 4)
    assert grid.parse_axis("algo.advantage=[psr, nsr]") == ("algo.advantage", ["psr", "nsr"])
    assert grid.parse_axis("mesh.shape=[(1,8),(2,4)]") == ("mesh.shape", [(1, 8), (2, 4)])
    with pytest.raises(ValueError, match="key=\\[v1,v2"):
        grid.parse_axis("algo.advantage=psr")
    assert grid.parse_assignment("optim.lr=3e-6") == ("optim.lr", 3e-6)

    cells = grid.expand_grid([("algo.advantage", ["psr", "nsr"]), ("optim.lr", [1e-6, 2e-6])])
    assert cells == [
        {"algo.advantage": "psr", "optim.lr": 1e-6},
        {"algo.advantage": "psr", "optim.lr": 2e-6},
        {"algo.advantage": "nsr", "optim.lr": 1e-6},
        {"algo.advantage": "nsr", "optim.lr": 2e-6},
    ]
    seeded = grid.add_seeds(cells, 3)
    assert len(seeded) == 12 and [c["train.seed"] for c in seeded[:3]] == [0, 1, 2]
    assert grid.add_seeds([{"train.seed": 7}], 3) == [{"train.seed": 7}]

    made = grid.make_cells(seeded, str(tmp_path))
    assert made[0].name == "advantage=psr,lr=1e-06,seed=0"
    assert made[5].workdir == os.path.join(str(tmp_path), "advantage=psr,lr=2e-06,seed=2")
    # Same last component -> the full dotted key is kept; odd characters are replaced.
    named = grid.make_cells([{"a.lr": 1, "b.lr": "x y"}], str(tmp_path))
    assert named[0].name == "a.lr=1,b.lr=x_y"
    with pytest.raises(ValueError, match="share the workdir"):
        grid.make_cells([{"k": "a b"}, {"k": "a_b"}], str(tmp_path))

    cmd = grid.build_command(
        made[0],
        config="configs/x.py:runlocal",
        fixed={"train.steps": 3},
        program="-m jaxrl_llm.main",
        python="python",
    )
    assert cmd == [
        "python",
        "-m",
        "jaxrl_llm.main",
        "--config=configs/x.py:runlocal",
        f"--workdir={made[0].workdir}",
        "--config.train.steps=3",
        "--config.algo.advantage=psr",
        "--config.optim.lr=1e-06",
        "--config.train.seed=0",
    ]


def test_sweep_beside_config_and_print_only(tmp_path, capsys):
    config = tmp_path / "recipe.py"
    config.write_text(
        "def get_config(arg=None):\n    return None\n\n"
        "def sweep(add, arg=None):\n"
        "    for adv in ('psr', 'nsr'):\n"
        "        add(**{'algo.advantage': adv, 'tag': arg})\n"
    )
    cells = grid.load_sweep(f"{config}:small")
    assert cells == [
        {"algo.advantage": "psr", "tag": "small"},
        {"algo.advantage": "nsr", "tag": "small"},
    ]

    root = tmp_path / "runs"
    done_dir = root / "advantage=psr,tag=small,seed=0"
    done_dir.mkdir(parents=True)
    (done_dir / "done.json").write_text("{}")
    assert (
        grid.main(
            [
                f"--config={config}:small",
                "--sweep",
                "--seeds",
                "2",
                "--root",
                str(root),
                "--print-only",
                "--set",
                "train.steps=9",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("# done: python -m jaxrl_llm.main")
    assert not lines[1].startswith("#") and "--config.train.seed=1" in lines[1]
    assert "--config.train.steps=9" in lines[3] and "--config.algo.advantage=nsr" in lines[3]
    assert not any(p.name != done_dir.name for p in root.iterdir())  # print-only runs nothing


def _invocations(workdir):
    with open(os.path.join(workdir, "invocations.txt")) as f:
        return len(f.read().splitlines())


def test_failure_resume_and_skip(tmp_path, capsys):
    root = str(tmp_path / "g")
    argv = [
        "--config=unused.py",
        "--grid",
        "algo.advantage=[psr,nsr]",
        "--seeds",
        "1",
        "--root",
        root,
        "--program",
        FAKE,
        "--set",
        "train.steps=4",
        "--set",
        "fail_once_at=2",
    ]
    # First run: every cell dies at step 2 -> reported, no done.json.
    assert grid.main(argv) == 1
    out = capsys.readouterr().out
    assert "NOT FINISHED: advantage=psr,seed=0 (failed, exit 3)" in out
    assert "NOT FINISHED: advantage=nsr,seed=0 (failed, exit 3)" in out
    cells = [os.path.join(root, n) for n in ("advantage=psr,seed=0", "advantage=nsr,seed=0")]
    for w in cells:
        assert not os.path.exists(os.path.join(w, "done.json"))
        assert json.load(open(os.path.join(w, "progress.json")))["step"] == 2
        assert json.load(open(os.path.join(w, "cell.json")))["fixed"] == {
            "train.steps": 4,
            "fail_once_at": 2,
        }
    # Second run: the unfinished cells are launched again and resume from step 2.
    assert grid.main(argv) == 0
    for w in cells:
        done = json.load(open(os.path.join(w, "done.json")))
        assert done["resumed_from"] == 2 and done["step"] == 4
        assert _invocations(w) == 2
    # Third run: everything is done -> nothing is launched.
    assert grid.main(argv) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert all(_invocations(w) == 2 for w in cells)


def test_parallel_cells_and_failing_cell_reported(tmp_path):
    root = str(tmp_path / "p")
    cells = grid.make_cells(grid.expand_grid([("fail_at", [-1, 1])]), root)
    lines = []
    # wait_peers=2: each cell blocks until both have started, so this passes only if
    # the two cells really run at the same time.
    results = grid.run_cells(
        cells,
        config="unused.py",
        fixed={"wait_peers": 2, "train.steps": 3},
        program=FAKE,
        parallel=2,
        echo=lines.append,
    )
    assert [(r.name, r.status, r.returncode) for r in results] == [
        ("fail_at=-1", "done", 0),
        ("fail_at=1", "failed", 3),
    ]
    assert any(line.startswith("[grid] failed fail_at=1 (exit 3") for line in lines)
    log = open(os.path.join(root, "fail_at=1", "grid.log")).read()
    assert "failing at step 1" in log and log.startswith("$ ")
    assert os.path.exists(os.path.join(root, "fail_at=-1", "done.json"))


FAKE_EVAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_eval.py")


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_evaluation_after_training(tmp_path):
    root = str(tmp_path / "e")
    cells = grid.make_cells(grid.expand_grid([("algo.advantage", ["psr", "nsr"])]), root)
    kw = dict(
        config="unused.py",
        fixed={"train.steps": 2},
        program=FAKE,
        eval_program=FAKE_EVAL,
        echo=lambda line: None,
    )
    results = grid.run_cells(cells, eval_args="--n=4", **kw)
    assert [r.status for r in results] == ["done", "done"]
    for cell in cells:
        record = json.load(open(os.path.join(cell.workdir, "eval.json")))
        assert record["metrics"]["pass@4"] == 0.75
        (line,) = _lines(os.path.join(cell.workdir, "evals.txt"))
        assert f"--checkpoint={cell.workdir}" in line and "--config.train.steps=2" in line
        assert line.endswith("--n=4")
    # Re-run: trained and evaluated cells are skipped entirely.
    assert [r.status for r in grid.run_cells(cells, eval_args="--n=4", **kw)] == [
        "skipped",
        "skipped",
    ]
    assert all(len(_lines(os.path.join(c.workdir, "evals.txt"))) == 1 for c in cells)
    # A finished cell that lost its eval.json is evaluated again, without training.
    os.remove(os.path.join(cells[1].workdir, "eval.json"))
    assert [r.status for r in grid.run_cells(cells, eval_args="--n=4", **kw)] == [
        "skipped",
        "skipped",
    ]
    assert len(_lines(os.path.join(cells[1].workdir, "evals.txt"))) == 2
    assert _invocations(cells[1].workdir) == 1
    # A failing evaluation is reported.
    os.remove(os.path.join(cells[0].workdir, "eval.json"))
    results = grid.run_cells(cells, eval_args="--n=4 --fail", **kw)
    assert (results[0].status, results[0].returncode) == ("eval_failed", 5)
    assert results[1].status == "skipped"


def _invocation_records(workdir):
    return [json.loads(line) for line in _lines(os.path.join(workdir, "invocations.txt"))]


def test_vmap_seeds_one_process_per_variant(tmp_path, capsys):
    root = tmp_path / "v"
    argv = [
        "--config=unused.py",
        "--grid",
        "algo.advantage=[psr,nsr]",
        "--seeds",
        "3",
        "--root",
        str(root),
        "--program",
        FAKE,
        "--set",
        "train.steps=3",
        "--vmap-seeds",
    ]
    done = root / "advantage=nsr,seed=1"  # finished earlier: left out of its group
    done.mkdir(parents=True)
    (done / "done.json").write_text("{}")
    assert grid.main(argv + ["--print-only"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "--seeds=0,1,2" in lines[0] and "--config.algo.advantage=psr" in lines[0]
    assert (
        f"--workdirs={root}/advantage=psr,seed=0 --workdirs={root}/advantage=psr,seed=1 "
        in lines[0]
    )
    assert "--seeds=0,2" in lines[1] and "--config.train.seed" not in lines[1]

    assert grid.main(argv) == 0
    out = capsys.readouterr().out
    assert "(vmapped seeds)" in out and "skip   advantage=nsr,seed=1" in out
    for variant, seeds in (("psr", "0,1,2"), ("nsr", "0,2")):
        for seed in map(int, seeds.split(",")):
            workdir = root / f"advantage={variant},seed={seed}"
            (record,) = _invocation_records(workdir)  # trained once, by its group
            assert record["group"] == seeds and record["train.seed"] == str(seed)
            assert json.load(open(workdir / "cell.json"))["overrides"]["train.seed"] == seed
            assert json.load(open(workdir / "done.json"))["final"]["train/reward"] == pytest.approx(
                {"psr": 0.2, "nsr": 0.3}[variant] + 0.1 * seed + 0.02
            )
    assert (
        "vmapped seeds of advantage=psr,seed=0"
        in open(root / "advantage=psr,seed=2" / "grid.log").read()
    )
    # Everything done: nothing is launched again.
    assert grid.main(argv) == 0
    assert "6 skipped" in capsys.readouterr().out


def test_vmap_seeds_group_failure_and_errors(tmp_path):
    root = str(tmp_path / "f")
    cells = grid.make_cells(grid.add_seeds([{}], 2), root)
    results = grid.run_cells(
        cells,
        config="unused.py",
        fixed={"train.steps": 3, "fail_at": 1},
        program=FAKE,
        vmap_seeds=True,
        echo=lambda line: None,
    )
    assert [(r.status, r.returncode) for r in results] == [("failed", 3), ("failed", 3)]
    with pytest.raises(ValueError, match="sets no train.seed"):
        grid.seed_groups(grid.make_cells([{"a": 1}], root))
    with pytest.raises(ValueError, match="--seed-key train.seed"):
        grid.build_seeds_command(cells, config="c.py", seed_key="sft.seed")
