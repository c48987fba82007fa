"""Rewards beyond verifiers: reward-model folders and scoring (`model`), a learned reward
inside the RL step and the combination of reward terms (`learned`), LLM-as-judge verdicts
(`judge`)."""

from jaxrl_llm.rewards.judge import JudgeReward, parse_verdict
from jaxrl_llm.rewards.learned import COMBINE_MODES, NORMALIZE_MODES, LearnedReward, combine

__all__ = [
    "LearnedReward",
    "JudgeReward",
    "combine",
    "parse_verdict",
    "COMBINE_MODES",
    "NORMALIZE_MODES",
]
