"""Loss library: advantage estimators, policy losses, KL, entropy, value and preference losses.

Pure, jittable functions of arrays; see ``docs/losses.md`` for the table of
formulas, papers, defaults and conventions, and :mod:`.registry` for the
name → function maps that configs use.
"""

from jaxrl_llm.losses import (
    advantages,
    aggregation,
    entropy,
    kl,
    policy,
    preference,
    registry,
    value,
)
from jaxrl_llm.losses.advantages import (
    discounted_returns,
    gae,
    group_advantages,
    last_token_index,
    psr_nsr,
    reinforce_pp,
    reinforce_pp_baseline,
    remax,
    rloo,
    to_token_rewards,
    to_tokens,
    whiten,
)
from jaxrl_llm.losses.aggregation import MODES, aggregate, global_counts, sequence_weight
from jaxrl_llm.losses.entropy import entropy_bonus, token_entropy
from jaxrl_llm.losses.kl import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    KLControllerState,
    full_kl,
    kl_estimate,
)
from jaxrl_llm.losses.policy import (
    METRIC_KEYS,
    cispo,
    clip_cov,
    clip_cov_stats,
    forking_threshold,
    forking_token_mask,
    gspo,
    init_metrics,
    kl_cov,
    kl_cov_stats,
    merge_metrics,
    ppo_clip,
    reinforce,
)
from jaxrl_llm.losses.preference import dpo, hinge, ipo, rdpo, simpo
from jaxrl_llm.losses.registry import (
    ADVANTAGES,
    AGGREGATIONS,
    POLICY_LOSSES,
    compute_advantages,
    compute_policy_loss,
    policy_loss_stats,
    split_stats,
)
from jaxrl_llm.losses.value import (
    clipped_value_loss,
    hl_gauss_bin_centres,
    hl_gauss_loss,
    hl_gauss_readout,
    hl_gauss_targets,
)

__all__ = [
    # modules
    "advantages",
    "aggregation",
    "entropy",
    "kl",
    "policy",
    "preference",
    "registry",
    "value",
    # advantages
    "gae",
    "discounted_returns",
    "whiten",
    "group_advantages",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "psr_nsr",
    "to_tokens",
    "to_token_rewards",
    "last_token_index",
    # aggregation
    "MODES",
    "aggregate",
    "global_counts",
    "sequence_weight",
    # policy
    "METRIC_KEYS",
    "ppo_clip",
    "reinforce",
    "gspo",
    "cispo",
    "clip_cov",
    "kl_cov",
    "clip_cov_stats",
    "kl_cov_stats",
    "forking_token_mask",
    "forking_threshold",
    "init_metrics",
    "merge_metrics",
    # registry
    "ADVANTAGES",
    "POLICY_LOSSES",
    "AGGREGATIONS",
    "compute_advantages",
    "compute_policy_loss",
    "policy_loss_stats",
    "split_stats",
    # kl, entropy, value, preference
    "KL_KINDS",
    "kl_estimate",
    "full_kl",
    "KLControllerState",
    "FixedKLController",
    "AdaptiveKLController",
    "token_entropy",
    "entropy_bonus",
    "clipped_value_loss",
    "hl_gauss_targets",
    "hl_gauss_loss",
    "hl_gauss_readout",
    "hl_gauss_bin_centres",
    "dpo",
    "ipo",
    "rdpo",
    "hinge",
    "simpo",
]
