"""Driver of the pre-registered reproductions (docs/reproductions/): the headroom study
(`nsr_headroom.md`), its crossover analysis (`crossover.md`) and the entropy study
(`entropy_mechanism.md`), stage by stage.

    python experiments/repro_headroom.py --root runs/repro_headroom --stage pilot
    python experiments/repro_headroom.py --root runs/repro_headroom --stage study
    python experiments/repro_headroom.py --root runs/repro_headroom --stage analyse
    python experiments/repro_headroom.py --root runs/repro_headroom --stage crossover
    python experiments/repro_headroom.py --root runs/repro_entropy --stage entropy_study \\
        --pilot_dir runs/repro_headroom/pilot_A_sft2000
    python experiments/repro_headroom.py --root runs/repro_entropy --stage entropy_fit

- pilot: the base model's SFT (`<root>/pilot_<task>_sft<steps>/`: the trainer's `sft/` and
  `tokenizer/`) with the pilot's settings (`base_config()`, the candidate's task,
  `sft.flawed_fraction = 0`, `sft.seed = 0`), its sha256 against the one the pilot record
  holds, the base model's pass@k on the pilot prompts (eval seed 777), the acceptance rule
  (`repro_analysis.headroom_acceptance`); `pilot.json` in that folder.
- study / entropy_study: the config's sweep x seeds through `experiments/grid.py`'s functions
  (vmapped seeds, per-prompt evaluation of every finished cell; finished cells are skipped, so
  the stage resumes), then the grid's collate tables; study also evaluates the base checkpoint
  into `<root>/base/eval.json`. The equivalent `grid.py` command is printed.
- analyse / crossover / entropy_fit: the tables, plots and verdicts of the designs, from the
  per-prompt counts (`experiments/repro_tables.py`).

Every size is a flag (`--sft_steps`, `--steps`, `--seeds`, `--n`, `--size`, `--variants`,
`--set`) so that the tests run a tiny version; the defaults are the pre-registered values.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import collate, grid, repro_analysis, repro_tables  # noqa: E402
from jaxrl_llm import workdir as workdir_lib  # noqa: E402

__all__ = [
    "RECORDED_SHA256",
    "RECORDED_PILOT",
    "pilot_dir",
    "sha256_file",
    "study_cells",
    "main",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADROOM_CONFIG = os.path.join(REPO, "configs", "repro_headroom.py")
ENTROPY_CONFIG = os.path.join(REPO, "configs", "repro_entropy.py")
STAGES = ("pilot", "study", "analyse", "crossover", "entropy_study", "entropy_fit")

# nsr_headroom.md, "Pilot record": the accepted row and its bit-identical SFT checkpoint.
RECORDED_SHA256 = "2619313a730ac344f5382b8dc5c97c8d39e48d21b79e5b16f49ebb7210e00295"
RECORDED_PILOT = {
    "task": "A",
    "sft_steps": 2000,
    "n": 256,
    "size": 128,
    "seed": 777,
    "pass_at_1": 0.1447,
    "pass_at_256": 0.8984,
}
PILOT_SEED = 777
STUDY_EVAL_SEED = 12345

# The pilot snippet of nsr_headroom.md: the trainer's SFT warm start, base_config() with the
# candidate's task, no flawed demonstrations, sft.seed 0.
_SFT_SNIPPET = """
import importlib.util, sys
import ml_collections
from jaxrl_llm.trainers import config as config_lib, rl
path, task, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spec = importlib.util.spec_from_file_location("_repro_headroom_config", path)
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
row = m.CANDIDATES[task]
c = config_lib.base_config()
c.task.kwargs = ml_collections.ConfigDict(dict(row["kwargs"]))
c.rollout.max_new_tokens = row["max_new_tokens"]
c.sft.steps = steps
c.sft.flawed_fraction = 0.0
c.sft.seed = 0
c.log.progress = False
rl.Trainer(c, out).initial_params()
"""


def _load_config_module(path: str):
    spec = importlib.util.spec_from_file_location("_repro_config_" + os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pilot_dir(root: str, task: str, sft_steps: int) -> str:
    """`<root>/pilot_<task>_sft<steps>`: the trainer workdir holding `sft/` and `tokenizer/`."""
    return os.path.join(root, f"pilot_{task}_sft{sft_steps}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ks(n: int) -> list[int]:
    return [2**i for i in range(n.bit_length()) if 2**i <= n]


def _eval_command(config, checkpoint, out, *, n, size, seed, overrides) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxrl_llm.evaluation",
        f"--config={config}",
        f"--checkpoint={checkpoint}",
        f"--n={n}",
        "--k=" + ",".join(map(str, _ks(n))),
        f"--size={size}",
        f"--seed={seed}",
        "--temperature=1.0",
        "--per_prompt",
        f"--out={out}",
    ] + [f"--config.{k}={grid._format_value(v)}" for k, v in overrides.items()]


def _run(command: Sequence[str], log_path: str | None = None) -> float:
    """Run a command from the repository root (its output to `log_path` if given); wall s."""
    print("$ " + shlex.join(command), flush=True)
    t0 = time.time()
    if log_path is None:
        rc = subprocess.run(command, cwd=REPO).returncode
    else:
        with open(log_path, "a") as log:
            rc = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"command failed (exit {rc})" + (f"; see {log_path}" if log_path else ""))
    return time.time() - t0


# ----------------------------------------------------------------------------- pilot


def stage_pilot(args) -> int:
    pdir = pilot_dir(args.root, args.task, args.sft_steps)
    os.makedirs(pdir, exist_ok=True)
    log = os.path.join(pdir, "pilot.log")
    sft_s = 0.0
    if not workdir_lib.has_sft_model(pdir):
        command = [sys.executable, "-c", _SFT_SNIPPET, HEADROOM_CONFIG, args.task, pdir]
        sft_s = _run(command + [str(args.sft_steps)], log)
    model = os.path.join(workdir_lib.sft_dir(pdir), "model.safetensors")
    sha = sha256_file(model)
    recorded = args.task == RECORDED_PILOT["task"] and args.sft_steps == RECORDED_PILOT["sft_steps"]
    print(
        f"[pilot] sha256 of {model}: {sha} "
        + ("MATCHES" if sha == RECORDED_SHA256 else "DIFFERS FROM")
        + f" the pilot record's {RECORDED_SHA256}"
        + ("" if recorded else " (not the recorded settings: a difference is expected)"),
        flush=True,
    )
    out = os.path.join(pdir, workdir_lib.EVAL_JSON)
    eval_s = 0.0
    if not os.path.exists(out):
        command = _eval_command(
            f"{HEADROOM_CONFIG}:{args.task}",
            workdir_lib.sft_dir(pdir),
            out,
            n=args.n,
            size=args.size,
            seed=args.pilot_seed,
            overrides={"tokenizer.path": workdir_lib.tokenizer_dir(pdir)},
        )
        eval_s = _run(command, log)
    record_eval = json.load(open(out))
    m = record_eval["metrics"]
    acceptance = repro_analysis.headroom_acceptance(
        m["pass_at_1"], m[f"pass_at_{args.n}"], int(m["num_prompts"])
    )
    same_eval = recorded and (args.n, args.size, args.pilot_seed) == (
        RECORDED_PILOT["n"],
        RECORDED_PILOT["size"],
        RECORDED_PILOT["seed"],
    )
    reproduces = same_eval and all(
        round(m[f"pass_at_{k}"], 4) == RECORDED_PILOT[f"pass_at_{k}"] for k in (1, 256)
    )
    record = {
        "task": args.task,
        "sft_steps": args.sft_steps,
        "sft_seed": 0,
        "flawed_fraction": 0.0,
        "sft_dir": workdir_lib.sft_dir(pdir),
        "tokenizer": workdir_lib.tokenizer_dir(pdir),
        "sha256": sha,
        "sha256_recorded": RECORDED_SHA256,
        "sha256_matches": sha == RECORDED_SHA256,
        "recorded_settings": recorded,
        "eval": {"n": args.n, "size": args.size, "seed": args.pilot_seed, "path": out},
        "pass_at_k": {k: v for k, v in m.items() if k.startswith("pass_at_")},
        "reproduces_recorded_row": reproduces if same_eval else None,
        "acceptance": {**acceptance, "coverage_ci": list(acceptance["coverage_ci"])},
        "wall_s": {"sft": round(sft_s, 1), "eval": round(eval_s, 1)},
    }
    workdir_lib.write_json_atomic(os.path.join(pdir, "pilot.json"), record, indent=1)
    print(
        f"[pilot] {args.task}, {args.sft_steps} SFT steps: pass@1 {m['pass_at_1']:.4f}, "
        f"pass@{args.n} {m[f'pass_at_{args.n}']:.4f} "
        f"(interval [{acceptance['coverage_ci'][0]:.3f}, {acceptance['coverage_ci'][1]:.3f}]): "
        + ("ACCEPTED" if acceptance["accept"] else "REJECTED: " + "; ".join(acceptance["reasons"]))
    )
    if same_eval:
        print(
            "[pilot] the recorded row (pass@1 0.1447, pass@256 0.8984) is "
            + ("reproduced" if reproduces else "NOT reproduced")
        )
    print(f"[pilot] wrote {os.path.join(pdir, 'pilot.json')}")
    return 0


# ----------------------------------------------------------------------------- study


def study_cells(config: str, variants_map: dict, variants, seeds: int, grid_root: str):
    """The grid cells of the config's sweep x seeds (named as `grid.py --sweep` names them),
    restricted to `variants`; returns (cells, {cell name: variant})."""
    unknown = sorted(set(variants) - set(variants_map))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(variants_map)}")
    cells = grid.make_cells(grid.add_seeds(grid.load_sweep(config), seeds), grid_root)
    names = {}
    for cell in cells:
        name = repro_tables.variant_name(cell.overrides, variants_map)
        if name in variants:
            names[cell.name] = name
    return [c for c in cells if c.name in names], names


def _run_grid(args, *, config_file, sft_pilot, steps, variants_map, label) -> int:
    sft_dir, tok = workdir_lib.sft_dir(sft_pilot), workdir_lib.tokenizer_dir(sft_pilot)
    if not workdir_lib.has_sft_model(sft_pilot):
        raise SystemExit(f"[{label}] no SFT checkpoint in {sft_dir}: run --stage pilot first")
    config = f"{config_file}:{args.task + ',' if label == 'study' else ''}{sft_dir}"
    variants = args.variants.split(",") if args.variants else list(variants_map)
    grid_root = os.path.join(args.root, "grid")
    cells, _ = study_cells(config, variants_map, variants, args.seeds, grid_root)
    fixed = {"train.steps": steps, "tokenizer.path": tok}
    fixed.update(grid.parse_assignment(s) for s in args.set)
    eval_args = (
        f"--n={args.n} --k={','.join(map(str, _ks(args.n)))} --size={args.size} "
        f"--seed={args.eval_seed} --temperature=1.0 --per_prompt"
    )
    print(
        "[{}] equivalent: python experiments/grid.py --config={} --sweep --seeds {} "
        "--vmap-seeds --root {} {} --eval={} --collate".format(
            label,
            config,
            args.seeds,
            grid_root,
            " ".join(f"--set={k}={grid._format_value(v)}" for k, v in fixed.items()),
            shlex.quote(eval_args),
        )
        + ("" if len(variants) == len(variants_map) else f" (restricted to {','.join(variants)})"),
        flush=True,
    )
    os.makedirs(grid_root, exist_ok=True)
    results = grid.run_cells(
        cells,
        config=config,
        fixed=fixed,
        parallel=args.parallel,
        eval_args=eval_args,
        vmap_seeds=not args.separate_seeds,
    )
    bad = [r for r in results if r.status in ("failed", "incomplete", "eval_failed")]
    for r in bad:
        print(f"[{label}] NOT FINISHED: {r.name} ({r.status}, exit {r.returncode})")
    if label == "study":
        base = os.path.join(args.root, "base")
        out = os.path.join(base, workdir_lib.EVAL_JSON)
        if not os.path.exists(out):
            os.makedirs(base, exist_ok=True)
            overrides = {**fixed, "tokenizer.path": tok}
            command = _eval_command(
                config,
                sft_dir,
                out,
                n=args.n,
                size=args.size,
                seed=args.eval_seed,
                overrides=overrides,
            )
            _run(command, os.path.join(base, "eval.log"))
        else:
            print(f"[study] skip   base ({out} present)")
    record = {
        "stage": label,
        "config": config,
        "fixed": fixed,
        "eval_args": eval_args,
        "n": args.n,
        "ks": _ks(args.n),
        "size": args.size,
        "seeds": args.seeds,
        "steps": steps,
        "variants": variants,
        "pilot_dir": sft_pilot,
        "not_finished": [r.name for r in bad],
    }
    workdir_lib.write_json_atomic(os.path.join(args.root, f"{label}.json"), record, indent=1)
    if any(r.status in ("done", "skipped") for r in results):
        collate.collate(grid_root, num_resamples=args.num_resamples)
    return 1 if bad else 0


def _check_pilot(pdir: str, ignore_rule: bool, label: str) -> None:
    path = os.path.join(pdir, "pilot.json")
    if not os.path.exists(path):
        raise SystemExit(f"no pilot record {path}: run --stage pilot first")
    record = json.load(open(path))
    if not record["acceptance"]["accept"]:
        msg = f"the pilot rejected this base model ({'; '.join(record['acceptance']['reasons'])})"
        if not ignore_rule:
            raise SystemExit(msg + ": no RL runs (nsr_headroom.md section 1)")
        print(f"[{label}] WARNING: {msg}; going on because of --ignore_pilot_rule")


def stage_study(args) -> int:
    pdir = args.pilot_dir or pilot_dir(args.root, args.task, args.sft_steps)
    _check_pilot(pdir, args.ignore_pilot_rule, "study")
    module = _load_config_module(HEADROOM_CONFIG)
    return _run_grid(
        args,
        config_file=HEADROOM_CONFIG,
        sft_pilot=pdir,
        steps=args.steps or 60,
        variants_map=module.VARIANTS,
        label="study",
    )


def stage_entropy_study(args) -> int:
    if not args.pilot_dir:
        raise SystemExit("--stage entropy_study needs --pilot_dir (the headroom pilot's folder)")
    _check_pilot(args.pilot_dir, args.ignore_pilot_rule, "entropy_study")
    module = _load_config_module(ENTROPY_CONFIG)
    return _run_grid(
        args,
        config_file=ENTROPY_CONFIG,
        sft_pilot=args.pilot_dir,
        steps=args.steps or 100,
        variants_map=module.VARIANTS,
        label="entropy_study",
    )


# ----------------------------------------------------------------------------- analyses


def _study_record(root: str, label: str) -> dict:
    path = os.path.join(root, f"{label}.json")
    if not os.path.exists(path):
        raise SystemExit(f"no {path}: run --stage {label} first")
    return json.load(open(path))


def stage_analyse(args) -> int:
    record = _study_record(args.root, "study")
    module = _load_config_module(HEADROOM_CONFIG)
    data = repro_tables.load_study(
        os.path.join(args.root, "grid"),
        module.VARIANTS,
        base_eval=os.path.join(args.root, "base", workdir_lib.EVAL_JSON),
    )
    pilot_eval = os.path.join(record["pilot_dir"], workdir_lib.EVAL_JSON)
    paths = repro_tables.write_headroom_analysis(
        data,
        os.path.join(args.root, "analysis"),
        num_resamples=args.num_resamples,
        pilot_eval=pilot_eval if os.path.exists(pilot_eval) else None,
    )
    for p in paths:
        print(f"[analyse] wrote {p}")
    return 0


def stage_crossover(args) -> int:
    _study_record(args.root, "study")
    module = _load_config_module(HEADROOM_CONFIG)
    data = repro_tables.load_study(
        os.path.join(args.root, "grid"),
        module.VARIANTS,
        base_eval=os.path.join(args.root, "base", workdir_lib.EVAL_JSON),
    )
    paths = repro_tables.write_crossover_analysis(data, args.root, num_resamples=args.num_resamples)
    for p in paths:
        print(f"[crossover] wrote {p}")
    return 0


def stage_entropy_fit(args) -> int:
    _study_record(args.root, "entropy_study")
    module = _load_config_module(ENTROPY_CONFIG)
    data = repro_tables.load_study(os.path.join(args.root, "grid"), module.VARIANTS)
    paths = repro_tables.write_entropy_analysis(
        data, os.path.join(args.root, "analysis"), num_resamples=args.num_resamples
    )
    for p in paths:
        print(f"[entropy_fit] wrote {p}")
    return 0


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", required=True, help="the study's folder (runs/repro_headroom)")
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--task", default="A", help="candidate of nsr_headroom.md section 1 (A, B, C)")
    p.add_argument("--sft_steps", type=int, default=2000, help="SFT steps (accepted row: 2000)")
    p.add_argument("--pilot_dir", default=None, help="the pilot folder (sft/, tokenizer/)")
    p.add_argument("--steps", type=int, default=None, help="RL steps (study 60, entropy 100)")
    p.add_argument("--seeds", type=int, default=5, help="train.seed 0..N-1 per variant")
    p.add_argument("--n", type=int, default=256, help="samples per held-out prompt")
    p.add_argument("--size", type=int, default=128, help="held-out prompts")
    p.add_argument("--pilot_seed", type=int, default=PILOT_SEED, help="pilot prompts' seed")
    p.add_argument("--eval_seed", type=int, default=STUDY_EVAL_SEED, help="study prompts' seed")
    p.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=V",
        help="an override for every cell and the base evaluation (tests shrink batches)",
    )
    p.add_argument("--parallel", type=int, default=1, help="grid jobs at a time")
    p.add_argument(
        "--separate_seeds", action="store_true", help="one process per seed, not vmapped"
    )
    p.add_argument("--num_resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument(
        "--ignore_pilot_rule",
        action="store_true",
        help="tests and dry runs only: run RL although the pilot rejected the base model",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.root = os.path.abspath(args.root)
    if args.pilot_dir:
        args.pilot_dir = os.path.abspath(args.pilot_dir)
    stage = {
        "pilot": stage_pilot,
        "study": stage_study,
        "analyse": stage_analyse,
        "crossover": stage_crossover,
        "entropy_study": stage_entropy_study,
        "entropy_fit": stage_entropy_fit,
    }[args.stage]
    return stage(args)


if __name__ == "__main__":
    sys.exit(main())
