"""Selective remat (`ModelConfig.remat_policy`): every policy gives the gradients of the plain
backward pass, and each keeps what it names: the residuals the layer scan saves for the
backward pass (`jax.ad_checkpoint.print_saved_residuals`) are, beyond full remat's, q / k / v
and the attention context for `qkv_attn`, the block outputs for `block_outputs`, and more for
`dots` (a policy whose names matched nothing would save what full remat saves)."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import models
from jaxrl_llm.models.config import REMAT_POLICY_NAMES
from jaxrl_llm.models.transformer import REMAT_POLICIES

BASE = models.ModelConfig.tiny(
    vocab_size=128,
    hidden_size=128,
    intermediate_size=512,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    qkv_bias=True,
    architecture="qwen2",
)
ROWS, LENGTH = 4, 64


def _loss(config):
    def loss(params, tokens):
        mask = jnp.ones_like(tokens)
        positions = jnp.cumsum(mask, axis=1) - 1
        logits, _ = models.apply(config, params, tokens, positions, mask)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])

    return jax.jit(jax.grad(loss))


@pytest.fixture(scope="module")
def inputs():
    params = models.init_params(BASE, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (ROWS, LENGTH), 0, BASE.vocab_size)
    return params, tokens


def _scan_residuals(config, params, tokens, capsys):
    """Shapes of the saved residuals stacked over layers (the scan's), counted."""

    def loss(p):
        mask = jnp.ones_like(tokens)
        logits, _ = models.apply(config, p, tokens, jnp.cumsum(mask, axis=1) - 1, mask)
        return jnp.mean(logits)

    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(loss, params)
    lines = capsys.readouterr().out.splitlines()
    return collections.Counter(
        m.group(1)
        for m in (re.match(rf"f32\[({config.num_layers},[\d,]+)\] output of", x) for x in lines)
        if m
    )


def test_the_policy_table_covers_the_config_names():
    assert set(REMAT_POLICIES) == set(REMAT_POLICY_NAMES)
    with pytest.raises(ValueError, match="remat_policy='some'"):
        BASE.replace(remat=True, remat_policy="some")


@pytest.mark.parametrize("policy", REMAT_POLICY_NAMES)
def test_every_policy_gives_the_plain_gradients(inputs, policy):
    params, tokens = inputs
    want = _loss(BASE)(params, tokens)
    got = _loss(BASE.replace(remat=True, remat_policy=policy))(params, tokens)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_policies_keep_what_they_name(inputs, capsys):
    params, tokens = inputs
    saved = {
        p: _scan_residuals(BASE.replace(remat=True, remat_policy=p), params, tokens, capsys)
        for p in REMAT_POLICY_NAMES
    }
    layers, q, kv = f"{BASE.num_layers},{ROWS},{LENGTH}", "4,32", "2,32"
    extra = {p: saved[p] - saved["full"] for p in REMAT_POLICY_NAMES}
    assert not extra["full"] and not saved["full"] - saved["qkv_attn"]
    assert extra["qkv_attn"] == collections.Counter({f"{layers},{q}": 2, f"{layers},{kv}": 2})
    assert extra["block_outputs"] and set(extra["block_outputs"]) == {f"{layers},128"}
    assert sum(extra["dots"].values()) > sum(extra["qkv_attn"].values())
