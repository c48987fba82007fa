"""S seeds of a tiny-model recipe: S separate runs one after another vs one vmapped run.

    python benchmarks/vmapped_seeds.py --workdir /tmp/vseeds --seeds 3 --steps 30

Both arms run the README's GRPO recipe (`configs/grpo_arith.py`, 16 prompts x 8 samples per
step) from one shared SFT checkpoint (built first, `--sft-steps`), the way the grid runner
launches them: separate = one `python -m jaxrl_llm.main --workdir=...` process per seed,
one after another (`experiments/grid.py`); vmapped = one `python -m jaxrl_llm.main --seeds=...
--workdirs=...` process (`experiments/grid.py --vmap-seeds`). Reported: wall time of the
processes (start-up, compilation, evaluations included), the RL loop's own seconds from
each `done.json`, and each seed's final held-out accuracy in both arms (equal up to float
rounding of the update: the same tokens are sampled).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

SFT_SNIPPET = """
import sys
from jaxrl_llm.trainers import config as config_lib, rl
c = config_lib.base_config(); c.unlock(); c.sft.steps = int(sys.argv[2]); c.mesh.num_devices = 1
rl.Trainer(c, sys.argv[1]).initial_params(log=print)
"""


def _run(cmd, log_path):
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"command failed (exit {rc}), see {log_path}: {' '.join(cmd)}")
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "vseeds"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sft-steps", type=int, default=2500)
    p.add_argument("--eval-size", type=int, default=64)
    p.add_argument("--arms", default="separate,vmapped")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    sft = os.path.join(args.workdir, "sft_base")
    if not os.path.exists(os.path.join(sft, "sft", "config.json")):
        _run(
            [sys.executable, "-c", SFT_SNIPPET, sft, str(args.sft_steps)],
            os.path.join(args.workdir, "sft.log"),
        )
    common = [
        "--config=configs/grpo_arith.py",
        f"--config.model.init_checkpoint={sft}/sft",
        f"--config.tokenizer.path={sft}/tokenizer",
        f"--config.train.steps={args.steps}",
        f"--config.eval.size={args.eval_size}",
        "--config.log.progress=False",
        "--config.checkpoint.every=0",
        "--config.mesh.num_devices=1",
    ]
    main_cmd = [sys.executable, "-m", "jaxrl_llm.main"]
    seeds = list(range(args.seeds))
    out = {}
    for arm in args.arms.split(","):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dirs = [os.path.join(args.workdir, f"{arm}_{stamp}_seed{s}") for s in seeds]
        if arm == "separate":
            wall = sum(
                _run(main_cmd + common + [f"--workdir={d}", f"--config.train.seed={s}"], d + ".log")
                for s, d in zip(seeds, dirs)
            )
        elif arm == "vmapped":
            wall = _run(
                main_cmd
                + common
                + ["--seeds=" + ",".join(map(str, seeds))]
                + [f"--workdirs={d}" for d in dirs],
                dirs[0] + ".log",
            )
        else:
            raise SystemExit(f"--arms: unknown arm {arm!r} (separate, vmapped)")
        done = [json.load(open(os.path.join(d, "done.json"))) for d in dirs]
        loop = sum(x["seconds"] for x in done) if arm == "separate" else done[0]["seconds"]
        out[arm] = dict(
            wall_s=wall,
            loop_s=loop,
            final_accuracy=[x["final_eval"]["eval/accuracy"] for x in done],
        )
        print(json.dumps({arm: out[arm]}), flush=True)

    info = dict(
        machine=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        seeds=args.seeds,
        steps=args.steps,
        rows_per_step=16 * 8,
        load_average_at_end=os.getloadavg(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    print(json.dumps(info))
    print(
        "| arm | wall s (processes) | RL loop s | steps x seeds / loop s | final accuracy per seed |"
    )
    print("|---|---|---|---|---|")
    for arm, r in out.items():
        rate = args.steps * args.seeds / r["loop_s"]
        acc = " / ".join(f"{a:.3f}" for a in r["final_accuracy"])
        print(f"| {arm} | {r['wall_s']:.1f} | {r['loop_s']:.1f} | {rate:.2f} | {acc} |")
    if "separate" in out and "vmapped" in out:
        print(
            f"vmapped speed-up: wall {out['separate']['wall_s'] / out['vmapped']['wall_s']:.2f}x, "
            f"loop {out['separate']['loop_s'] / out['vmapped']['loop_s']:.2f}x"
        )
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(dict(info=info, results=out), f, indent=1)


if __name__ == "__main__":
    main()
