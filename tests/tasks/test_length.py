"""Length shaping: DAPO overlong penalty on token counts, LASER step reward, truncation mask."""

import numpy as np
import pytest

from jaxrl_llm.tasks.length import (
    laser_reward,
    overlong_penalty,
    shape_rewards,
    token_lengths,
    truncation_weight,
)


def test_overlong_penalty_by_hand():
    # L_max 20, buffer 8: zero up to 12 tokens, linear to −1 at 20, −1 beyond
    got = overlong_penalty([0, 12, 13, 16, 19, 20, 25], 20, 8)
    np.testing.assert_allclose(got, [0, 0, -1 / 8, -4 / 8, -7 / 8, -1, -1], rtol=0, atol=1e-7)
    assert got.dtype == np.float32
    np.testing.assert_allclose(overlong_penalty([16], 20, 8, penalty=0.5), [-0.25])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty([1], 10, 0)


def test_overlong_counts_tokens_not_characters():
    # Two completions with the same text length but different token counts (multi-character
    # tokens in the second): the penalty follows the mask, i.e. the token count.
    texts = ["abcdefghijkl", "abcdefghijkl"]  # 12 characters each
    mask = np.zeros((2, 16), np.int32)
    mask[0, :12] = 1  # 12 one-character tokens
    mask[1, :3] = 1  # 3 four-character tokens
    lengths = token_lengths(mask)
    np.testing.assert_array_equal(lengths, [12, 3])
    got = overlong_penalty(lengths, max_len=12, buffer=4)
    np.testing.assert_allclose(got, [-1.0, 0.0])
    assert len(texts[0]) == len(texts[1])


def test_laser_step_reward():
    L, correct = [3, 5, 6, 2], [1, 1, 1, 0]
    np.testing.assert_allclose(laser_reward(L, correct, 5, alpha=0.5), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(
        laser_reward(L, correct, 5, alpha=0.5, only_correct=False), [0.5, 0.5, 0, 0.5]
    )


def test_shape_rewards_composes_and_masks():
    r = np.float32([1.0, 0.25, 1.0, 0.0])
    L = np.array([4, 9, 10, 10])
    trunc = np.array([False, False, True, True])
    shaped, weight, comps = shape_rewards(
        r,
        L,
        truncated=trunc,
        correct=[1, 0, 1, 0],
        max_len=10,
        overlong_buffer=2,
        laser_target=5,
        laser_alpha=0.1,
        mask_truncated=True,
    )
    np.testing.assert_allclose(comps["overlong"], [0, -0.5, -1, -1])
    np.testing.assert_allclose(comps["laser"], [0.1, 0, 0, 0])
    np.testing.assert_allclose(shaped, [1.1, -0.25, 0.0, -1.0], atol=1e-7)
    np.testing.assert_array_equal(weight, [1, 1, 0, 0])
    np.testing.assert_array_equal(truncation_weight(trunc), [1, 1, 0, 0])
    same, w, c = shape_rewards(r, L)
    np.testing.assert_array_equal(same, r) and np.testing.assert_array_equal(w, 1.0)
    assert c == {} and same.dtype == np.float32
