"""Host helpers: prompt padding to buckets, detokenising, stop strings."""

import numpy as np
import pytest

from jaxrl_llm.rollout import (
    Rollout,
    SamplingParams,
    apply_stop_strings,
    decode_completions,
    pad_prompts,
)


class PieceTokenizer:
    """id -> text piece; a stand-in for an HF tokenizer's `decode`."""

    PIECES = {0: "", 1: "ab", 2: "c", 3: "##", 4: "x#", 5: "!"}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.PIECES[i] for i in ids)


def make_rollout(tokens, mask):
    tokens, mask = np.asarray(tokens, np.int32), np.asarray(mask, np.int32)
    n = tokens.shape[0]
    return Rollout(
        prompt_tokens=np.zeros((n, 2), np.int32),
        prompt_mask=np.ones((n, 2), np.int32),
        tokens=tokens,
        mask=mask,
        sampler_logp=np.full(tokens.shape, -1.0, np.float32),
        group_id=np.arange(n, dtype=np.int32),
        truncated=np.ones(n, bool),
    )


def test_pad_prompts_left_pads_to_smallest_bucket():
    batch = pad_prompts([[5, 6, 7], [8]], bucket_lengths=(2, 4, 8), pad_id=9)
    np.testing.assert_array_equal(batch.tokens, [[9, 5, 6, 7], [9, 9, 9, 8]])
    np.testing.assert_array_equal(batch.mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert batch.tokens.dtype == np.int32


def test_pad_prompts_batch_bucket_adds_empty_rows():
    assert pad_prompts([[1]] * 3, bucket_lengths=(4,), batch_bucket=4).tokens.shape == (4, 4)
    assert pad_prompts([[1]] * 5, bucket_lengths=(4,), batch_bucket=(2, 8, 16)).tokens.shape == (
        8,
        4,
    )
    padded = pad_prompts([[1]] * 3, bucket_lengths=(4,), batch_bucket=4)
    np.testing.assert_array_equal(padded.mask[3], 0)


def test_pad_prompts_errors():
    with pytest.raises(ValueError, match="largest bucket"):
        pad_prompts([[1] * 9], bucket_lengths=(4, 8))
    with pytest.raises(ValueError, match="empty"):
        pad_prompts([[1], []])
    with pytest.raises(ValueError, match="batch size"):
        pad_prompts([[1]] * 3, batch_bucket=(1, 2))


def test_decode_completions_uses_valid_tokens_only():
    rollout = make_rollout([[1, 2, 5], [2, 2, 2]], [[1, 1, 0], [1, 0, 0]])
    assert decode_completions(PieceTokenizer(), rollout) == ["abc", "c"]


def test_apply_stop_strings_keeps_the_completing_token_and_updates_mask():
    # "ab" + "x#" + "##" + "c": "##" is first complete after the third token.
    rollout = make_rollout(
        [[1, 4, 3, 2], [1, 2, 2, 2], [3, 1, 0, 0]], [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    )
    out = apply_stop_strings(PieceTokenizer(), rollout, ["##"])
    np.testing.assert_array_equal(out.mask, [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(out.tokens, [[1, 4, 3, 0], [1, 2, 2, 2], [3, 0, 0, 0]])
    np.testing.assert_array_equal(out.sampler_logp[0], [-1, -1, -1, 0])
    np.testing.assert_array_equal(out.truncated, [False, True, False])
    assert decode_completions(PieceTokenizer(), out) == ["abx###", "abccc", "##"]


def test_sampling_params_validation_names_the_field():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams(max_new_tokens=4, min_p=1.0)
    assert SamplingParams(4, stop_token_ids=[3, 4]).stop_token_ids == (3, 4)
