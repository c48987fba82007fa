"""Ragged KV caches: per-row cache cursors (`index [N]`) and prefix-bucketed attention
(`apply(..., kv_len=k)`), against the shared-cursor path and a cache-free forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.models.transformer import fuse_decode_params, unstack_layers

CONFIG = models.ModelConfig.tiny(vocab_size=64, qkv_bias=True, architecture="qwen2")
MAX_LEN = 24
FORMS = ["stacked", "unstacked", "fused"]


@pytest.fixture(scope="module")
def params():
    p = models.init_params(CONFIG, jax.random.key(0))
    return jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, p)


def _form(params, form):
    if form == "unstacked":
        return unstack_layers(params)
    if form == "fused":
        return fuse_decode_params(CONFIG, params)
    return params


def _prompts():
    tokens = np.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 0, 0, 0, 13]], np.int32)
    mask = (np.arange(5)[None, :] >= np.array([2, 0, 4])[:, None]).astype(np.int32)
    return tokens, mask, np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def _prefill(params):
    tokens, mask, positions = _prompts()
    cache = models.init_cache(CONFIG, 3, MAX_LEN)
    logits, cache = models.apply(CONFIG, params, tokens, positions, mask, cache, last_only=True)
    return logits, cache, mask.sum(axis=1)


def _decode(params, steps, *, vector, kv_len=None):
    """Prefill, then greedy-decode `steps` tokens: (logits of every step [steps, N, V], cache)."""
    logits, cache, plen = _prefill(params)
    if vector:
        cache = dict(cache, index=jnp.full((3,), cache["index"], jnp.int32))
    out = []
    for t in range(steps):
        tok = jnp.argmax(logits[:, -1], axis=-1)[:, None]
        pos = jnp.asarray(plen + t)[:, None]
        logits, cache = models.apply(
            CONFIG, params, tok, pos, jnp.ones_like(tok), cache, kv_len=kv_len
        )
        out.append(np.asarray(logits[:, 0]))
    return np.stack(out), cache


@pytest.mark.parametrize("form", FORMS)
def test_vector_index_all_equal_is_the_scalar_index_exactly(params, form):
    p = _form(params, form)
    scalar, c1 = _decode(p, 4, vector=False)
    vector, c2 = _decode(p, 4, vector=True)
    np.testing.assert_array_equal(vector, scalar)
    np.testing.assert_array_equal(c2["k"], c1["k"])
    np.testing.assert_array_equal(c2["mask"], c1["mask"])
    np.testing.assert_array_equal(c2["index"], [int(c1["index"])] * 3)


@pytest.mark.parametrize("form", FORMS)
def test_kv_len_prefix_equals_full_attention(params, form):
    """5 prompt slots + 4 decode steps fill 9 slots; kv_len=12 reads 12 of the 24."""
    p = _form(params, form)
    full, c_full = _decode(p, 4, vector=False)
    short, c_short = _decode(p, 4, vector=False, kv_len=12)
    np.testing.assert_allclose(short, full, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(c_short["mask"], c_full["mask"])
    np.testing.assert_allclose(c_short["k"], c_full["k"], atol=2e-5)
    # and with per-row cursors
    ragged, _ = _decode(p, 4, vector=True, kv_len=12)
    np.testing.assert_allclose(ragged, full, atol=2e-5, rtol=0)


def test_kv_len_that_cuts_filled_slots_changes_the_result(params):
    """The prefix test above can fail: cutting off filled slots changes the logits."""
    _, cache = _decode(params, 3, vector=False)  # 8 filled slots
    tok = jnp.zeros((3, 1), jnp.int32)
    pos = jnp.full((3, 1), 7, jnp.int32)
    a, _ = models.apply(CONFIG, params, tok, pos, jnp.ones_like(tok), dict(cache), kv_len=9)
    b, _ = models.apply(CONFIG, params, tok, pos, jnp.ones_like(tok), dict(cache), kv_len=4)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def _cache_free_last_logits(params, seqs, width=10):
    """Logits after each sequence's last token, one cache-free left-padded forward [N, V]."""
    tokens = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, width - len(s) :], mask[i, width - len(s) :] = s, 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return np.asarray(models.apply(CONFIG, params, tokens, positions, mask)[0][:, -1])


@pytest.mark.parametrize("form", ["stacked", "fused"])
def test_per_row_cursors_equal_a_cache_free_forward(params, form):
    """Rows sit at different cursors (each row's prompt is right-aligned at its own slot
    range, then two decode steps at per-row slots): every logits vector equals the
    cache-free forward of that row's sequence."""
    p = _form(params, form)
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12, 14], [13]]
    n, width = len(seqs), 6
    # Prefill each row at slots [0, len) with its own cursor (tokens left-aligned, mask 0 past len).
    tokens = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)], mask[i, : len(s)] = s, 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    cache = models.init_cache(CONFIG, n, MAX_LEN)
    cache = dict(cache, index=jnp.zeros((n,), jnp.int32))
    _, cache = models.apply(CONFIG, p, tokens, positions, mask, cache)
    lens = np.array([len(s) for s in seqs])
    cache = dict(cache, index=jnp.asarray(lens, jnp.int32))  # next write right after each row
    for step, extra in enumerate([[20, 21, 22], [23, 24, 25]]):
        tok = np.asarray(extra, np.int32)[:, None]
        pos = (lens + step)[:, None]
        logits, cache = models.apply(CONFIG, p, tok, pos, np.ones_like(tok), cache, kv_len=10)
        for i, s in enumerate(seqs):
            s.append(extra[i])
        ref = _cache_free_last_logits(params, seqs)
        np.testing.assert_allclose(logits[:, 0], ref, atol=5e-5, rtol=0)
    np.testing.assert_array_equal(cache["index"], lens + 2)
    np.testing.assert_array_equal(np.asarray(cache["mask"]).sum(axis=1), lens + 2)


def test_bad_index_and_kv_len_fail_with_a_message(params):
    logits, cache, _ = _prefill(params)
    tok = jnp.zeros((3, 1), jnp.int32)
    with pytest.raises(ValueError, match="cache index has shape"):
        models.apply(CONFIG, params, tok, tok, tok, dict(cache, index=jnp.zeros((2,), jnp.int32)))
    with pytest.raises(ValueError, match="kv_len=30"):
        models.apply(CONFIG, params, tok, tok, tok, cache, kv_len=30)
    with pytest.raises(ValueError, match="kv_len needs a cache"):
        models.apply(CONFIG, params, tok, tok, tok, kv_len=4)
