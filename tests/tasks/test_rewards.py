"""Reward composition: weighted sum of named terms, each reported; floats stay float to the advantages."""

import functools

import numpy as np
import pytest

from jaxrl_llm.tasks import ArithTask, ComposedTask, Example, RewardPool, RewardTerm, compose
from jaxrl_llm.tasks.rewards import exact_match, is_integer_format
from jaxrl_llm.tasks.testing import FaultyTask


def _len_bonus(completion, example, *, per_char):
    return per_char * len(completion.strip())


def test_compose_by_hand():
    ex = Example(id="x", prompt="1+2=", answer="3")
    terms = [
        RewardTerm("correct", exact_match, 1.0),
        RewardTerm("format", is_integer_format, 0.2),
        RewardTerm("chars", functools.partial(_len_bonus, per_char=0.125), -1.0),
    ]
    total, comps = compose(terms, "3", ex)
    assert comps == {"correct": 1.0, "format": 1.0, "chars": 0.125}
    assert total == 1.0 + 0.2 - 0.125
    with pytest.raises(ValueError, match="unique"):
        compose([terms[0], terms[0]], "3", ex)


def test_composed_task_components_through_pool():
    task = ComposedTask(
        ArithTask(),
        terms=(RewardTerm("chars", functools.partial(_len_bonus, per_char=0.125), -1.0),),
        base_weight=2.0,
    )
    exs = [Example(id="a", prompt="1+2=", answer="3"), Example(id="b", prompt="1+1=", answer="2")]
    rewards, info = RewardPool(num_workers=0).score(task, ["3", "22"], exs)
    np.testing.assert_array_equal(rewards, np.float32([2 - 0.125, -0.25]))
    np.testing.assert_array_equal(info["components"]["correct"], [1, 0])
    np.testing.assert_array_equal(info["components"]["task"], [1, 0])
    np.testing.assert_array_equal(info["components"]["chars"], [0.125, 0.25])
    assert task.examples("train", 3, 0) == ArithTask().examples("train", 3, 0)


def test_fractional_rewards_reach_the_advantages_unchanged():
    """Rewards 0.1, 0.35, ... survive scoring as float32 and give the GRPO advantages of a
    numpy reference computed on the same floats (an int cast would make them all 0)."""
    values = ["0.1", "0.35", "0.6", "0.85", "0.25", "0.4", "0.55", "0.9"]
    rewards, _ = RewardPool(num_workers=0).score(
        FaultyTask(), values, [Example(str(i), "", "") for i in range(8)]
    )
    assert rewards.dtype == np.float32
    np.testing.assert_array_equal(rewards, np.float32([float(v) for v in values]))
    g = rewards.astype(np.float64).reshape(2, 4)
    ref = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    assert np.abs(ref).min() > 0.05  # fractional differences matter
    from jaxrl_llm import losses

    adv = np.asarray(losses.group_advantages(rewards, 4, scale="group", eps=1e-6, ddof=1))
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(adv, 0.0)
