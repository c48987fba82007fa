"""Ablation grids: expand a sweep into cells, run each cell in its own workdir.

A grid is the cartesian product of `--grid` axes times `--seeds` seeds (the
seed goes to `train.seed`), or the cells a config declares beside itself in a
big_vision-style `sweep(add)` function (`--sweep`):

    def sweep(add):                       # in configs/my_recipe.py
      for adv in ("psr", "nsr", "w_reinforce"):
        add(**{"algo.advantage": adv})

Each cell runs as one subprocess

    python -m jaxrl_llm.main --config=CONFIG --workdir=ROOT/<cell> --config.<key>=<value> ...

one after another, or `--parallel N` at a time (a process pool, not a
scheduler). A cell whose workdir holds `done.json` is skipped; an unfinished
one is launched again and the trainer resumes from its workdir; a failing cell
is reported and the others go on. `--eval='--n=64 --k=1,2,4,...'` then runs
`python -m jaxrl_llm.evaluation` on every finished cell that has no `eval.json`
(pass@k for the tables). `--print-only` prints one launch command per cell (for
TPU pods and clusters: run them with your own launcher).

`--vmap-seeds` (tiny models): the unfinished seeds of each variant run as one
process, one vmapped program (`python -m jaxrl_llm.main --seeds=0,1,2
--workdirs=<cell> --workdirs=<cell> ...`, `jaxrl_llm/trainers/seeds.py`), each seed
still written to its own cell workdir, so skipping, resuming, evaluation and
collation work per cell as before. The seed key must be `train.seed`.

Examples:
    python experiments/grid.py --config=configs/grpo_arith.py:runlocal \\
        --grid 'algo.advantage=[psr,nsr,w_reinforce,grpo]' --seeds 3 \\
        --root runs/nsr_grid --parallel 2 --eval='--n=64 --k=1,2,4,8,16,32,64' --collate
    python experiments/grid.py --config=configs/my_recipe.py --sweep --seeds 3 \\
        --root runs/sweep --print-only

Each cell directory gets `cell.json` ({"name", "index", "overrides", "fixed",
"seed_key", "config"}), which `experiments/collate.py` reads to group seeds
into variants, and `grid.log` with the subprocess output.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import importlib.util
import inspect
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrl_llm import workdir as workdir_lib  # noqa: E402

__all__ = [
    "Cell",
    "CellResult",
    "parse_value",
    "parse_axis",
    "parse_assignment",
    "expand_grid",
    "load_sweep",
    "add_seeds",
    "make_cells",
    "build_command",
    "build_seeds_command",
    "seed_groups",
    "build_eval_command",
    "is_done",
    "run_cells",
    "main",
]

DONE_FILE = workdir_lib.DONE_JSON
CELL_FILE = workdir_lib.CELL_JSON
LOG_FILE = workdir_lib.GRID_LOG
EVAL_FILE = workdir_lib.EVAL_JSON
DEFAULT_PROGRAM = "-m jaxrl_llm.main"
DEFAULT_EVAL_PROGRAM = "-m jaxrl_llm.evaluation"
DEFAULT_SEED_KEY = "train.seed"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: its name, position, overrides and workdir."""

    name: str
    index: int
    overrides: dict
    workdir: str


@dataclasses.dataclass(frozen=True)
class CellResult:
    """status: "skipped" (already done), "done", "failed" (non-zero exit),
    "incomplete" (exit 0 without done.json) or "eval_failed" (the evaluation did not write eval.json)."""

    name: str
    status: str
    returncode: int | None


# ----------------------------------------------------------------------------- parsing


