"""Paged decode-attention layouts (`rollout/paged_attention.py`): exact round trips, each
kernel runnable on a CPU (TPU / GPU Pallas in interpret mode, the ragged kernel's shipped
reference) equal to the XLA path, and negative controls that a wrong layout fails."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.gpu import paged_attention as gpu_paged
from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa

from jaxrl_llm.rollout import paged_attention as pa

N, MAX_LEN, HEADS, KV_HEADS, D, PAGE = 3, 32, 4, 2, 16, 8
LENGTHS = (1, 5, 16)
TOL = 1e-5  # float32; observed max errors are ~1e-7


@pytest.fixture(scope="module")
def cache():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((N, HEADS, D)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((N, MAX_LEN, KV_HEADS, D)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((N, MAX_LEN, KV_HEADS, D)), jnp.float32)
    perm = rng.permutation(N * MAX_LEN // PAGE)  # rows' pages scattered over the pool
    return q, k, v, jnp.array(LENGTHS, jnp.int32), perm


def _numpy_reference(q, k, v, lengths):
    """Frozen readable reference: row n, head h reads KV head h // groups over [0, length)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    out = np.zeros_like(q)
    groups = q.shape[1] // k.shape[2]
    for n, length in enumerate(np.asarray(lengths)):
        for h in range(q.shape[1]):
            s = k[n, :length, h // groups] @ q[n, h] / np.sqrt(q.shape[2])
            p = np.exp(s - s.max())
            out[n, h] = (p / p.sum()) @ v[n, :length, h // groups]
    return out


def test_xla_equals_numpy_reference(cache):
    q, k, v, lengths, _ = cache
    out = pa.decode_attention(q, k, v, lengths, impl="xla")
    np.testing.assert_allclose(out, _numpy_reference(q, k, v, lengths), atol=1e-5)


def test_round_trips_exact(cache):
    _, k, v, lengths, perm = cache
    for p in (None, perm):
        pages = pa.to_pages(k, v, lengths, PAGE, perm=p)
        assert pages.k_pages.shape == (KV_HEADS, N * MAX_LEN // PAGE, PAGE, D)
        for got, want in zip(pa.from_pages(pages, MAX_LEN), (k, v)):
            np.testing.assert_array_equal(got, want)
        ragged = pa.to_ragged_pages(k, v, lengths, PAGE, perm=p)
        assert ragged.kv_pages.shape == (N * MAX_LEN // PAGE, PAGE, 2 * KV_HEADS, D)
        for got, want in zip(pa.from_ragged_pages(ragged, MAX_LEN), (k, v)):
            np.testing.assert_array_equal(got, want)
    # the documented placement: slot s of row n in page perm[n * pps + s // PAGE], K/V interleaved
    ragged = pa.to_ragged_pages(k, v, lengths, PAGE, perm=perm)
    n, s, h = 2, 13, 1
    page = perm[n * (MAX_LEN // PAGE) + s // PAGE]
    np.testing.assert_array_equal(ragged.kv_pages[page, s % PAGE, 2 * h], k[n, s, h])
    np.testing.assert_array_equal(ragged.kv_pages[page, s % PAGE, 2 * h + 1], v[n, s, h])
    np.testing.assert_array_equal(ragged.cu_q_lens, np.arange(N + 1))


def test_compact_left_padded_rows():
    """The sampler's layout (left-padded prompt, then generated slots, a hole) compacted to
    valid-from-slot-0 gives the attention of the masked original."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((N, HEADS, D)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((N, 16, KV_HEADS, D)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((N, 16, KV_HEADS, D)), jnp.float32)
    mask = np.zeros((N, 16), np.int32)
    mask[0, 7:9] = 1  # prompt of 1 left-padded to P = 8, one generated token
    mask[1, 4:12] = 1
    mask[2, [0, 1, 2, 5, 6, 8, 9, 10]] = 1  # holes
    kc, vc, lengths = pa.compact(k, v, jnp.asarray(mask))
    np.testing.assert_array_equal(lengths, mask.sum(1))
    for n in range(N):
        np.testing.assert_array_equal(kc[n, : lengths[n]], k[n, mask[n] > 0])
    out = pa.decode_attention(q, kc, vc, lengths, impl="xla")
    want = np.stack(
        [
            _numpy_reference(
                q[n : n + 1],
                k[n : n + 1, mask[n] > 0],
                v[n : n + 1, mask[n] > 0],
                [int(mask[n].sum())],
            )[0]
            for n in range(N)
        ]
    )
    np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("impl", ["ragged_ref", "paged", "gpu", "gpu_decode"])
def test_kernel_equals_xla(cache, impl):
    q, k, v, lengths, perm = cache
    if impl == "paged":  # the TPU paged kernel casts K / V pages to bfloat16 when it loads them
        k, v = (x.astype(jnp.bfloat16).astype(jnp.float32) for x in (k, v))
    want = pa.decode_attention(q, k, v, lengths, impl="xla")
    got = pa.decode_attention(q, *cache[1:3], lengths, impl=impl, page_size=PAGE, perm=perm)
    assert got.shape == (N, HEADS, D)
    err = np.abs(np.asarray(got) - np.asarray(want)).max(axis=(1, 2))
    assert (err < TOL).all(), f"{impl}: max error per row {err}"


def test_kernel_equals_xla_bf16_qwen_groups():
    """Qwen2.5-0.5B's head ratio (14 query heads over 2 KV heads) in bfloat16 through the GPU
    paged kernel: within bf16 rounding (2e-2) of the XLA path in bf16."""
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((2, 14, D)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((2, 32, 2, D)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((2, 32, 2, D)), jnp.bfloat16)
    lengths = jnp.array([3, 32], jnp.int32)
    want = pa.decode_attention(q, k, v, lengths).astype(jnp.float32)
    got = pa.decode_attention(q, k, v, lengths, impl="gpu", page_size=PAGE).astype(jnp.float32)
    assert float(jnp.abs(got - want).max()) < 2e-2


def test_negative_controls(cache):
    """Wrong page indices (rows 1 and 2 swapped) or ignored lengths fail the comparison."""
    q, k, v, lengths, perm = cache
    want = np.asarray(pa.decode_attention(q, k, v, lengths, impl="xla"))
    ragged = pa.to_ragged_pages(k, v, lengths, PAGE, perm=perm)
    swapped = ragged.page_indices[jnp.array([0, 2, 1])]
    scale = D**-0.5
    bad = rpa.ref_ragged_paged_attention(
        q,
        ragged.kv_pages,
        ragged.kv_lens,
        swapped,
        ragged.cu_q_lens,
        ragged.num_seqs,
        sm_scale=scale,
    )
    assert np.abs(np.asarray(bad)[1:] - want[1:]).max() > 0.1
    pages = pa.to_pages(k, v, lengths, PAGE, perm=perm)
    pps = pages.page_indices.shape[1]
    bad = gpu_paged.paged_attention(
        q * scale,
        pages.k_pages,
        pages.v_pages,
        pages.page_indices[jnp.array([0, 2, 1])],
        pages.lengths,
        pages_per_compute_block=1,
        k_splits=pps,
        interpret=True,
    )
    assert np.abs(np.asarray(bad)[1:] - want[1:]).max() > 0.1
    full = jnp.full_like(lengths, MAX_LEN)
    bad = pa.decode_attention(q, k, v, full, impl="paged", page_size=PAGE, perm=perm)
    assert np.abs(np.asarray(bad) - want).max() > 0.1


def test_ragged_kernel_refused_off_tpu(cache):
    q, k, v, lengths, _ = cache
    if jax.default_backend() == "tpu":
        pytest.skip("runs on a TPU")
    with pytest.raises(ValueError, match="needs a TPU"):
        pa.decode_attention(q, k, v, lengths, impl="ragged")
