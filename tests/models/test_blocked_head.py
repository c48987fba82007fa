"""Vocabulary-blocked LM-head log-probs == the plain `log_softmax(h @ W / T)` path, and lean.

Reference: the plain path the trainer runs by default, `token_logprobs(h @ W, targets, T)`
and `token_entropy(h @ W / T)`, differentiated by JAX autodiff. The blocked path must give
the same log-probs, entropies and gradients w.r.t. h and W within float32 rounding, for
vocabularies that are and are not multiples of the block, and compile to a program whose
temporaries scale with the block, not with the vocabulary.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.losses.entropy import token_entropy
from jaxrl_llm.models.blocked_head import blocked_token_logprobs, lm_head_logprobs
from jaxrl_llm.rollout import token_logprobs
from jaxrl_llm.trainers.state import completion_logprobs

TOL = dict(rtol=1e-5, atol=1e-5)
N, S, D = 3, 5, 16


def _inputs(vocab, layout, seed=0, dtype=jnp.float32):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    h = jax.random.normal(k[0], (N, S, D)).astype(dtype)
    w_shape = (D, vocab) if layout == "dv" else (vocab, D)
    w = jax.random.normal(k[1], w_shape).astype(dtype)
    targets = jax.random.randint(k[2], (N, S), 0, vocab)
    # Random cotangents so that every output position and both outputs matter.
    c_lp = jax.random.normal(k[3], (N, S))
    c_ent = jax.random.normal(k[4], (N, S))
    return h, w, targets, c_lp, c_ent


def _plain(h, w, targets, temperature, layout):
    """The reference: full [N, S, V] float32 logits, then the trainer's default formulas."""
    w = w if layout == "dv" else w.T
    logits = jnp.einsum("nsd,dv->nsv", h, w, preferred_element_type=jnp.float32)
    t = jnp.asarray(temperature, jnp.float32)
    t_v = t[..., None] if t.ndim else t
    return token_logprobs(logits, targets, temperature), token_entropy(logits / t_v)


