"""The Triton decode kernel behind `ModelConfig.decode_attention = "pallas_gpu"`
(`attention_kernels.decode_attention`), run in interpret mode on this CPU: the kernel against a
numpy reference, the blocks it does not read, and every sampler that decodes through it (static,
bucketed, vmapped seeds, continuous, partial rounds, an 8-device mesh) against the XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm import rollout as R
from jaxrl_llm.models import attention_kernels as ak

P, T = 8, 40


def _reference(q, k, v, start, end):
    """Softmax attention of q [N, 1, H, d] over slots [start, end) of k, v [N, K, KV, d]."""
    n, _, nh, d = q.shape
    nkv = k.shape[2]
    slots = np.arange(k.shape[1])
    valid = (slots[None] >= start[:, None]) & (slots[None] < end[:, None])
    qg = q[:, 0].reshape(n, nkv, nh // nkv, d).astype(np.float64)
    scores = np.einsum("bhgd,bkhd->bhgk", qg, k.astype(np.float64)) * d**-0.5
    scores = np.where(valid[:, None, None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhgk,bkhd->bhgd", p, v.astype(np.float64)).reshape(n, 1, nh, d)


@pytest.mark.parametrize(
    "heads, kv_heads, kv_len",
    [(4, 2, 48), (14, 2, 40), (40, 2, 256), (8, 8, 16)],
    ids=["gqa2-pad", "gqa7-pad", "gqa20-2blocks", "mha-1block"],
)
def test_kernel_equals_reference(heads, kv_heads, kv_len):
    """Query groups of 2, 7 and 20 heads (20 > the 16-head block: two head blocks), one head
    per KV head, cache lengths that are and are not multiples of 16 (padded), spans of every
    length from 1 slot to all of them."""
    rng = np.random.default_rng(heads + kv_len)
    n, d = 6, 16
    q = rng.normal(size=(n, 1, heads, d)).astype(np.float32)
    k = rng.normal(size=(n, kv_len, kv_heads, d)).astype(np.float32)
    v = rng.normal(size=(n, kv_len, kv_heads, d)).astype(np.float32)
    start = np.array([0, 0, 3, kv_len // 2, kv_len - 1, 5], np.int32)
    end = np.array([1, kv_len, 17, kv_len, kv_len, kv_len // 2 + 3], np.int32)
    layout = ak.DecodeLayout(jnp.asarray(start), jnp.asarray(end), kv_len=kv_len, interpret=True)
    got = ak.decode_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), layout)
    assert got.shape == q.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), _reference(q, k, v, start, end), atol=2e-6)


def test_tiling():
    """Up to 16 splits of >= 16 slots, key blocks a power of two <= 128 dividing a split."""
    assert ak._decode_tiling(16) == (1, 16)
    assert ak._decode_tiling(48) == (1, 16)  # 48 / 2 = 24 is no multiple of 16
    assert ak._decode_tiling(256) == (16, 16)
    assert ak._decode_tiling(4096) == (16, 128)
    assert ak._decode_tiling(288) == (2, 16)


def test_blocks_past_the_span_are_not_read():
    """NaN in every key block after a row's span (and in the padded KV of finished work)
    leaves the kernel's output finite and equal to the reference; the XLA-style masked
    softmax over all slots turns it into NaN (0 * NaN), so the kernel really skips them."""
    rng = np.random.default_rng(0)
    n, nh, nkv, d, kv_len = 2, 4, 2, 16, 256  # 16 splits of 16 slots
    q = rng.normal(size=(n, 1, nh, d)).astype(np.float32)
    k = rng.normal(size=(n, kv_len, nkv, d)).astype(np.float32)
    v = rng.normal(size=(n, kv_len, nkv, d)).astype(np.float32)
    start, end = np.array([0, 4], np.int32), np.array([32, 100], np.int32)
    poisoned_k, poisoned_v = k.copy(), v.copy()
    for r, e in enumerate(end):
        first_unread = -(-e // 16) * 16
        poisoned_k[r, first_unread:] = np.nan
        poisoned_v[r, first_unread:] = np.nan
    layout = ak.DecodeLayout(jnp.asarray(start), jnp.asarray(end), kv_len=kv_len, interpret=True)
    got = np.asarray(ak.decode_attention(*map(jnp.asarray, (q, poisoned_k, poisoned_v)), layout))
    np.testing.assert_allclose(got, _reference(q, k, v, start, end), atol=2e-6)
    from jaxrl_llm.rollout import paged_attention as pa

    masked = pa.decode_attention(
        jnp.asarray(q[:, 0]), *map(jnp.asarray, (poisoned_k, poisoned_v)), jnp.asarray(end)
    )
    assert np.isnan(np.asarray(masked)).any()


@pytest.fixture(scope="module")
def setup():
    mc = models.ModelConfig.tiny(vocab_size=64)
    params = jax.tree.map(lambda x: x * 2.0, models.init_params(mc, jax.random.key(0)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, (3, P)).astype(np.int32)
    mask = np.ones_like(tokens)
    tokens[0, :3], mask[0, :3] = 0, 0  # a left-padded prompt
    tokens[2, :], mask[2, :] = 0, 0  # an empty prompt (batch padding)
    kernel = mc.replace(decode_attention="pallas_gpu", attention_interpret=True)
    return mc, kernel, params, R.PromptBatch(tokens=tokens, mask=mask)


def _same(got, want):
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(want.mask))
    np.testing.assert_allclose(
        np.asarray(got.sampler_logp), np.asarray(want.sampler_logp), atol=2e-6
    )


@pytest.mark.parametrize("greedy", [True, False])
def test_generate_through_the_kernel_equals_xla(setup, greedy):
    """`generate`: the same tokens and log-probs within 2e-6 (greedy; sampled with top-p, a
    stop id, rows of different lengths), with and without prefix buckets."""
    mc, kernel, params, prompts = setup
    sp = R.SamplingParams(
        n=2, max_new_tokens=T, greedy=greedy, top_p=0.95, stop_token_ids=(5,), temperature=0.9
    )
    want = R.generate(params, mc, prompts, jax.random.key(1), sp)
    _same(R.generate(params, kernel, prompts, jax.random.key(1), sp), want)
    _same(R.generate(params, kernel, prompts, jax.random.key(1), sp, kv_buckets=3), want)
    if not greedy:
        lengths = np.asarray(want.mask).sum(1)
        assert lengths.max() == T and 0 < lengths[lengths > 0].min() < T


def test_the_kernel_is_in_the_program(setup):
    """The traced program holds the kernel (a `pallas_call` named `decode_attention`), the
    XLA path's does not: the option is not silently ignored."""
    from jaxrl_llm.rollout import sampler as sampler_lib

    mc, kernel, params, prompts = setup
    sp = R.SamplingParams(n=1, max_new_tokens=4)

    def text(config):
        fn = sampler_lib._compiled(config, sp.static_key(), 3, P, None, (), True)
        cache = sampler_lib.init_sampler_cache(config, 3, P + 4)
        floats = np.asarray([1.0, 1.0, 0.0], np.float32)
        args = (params, prompts.tokens, prompts.mask, jax.random.key(0), floats, cache)
        return str(jax.make_jaxpr(fn)(*args))

    assert "pallas_call" in text(kernel) and "decode_attention" in text(kernel)
    assert "pallas_call" not in text(mc)


