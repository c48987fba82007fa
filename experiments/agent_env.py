"""The agent learning experiment for any environment recipe: SFT warm start, GRPO over
episodes, and the evaluations its criterion compares (with and, where the environment has
tools, without them).

    python experiments/agent_env.py --recipe=configs/grpo_retrieval.py --workdir=runs/r \
        [--runlocal] [--set a.b=v ...]

Criteria (stated before running; one per environment, `CRITERIA`; success = held-out success
rate, "beats" = by >= 5 points and > 2 standard errors over problems):

- `calculator`, `retrieval`, `python_tool`: the SFT model's with-tool success is in
  [0.2, 0.8]; after RL, with-tool success beats the SFT start and the same final checkpoint
  with the tool disabled;
  the share of episodes with a valid tool call (and no invalid call) rises by >= 10 points.
- `guess_number` (no tool; fewer guesses earn more): after RL, success beats the SFT start and
  the mean number of guesses per episode falls by >= 0.25.

Writes `<env>.json` (evaluations, gains, checks, seconds) in the workdir.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import jax
import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load_recipe(path: str, runlocal: bool):
    """`get_config("runlocal" | None)` of the recipe file at `path` (relative to the repo)."""
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO, path)
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


def _beats(res, a, b, name):
    """Adds `gain_over_<name>` and returns whether success of `a` beats `b`."""
    d = res[a]["eval/accuracy"] - res[b]["eval/accuracy"]
    se = float(np.hypot(res[a]["eval/stderr"], res[b]["eval/stderr"]))
    res[f"gain_over_{name}"] = {"points": 100 * d, "stderr_points": 100 * se}
    return bool(d >= 0.05 and d > 2 * se)


def tool_criterion(res) -> dict:
    checks = {"start_in_band": bool(0.2 <= res["start"]["eval/accuracy"] <= 0.8)}
    checks["beats_start"] = _beats(res, "final", "start", "start")
    checks["beats_final_no_tool"] = _beats(res, "final", "final_no_tool", "final_no_tool")
    dv = res["final"]["eval/valid_tool_call_rate"] - res["start"]["eval/valid_tool_call_rate"]
    res["valid_tool_call_gain_points"] = 100 * dv
    checks["valid_tool_calls_rise"] = bool(dv >= 0.10)
    return checks


def guess_criterion(res) -> dict:
    checks = {"beats_start": _beats(res, "final", "start", "start")}
    dt = res["start"]["eval/turns"] - res["final"]["eval/turns"]
    res["turns_saved"] = dt
    checks["turns_fall"] = bool(dt >= 0.25)
    return checks


CRITERIA = {
    "calculator": tool_criterion,
    "retrieval": tool_criterion,
    "python_tool": tool_criterion,
    "guess_number": guess_criterion,
}


def run(c, workdir: str, log=print) -> dict:
    """Trains `c` in `workdir` and returns the evaluations, gains and criterion checks."""
    from jaxrl_llm.trainers import rl

    name = c.env.name
    if name not in CRITERIA:
        raise ValueError(f"no criterion for env {name!r}; known: {sorted(CRITERIA)}")
    t0 = time.time()
    tr = rl.Trainer(c, workdir)
    has_tools = bool(getattr(tr.agent.task._template, "tools", ()))
    start = tr.initial_params(log=log)
    res = {"env": name, "sft_seconds": time.time() - t0}
    t1 = time.time()
    res["start"] = _eval(tr, start, tools_disabled=False)
    if has_tools:
        res["start_no_tool"] = _eval(tr, start, tools_disabled=True)
    del start
    tr.run(log=log)
    final = tr.state.params
    res["final"] = _eval(tr, final, tools_disabled=False)
    if has_tools:
        res["final_no_tool"] = _eval(tr, final, tools_disabled=True)
    res["rl_seconds"] = time.time() - t1
    res["seconds"] = time.time() - t0
    res["checks"] = CRITERIA[name](res)
    res["passed"] = all(res["checks"].values())
    return res


def main():
    from jaxrl_llm.trainers import config as config_lib

    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", required=True, help="a configs/ file with an env recipe")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--runlocal", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    c = load_recipe(args.recipe, args.runlocal)
    for item in args.set:
        key, value = item.split("=", 1)
        config_lib.apply_override(c, key, value)
    res = run(c, args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, f"{c.env.name}.json"), "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
