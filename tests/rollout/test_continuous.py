"""generate_continuous: for every (prompt, sample) the same tokens as the static sampler with
per-row keys (log-probs within float rounding), with refills, groups, stops, truncation,
per-row limits, batch padding, every slot count and the 8-device mesh; input checks."""

import jax
import numpy as np
import pytest

from jaxrl_llm import models, parallel
from jaxrl_llm.parallel import axes as A
from jaxrl_llm.parallel.mesh import make_mesh
from jaxrl_llm.rollout import (
    SamplingParams,
    generate,
    generate_continuous,
    kv_buckets_for,
    pad_prompts,
)
from tests.rollout.test_sampler import CONFIG, PROMPTS, teacher_forced_logp

T = 12
# Stop ids the tiny model emits often, so rows end at different lengths.
STOPS = (3, 7, 11, 20, 30, 40)


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
    # 4 prompts and one batch-padding row (fully masked): 5 prompts, bucket 8.
    return pad_prompts(PROMPTS, bucket_lengths=(8,), batch_bucket=5)


def _assert_same(got, want):
    for name in ("prompt_tokens", "prompt_mask", "tokens", "mask", "group_id", "truncated"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_allclose(got.sampler_logp, want.sampler_logp, atol=1e-5, rtol=0)


GREEDY = SamplingParams(T, greedy=True, n=2, stop_token_ids=STOPS)
SAMPLED = SamplingParams(T, temperature=0.9, top_p=0.95, n=3, stop_token_ids=STOPS)
# job limits for the sampled case (5 prompts x 3 samples): some below T, some above
LIMITS = np.array([12, 3, 5, 1, 12, 7, 9, 2, 40, 4, 6, 8, 12, 12, 12], np.int32)


@pytest.fixture(scope="module")
def static_greedy(params, prompts):
    return generate(params, CONFIG, prompts, jax.random.key(3), GREEDY, row_keys=True)


@pytest.fixture(scope="module")
def static_sampled(params, prompts):
    return generate(
        params, CONFIG, prompts, jax.random.key(4), SAMPLED, row_keys=True, max_tokens=LIMITS
    )


def test_greedy_with_refills_equals_static_row_keys(params, prompts, static_greedy):
    got, stats = generate_continuous(
        params, CONFIG, prompts, jax.random.key(3), GREEDY, slots=3, return_stats=True
    )
    _assert_same(got, static_greedy)
    assert int(stats["refills"]) == 10 - 3  # every job after the first 3 went into a freed slot
    lengths = np.asarray(got.mask).sum(axis=1)
    assert len(set(lengths[:8].tolist())) > 1  # rows really end at different steps
    assert np.asarray(got.truncated)[:8].any() and not np.asarray(got.truncated)[:8].all()
    np.testing.assert_array_equal(lengths[8:], 0)  # the padding prompt's two samples: empty


def test_sampled_with_limits_and_refills_equals_static_row_keys(params, prompts, static_sampled):
    """n=3 groups, top-p, stop ids, per-job limits (one of 1 token, one past T), 4 slots."""
    got, stats = generate_continuous(
        params,
        CONFIG,
        prompts,
        jax.random.key(4),
        SAMPLED,
        slots=4,
        max_tokens=LIMITS,
        return_stats=True,
    )
    _assert_same(got, static_sampled)
    assert int(stats["refills"]) == 15 - 4
    lengths = np.asarray(got.mask).sum(axis=1)
    truncated = np.asarray(got.truncated)
    np.testing.assert_array_equal(got.group_id, np.repeat(np.arange(5), 3))
    live = np.arange(12)  # rows of real prompts
    assert (lengths[live] <= np.minimum(LIMITS[live], T)).all()
    # a truncated row ran to its limit; a stopped one ends on a stop id
    for r in live:
        if truncated[r]:
            assert lengths[r] == min(LIMITS[r], T)
        else:
            assert int(got.tokens[r, lengths[r] - 1]) in STOPS
    assert truncated[live].any() and not truncated[live].all()
    assert lengths[3] == 1 and truncated[3]
    # the log-probs are the untruncated ones of a cache-free forward of each row
    _, want = teacher_forced_logp(params, got, 0.9)
    np.testing.assert_allclose(
        np.asarray(got.sampler_logp)[live], np.asarray(want * got.mask)[live], atol=1e-4
    )
    # the samples of a group differ
    tokens = np.asarray(got.tokens)
    assert (tokens[0] != tokens[1]).any() and (tokens[1] != tokens[2]).any()


def test_all_jobs_in_flight_and_full_attention_give_the_same(params, prompts, static_sampled):
    """slots >= B·n (no refill) with one attention bucket (all P + T slots) still matches."""
    got, stats = generate_continuous(
        params,
        CONFIG,
        prompts,
        jax.random.key(4),
        SAMPLED,
        slots=15,
        kv_buckets=1,
        max_tokens=LIMITS,
        return_stats=True,
    )
    _assert_same(got, static_sampled)
    assert int(stats["refills"]) == 0
    # one decode step per token after token 0 (drawn from the prefill logits)
    assert int(stats["steps"]) == int(np.asarray(got.mask).sum(axis=1).max()) - 1


def test_untruncated_sampling_without_stops_two_slots(params, prompts):
    """The untruncated fast path (top_p = 1), no stop ids: every row runs to T."""
    sampled = SamplingParams(T, temperature=1.0, n=2)
    want = generate(params, CONFIG, prompts, jax.random.key(5), sampled, row_keys=True)
    got = generate_continuous(params, CONFIG, prompts, jax.random.key(5), sampled, slots=2)
    _assert_same(got, want)
    np.testing.assert_array_equal(np.asarray(got.mask)[:8], 1)


def test_buckets():
    assert kv_buckets_for(8, 12, 4) == (16, 20)
    assert kv_buckets_for(32, 256, 4) == (64, 96, 160, 288)
    assert kv_buckets_for(32, 256, 1) == (288,)


def test_bad_inputs_fail_with_one_line_messages(params, prompts):
    with pytest.raises(ValueError, match="slots must be an int >= 1"):
        generate_continuous(params, CONFIG, prompts, jax.random.key(0), GREEDY, slots=0)
    with pytest.raises(ValueError, match="kv_buckets must be an int >= 1"):
        generate_continuous(
            params, CONFIG, prompts, jax.random.key(0), GREEDY, slots=2, kv_buckets=0
        )
    with pytest.raises(ValueError, match=r"max_tokens has shape \(3,\)"):
        generate_continuous(
            params, CONFIG, prompts, jax.random.key(0), GREEDY, slots=2, max_tokens=[1, 2, 3]
        )
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        generate_continuous(
            params, CONFIG, prompts, jax.random.key(0), GREEDY, slots=2, max_tokens=[0] * 10
        )


def test_eight_device_mesh_gives_the_single_device_rollout(params, prompts, static_sampled):
    """Params sharded over data x fsdp x tensor, rows split like the trainer's batch."""
    assert jax.device_count() == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = jax.device_put(
        params, A.logical_to_sharding(models.logical_axes(CONFIG), mesh, shapes=params)
    )
    got = generate_continuous(
        sharded,
        CONFIG,
        prompts,
        jax.random.key(4),
        SAMPLED,
        slots=4,
        max_tokens=LIMITS,
        mesh=mesh,
        rules=A.DEFAULT_RULES,
    )
    _assert_same(got, static_sampled)
    rows = parallel.row_sharding(mesh, A.DEFAULT_RULES, rows=15)
    assert got.tokens.sharding.is_equivalent_to(rows, 2)
