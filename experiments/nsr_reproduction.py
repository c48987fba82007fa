"""The NSR miniature reproduction in one command: SFT once, the sweep of configs/nsr_repro.py
with 3 seeds, pass@k (k = 1..64) on held-out prompts for every cell, then tables and plots.

  python experiments/nsr_reproduction.py --root runs/nsr_repro [--seeds 3] [--parallel 1]
      [--vmap_seeds]     # each variant's seeds as one vmapped program (experiments/README.md)

Results: <root>/summary.md, passk.csv, *.png (see experiments/README.md); the write-up is
docs/nsr_reproduction.md.
"""

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="runs/nsr_repro")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--eval_n", type=int, default=64)
    ap.add_argument("--eval_size", type=int, default=100)
    ap.add_argument(
        "--vmap_seeds",
        action="store_true",
        help="train each variant's seeds as one vmapped program",
    )
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    sft_dir = os.path.join(root, "sft")
    if not os.path.exists(os.path.join(sft_dir, "sft", "config.json")):
        # The trainer builds the SFT checkpoint of the base config in <workdir>/sft.
        subprocess.run([sys.executable, "-c", _SFT_SNIPPET, sft_dir], cwd=REPO, check=True)
    model_dir, tok_dir = os.path.join(sft_dir, "sft"), os.path.join(sft_dir, "tokenizer")
    ks = ",".join(str(2**i) for i in range(7) if 2**i <= args.eval_n)
    cmd = [
        sys.executable,
        os.path.join(REPO, "experiments", "grid.py"),
        f"--config=configs/nsr_repro.py:{model_dir}",
        "--sweep",
        f"--seeds={args.seeds}",
        f"--root={os.path.join(root, 'grid')}",
        f"--parallel={args.parallel}",
        f"--set=tokenizer.path={tok_dir}",
        f"--eval=--n={args.eval_n} --k={ks} --size={args.eval_size} --temperature=1.0",
        "--collate",
    ] + (["--vmap-seeds"] if args.vmap_seeds else [])
    print(" ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, cwd=REPO).returncode)


_SFT_SNIPPET = """
import sys
from jaxrl_llm.trainers import config as config_lib, rl
c = config_lib.base_config()
rl.Trainer(c, sys.argv[1]).initial_params()
"""

if __name__ == "__main__":
    main()