def _value_and_grads(fn, h, w, c_lp, c_ent):
    def loss(h, w):
        lp, ent = fn(h, w)
        return jnp.sum(c_lp * lp + c_ent * ent), (lp, ent)

    (_, (lp, ent)), (dh, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(h, w)
    return lp, ent, dh, dw


def _assert_close(got, want, **tol):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


@pytest.mark.parametrize("layout", ["dv", "vd"])
@pytest.mark.parametrize(
    "vocab, block",
    [(64, 16), (37, 8), (37, 37), (37, 64)],
    ids=["multiple", "ragged-last-block", "one-block", "block>V"],
)
def test_matches_plain_log_softmax(vocab, block, layout):
    h, w, targets, c_lp, c_ent = _inputs(vocab, layout)
    temperature = 0.7
    blocked = functools.partial(
        blocked_token_logprobs,
        targets=targets,
        temperature=temperature,
        vocab_block=block,
        with_entropy=True,
        w_layout=layout,
    )
    got = _value_and_grads(blocked, h, w, c_lp, c_ent)
    want = _value_and_grads(
        lambda h, w: _plain(h, w, targets, temperature, layout), h, w, c_lp, c_ent
    )
    _assert_close(got, want, **TOL)


def test_per_position_temperature_and_targets_in_every_block():
    vocab, block = 37, 8
    h, w, _, c_lp, c_ent = _inputs(vocab, "dv", seed=1)
    # Targets cover the first, a middle, the last (ragged) block and both vocabulary ends.
    targets = jnp.array([[0, 7, 8, 31, 32], [35, 36, 29, 30, 16], [1, 36, 0, 24, 33]])
    temperature = jax.random.uniform(jax.random.PRNGKey(2), (N, S), minval=0.3, maxval=2.0)
    blocked = functools.partial(
        blocked_token_logprobs,
        targets=targets,
        temperature=temperature,
        vocab_block=block,
        with_entropy=True,
    )
    got = _value_and_grads(blocked, h, w, c_lp, c_ent)
    want = _value_and_grads(
        lambda h, w: _plain(h, w, targets, temperature, "dv"), h, w, c_lp, c_ent
    )
    _assert_close(got, want, **TOL)


def test_without_entropy_returns_zeros_and_logprob_gradients():
    h, w, targets, c_lp, _ = _inputs(37, "dv")
    zeros = jnp.zeros((N, S))
    got = _value_and_grads(
        lambda h, w: blocked_token_logprobs(h, w, targets, 1.3, vocab_block=8), h, w, c_lp, zeros
    )
    want = _value_and_grads(lambda h, w: _plain(h, w, targets, 1.3, "dv"), h, w, c_lp, zeros)
    np.testing.assert_array_equal(got[1], np.zeros((N, S)))
    _assert_close((got[0], got[2], got[3]), (want[0], want[2], want[3]), **TOL)


def test_bf16_inputs_accumulate_in_float32():
    """bf16 h and W: f32 log-probs equal the f32 path on the same (bf16-exact) values."""
    h, w, targets, c_lp, c_ent = _inputs(37, "vd", dtype=jnp.bfloat16)
    blocked = functools.partial(
        blocked_token_logprobs, targets=targets, temperature=0.7, vocab_block=8, with_entropy=True
    )
    lp, ent, dh, dw = _value_and_grads(lambda h, w: blocked(h, w, w_layout="vd"), h, w, c_lp, c_ent)
    want = _value_and_grads(
        lambda h, w: _plain(h, w, targets, 0.7, "vd"),
        h.astype(jnp.float32),
        w.astype(jnp.float32),
        c_lp,
        c_ent,
    )
    assert lp.dtype == ent.dtype == jnp.float32
    assert dh.dtype == dw.dtype == jnp.bfloat16  # gradients in the inputs' dtype
    _assert_close((lp, ent), want[:2], **TOL)
    # The gradients are float32 sums rounded once to bf16: within one bf16 ulp (2^-8).
    for g, r in zip((dh, dw), want[2:]):
        np.testing.assert_allclose(np.asarray(g, np.float32), r, rtol=2**-8, atol=1e-6)


def test_vmap_and_jit_agree_with_unbatched_calls():
    """The seeds trainer vmaps the whole update: the custom VJP must batch."""
    h, w, targets, c_lp, c_ent = _inputs(37, "dv")
    hs = jnp.stack([h, 2 * h])

    def loss(h, w):
        lp, ent = blocked_token_logprobs(h, w, targets, 0.7, vocab_block=8, with_entropy=True)
        return jnp.sum(c_lp * lp + c_ent * ent)

    batched = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))(hs, w)
    for i in range(2):
        one = jax.grad(loss, argnums=(0, 1))(hs[i], w)
        _assert_close((batched[0][i], batched[1][i]), one, rtol=1e-6, atol=1e-6)


def test_same_numbers_on_an_8_device_mesh():
    """W sharded along the vocabulary, h along rows: the blocked path gives the 1-device numbers."""
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs the 8 virtual CPU devices of tests/conftest.py")
    mesh = jax.sharding.Mesh(np.array(devices[:8]).reshape(2, 4), ("data", "tensor"))
    named = functools.partial(jax.sharding.NamedSharding, mesh)
    P = jax.sharding.PartitionSpec
    h, w, targets, c_lp, c_ent = _inputs(40, "vd")
    h, targets = jnp.concatenate([h, h[:1]]), jnp.concatenate([targets, targets[:1]])  # N = 4
    c_lp, c_ent = jnp.concatenate([c_lp, c_lp[:1]]), jnp.concatenate([c_ent, c_ent[:1]])

    def loss(h, w, targets):
        lp, ent = blocked_token_logprobs(
            h, w, targets, 0.7, vocab_block=16, with_entropy=True, w_layout="vd"
        )
        return jnp.sum(c_lp * lp + c_ent * ent), (lp, ent)

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    want = jax.jit(step)(h, w, targets)
    sharded = jax.jit(
        step,
        in_shardings=(named(P("data")), named(P("tensor")), named(P("data"))),
    )(
        jax.device_put(h, named(P("data"))),
        jax.device_put(w, named(P("tensor"))),
        jax.device_put(targets, named(P("data"))),
    )
    for g, r in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def _tiny_model(tie):
    cfg = models.ModelConfig.tiny(tie_embeddings=tie, num_layers=1)  # V = 64
    return cfg, models.init_params(cfg, jax.random.PRNGKey(0))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_model_head_matches_lm_head_and_token_logprobs(tie):
    """`lm_head_logprobs` picks the head matrix and layout the way `models.lm_head` does."""
    cfg, params = _tiny_model(tie)
    k = jax.random.split(jax.random.PRNGKey(1), 2)
    hidden = jax.random.normal(k[0], (N, S, cfg.hidden_size))
    tokens = jax.random.randint(k[1], (N, S), 0, cfg.vocab_size)
    lp, ent = lm_head_logprobs(cfg, params, hidden, tokens, 0.8, vocab_block=24, with_entropy=True)
    logits = models.lm_head(cfg, params, hidden)
    want = (token_logprobs(logits, tokens, 0.8), token_entropy(logits / 0.8))
    _assert_close((lp, ent), want, **TOL)


