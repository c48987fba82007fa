"""`extend_rows`: prefill, decode, append to live rows, refill and pause, all against a
cache-free teacher-forced forward of each row's whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.rollout import extend_rows, fuse_decode_params, row_lengths

CONFIG = models.ModelConfig.tiny(
    architecture="qwen2", qkv_bias=True, tie_embeddings=True, vocab_size=48
)
MAX_LEN = 32
A = 5  # the append width of the extend call


def _left_aligned(seqs, width):
    tokens = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    return jnp.asarray(tokens), jnp.asarray([len(s) for s in seqs], jnp.int32)


def _teacher_forced(params, seqs):
    """Cache-free forward of each whole sequence (left-padded into one batch): for row i a
    dict {number of tokens fed: logits after them}."""
    width = max(len(s) for s in seqs)
    tokens = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, width - len(s) :], mask[i, width - len(s) :] = s, 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits, _ = models.apply(CONFIG, params, tokens, positions, mask)
    logits = np.asarray(logits)
    return [
        {k: logits[i, width - len(s) + k - 1] for k in range(1, len(s) + 1)}
        for i, s in enumerate(seqs)
    ]


@pytest.fixture(scope="module")
def params():
    p = models.init_params(CONFIG, jax.random.key(0))
    return jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, p)


@pytest.mark.parametrize("form", ["stacked", "fused"])
def test_generate_extend_continue_equals_teacher_forced(params, form):
    """Prefill, 3 greedy decode steps (A), one mixed extend call, 2 more decode steps:
    row 0 appends an observation B (after its pending token), row 1 only decodes, row 2
    pauses (count 0) and resumes later, row 3 is refilled with a new prompt (reset). Every
    logits vector returned equals the teacher-forced one of the row's sequence so far."""
    p = fuse_decode_params(CONFIG, params) if form == "fused" else params
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13], [14, 15]]
    seqs = [list(s) for s in prompts]  # each row's tokens in the cache, in order
    got = [{} for _ in seqs]  # row -> {tokens fed: logits returned}
    cache = models.init_cache(CONFIG, 4, MAX_LEN)

    def call(cache, new, reset=None):
        tokens, counts = _left_aligned(new, A if any(len(s) > 1 for s in new) else 1)
        logits, cache = extend_rows(CONFIG, p, cache, tokens, counts, reset=reset)
        return np.asarray(logits), cache

    # prefill through the same primitive (an empty cache, counts = prompt lengths)
    logits, cache = call(cache, prompts)
    for i in range(4):
        got[i][len(seqs[i])] = logits[i]
    np.testing.assert_array_equal(row_lengths(cache), [3, 5, 1, 2])
    pending = logits.argmax(-1)
    for _ in range(3):  # greedy decode: a step is an extend of one token per row
        logits, cache = call(cache, [[int(t)] for t in pending])
        for i in range(4):
            seqs[i].append(int(pending[i]))
            got[i][len(seqs[i])] = logits[i]
        pending = logits.argmax(-1)

    # the mixed call
    obs = [40, 41, 42, 43]  # row 0: pending token + 4 observation tokens = A
    refill = [30, 31, 32]  # row 3: a new prompt
    new = [[int(pending[0]), *obs], [int(pending[1])], [], refill]
    index_before = int(cache["index"])
    logits, cache = call(cache, new, reset=jnp.asarray([False, False, False, True]))
    assert int(cache["index"]) == index_before + A
    seqs[0] += new[0]
    seqs[1] += new[1]
    paused = int(pending[2])
    seqs[3], got[3] = list(refill), {}  # row 3's earlier tokens are dropped
    np.testing.assert_array_equal(row_lengths(cache), [len(s) for s in seqs])
    np.testing.assert_array_equal(logits[2], 0.0)  # the paused row returns zeros
    for i in (0, 1, 3):
        got[i][len(seqs[i])] = logits[i]
    pending = logits.argmax(-1)
    pending[2] = paused  # the paused row resumes with the token it had drawn
    for _ in range(2):
        logits, cache = call(cache, [[int(t)] for t in pending])
        for i in range(4):
            seqs[i].append(int(pending[i]))
            got[i][len(seqs[i])] = logits[i]
        pending = logits.argmax(-1)

    want = _teacher_forced(params, seqs)
    for i in range(4):
        for k, v in got[i].items():
            np.testing.assert_allclose(
                v, want[i][k], atol=1e-5, rtol=1e-5, err_msg=f"row {i} @ {k}"
            )
    # the next-token logits right after the append (row 0, B) were among those checked
    assert len(seqs[0]) - 2 in got[0] and len(seqs[0]) == 3 + 3 + 5 + 2


def test_extend_checks_shapes(params):
    cache = models.init_cache(CONFIG, 2, MAX_LEN)
    with pytest.raises(ValueError, match="agree on N"):
        extend_rows(CONFIG, params, cache, jnp.zeros((3, 2), jnp.int32), jnp.ones((3,), jnp.int32))
