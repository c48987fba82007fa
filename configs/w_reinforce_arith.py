"""W-REINFORCE (Zhu et al. 2025): +lambda on correct, -1 on incorrect, lambda = 0.1.

Command:   python -m jaxrl_llm.main --config=configs/w_reinforce_arith.py --workdir=runs/w_reinforce_arith
Laptop:    python -m jaxrl_llm.main --config=configs/w_reinforce_arith.py:runlocal --workdir=runs/w_reinforce_arith_local
Hardware:  a 2-core CPU, a few minutes (SFT warm start included).
Expected:  held-out sampled accuracy (eval.n = 4 samples at temperature 1) on the arithmetic task rises over the SFT model
           (the test suite checks >= 5 points and > 2 standard errors in runlocal mode).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "w_reinforce"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "token-mean"
    c.algo.w_lambda = 0.1
    return c
