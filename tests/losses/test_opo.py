"""OPO's length-weighted baseline: hand values, the Dr. GRPO identity, the registry entry."""

import jax
import numpy as np
import pytest

from jaxrl_llm.losses import advantages as A
from jaxrl_llm.losses import registry
from jaxrl_llm.losses.opo import opo


def test_hand_values():
    # group 1: lengths 1, 3 -> b = (1*1 + 3*0) / 4 = 0.25; group 2: lengths 2, 2 -> b = 0.5
    adv = opo([1.0, 0.0, 1.0, 0.0], [1, 3, 2, 2], 2)
    np.testing.assert_allclose(adv, [0.75, -0.25, 0.5, -0.5], rtol=1e-6)


def test_equal_lengths_give_dr_grpo():
    rewards = np.random.default_rng(0).uniform(size=12).astype(np.float32)
    np.testing.assert_allclose(
        opo(rewards, np.full(12, 5), 4),
        A.group_advantages(rewards, 4, scale="none"),
        rtol=1e-6,
        atol=1e-7,
    )


def test_empty_group_and_jit():
    adv = jax.jit(opo, static_argnums=2)(np.array([1.0, 0.0]), np.array([0, 0]), 2)
    np.testing.assert_array_equal(adv, [0.0, 0.0])


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="group_size"):
        opo([1.0, 0.0, 1.0], [1, 1, 1], 2)
    with pytest.raises(ValueError, match="lengths"):
        opo([1.0, 0.0], [1, 1, 1], 2)


def test_registry_entry_reads_lengths_from_the_mask():
    mask = np.array([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]], np.float32)
    adv, ret, w = registry.compute_advantages(
        "opo", rewards=np.array([1.0, 0.0, 1.0, 0.0]), mask=mask, group_size=2
    )
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [0.75, -0.25, 0.5, -0.5], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(adv) * (1 - mask), 0.0)
    assert ret is None and np.all(np.asarray(w) == 1.0)
    assert registry.ADVANTAGES["opo"].min_group == 2
