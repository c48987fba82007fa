"""generate(): exact log-probs, stops, truncation, groups, determinism, meshes, compile counts.

HF transformers parity of greedy decoding is in test_hf_parity.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.parallel import axes as A
from jaxrl_llm.parallel.mesh import make_mesh
from jaxrl_llm.rollout import (
    PromptBatch,
    SamplingParams,
    generate,
    generate_with_cache,
    pad_prompts,
    token_logprobs,
)

CONFIG = models.ModelConfig.tiny(vocab_size=96, qkv_bias=True, architecture="qwen2")
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [19]]
T = 8


@pytest.fixture(scope="module")
def params():
    # Larger-than-default weights so the next-token distributions are far from uniform.
    init = jax.jit(
        lambda key: jax.tree.map(
            lambda x: x * 4.0 if x.ndim >= 2 else x, models.init_params(CONFIG, key)
        )
    )
    return init(jax.random.key(0))


@pytest.fixture(scope="module")
def prompts():
    return pad_prompts(PROMPTS, bucket_lengths=(8, 16), pad_id=0)


@jax.jit
def teacher_forced_logp(params, rollout, temperature):
    """log-probs of the generated tokens under one full (cache-free) forward pass."""
    tokens = jnp.concatenate([rollout.prompt_tokens, rollout.tokens], axis=1)
    mask = jnp.concatenate([rollout.prompt_mask, rollout.mask], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, _ = models.apply(CONFIG, params, tokens, positions, mask)
    p = rollout.prompt_tokens.shape[1]
    return logits[:, p - 1 : -1], token_logprobs(logits[:, p - 1 : -1], rollout.tokens, temperature)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (0.6, 0.8)])
def test_sampler_logp_equals_teacher_forced(params, prompts, temperature, top_p):
    """sampler_logp is the untruncated log_softmax(logits / T), also when top-p truncates."""
    sp = SamplingParams(max_new_tokens=T, temperature=temperature, top_p=top_p)
    rollout = generate(params, CONFIG, prompts, jax.random.key(1), sp)
    assert rollout.tokens.shape == (4, T) and rollout.sampler_logp.dtype == jnp.float32
    _, want = teacher_forced_logp(params, rollout, temperature)
    np.testing.assert_allclose(
        np.asarray(rollout.sampler_logp), np.asarray(want * rollout.mask), atol=1e-4, rtol=0
    )
    assert np.asarray(rollout.mask).all() and np.asarray(rollout.truncated).all()


def test_greedy_follows_teacher_forced_argmax(params, prompts):
    rollout = generate(
        params, CONFIG, prompts, jax.random.key(0), SamplingParams(max_new_tokens=T, greedy=True)
    )
    logits, _ = teacher_forced_logp(params, rollout, 1.0)
    np.testing.assert_array_equal(rollout.tokens, jnp.argmax(logits, axis=-1))


def test_stop_ids_end_rows_and_masks(params, prompts):
    free = generate(params, CONFIG, prompts, jax.random.key(0), SamplingParams(T, greedy=True))
    free_tokens = np.asarray(free.tokens)
    stop = int(free_tokens[0, 2])  # row 0 emits it by step 2 at the latest
    stopped = generate(
        params,
        CONFIG,
        prompts,
        jax.random.key(0),
        SamplingParams(T, greedy=True, stop_token_ids=(stop, CONFIG.vocab_size - 1)),
    )
    tokens, mask = np.asarray(stopped.tokens), np.asarray(stopped.mask)
    for r in range(len(PROMPTS)):
        hits = np.flatnonzero(np.isin(free_tokens[r], [stop, CONFIG.vocab_size - 1]))
        end = hits[0] + 1 if len(hits) else T
        np.testing.assert_array_equal(mask[r], np.arange(T) < end)
        np.testing.assert_array_equal(tokens[r, :end], free_tokens[r, :end])
        np.testing.assert_array_equal(tokens[r, end:], 0)
        np.testing.assert_array_equal(np.asarray(stopped.sampler_logp)[r, end:], 0.0)
        assert bool(stopped.truncated[r]) == (len(hits) == 0)
    assert not bool(stopped.truncated[0])


def test_same_key_same_rollout_other_key_differs(params, prompts):
    sp = SamplingParams(max_new_tokens=T)
    a = generate(params, CONFIG, prompts, jax.random.key(5), sp)
    b = generate(params, CONFIG, prompts, jax.random.key(5), sp)
    c = generate(params, CONFIG, prompts, jax.random.key(6), sp)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.sampler_logp, b.sampler_logp)
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def group_prompts():
    return pad_prompts(PROMPTS[:3], bucket_lengths=(8,), batch_bucket=4)  # row 3 is batch padding


def test_groups_and_batch_padding_rows(params):
    prompts = group_prompts()
    rollout = generate(params, CONFIG, prompts, jax.random.key(2), SamplingParams(T, n=2))
    np.testing.assert_array_equal(rollout.group_id, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(rollout.prompt_tokens, np.repeat(prompts.tokens, 2, axis=0))
    np.testing.assert_array_equal(rollout.prompt_mask, np.repeat(prompts.mask, 2, axis=0))
    tokens = np.asarray(rollout.tokens)
    for g in range(3):  # the two samples of a prompt are drawn independently
        assert (tokens[2 * g] != tokens[2 * g + 1]).any()
    np.testing.assert_array_equal(np.asarray(rollout.mask)[6:], 0)  # padding rows: empty
    np.testing.assert_array_equal(rollout.truncated, [True] * 6 + [False] * 2)
    _, want = teacher_forced_logp(params, rollout, 1.0)
    np.testing.assert_allclose(
        np.asarray(rollout.sampler_logp)[:6], np.asarray(want)[:6], atol=1e-4
    )


def test_eight_device_mesh_gives_same_tokens_with_sharded_cache_and_params(params):
    assert jax.device_count() == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = A.logical_to_sharding(models.logical_axes(CONFIG), mesh, shapes=params)
    sharded = jax.device_put(params, shardings)
    q = sharded["layers"]["attn"]["q_proj"]["kernel"]  # [layers, embed, heads, head_dim]
    assert q.addressable_shards[0].data.shape == (
        CONFIG.num_layers,
        CONFIG.hidden_size // 2,
        CONFIG.num_heads // 2,
        CONFIG.head_dim,
    )
    sp = SamplingParams(T, n=2, temperature=0.9)
    single = generate(params, CONFIG, group_prompts(), jax.random.key(2), sp)
    rollout, cache = generate_with_cache(
        sharded, CONFIG, group_prompts(), jax.random.key(2), sp, mesh=mesh, rules=A.DEFAULT_RULES
    )
    np.testing.assert_array_equal(rollout.tokens, single.tokens)
    np.testing.assert_array_equal(rollout.mask, single.mask)
    np.testing.assert_allclose(rollout.sampler_logp, single.sampler_logp, atol=1e-5)
    # cache k: [layers, rows / (data·fsdp), P + T, kv_heads / tensor, head_dim] on every device
    rows, slots = 8, 8 + T
    assert cache["k"].shape == (
        CONFIG.num_layers,
        rows,
        slots,
        CONFIG.num_kv_heads,
        CONFIG.head_dim,
    )
    for shard in cache["k"].addressable_shards:
        assert shard.data.shape == (
            CONFIG.num_layers,
            rows // 4,
            slots,
            CONFIG.num_kv_heads // 2,
            CONFIG.head_dim,
        )
    assert rollout.tokens.addressable_shards[0].data.shape == (rows // 4, T)


def test_custom_rules_batch_on_data_only_place_prompts_outputs_and_cache(params):
    """Rules mapping `batch` to `data` alone: every Rollout field takes exactly
    `parallel.row_sharding(mesh, rules)` (what the trainer uses for its batch), the cache
    rows follow the same axes, and the tokens equal the single-device ones."""
    from jaxrl_llm import parallel

    rules = ((A.BATCH, (A.DATA,)),) + tuple(r for r in A.DEFAULT_RULES if r[0] != A.BATCH)
    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    sp = SamplingParams(T, n=2, temperature=0.9)
    single = generate(params, CONFIG, group_prompts(), jax.random.key(2), sp)
    rollout, cache = generate_with_cache(
        params, CONFIG, group_prompts(), jax.random.key(2), sp, mesh=mesh, rules=rules
    )
    np.testing.assert_array_equal(rollout.tokens, single.tokens)
    rows = parallel.row_sharding(mesh, rules)
    assert rows.spec == jax.sharding.PartitionSpec("data")
    for name, x in vars(rollout).items():
        if x is not None:
            assert x.sharding.is_equivalent_to(rows, x.ndim), name
            assert x.addressable_shards[0].data.shape[0] == x.shape[0] // 2, name
    assert cache["k"].addressable_shards[0].data.shape[1] == cache["k"].shape[1] // 2


class CompileCounter:
    """Counts every backend compilation (any function), via jax.monitoring."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_no_recompile_for_same_bucket_or_new_temperature(params):
    sp = SamplingParams(max_new_tokens=T, temperature=1.0, top_p=1.0)
    first = pad_prompts(PROMPTS, bucket_lengths=(8,))
    generate(params, CONFIG, first, jax.random.key(0), sp)  # may compile
    other = pad_prompts([[3, 4], [5], [6, 7, 8], [9, 9, 9, 9]], bucket_lengths=(8,))
    with CompileCounter() as counter:
        r = generate(
            params, CONFIG, other, jax.random.key(1), sp.replace(temperature=0.3, top_p=0.9)
        )
        r = generate(params, CONFIG, first, jax.random.key(2), sp.replace(min_p=0.1))
        jax.block_until_ready(r)
    assert counter.count == 0
    with CompileCounter() as counter:  # the counter does see compilations
        jax.jit(lambda x: x * 3 + 1)(jnp.ones(3))
    assert counter.count >= 1


