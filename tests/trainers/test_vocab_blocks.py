"""The default log-prob head (`train.vocab_block = 8192`, `state.blocked_columns`): a large
vocabulary runs in blocks, so no `[N, T, V]` float tensor exists in the traced forward or
backward pass; a small one keeps the plain head, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import models
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers.state import VOCAB_BLOCK, blocked_columns, completion_logprobs

N, P, T = 2, 3, 5


def _rows(vocab):
    rng = np.random.default_rng(0)
    pt = jnp.asarray(rng.integers(1, vocab, (N, P)), jnp.int32)
    return pt, jnp.ones((N, P), jnp.int32), jnp.asarray(rng.integers(1, vocab, (N, T)), jnp.int32)


def _vocab_sized(jaxpr, vocab):
    """Shapes of rank >= 3 ending in `vocab` among every equation's outputs (sub-jaxprs too)."""
    found = []
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            shape = getattr(v.aval, "shape", ())
            if len(shape) >= 3 and shape[-1] == vocab:
                found.append(shape)
        for sub in jax.core.jaxprs_in_params(eqn.params):
            found += _vocab_sized(sub, vocab)
    return found


def test_blocked_columns_rule():
    small, large = (models.ModelConfig.tiny(vocab_size=v) for v in (96, 3 * VOCAB_BLOCK))
    assert VOCAB_BLOCK == config_lib.base_config().train.vocab_block == 8192
    assert blocked_columns(large, None) == blocked_columns(large, 8192) == 8192
    assert blocked_columns(small, None) == 0  # one block would be the whole vocabulary
    assert blocked_columns(large, 0) == 0
    assert blocked_columns(small, 40) == 40


def test_a_large_vocabulary_never_materialises_full_logits_by_default():
    vocab = VOCAB_BLOCK + 808  # two blocks, a ragged second one
    mc = models.ModelConfig.tiny(vocab_size=vocab)
    params = models.init_params(mc, jax.random.key(0))
    pt, pm, tok = _rows(vocab)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(N, T)), jnp.float32)

    def loss(p, **kw):
        lp, ent = completion_logprobs(mc, p, pt, pm, tok, with_entropy=True, **kw)
        return jnp.sum(lp * w) + jnp.sum(ent)

    default = jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr
    plain = jax.make_jaxpr(jax.value_and_grad(lambda p: loss(p, vocab_block=0)))(params).jaxpr
    assert _vocab_sized(default, vocab) == []
    assert (N, T, vocab) in _vocab_sized(plain, vocab)  # the check can see the plain tensor

    (v0, g0), (v1, g1) = (
        jax.value_and_grad(lambda p, kw=kw: loss(p, **kw))(params)
        for kw in ({}, {"vocab_block": 0})
    )
    np.testing.assert_allclose(float(v0), float(v1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_a_small_vocabulary_keeps_the_plain_head_bit_for_bit():
    mc = models.ModelConfig.tiny(vocab_size=96)
    params = models.init_params(mc, jax.random.key(0))
    pt, pm, tok = _rows(96)
    a = completion_logprobs(mc, params, pt, pm, tok, with_entropy=True)
    b = completion_logprobs(mc, params, pt, pm, tok, with_entropy=True, vocab_block=0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
