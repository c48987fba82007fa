"""GSPO (Zheng et al. 2025): sequence-level length-normalised importance ratio, GRPO advantages.

Command:   python -m jaxrl_llm.main --config=configs/gspo_arith.py --workdir=runs/gspo_arith
Laptop:    python -m jaxrl_llm.main --config=configs/gspo_arith.py:runlocal --workdir=runs/gspo_arith_local
Hardware:  a 2-core CPU, a few minutes (SFT warm start included).
Expected:  held-out sampled accuracy (eval.n = 4 samples at temperature 1) on the arithmetic task rises over the SFT model
           (the test suite checks >= 5 points and > 2 standard errors in runlocal mode).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "gspo"
    c.algo.aggregation = "seq-mean-token-mean"
    c.algo.clip_low = 3e-4
    c.algo.clip_high = 4e-4
    c.train.num_epochs = 2
    return c