def test_prompt_batch_shape_errors(params):
    bad = PromptBatch(tokens=np.zeros((2, 4), np.int32), mask=np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match="prompts.mask"):
        generate(params, CONFIG, bad, jax.random.key(0), SamplingParams(2))
    with pytest.raises(ValueError, match="stop_token_ids"):
        generate(
            params,
            CONFIG,
            pad_prompts([[1]], bucket_lengths=(4,)),
            jax.random.key(0),
            SamplingParams(2, stop_token_ids=(CONFIG.vocab_size,)),
        )


def test_decode_loop_exits_once_every_row_has_stopped(params, prompts):
    """The cache index counts the decode steps that ran: none after all rows stop at token 0."""
    free, free_cache = generate_with_cache(
        params, CONFIG, prompts, jax.random.key(0), SamplingParams(T, greedy=True)
    )
    p = prompts.tokens.shape[1]
    assert int(free_cache["index"]) == p + T - 1  # prefill, then T - 1 fed tokens
    first = tuple(sorted({int(t) for t in np.asarray(free.tokens)[:, 0]}))
    stopped, cache = generate_with_cache(
        params,
        CONFIG,
        prompts,
        jax.random.key(0),
        SamplingParams(T, greedy=True, stop_token_ids=first),
    )
    assert int(cache["index"]) == p
    np.testing.assert_array_equal(np.asarray(stopped.mask)[:, 0], 1)
    np.testing.assert_array_equal(np.asarray(stopped.mask)[:, 1:], 0)
    assert not np.asarray(stopped.truncated).any()