def parse_value(text: str) -> Any:
    """A Python literal if `text` is one (1, 0.1, 1e-6, True, None, (2, 4)), else the string."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_axis(spec: str) -> tuple[str, list]:
    """'algo.advantage=[psr,nsr]' -> ('algo.advantage', ['psr', 'nsr'])."""
    key, sep, rest = spec.partition("=")
    rest = rest.strip()
    if not sep or not key.strip() or not (rest.startswith("[") and rest.endswith("]")):
        raise ValueError(f"--grid expects 'key=[v1,v2,...]', got {spec!r}")
    values = [parse_value(v) for v in _split_top_level(rest[1:-1])]
    if not values:
        raise ValueError(f"--grid axis {key.strip()!r} has no values")
    return key.strip(), values


def parse_assignment(spec: str) -> tuple[str, Any]:
    """'optim.lr=1e-6' -> ('optim.lr', 1e-06)."""
    key, sep, value = spec.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects 'key=value', got {spec!r}")
    return key.strip(), parse_value(value)


# ----------------------------------------------------------------------------- expansion


def expand_grid(axes: Sequence[tuple[str, Sequence]]) -> list[dict]:
    """Cartesian product of the axes, the first axis varying slowest."""
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--grid: a key appears twice in {keys}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def add_seeds(
    cells: Sequence[dict], seeds: int | None, seed_key: str = DEFAULT_SEED_KEY
) -> list[dict]:
    """Each cell times seeds 0..seeds-1 (cells that already set `seed_key` are kept as they are)."""
    if seeds is None:
        return [dict(c) for c in cells]
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    out = []
    for c in cells:
        if seed_key in c:
            out.append(dict(c))
        else:
            out.extend({**c, seed_key: s} for s in range(seeds))
    return out


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location(
        "_grid_config_" + re.sub(r"\W", "_", os.path.basename(path)), path
    )
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(config: str) -> list[dict]:
    """Cells declared by `sweep(add)` (or `sweep(add, arg)`) in the config file `path[:arg]`."""
    path, _, arg = config.partition(":")
    module = _load_module(path)
    if not hasattr(module, "sweep"):
        raise ValueError(f"--sweep: {path} defines no sweep(add) function")
    cells: list[dict] = []
    add = lambda **kw: cells.append(dict(kw))
    if len(inspect.signature(module.sweep).parameters) >= 2:
        module.sweep(add, arg or None)
    else:
        module.sweep(add)
    if not cells:
        raise ValueError(f"--sweep: sweep() in {path} added no cells")
    return cells


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Last dotted component when it is unique among the keys, else the full key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def cell_name(overrides: dict, short: dict[str, str]) -> str:
    """'advantage=psr,seed=0'; characters outside [A-Za-z0-9._=,+-] become '_'."""
    if not overrides:
        return "default"
    text = ",".join(f"{short.get(k, k)}={_format_value(v)}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9._=,+\-]", "_", text)


def make_cells(overrides: Sequence[dict], root: str) -> list[Cell]:
    """Name each cell by its overrides; each gets the workdir `<root>/<name>`."""
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    short = _short_keys(keys)
    cells = [
        Cell(cell_name(o, short), i, dict(o), os.path.join(root, cell_name(o, short)))
        for i, o in enumerate(overrides)
    ]
    names = [c.name for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(
            f"two grid cells share the workdir name(s) {dup}; make the sweep values distinct"
        )
    return cells


# ----------------------------------------------------------------------------- running


def build_command(
    cell: Cell,
    *,
    config: str,
    fixed: dict | None = None,
    program: str = DEFAULT_PROGRAM,
    python: str = sys.executable,
) -> list[str]:
    """`python <program> --config=... --workdir=... --config.<k>=<v> ...` (fixed overrides first)."""
    overrides = {**(fixed or {}), **cell.overrides}
    return [python, *shlex.split(program), f"--config={config}", f"--workdir={cell.workdir}"] + [
        f"--config.{k}={_format_value(v)}" for k, v in overrides.items()
    ]


def seed_groups(cells: Sequence[Cell], seed_key: str = DEFAULT_SEED_KEY) -> list[list[Cell]]:
    """Cells that differ only in `seed_key`, grouped (first-appearance order)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        if seed_key not in cell.overrides:
            raise ValueError(f"--vmap-seeds: cell {cell.name} sets no {seed_key}; use --seeds N")
        rest = {k: v for k, v in cell.overrides.items() if k != seed_key}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=repr), []).append(cell)
    return list(groups.values())


