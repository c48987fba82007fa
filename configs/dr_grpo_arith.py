"""Dr. GRPO (Liu et al., 'Understanding R1-Zero-Like Training'): no std scaling, constant-normalised token sum.

Command:   python -m jaxrl_llm.main --config=configs/dr_grpo_arith.py --workdir=runs/dr_grpo_arith
Laptop:    python -m jaxrl_llm.main --config=configs/dr_grpo_arith.py:runlocal --workdir=runs/dr_grpo_arith_local
Hardware:  a 2-core CPU, a few minutes (SFT warm start included).
Expected:  held-out sampled accuracy (eval.n = 4 samples at temperature 1) on the arithmetic task rises over the SFT model
           (the test suite checks >= 5 points and > 2 standard errors in runlocal mode).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "dr_grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-sum-norm"

    return c
