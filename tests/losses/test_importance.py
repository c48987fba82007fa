"""Importance weights: exact probability ratios per token and per sequence, numpy and jax."""

import numpy as np
import pytest

from jaxrl_llm.losses.importance import importance_weights


def _softmax_logp(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_importance_weights_are_exact_probability_ratios():
    rng = np.random.default_rng(0)
    N, T, V = 3, 5, 7
    cur_logits, beh_logits = rng.normal(size=(N, T, V)), rng.normal(size=(N, T, V))
    tokens = rng.integers(0, V, size=(N, T))
    mask = np.ones((N, T), np.float32)
    mask[1, 3:] = 0
    take = lambda lp: np.take_along_axis(lp, tokens[..., None], -1)[..., 0]  # noqa: E731
    cur, beh = take(_softmax_logp(cur_logits)), take(_softmax_logp(beh_logits))
    # reference: probabilities (not log-probs), product over valid tokens
    p_cur = np.exp(cur_logits) / np.exp(cur_logits).sum(-1, keepdims=True)
    p_beh = np.exp(beh_logits) / np.exp(beh_logits).sum(-1, keepdims=True)
    pc, pb = take(p_cur), take(p_beh)
    want_tok = np.where(mask > 0, pc / pb, 0.0)
    want_seq = np.prod(np.where(mask > 0, pc / pb, 1.0), axis=1)
    np.testing.assert_allclose(importance_weights(cur, beh, mask), want_tok, rtol=1e-12)
    np.testing.assert_allclose(
        importance_weights(cur, beh, mask, level="sequence"), want_seq, rtol=1e-12
    )
    np.testing.assert_allclose(
        importance_weights(cur, beh, mask, level="sequence", clip=1.0),
        np.minimum(want_seq, 1.0),
        rtol=1e-12,
    )
    np.testing.assert_array_equal(importance_weights(beh, beh, mask), mask)  # on-policy: w = 1
    import jax.numpy as jnp

    np.testing.assert_allclose(
        importance_weights(
            jnp.asarray(cur, jnp.float32), jnp.asarray(beh, jnp.float32), jnp.asarray(mask)
        ),
        want_tok,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="shape"):
        importance_weights(cur, beh[:, :2], mask)
