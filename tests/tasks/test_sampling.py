"""DAPO dynamic sampling: zero-variance groups are dropped; counts and fills are exact."""

import numpy as np
import pytest

from jaxrl_llm.tasks.sampling import (
    DynamicSample,
    dynamic_sampling,
    informative_groups,
    select_rows,
)

G = 4


def test_informative_groups_by_hand():
    r = [1, 1, 1, 1, 0, 1, 0, 0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2500001]
    np.testing.assert_array_equal(informative_groups(r, 4), [False, True, False, True])
    np.testing.assert_array_equal(informative_groups(r, 4, atol=1e-3), [False, True, False, False])
    with pytest.raises(ValueError, match="group_size"):
        informative_groups(r, 3)


def _stream(seed, informative_prob, M=5):
    """sample_fn over a random stream; batch rows carry (attempt, row) ids for checking."""
    rng = np.random.default_rng(seed)

    def sample_fn(attempt):
        keep = rng.random(M) < informative_prob
        rewards = np.ones((M, G), np.float32) * rng.integers(0, 2, size=(M, 1))
        rewards[keep, 0] = 1 - rewards[keep, 0]  # informative: one sample differs
        batch = {"ids": np.array([[attempt, i] for i in range(M * G)]), "none": None}
        return batch, rewards.reshape(-1)

    return sample_fn


@pytest.mark.parametrize("seed", range(5))
def test_no_zero_variance_group_when_enough_informative(seed):
    B = 6
    res, stats = dynamic_sampling(_stream(seed, 0.5), B, G, max_attempts=50)
    kept = res.kept_rewards().reshape(B, G)
    assert (kept.max(1) > kept.min(1)).all()
    assert stats is res.stats and res.stats["groups_kept"] == B and res.stats["filled"] == 0
    sampled, dropped = res.stats["groups_sampled"], res.stats["groups_dropped"]
    assert sampled == 5 * res.stats["attempts"]
    all_r = np.concatenate(res.rewards).reshape(-1, G)
    assert dropped == int((all_r.max(1) == all_r.min(1)).sum())
    assert res.stats["frac_dropped"] == dropped / sampled
    # selected rows are the kept groups, contiguous and in sampling order
    batch = select_rows(res)
    assert batch["none"] is None and batch["ids"].shape == (B * G, 2)
    groups = batch["ids"].reshape(B, G, 2)
    assert [tuple(g[0]) for g in groups] == [(a, gi * G) for a, gi in res.groups]


def test_stops_at_first_sufficient_attempt():
    calls = []

    def sample_fn(attempt):
        calls.append(attempt)
        return None, np.tile(np.float32([0, 1, 1, 1]), 3)  # 3 informative groups per call

    res, stats = dynamic_sampling(sample_fn, 5, G, max_attempts=10)
    assert calls == [0, 1] and res.groups == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert res.stats["frac_dropped"] == 0.0


def test_cap_fills_with_uninformative_groups_or_returns_fewer():
    def sample_fn(attempt):
        r = np.zeros((3, G), np.float32)
        r[attempt % 3, 1] = 1.0  # exactly one informative group per attempt
        return None, r.reshape(-1)

    res = dynamic_sampling(sample_fn, 4, G, max_attempts=2)  # the object itself ...
    kept, stats = res  # ... or unpacked
    assert kept is res and stats is res.stats
    assert res.stats["attempts"] == 2 and res.stats["filled"] == 2 and len(res.groups) == 4
    assert {(0, 0), (1, 1)} <= set(res.groups)  # both informative groups kept
    assert res.stats["groups_dropped"] == 4 and res.stats["frac_dropped"] == 4 / 6
    short, _ = dynamic_sampling(sample_fn, 4, G, max_attempts=2, fill=False)
    assert short.groups == [(0, 0), (1, 1)] and short.stats["filled"] == 0


def test_select_rows_of_no_kept_group_is_an_empty_batch():
    def sample_fn(attempt):  # every group constant: nothing is informative
        batch = {
            "tokens": np.arange(2 * G * 3, dtype=np.int32).reshape(2 * G, 3) + attempt,
            "mask": np.ones((2 * G,), np.float32),
            "none": None,
        }
        return batch, np.repeat(np.float32([0.0, 1.0]), G)

    res = dynamic_sampling(sample_fn, 2, G, max_attempts=3, fill=False)
    assert res.groups == [] and res.stats["groups_kept"] == 0 and res.stats["attempts"] == 3
    batch = select_rows(res)
    assert batch["tokens"].shape == (0, 3) and batch["tokens"].dtype == np.int32
    assert batch["mask"].shape == (0,) and batch["mask"].dtype == np.float32
    assert batch["none"] is None
    assert res.kept_rewards().shape == (0,)
    # a custom take sees the empty row index too
    seen = []
    out = select_rows(res, take=lambda b, rows: seen.append(rows.shape) or b["mask"][rows])
    assert out.shape == (0,) and seen == [(0,)]


def test_select_rows_without_any_batch_is_a_clear_error():
    res = DynamicSample(batches=[], rewards=[], groups=[], rows_by_attempt={}, stats={})
    with pytest.raises(ValueError, match="no batch"):
        select_rows(res)
