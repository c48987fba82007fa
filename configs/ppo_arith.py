"""PPO with GAE and a critic (value model initialised from the policy), KL penalty in the reward.

Command:   python -m jaxrl_llm.main --config=configs/ppo_arith.py --workdir=runs/ppo_arith
Laptop:    python -m jaxrl_llm.main --config=configs/ppo_arith.py:runlocal --workdir=runs/ppo_arith_local
Hardware:  a 2-core CPU, a few minutes (SFT warm start included).
Expected:  held-out sampled accuracy (eval.n = 4 samples at temperature 1) on the arithmetic task rises over the SFT model
           (the test suite checks >= 5 points and > 2 standard errors in runlocal mode).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "gae"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "token-mean"
    c.critic.enabled = True
    c.critic.warmup_steps = 2
    c.algo.gamma = 1.0
    c.algo.lam = 0.95
    c.algo.kl.coef = 0.01
    c.algo.kl.kind = "k1"
    c.algo.kl.placement = "reward"
    return c
