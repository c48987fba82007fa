"""The calculator learning experiment: SFT warm start, GRPO over episodes, and the with- /
without-tool evaluations the multi-turn learning criterion compares.

    python experiments/calculator_tool.py --workdir=runs/calc_tool [--runlocal] [--set a.b=v ...]

Criterion (stated before running): the SFT model's with-tool success on held-out problems is in
[0.2, 0.8]; after RL, with-tool success beats the same final checkpoint with the tool disabled
and the SFT start, each by >= 5 points and > 2 standard errors; the share of episodes with a
valid tool call (and no invalid call) rises by >= 10 points. Writes `calculator_tool.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import jax
import numpy as np


def _recipe(runlocal: bool):
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "grpo_calculator_tool.py")
    spec = importlib.util.spec_from_file_location("recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("runlocal" if runlocal else None)


def _eval(tr, params, *, tools_disabled: bool):
    c = tr.config
    return tr.agent.evaluate(
        tr._policy(params),
        tr.model_config,
        tr.eval_examples(),
        jax.random.key(c.eval.seed),
        tr.eval_sampling,
        ks=tuple(c.eval.ks),
        tools_disabled=tools_disabled,
    )


def run(c, workdir: str, log=print) -> dict:
    """Trains `c` in `workdir` and returns the evaluations, gains and criterion checks."""
    from jaxrl_llm.trainers import rl

    t0 = time.time()
    tr = rl.Trainer(c, workdir)
    start = tr.initial_params(log=log)
    res = {"start": _eval(tr, start, tools_disabled=False)}
    res["start_no_tool"] = _eval(tr, start, tools_disabled=True)
    del start
    tr.run(log=log)
    final = tr.state.params
    res["final"] = _eval(tr, final, tools_disabled=False)
    res["final_no_tool"] = _eval(tr, final, tools_disabled=True)
    res["seconds"] = time.time() - t0

    def diff(a, b):
        d = res[a]["eval/accuracy"] - res[b]["eval/accuracy"]
        se = float(np.hypot(res[a]["eval/stderr"], res[b]["eval/stderr"]))
        return d, se

    checks = {"start_in_band": bool(0.2 <= res["start"]["eval/accuracy"] <= 0.8)}
    for other in ("start", "final_no_tool"):
        d, se = diff("final", other)
        checks[f"beats_{other}"] = bool(d >= 0.05 and d > 2 * se)
        res[f"gain_over_{other}"] = {"points": 100 * d, "stderr_points": 100 * se}
    dv = res["final"]["eval/valid_tool_call_rate"] - res["start"]["eval/valid_tool_call_rate"]
    res["valid_tool_call_gain_points"] = 100 * dv
    checks["valid_tool_calls_rise"] = bool(dv >= 0.10)
    res["checks"] = checks
    res["passed"] = all(checks.values())
    return res


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
