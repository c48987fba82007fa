"""Online DPO (Guo et al. 2024; best-vs-worst of G as in Xiong et al. 2024) on the arithmetic task.

Each step samples G = 8 completions per prompt from the current policy; the verifier's reward
picks the pair (chosen = highest reward, rejected = lowest; groups without a difference give
no pair) and the update is DPO against the SFT model as reference, through the RL step's
`online_dpo` estimator (its policy gradient equals the DPO gradient on those pairs,
`jaxrl_llm/losses/online_dpo.py`). Any reward the RL trainer supports can label the pairs
instead: a learned reward model (`reward_model.path`), a judge, or their combination.

Command:   python -m jaxrl_llm.main --config=configs/online_dpo_arith.py --workdir=runs/online_dpo
Laptop:    python -m jaxrl_llm.main --config=configs/online_dpo_arith.py:runlocal --workdir=runs/online_dpo_local
Hardware:  a 2-core CPU, a few minutes (SFT warm start included).
Expected:  held-out sampled accuracy on the arithmetic task rises over the SFT model (the test
           suite checks >= 5 points and > 2 standard errors in runlocal mode).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=arg == "runlocal")
    c.algo.advantage = "online_dpo"
    c.algo.policy_loss = "reinforce"
    c.algo.aggregation = "seq-mean-token-sum"
    c.algo.dpo_beta = 0.1
    c.algo.recompute_old_logp = True  # the DPO log-ratios of the current parameters
    return c
