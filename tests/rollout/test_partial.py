"""Partial rollouts (`rollout/partial.py`): a completion cut into budget-sized segments and
continued equals one uninterrupted `generate(..., row_keys=True)` (tokens exactly, log-probs
within float rounding), whichever rows are continued together; versions and input checks."""

import jax
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.rollout import SamplingParams, generate, pad_prompts
from jaxrl_llm.rollout.partial import PartialRows, continue_rows, start_rows
from tests.rollout.test_sampler import CONFIG, PROMPTS

T = 12
STOPS = (3, 7, 11, 20, 30, 40)  # ids the tiny model emits often: rows end at different lengths
SAMPLED = SamplingParams(T, temperature=0.9, top_p=0.95, n=3, stop_token_ids=STOPS)
PLAIN = SamplingParams(T, temperature=1.0, n=2, stop_token_ids=STOPS)


@pytest.fixture(scope="module")
def params():
    init = jax.jit(
        lambda key: jax.tree.map(
            lambda x: x * 4.0 if x.ndim >= 2 else x, models.init_params(CONFIG, key)
        )
    )
    return init(jax.random.key(0))


@pytest.fixture(scope="module")
def prompts():
    return pad_prompts(PROMPTS, bucket_lengths=(8,))


def _assert_same(got, want):
    for name in ("prompt_tokens", "prompt_mask", "tokens", "mask", "group_id", "truncated"):
        np.testing.assert_array_equal(getattr(got, name), np.asarray(getattr(want, name)), name)
    np.testing.assert_allclose(got.sampler_logp, np.asarray(want.sampler_logp), atol=1e-5)


@pytest.mark.parametrize("sampling", [SAMPLED, PLAIN], ids=["top_p", "plain"])
@pytest.mark.parametrize("budget", [1, 4, 5, T])
def test_segments_equal_one_uninterrupted_rollout(params, prompts, sampling, budget):
    key = jax.random.key(7)
    want = generate(params, CONFIG, prompts, key, sampling, row_keys=True)
    rows, calls = start_rows(prompts, key, sampling.n, T), 0
    while not rows.finished.all():
        rows = continue_rows(params, CONFIG, rows, sampling, budget, version=calls)
        calls += 1
        assert calls <= -(-T // budget)
    _assert_same(rows.to_rollout(), want)
    lengths = rows.length
    assert len(set(lengths.tolist())) > 1 and rows.stopped.any() and not rows.stopped.all()
    # versions: token t was drawn by call t // budget
    for r in range(len(rows)):
        np.testing.assert_array_equal(
            rows.versions[r, : lengths[r]], np.arange(lengths[r]) // budget
        )
        assert (rows.versions[r, lengths[r] :] == -1).all()


@pytest.mark.parametrize("budget", [2, 5])
def test_per_row_limits_equal_generate_with_max_tokens(params, prompts, budget):
    """`start_rows(max_tokens=)` ends row r after its own limit, as `generate(max_tokens=)`
    does (truncated), whatever the segments; the limits survive select / concat."""
    key = jax.random.key(3)
    limits = np.array([1, T, 4, 9, 2, 30, 7, 5, 3, 11, 6, 12][: len(prompts.tokens) * PLAIN.n])
    want = generate(params, CONFIG, prompts, key, PLAIN, row_keys=True, max_tokens=limits)
    rows = start_rows(prompts, key, PLAIN.n, T, max_tokens=limits)
    while not rows.finished.all():
        half = len(rows) // 2
        rows = PartialRows.concat(
            [
                continue_rows(params, CONFIG, rows.select(np.arange(half)), PLAIN, budget),
                continue_rows(
                    params, CONFIG, rows.select(np.arange(half, len(rows))), PLAIN, budget
                ),
            ]
        )
    _assert_same(rows.to_rollout(), want)
    assert (rows.length <= np.minimum(limits, T)).all()
    assert (rows.length == np.minimum(limits, T))[~rows.stopped].all()
    assert ((rows.length < np.minimum(limits, T)) == rows.stopped).any()
    with pytest.raises(ValueError, match="max_tokens must be int of shape"):
        start_rows(prompts, key, PLAIN.n, T, max_tokens=limits[:-1])
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        start_rows(prompts, key, PLAIN.n, T, max_tokens=limits * 0)


def test_rows_continued_apart_equal_rows_continued_together(params, prompts):
    """Pause after 3 tokens; continue the rows in two other groupings (one with another
    prompt width after concat): same tokens, log-probs within rounding."""
    key = jax.random.key(9)
    first = continue_rows(params, CONFIG, start_rows(prompts, key, 3, T), SAMPLED, 3)
    together = continue_rows(params, CONFIG, first, SAMPLED, T)
    odd, even = np.arange(1, len(first), 2), np.arange(0, len(first), 2)
    wide = first.select(odd)
    wide = PartialRows.concat([wide, wide.select([])])  # no-op concat keeps the rows
    wide.prompt_tokens = np.pad(wide.prompt_tokens, ((0, 0), (4, 0)))  # 4 more padding slots
    wide.prompt_mask = np.pad(wide.prompt_mask, ((0, 0), (4, 0)))
    apart = [continue_rows(params, CONFIG, part, SAMPLED, T) for part in (wide, first.select(even))]
    for idx, part in zip((odd, even), apart):
        ref = together.select(idx)
        np.testing.assert_array_equal(part.tokens, ref.tokens)
        np.testing.assert_array_equal(part.length, ref.length)
        np.testing.assert_allclose(part.logp, ref.logp, atol=1e-5)


def test_finished_rows_are_left_as_they_are(params, prompts):
    rows = start_rows(prompts, jax.random.key(7), 2, T)
    while not rows.finished.any():
        rows = continue_rows(params, CONFIG, rows, PLAIN, 2)
    done = rows.finished
    assert done.any() and not done.all()
    again = continue_rows(params, CONFIG, rows, PLAIN, 4, version=5)
    for name in ("tokens", "logp", "versions", "length", "stopped"):
        np.testing.assert_array_equal(getattr(again, name)[done], getattr(rows, name)[done])
    assert (again.length[~done] > rows.length[~done]).all()
    assert (again.versions[~done] == 5).any()


def test_concat_pads_prompts_and_keeps_rows():
    a = start_rows(pad_prompts([[1, 2]], bucket_lengths=(4,)), jax.random.key(0), 2, 5)
    b = start_rows(pad_prompts([[1, 2, 3, 4, 5]], bucket_lengths=(8,)), jax.random.key(1), 1, 5)
    both = PartialRows.concat([a, b])
    assert both.prompt_tokens.shape == (3, 8)
    np.testing.assert_array_equal(both.prompt_tokens[0], [0, 0, 0, 0, 0, 0, 1, 2])
    np.testing.assert_array_equal(both.keys[2], b.keys[0])
    with pytest.raises(ValueError, match="max_new_tokens"):
        PartialRows.concat([a, start_rows(pad_prompts([[1]]), jax.random.key(0), 1, 6)])


def test_bad_inputs_fail_with_one_line(params, prompts):
    rows = start_rows(prompts, jax.random.key(0), 1, T)
    with pytest.raises(ValueError, match="budget must be >= 1"):
        continue_rows(params, CONFIG, rows, PLAIN, 0)
    with pytest.raises(ValueError, match="max_new_tokens = 8"):
        continue_rows(params, CONFIG, rows, PLAIN.replace(max_new_tokens=8), 4)
    with pytest.raises(ValueError, match="must be >= 1"):
        start_rows(prompts, jax.random.key(0), 0, T)
