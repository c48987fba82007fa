"""The static sampler's prefix-bucketed decode attention (`generate(..., kv_buckets=)`,
`rollout.kv_buckets`): the same rollouts as attending over every slot, programs that really
read the shorter prefixes, and refusals."""

import jax
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm import rollout as R
from jaxrl_llm.rollout import sampler as sampler_lib

P, T = 8, 40


@pytest.fixture(scope="module")
def setup():
    mc = models.ModelConfig.tiny(vocab_size=64)
    params = jax.tree.map(lambda x: x * 2.0, models.init_params(mc, jax.random.key(0)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, (3, P)).astype(np.int32)
    mask = np.ones_like(tokens)
    tokens[0, :3], mask[0, :3] = 0, 0  # a left-padded prompt
    return mc, params, R.PromptBatch(tokens=tokens, mask=mask)


@pytest.mark.parametrize("greedy", [True, False])
def test_bucketed_decode_equals_full_attention(setup, greedy):
    """Greedy and sampled (top-p, stop id): the same tokens, log-probs within 2e-6, rows of
    many lengths (some run through every bucket)."""
    mc, params, prompts = setup
    sp = R.SamplingParams(
        n=2, max_new_tokens=T, greedy=greedy, top_p=0.95, stop_token_ids=(5,), temperature=0.9
    )
    full = R.generate(params, mc, prompts, jax.random.key(1), sp)
    cut = R.generate(params, mc, prompts, jax.random.key(1), sp, kv_buckets=4)
    np.testing.assert_array_equal(np.asarray(cut.tokens), np.asarray(full.tokens))
    np.testing.assert_array_equal(np.asarray(cut.mask), np.asarray(full.mask))
    np.testing.assert_allclose(np.asarray(cut.sampler_logp), np.asarray(full.sampler_logp), atol=2e-6)  # fmt: skip
    lengths = np.asarray(full.mask).sum(1)
    if not greedy:
        assert lengths.max() == T and lengths.min() < 24  # rows that end in different buckets


def test_bucketed_decode_on_a_mesh(setup):
    """On 8 devices, params sharded over data x fsdp x tensor and rows over the batch axes
    (the KV cache's heads over tensor), as without buckets."""
    from jaxrl_llm.parallel import axes as A
    from jaxrl_llm.parallel.mesh import make_mesh

    mc, params, prompts = setup
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = jax.device_put(
        params, A.logical_to_sharding(models.logical_axes(mc), mesh, shapes=params)
    )
    sp = R.SamplingParams(n=8, max_new_tokens=T, stop_token_ids=(5,))
    kw = dict(mesh=mesh, rules=A.DEFAULT_RULES)
    full = R.generate(params, mc, prompts, jax.random.key(2), sp, **kw)
    cut = R.generate(params, mc, prompts, jax.random.key(2), sp, kv_buckets=3, **kw)
    np.testing.assert_array_equal(np.asarray(cut.tokens), np.asarray(full.tokens))
    np.testing.assert_allclose(np.asarray(cut.sampler_logp), np.asarray(full.sampler_logp), atol=2e-6)  # fmt: skip


def test_the_program_reads_each_bucket_prefix(setup):
    """The lowered program slices the cache to every bucket length below P + T (K / V
    `[1, N, k, kv_heads, head_dim]`); without buckets it never does."""
    mc, params, prompts = setup
    sp = R.SamplingParams(n=2, max_new_tokens=T)
    buckets = R.kv_buckets_for(P, T, 4)
    assert buckets == (16, 24, 32, 48)
    rows, kv, hd = 6, mc.num_kv_heads, mc.head_dim

    def text(kv_buckets):
        fn = sampler_lib._compiled(mc, sp.static_key(), 3, P, None, (), True, kv_buckets=kv_buckets)
        cache = sampler_lib.init_sampler_cache(mc, rows, P + T)
        floats = np.asarray([1.0, 1.0, 0.0], np.float32)
        args = (params, prompts.tokens, prompts.mask, jax.random.key(0), floats, cache)
        return fn.lower(*args).as_text()

    cut, full = text(4), text(0)
    for k in buckets[:-1]:
        shape = f"tensor<1x{rows}x{k}x{kv}x{hd}x"
        assert shape in cut, k
        assert shape not in full, k


def test_bad_kv_buckets_are_refused(setup):
    mc, params, prompts = setup
    sp = R.SamplingParams(n=1, max_new_tokens=4)
    for bad in (-1, True, 2.0):
        with pytest.raises(ValueError, match="kv_buckets must be an int >= 0"):
            R.generate(params, mc, prompts, jax.random.key(0), sp, kv_buckets=bad)


def test_episodes_refuse_the_option():
    """Multi-turn episodes decode with their own loop: refused, not silently ignored."""
    from jaxrl_llm.trainers import config as config_lib
    from tests.trainers.conftest import small_config

    c = small_config(**{"rollout.kv_buckets": 4, "env.name": "calculator"})
    with pytest.raises(
        config_lib.ConfigError, match="does not combine with rollout.kv_buckets = 4"
    ):
        config_lib.validate(c)


def test_vmapped_seeds_with_buckets_equal_without(setup):
    """`generate_seeds(..., kv_buckets=)`: 2 seeds (params scaled differently), the same
    tokens and log-probs within 2e-6 as attending over every slot."""
    mc, params, prompts = setup
    stacked = jax.tree.map(lambda x: np.stack([x, 0.9 * x]), params)
    two = R.PromptBatch(tokens=np.stack([prompts.tokens] * 2), mask=np.stack([prompts.mask] * 2))
    keys = jax.random.split(jax.random.key(3), 2)
    sp = R.SamplingParams(n=2, max_new_tokens=T, stop_token_ids=(5,))
    full = R.generate_seeds(stacked, mc, two, keys, sp)
    cut = R.generate_seeds(stacked, mc, two, keys, sp, kv_buckets=4)
    np.testing.assert_array_equal(np.asarray(cut.tokens), np.asarray(full.tokens))
    np.testing.assert_allclose(np.asarray(cut.sampler_logp), np.asarray(full.sampler_logp), atol=2e-6)  # fmt: skip


def test_partial_rounds_with_buckets_equal_without(setup):
    """`continue_rows(..., kv_buckets=)`: two rounds of 16 tokens, the same rows as
    attending over every slot of each round's cache."""
    from jaxrl_llm.rollout.partial import continue_rows, start_rows

    mc, params, prompts = setup
    sp = R.SamplingParams(n=2, max_new_tokens=T, stop_token_ids=(5,))
    outs = []
    for kv_buckets in (0, 3):
        rows = start_rows(prompts, jax.random.key(4), 2, T)
        for _ in range(2):
            rows = continue_rows(params, mc, rows, sp, 16, kv_buckets=kv_buckets)
        outs.append(rows)
    full, cut = outs
    assert full.length.max() > 16  # the second round decoded after a re-prefill
    np.testing.assert_array_equal(cut.tokens, full.tokens)
    np.testing.assert_array_equal(cut.length, full.length)
    np.testing.assert_allclose(cut.logp, full.logp, atol=2e-6)
