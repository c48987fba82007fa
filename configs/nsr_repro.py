"""Miniature reproduction of Zhu et al. 2025 (PSR / NSR / W-REINFORCE vs GRPO and PPO).

One SFT checkpoint on the arithmetic task whose demonstrations carry a flaw the verifier
rejects (pass@1 has headroom, large-k pass@k has coverage); each variant trains from it with
one on-policy update per batch (REINFORCE through the PPO loss at ratio 1), no KL term.

Command (the whole study, SFT + 5 variants x 3 seeds + pass@k up to k = 64 + tables):
  python experiments/nsr_reproduction.py --root runs/nsr_repro
One cell:
  python -m jaxrl_llm.main --config=configs/nsr_repro.py:SFT_DIR --workdir=runs/x \
      --config.algo.advantage=nsr
Hardware: a 2-core CPU; about an hour for the whole study (docs/nsr_reproduction.md).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    c = base_config(runlocal=False)
    c.model.init_checkpoint = arg or ""
    c.algo.advantage = "w_reinforce"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "token-mean"
    c.algo.w_lambda = 0.1
    c.train.steps = 60
    c.train.num_epochs = 1
    c.eval.n = 4
    c.eval.ks = (1, 2, 4)
    c.checkpoint.every = 0
    c.log.progress = False
    return c


def sweep(add):
    for adv in ("psr", "nsr", "w_reinforce", "grpo"):
        add(**{"algo.advantage": adv})
    add(
        **{
            "algo.advantage": "gae",
            "critic.enabled": True,
            "critic.warmup_steps": 2,
            "algo.lam": 0.95,
        }
    )