@pytest.mark.parametrize("on_mesh", [False, True])
def test_unstacked_layers_give_the_same_rollout(params, on_mesh):
    """`unstack_layers=True` (per-layer weight copies, unrolled) and `False` (the stacked scan):
    the same tokens and log-probs, also with FSDP/tensor-sharded parameters; the default picks
    the unstacked layout only for few rows."""
    from unittest import mock

    from jaxrl_llm.rollout import sampler as sampler_lib

    sp = SamplingParams(T, n=2, temperature=0.9)
    kwargs, p = {}, params
    if on_mesh:
        mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
        p = jax.device_put(
            params, A.logical_to_sharding(models.logical_axes(CONFIG), mesh, shapes=params)
        )
        kwargs = dict(mesh=mesh, rules=A.DEFAULT_RULES)
    stacked = generate(
        p, CONFIG, group_prompts(), jax.random.key(3), sp, unstack_layers=False, **kwargs
    )
    unstacked = generate(
        p, CONFIG, group_prompts(), jax.random.key(3), sp, unstack_layers=True, **kwargs
    )
    np.testing.assert_array_equal(unstacked.tokens, stacked.tokens)
    np.testing.assert_array_equal(unstacked.mask, stacked.mask)
    np.testing.assert_allclose(unstacked.sampler_logp, stacked.sampler_logp, atol=1e-5)
    # the default counts rows per device: 8 rows → unstacked; 32 rows → 8 per batch shard on
    # the mesh (data 2 × fsdp 2: unstacked), 32 on one device (stacked)
    many = pad_prompts(PROMPTS * 4, bucket_lengths=(8, 16), pad_id=0)
    with mock.patch.object(sampler_lib, "_compiled", wraps=sampler_lib._compiled) as spy:
        generate(p, CONFIG, group_prompts(), jax.random.key(3), sp, **kwargs)
        generate(p, CONFIG, many, jax.random.key(3), SamplingParams(T, n=2), **kwargs)
    assert [c.args[-1] for c in spy.call_args_list] == [True, on_mesh]
