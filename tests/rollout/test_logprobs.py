"""token_logprobs: hand-computed values, temperature, shapes."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.rollout import token_logprobs


def test_hand_computed_values():
    # softmax(log [1, 2, 3]) = [1/6, 2/6, 3/6]
    logits = jnp.log(jnp.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    got = token_logprobs(logits, jnp.array([2, 1]), 1.0)
    np.testing.assert_allclose(got, np.log([0.5, 2 / 6]), rtol=1e-6)


def test_temperature_scales_logits_first():
    # logits / 2 = log sqrt([1, 2, 3]) -> p = sqrt(3) / (1 + sqrt(2) + sqrt(3))
    logits = jnp.log(jnp.array([[1.0, 2.0, 3.0]]))
    got = token_logprobs(logits, jnp.array([2]), 2.0)
    want = np.log(np.sqrt(3) / (1 + np.sqrt(2) + np.sqrt(3)))
    np.testing.assert_allclose(got, [want], rtol=1e-6)


def test_per_position_temperature_and_leading_dims():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 3))
    temps = np.array([[0.5, 1.0, 2.0], [1.5, 0.7, 1.0]], np.float32)
    z = logits / temps[..., None]
    ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = np.take_along_axis(ref, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        token_logprobs(jnp.asarray(logits), jnp.asarray(targets), temps), want, rtol=1e-5, atol=1e-6
    )


def test_bfloat16_logits_are_computed_in_float32():
    logits = jnp.array([[0.0, 100.0, 100.0]], jnp.bfloat16)
    got = token_logprobs(logits, jnp.array([1]), 1.0)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, [np.log(0.5)], atol=1e-5)


def test_shape_errors_name_the_arguments():
    with pytest.raises(ValueError, match="targets.shape"):
        token_logprobs(jnp.zeros((2, 5)), jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), jnp.ones((3,)))
