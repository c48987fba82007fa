"""REINFORCE++ with a group baseline (Hu 2025): group-mean subtraction then global whitening.

Command:   python -m jaxrl_llm.main --config=configs/reinforce_pp_arith.py --workdir=runs/reinforce_pp_arith
Laptop:    python -m jaxrl_llm.main --config=configs/reinforce_pp_arith.py:runlocal --workdir=runs/reinforce_pp_arith_local
Hardware:  a 2-core CPU, a few minutes (SFT warm start included).
Expected:  held-out sampled accuracy (eval.n = 4 samples at temperature 1) on the arithmetic task rises over the SFT model
           (the test suite checks >= 5 points and > 2 standard errors in runlocal mode).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "reinforce_pp_baseline"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "token-mean"

    return c