def test_completion_logprobs_vocab_block_matches_default():
    """Vocabulary blocks (ragged: 64 = 2·24 + 16) and sequence chunks compose in the trainer."""
    cfg, params = _tiny_model(tie=True)
    k = jax.random.split(jax.random.PRNGKey(1), 2)
    prompt = jax.random.randint(k[0], (N, 4), 1, cfg.vocab_size)
    prompt_mask = jnp.ones((N, 4), jnp.int32).at[1, :2].set(0)
    tokens = jax.random.randint(k[1], (N, 6), 0, cfg.vocab_size)

    def run(vocab_block, chunk):
        def loss(p):
            lp, ent = completion_logprobs(
                cfg,
                p,
                prompt,
                prompt_mask,
                tokens,
                temperature=0.8,
                chunk=chunk,
                with_entropy=True,
                vocab_block=vocab_block,
            )
            return jnp.sum(lp) + 0.5 * jnp.sum(ent), (lp, ent)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, want), want_g = run(0, 0)
    (_, got), got_g = run(24, 4)
    _assert_close(got, want, **TOL)
    for g, r in zip(jax.tree_util.tree_leaves(got_g), jax.tree_util.tree_leaves(want_g)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_argument_checks():
    h, w, targets, _, _ = _inputs(37, "dv")
    with pytest.raises(ValueError, match="w_layout"):
        blocked_token_logprobs(h, w, targets, vocab_block=8, w_layout="vocab")
    with pytest.raises(ValueError, match="vocab_block"):
        blocked_token_logprobs(h, w, targets, vocab_block=0)
    with pytest.raises(ValueError, match="targets.shape"):
        blocked_token_logprobs(h, w, targets[:, :2], vocab_block=8)
    with pytest.raises(ValueError, match="does not match"):
        blocked_token_logprobs(h, w.T, targets, vocab_block=8)


def test_temporary_memory_scales_with_the_block_not_the_vocabulary():
    """Compiled temporaries of log-probs + entropies and their gradient (w.r.t. h and W).

    N·S = 2048 rows, V = 32768, D = 64, block 2048. Bound on the blocked program:
      4 · N·S·block · 4 B   a few live [N·S, block] float32 arrays per scan step
                            (logits, p, dz; XLA keeps two: 32 MiB measured)
    + 4 · N·S·D · 4 B       h in float32 and the float32 dh accumulator (+ slack)
    + 2 · D·V · 4 B         the dW accumulator carried through the scan (+ slack)
    = 82 MiB, a third of one [N, S, V] float32 tensor (256 MiB). The plain program
    holds at least one such tensor (measured: 3 forward, 7 with the gradient), so
    the test fails if the blocked path ever materialises the full logits.
    """
    n, s, d, v, block = 8, 256, 64, 32768, 2048
    shapes = (
        jax.ShapeDtypeStruct((n, s, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n, s), jnp.int32),
    )

    def blocked(h, w, targets):
        lp, ent = blocked_token_logprobs(h, w, targets, 0.7, vocab_block=block, with_entropy=True)
        return jnp.sum(lp) + jnp.sum(ent)

    def plain(h, w, targets):
        lp, ent = _plain(h, w, targets, 0.7, "dv")
        return jnp.sum(lp) + jnp.sum(ent)

    def temp_bytes(fn):
        stats = jax.jit(fn).lower(*shapes).compile().memory_analysis()
        assert stats is not None, "memory_analysis() returned None on this backend"
        return stats.temp_size_in_bytes

    full = n * s * v * 4
    bound = 4 * n * s * block * 4 + 4 * n * s * d * 4 + 2 * d * v * 4
    assert bound < full
    for fn in (blocked, jax.grad(blocked, argnums=(0, 1))):
        assert temp_bytes(fn) < bound
    for fn in (plain, jax.grad(plain, argnums=(0, 1))):
        assert temp_bytes(fn) > full
