"""The calculator learning experiment: SFT warm start, GRPO over episodes, and the with- /
without-tool evaluations the multi-turn learning criterion compares.

    python experiments/calculator_tool.py --workdir=runs/calc_tool [--runlocal] [--set a.b=v ...]

The same as `python experiments/agent_env.py --recipe=configs/grpo_calculator_tool.py ...`
(that script runs any environment recipe). Criterion (stated before running): the SFT model's
with-tool success on held-out problems is in [0.2, 0.8]; after RL, with-tool success beats the
same final checkpoint with the tool disabled and the SFT start, each by >= 5 points and > 2
standard errors; the share of episodes with a valid tool call (and no invalid call) rises by
>= 10 points. Writes `calculator_tool.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from experiments import agent_env  # noqa: E402  (also run as a script)

RECIPE = "configs/grpo_calculator_tool.py"


def _recipe(runlocal: bool):
    return agent_env.load_recipe(RECIPE, runlocal)


def run(c, workdir: str, log=print) -> dict:
    """Trains `c` in `workdir` and returns the evaluations, gains and criterion checks."""
    return agent_env.run(c, workdir, log=log)


def main():
    from jaxrl_llm.trainers import config as config_lib

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--runlocal", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    c = _recipe(args.runlocal)
    for item in args.set:
        key, value = item.split("=", 1)
        config_lib.apply_override(c, key, value)
    res = run(c, args.workdir)
    with open(os.path.join(args.workdir, "calculator_tool.json"), "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