def test_seeds_continuous_and_partial_through_the_kernel(setup):
    """`generate_seeds` (2 seeds), `generate_continuous` (2 slots refilled, per-row cursors)
    and two `continue_rows` rounds of 16 tokens (a re-prefilled, right-aligned prefix): each
    equals its XLA run."""
    from jaxrl_llm.rollout.partial import continue_rows, start_rows

    mc, kernel, params, prompts = setup
    sp = R.SamplingParams(n=2, max_new_tokens=T, stop_token_ids=(5,))
    stacked = jax.tree.map(lambda x: np.stack([x, 0.9 * x]), params)
    two = R.PromptBatch(tokens=np.stack([prompts.tokens] * 2), mask=np.stack([prompts.mask] * 2))
    keys = jax.random.split(jax.random.key(3), 2)
    _same(
        R.generate_seeds(stacked, kernel, two, keys, sp),
        R.generate_seeds(stacked, mc, two, keys, sp),
    )
    cont = [
        R.generate_continuous(params, c, prompts, jax.random.key(5), sp, slots=2)
        for c in (mc, kernel)
    ]
    _same(cont[1], cont[0])
    rounds = []
    for c in (mc, kernel):
        rows = start_rows(prompts, jax.random.key(4), 2, T)
        for _ in range(2):
            rows = continue_rows(params, c, rows, sp, 16)
        rounds.append(rows)
    assert rounds[0].length.max() > 16  # the second round decoded after a re-prefill
    np.testing.assert_array_equal(rounds[1].tokens, rounds[0].tokens)
    np.testing.assert_allclose(rounds[1].logp, rounds[0].logp, atol=2e-6)


def test_on_a_mesh(setup):
    """8 devices, params over data x fsdp x tensor, rows over the batch axes: the kernel runs
    on each device's rows (shard_map) and equals the XLA path."""
    from jaxrl_llm.parallel import axes as A
    from jaxrl_llm.parallel.mesh import make_mesh

    mc, kernel, params, prompts = setup
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = jax.device_put(
        params, A.logical_to_sharding(models.logical_axes(mc), mesh, shapes=params)
    )
    sp = R.SamplingParams(n=8, max_new_tokens=T, stop_token_ids=(5,))
    kw = dict(mesh=mesh, rules=A.DEFAULT_RULES)
    _same(
        R.generate(params, kernel, prompts, jax.random.key(2), sp, **kw),
        R.generate(params, mc, prompts, jax.random.key(2), sp, **kw),
    )


