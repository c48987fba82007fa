"""GRPO on the synthetic arithmetic task, from an SFT warm start (the README's main job).

Command:   python -m jaxrl_llm.main --config=configs/grpo_arith.py --workdir=runs/grpo_arith
Laptop:    python -m jaxrl_llm.main --config=configs/grpo_arith.py:runlocal --workdir=runs/x
Hardware:  a 2-core CPU; a few minutes (see BENCHMARKS.md for the measured time).
Expected:  held-out sampled accuracy (eval.n = 4 samples at temperature 1) rises by >= 20 points over the SFT model.
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-mean"
    return c


def sweep(add):
    for adv in ("grpo", "dr_grpo", "lite_ppo"):
        add(**{"algo.advantage": adv})