def build_seeds_command(
    cells: Sequence[Cell],
    *,
    config: str,
    fixed: dict | None = None,
    program: str = DEFAULT_PROGRAM,
    seed_key: str = DEFAULT_SEED_KEY,
    python: str = sys.executable,
) -> list[str]:
    """One vmapped run of cells that differ only in the seed: `python <program> --config=...
    --seeds=s0,s1 --workdirs=w0 --workdirs=w1 --config.<k>=<v> ...` (cell names hold commas)."""
    if seed_key != DEFAULT_SEED_KEY:
        raise ValueError(f"--vmap-seeds needs --seed-key {DEFAULT_SEED_KEY}, got {seed_key}")
    overrides = {**(fixed or {}), **{k: v for k, v in cells[0].overrides.items() if k != seed_key}}
    return (
        [
            python,
            *shlex.split(program),
            f"--config={config}",
            "--seeds=" + ",".join(str(int(c.overrides[seed_key])) for c in cells),
        ]
        + [f"--workdirs={c.workdir}" for c in cells]
        + [f"--config.{k}={_format_value(v)}" for k, v in overrides.items()]
    )


def is_done(workdir: str) -> bool:
    """Whether the cell's run finished (`workdir.is_finished`: its done.json exists)."""
    return workdir_lib.is_finished(workdir)


def _write_cell_json(cell: Cell, *, config: str, fixed: dict, seed_key: str) -> None:
    record = {
        "name": cell.name,
        "index": cell.index,
        "overrides": cell.overrides,
        "fixed": fixed,
        "seed_key": seed_key,
        "config": config,
    }
    workdir_lib.write_cell(cell.workdir, record)


def build_eval_command(
    cell: Cell,
    *,
    config: str,
    fixed: dict | None = None,
    eval_args: str = "",
    program: str = DEFAULT_EVAL_PROGRAM,
    python: str = sys.executable,
) -> list[str]:
    """`python -m jaxrl_llm.evaluation --config=... --checkpoint=<cell> --config.<k>=<v> ... <eval_args>`."""
    overrides = {**(fixed or {}), **cell.overrides}
    return (
        [python, *shlex.split(program), f"--config={config}", f"--checkpoint={cell.workdir}"]
        + [f"--config.{k}={_format_value(v)}" for k, v in overrides.items()]
        + shlex.split(eval_args)
    )


def _logged_run(cell: Cell, command: list[str], env: dict | None) -> int:
    with open(os.path.join(cell.workdir, LOG_FILE), "a") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def _run_job(
    cells: Sequence[Cell],
    command: list[str] | None,
    eval_commands: Sequence[list[str] | None],
    env: dict | None,
) -> list[CellResult]:
    """Train the cells with one command (unless None: already done; several cells = one
    vmapped-seeds run, logged in the first cell's grid.log), then evaluate each cell if asked
    and not yet done."""
    status, rc = "skipped", None
    if command is not None:
        for cell in cells[1:]:
            with open(os.path.join(cell.workdir, LOG_FILE), "a") as log:
                log.write(
                    f"# trained with the vmapped seeds of {cells[0].name}: see its {LOG_FILE}\n"
                )
        rc = _logged_run(cells[0], command, env)
        status = "done"
    results = []
    for cell, eval_command in zip(cells, eval_commands):
        if command is not None and rc != 0:
            results.append(CellResult(cell.name, "failed", rc))
            continue
        if command is not None and not is_done(cell.workdir):
            results.append(CellResult(cell.name, "incomplete", 0))
            continue
        if eval_command is not None and not os.path.exists(os.path.join(cell.workdir, EVAL_FILE)):
            erc = _logged_run(cell, eval_command, env)
            if erc != 0 or not os.path.exists(os.path.join(cell.workdir, EVAL_FILE)):
                results.append(CellResult(cell.name, "eval_failed", erc))
                continue
        results.append(CellResult(cell.name, status, rc))
    return results