def test_rows_and_heads_stay_split_on_a_mesh():
    """Under a data x fsdp x tensor mesh and the default rules, the kernel runs on each
    device's rows and KV heads (shard_map over (data, fsdp) and tensor: a tensor-parallel
    cache is never gathered) and equals the reference; 2 KV heads over tensor = 2."""
    import flax.linen as nn

    from jaxrl_llm.parallel import axes as A
    from jaxrl_llm.parallel.mesh import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rng = np.random.default_rng(1)
    n, nh, nkv, d, kv_len = 8, 4, 2, 16, 32
    q = rng.normal(size=(n, 1, nh, d)).astype(np.float32)
    k = rng.normal(size=(n, kv_len, nkv, d)).astype(np.float32)
    v = rng.normal(size=(n, kv_len, nkv, d)).astype(np.float32)
    start = rng.integers(0, 8, n).astype(np.int32)
    end = rng.integers(9, kv_len + 1, n).astype(np.int32)

    def attend(q, k, v, start, end):
        layout = ak.DecodeLayout(start, end, kv_len=kv_len, interpret=True)
        return ak.decode_attention(q, k, v, layout)

    args = tuple(map(jnp.asarray, (q, k, v, start, end)))
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(A.DEFAULT_RULES):
        jaxpr = str(jax.make_jaxpr(attend)(*args))
        got = jax.jit(attend)(*args)
    assert "shard_map" in jaxpr
    assert "P(('data', 'fsdp'), None, 'tensor', None)" in jaxpr.replace("\n", "")
    np.testing.assert_allclose(np.asarray(got), _reference(q, k, v, start, end), atol=2e-6)


def test_refusals(setup):
    """A prompt mask with a hole, a kernel this CPU cannot run without interpret mode, a bad
    name, a bad `kv_start`, and episodes asking for the kernel: one-line errors."""
    from jaxrl_llm.trainers import config as config_lib
    from tests.trainers.conftest import small_config

    mc, kernel, params, prompts = setup
    sp = R.SamplingParams(n=1, max_new_tokens=4)
    holed = np.ones((2, P), np.int32)
    holed[1, 3] = 0
    with pytest.raises(ValueError, match=r"prompt mask rows \[1\] are not left-padded"):
        R.generate(params, kernel, R.PromptBatch(prompts.tokens[:2], holed), jax.random.key(0), sp)
    with pytest.raises(ValueError, match="decode_attention = .pallas_gpu. needs a GPU backend"):
        R.generate(
            params, kernel.replace(attention_interpret=False), prompts, jax.random.key(0), sp
        )
    with pytest.raises(ValueError, match="decode_attention='flash'; allowed"):
        mc.replace(decode_attention="flash")
    cache = models.init_cache(mc, 3, 16)
    one = jnp.ones((3, 1), jnp.int32)
    with pytest.raises(ValueError, match=r"kv_start must be int \[N\] = \[3\]"):
        models.apply(mc, params, one, one, one, cache, kv_start=jnp.zeros((2,), jnp.int32))
    # on a CPU the trainer refuses the GPU kernel before compiling
    c = small_config(**{"model.decode_attention": "pallas_gpu"})
    with pytest.raises(config_lib.ConfigError, match="decode_attention = 'pallas_gpu' cannot run"):
        config_lib.validate(c, num_devices=1)
    c = small_config(**{"model.decode_attention": "pallas_gpu", "env.name": "calculator"})
    with pytest.raises(config_lib.ConfigError, match="does not combine with model.decode_att"):
        config_lib.validate(c)
    c = small_config(**{"rollout.row_keys": True, "env.name": "calculator"})
    with pytest.raises(config_lib.ConfigError, match="does not combine with rollout.row_keys"):
        config_lib.validate(c)
    config_lib.validate(small_config(**{"model.decode_attention": "auto"}), num_devices=1)


def test_the_kernel_lowers_to_triton_for_cuda():
    """Lowered for CUDA from this CPU (`jax.export`, no GPU needed): the kernel becomes one
    Triton custom call named `decode_attention` over the cache as it is (`[N, splits, slots,
    kv_heads, d]`, no transposed copy), with the Qwen2.5-0.5B decode shape in bf16. Without
    Triton's compiler parameters the GPU lowering would be Mosaic GPU, which rejects this
    kernel: this test is what caught that."""
    from jax import export

    n, nh, nkv, d, kv_len = 4, 14, 2, 64, 256
    bf16, i32 = jnp.bfloat16, jnp.int32
    args = (
        jax.ShapeDtypeStruct((n, 1, nh, d), bf16),
        jax.ShapeDtypeStruct((n, kv_len, nkv, d), bf16),
        jax.ShapeDtypeStruct((n, kv_len, nkv, d), bf16),
        jax.ShapeDtypeStruct((n,), i32),
        jax.ShapeDtypeStruct((n,), i32),
    )

    def step(q, k, v, start, end):
        return ak.decode_attention(q, k, v, ak.DecodeLayout(start, end, kv_len=kv_len))

    target = "__gpu$xla.gpu.triton"
    exported = export.export(
        jax.jit(step),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(target)],
    )(*args)
    text = exported.mlir_module()
    assert text.count(f"stablehlo.custom_call @{target}") == 1
    assert 'name = "decode_attention"' in text
    assert "tensor<4x16x16x2x64xbf16>" in text  # k read in place, 16 splits of 16 slots
    assert "stablehlo.transpose" not in text
    assert exported.out_avals[0].shape == (n, 1, nh, d)
