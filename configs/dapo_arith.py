"""DAPO (Yu et al. 2025): clip-higher, token-mean loss, dynamic sampling, token-counted overlong penalty.

Command:   python -m jaxrl_llm.main --config=configs/dapo_arith.py --workdir=runs/dapo_arith
Laptop:    python -m jaxrl_llm.main --config=configs/dapo_arith.py:runlocal --workdir=runs/dapo_arith_local
Hardware:  a 2-core CPU, a few minutes (SFT warm start included).
Expected:  held-out sampled accuracy (eval.n = 4 samples at temperature 1) on the arithmetic task rises over the SFT model
           (the test suite checks >= 5 points and > 2 standard errors in runlocal mode).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "token-mean"
    c.algo.clip_low = 0.2
    c.algo.clip_high = 0.28
    c.data.dynamic_sampling = True
    c.data.overlong_buffer = 2
    return c