def run_cells(
    cells: Sequence[Cell],
    *,
    config: str,
    fixed: dict | None = None,
    program: str = DEFAULT_PROGRAM,
    parallel: int = 1,
    seed_key: str = DEFAULT_SEED_KEY,
    python: str = sys.executable,
    env: dict | None = None,
    eval_args: str | None = None,
    eval_program: str = DEFAULT_EVAL_PROGRAM,
    vmap_seeds: bool = False,
    echo=print,
) -> list[CellResult]:
    """Run the unfinished cells, `parallel` at a time; results in cell order.

    With `eval_args` (e.g. "--n=64 --k=1,2,4,8,16,32,64"), every finished cell
    without `eval.json` is then evaluated by `eval_program` (pass@k for collate).
    With `vmap_seeds`, the unfinished cells of each variant (cells differing only in
    `seed_key`) train as one vmapped-seeds process.
    """
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    fixed = dict(fixed or {})
    results: dict[str, CellResult] = {}
    jobs = []
    for group in seed_groups(cells, seed_key) if vmap_seeds else [[c] for c in cells]:
        todo, evals_only = [], []
        for cell in group:
            needs_eval = eval_args is not None and not os.path.exists(
                os.path.join(cell.workdir, EVAL_FILE)
            )
            eval_command = (
                build_eval_command(
                    cell,
                    config=config,
                    fixed=fixed,
                    eval_args=eval_args,
                    program=eval_program,
                    python=python,
                )
                if needs_eval
                else None
            )
            if is_done(cell.workdir):
                echo(f"[grid] skip   {cell.name} (done.json present)")
                if eval_command is None:
                    results[cell.name] = CellResult(cell.name, "skipped", None)
                else:
                    evals_only.append(([cell], None, [eval_command]))
            else:
                _write_cell_json(cell, config=config, fixed=fixed, seed_key=seed_key)
                todo.append((cell, eval_command))
        jobs.extend(evals_only)
        if len(todo) == 1 and not vmap_seeds:
            cell, eval_command = todo[0]
            jobs.append(
                (
                    [cell],
                    build_command(cell, config=config, fixed=fixed, program=program, python=python),
                    [eval_command],
                )
            )
        elif todo:
            group_cells = [cell for cell, _ in todo]
            jobs.append(
                (
                    group_cells,
                    build_seeds_command(
                        group_cells,
                        config=config,
                        fixed=fixed,
                        program=program,
                        seed_key=seed_key,
                        python=python,
                    ),
                    [e for _, e in todo],
                )
            )
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {}
        for job_cells, command, eval_commands in jobs:
            names = ", ".join(c.name for c in job_cells)
            echo(
                f"[grid] start  {names}"
                + (
                    " (evaluation only)"
                    if command is None
                    else " (vmapped seeds)"
                    if len(job_cells) > 1
                    else ""
                )
            )
            futures[pool.submit(_run_job, job_cells, command, eval_commands, env)] = job_cells
        for fut in concurrent.futures.as_completed(futures):
            job_cells = futures[fut]
            try:
                job_results = fut.result()
            except OSError as e:  # the program could not be started
                job_results = [CellResult(c.name, "failed", None) for c in job_cells]
                echo(f"[grid] {job_cells[0].name}: {e}")
            for cell, res in zip(job_cells, job_results):
                results[cell.name] = res
                log = os.path.join(job_cells[0].workdir, LOG_FILE)
                ok = res.status in ("done", "skipped")
                extra = "" if ok else f" (exit {res.returncode}; see {log})"
                echo(f"[grid] {res.status:<6} {cell.name}{extra}")
    return [results[c.name] for c in cells]


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="config file, 'path.py[:arg]'")
    p.add_argument("--root", required=True, help="directory holding one workdir per cell")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=[V1,V2]",
        help="a grid axis; repeat for a cartesian product",
    )
    p.add_argument("--sweep", action="store_true", help="use the config file's sweep(add)")
    p.add_argument(
        "--seeds", type=int, default=None, help="seeds 0..N-1 per cell (sets --seed-key)"
    )
    p.add_argument("--seed-key", default=DEFAULT_SEED_KEY)
    p.add_argument(
        "--vmap-seeds",
        action="store_true",
        help="tiny models: train the seeds of each variant as one vmapped program",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=V",
        help="an override for every cell (not part of the cell names)",
    )
    p.add_argument("--parallel", type=int, default=1, help="cells running at the same time")
    p.add_argument(
        "--program",
        default=DEFAULT_PROGRAM,
        help="what python runs per cell (default: '%(default)s')",
    )
    p.add_argument(
        "--python",
        default=None,
        help="interpreter in the commands (default: this one; 'python' with --print-only)",
    )
    p.add_argument(
        "--eval",
        default=None,
        metavar="ARGS",
        dest="eval_args",
        help="evaluate each finished cell without eval.json, e.g. --eval='--n=64 --k=1,2,4,8'",
    )
    p.add_argument(
        "--eval-program",
        default=DEFAULT_EVAL_PROGRAM,
        help="what python runs to evaluate a cell (default: '%(default)s')",
    )
    p.add_argument(
        "--print-only", action="store_true", help="print the launch commands, run nothing"
    )
    p.add_argument(
        "--collate", action="store_true", help="run experiments/collate.py on --root afterwards"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.grid and args.sweep:
        raise SystemExit("use either --grid or --sweep, not both")
    if args.sweep:
        base = load_sweep(args.config)
    elif args.grid:
        base = expand_grid([parse_axis(s) for s in args.grid])
    else:
        base = [{}]
    cells = make_cells(add_seeds(base, args.seeds, args.seed_key), args.root)
    fixed = dict(parse_assignment(s) for s in args.set)
    clash = sorted(set(fixed) & {k for c in cells for k in c.overrides})
    if clash:
        raise SystemExit(f"--set keys {clash} are also grid keys")

    if args.print_only:
        python = args.python or "python"
        if args.vmap_seeds:
            for group in seed_groups(cells, args.seed_key):
                todo = [c for c in group if not is_done(c.workdir)]
                if todo:
                    print(
                        shlex.join(
                            build_seeds_command(
                                todo,
                                config=args.config,
                                fixed=fixed,
                                program=args.program,
                                seed_key=args.seed_key,
                                python=python,
                            )
                        )
                    )
                for cell in group:
                    if args.eval_args is not None:
                        print(
                            shlex.join(
                                build_eval_command(
                                    cell,
                                    config=args.config,
                                    fixed=fixed,
                                    eval_args=args.eval_args,
                                    program=args.eval_program,
                                    python=python,
                                )
                            )
                        )
            return 0
        for cell in cells:
            cmd = shlex.join(
                build_command(
                    cell, config=args.config, fixed=fixed, program=args.program, python=python
                )
            )
            if args.eval_args is not None:
                cmd += " && " + shlex.join(
                    build_eval_command(
                        cell,
                        config=args.config,
                        fixed=fixed,
                        eval_args=args.eval_args,
                        program=args.eval_program,
                        python=python,
                    )
                )
            print(("# done: " if is_done(cell.workdir) else "") + cmd)
        return 0

    print(f"[grid] {len(cells)} cells under {args.root}, {args.parallel} at a time")
    results = run_cells(
        cells,
        config=args.config,
        fixed=fixed,
        program=args.program,
        parallel=args.parallel,
        seed_key=args.seed_key,
        python=args.python or sys.executable,
        eval_args=args.eval_args,
        eval_program=args.eval_program,
        vmap_seeds=args.vmap_seeds,
    )
    bad = [r for r in results if r.status in ("failed", "incomplete", "eval_failed")]
    counts = {
        s: sum(r.status == s for r in results)
        for s in ("done", "skipped", "failed", "incomplete", "eval_failed")
    }
    print("[grid] " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for r in bad:
        print(f"[grid] NOT FINISHED: {r.name} ({r.status}, exit {r.returncode})")
    if args.collate:
        if __package__ in (None, ""):
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from experiments import collate

        collate.main(["--root", args.root])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
