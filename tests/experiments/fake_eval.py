"""A stand-in for `python -m jaxrl_llm.evaluation` used by the grid-runner tests.

    python fake_eval.py --config=C --checkpoint=W --n=N [--config.k=v ...] [--fail]

Appends one line to W/evals.txt and writes W/eval.json (unless --fail).
"""

import json
import os
import sys


def main(argv):
    args = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    workdir, n = args["checkpoint"], int(args["n"])
    with open(os.path.join(workdir, "evals.txt"), "a") as f:
        f.write(" ".join(argv) + "\n")
    if "--fail" in argv:
        return 5
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump({"step": 0, "n": n, "metrics": {"pass@1": 0.25, f"pass@{n}": 0.75}}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
