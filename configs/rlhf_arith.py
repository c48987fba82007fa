"""RLHF on the arithmetic task: GRPO against a learned reward model, the verifier only measures.

Command:   python -m jaxrl_llm.trainers.reward_model --config=configs/rm_arith.py --workdir=runs/rm
           python -m jaxrl_llm.main --config=configs/rlhf_arith.py:runs/rm/reward_model \
               --workdir=runs/rlhf
Laptop:    `configs/rm_arith.py:runlocal`, then `configs/rlhf_arith.py:runs/rm/reward_model,runlocal`
           (or give the folder as --config.reward_model.path=...).
Hardware:  a 2-core CPU; the reward model about 3 minutes (runlocal 1.5), RL a few minutes.
Expected:  the reward model alone (task_weight 0) with a KL penalty (coef 0.5, in the loss)
           raises held-out TRUE accuracy (the verifier's, eval/accuracy) from 0.495 to 0.586
           (runlocal, measured; tests/trainers/test_rlhf.py asks >= 5 points and > 2 s.e.);
           train/kl stays below 0.07 and the reward terms are logged apart (reward/learned,
           reward/task). Without the KL penalty the policy games the reward model (it answers
           "175" to every problem, which the reward model scores 3.1) and true accuracy falls to
           0.11: the reward model checks the answer's form better than the question.
Without --config.reward_model.path the config check stops with one line naming the field.
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    """arg: "REWARD_MODEL_FOLDER", "REWARD_MODEL_FOLDER,runlocal" or "runlocal"."""
    parts = [p for p in (arg or "").split(",") if p]
    runlocal = "runlocal" in parts
    path = [p for p in parts if p != "runlocal"]
    c = base_config(runlocal=runlocal)
    c.reward_model.path = path[0] if path else ""
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-mean"
    c.algo.kl.coef = 0.5  # in the loss (k3); without it the policy games the reward model
    c.reward_terms.task_weight = 0.0
    return c
