"""The update's gradient pass on packed rows (`train.micro_tokens`, `packing.MicroPacks`):
token-budget micro-batches give the update of the padded rows (losses, metrics, gradients of
the policy and the critic, LoRA adapters) for every registered policy loss; placement and its
errors; one compiled program whatever the lengths."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_llm import models
from jaxrl_llm.losses import registry
from jaxrl_llm.trainers import config as config_lib
from jaxrl_llm.trainers import packing, rl_step
from jaxrl_llm.trainers.state import TrainState, completion_logprobs, completion_values

N, P, T = 8, 5, 6
BUDGET, PACKS = 12, 2  # 24-token micro-batches of two 12-token packs


@pytest.fixture(scope="module")
def setup():
    mc = models.ModelConfig.tiny(vocab_size=32)
    # scaled: distinct next-token entropies, so the forking-token selection has no near-ties
    params = jax.tree.map(lambda x: x * 3.0, models.init_params(mc, jax.random.key(0)))
    rng = np.random.default_rng(0)
    pt = rng.integers(3, 32, (N, P)).astype(np.int32)
    pm = np.ones((N, P), np.int32)
    pm[:4, :2] = 0  # left padding on half the rows
    toks = rng.integers(3, 32, (N, T)).astype(np.int32)
    lengths = np.array([6, 1, 2, 6, 3, 5, 1, 4])
    token_mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    mask = token_mask.copy()
    mask[5] = 0.0  # a row left out of the loss (weight 0), still a sampled row
    mask[2, 0] = 0.0  # a masked token inside a row (an observation in a multi-turn row)
    adv = rng.normal(size=(N, 1)).astype(np.float32) * token_mask
    old = np.asarray(completion_logprobs(mc, params, pt, pm, toks)[0]) + rng.normal(
        scale=0.05, size=(N, T)
    ).astype(np.float32)
    values = rng.normal(size=(N, T)).astype(np.float32)
    batch = rl_step.TrainBatch(
        prompt_tokens=jnp.asarray(pt),
        prompt_mask=jnp.asarray(pm),
        tokens=jnp.asarray(toks),
        mask=jnp.asarray(mask),
        old_logp=jnp.asarray(old),
        advantages=jnp.asarray(adv),
        ref_logp=jnp.asarray(old) - 0.1,
        old_values=jnp.asarray(values),
        returns=jnp.asarray(values + adv),
        token_mask=jnp.asarray(token_mask),
    )
    return mc, params, batch


def _packed(batch, budget=BUDGET, packs_per_micro=PACKS):
    plan = packing.plan_micro_batches(
        batch.prompt_mask, batch.token_mask, budget=budget, packs_per_micro=packs_per_micro
    )
    packs = packing.pack_micro_batches(batch.prompt_tokens, batch.prompt_mask, batch.tokens, plan)
    return batch.replace(packs=jax.tree.map(jnp.asarray, packs)), plan


def _settings(policy_loss="ppo_clip", agg="token-mean", kl=0.05, entropy=0.01, **kw):
    c = config_lib.base_config()
    c.unlock()
    c.algo.aggregation = agg
    c.algo.policy_loss = policy_loss
    c.algo.kl.coef = kl
    c.algo.entropy_coef = entropy
    c.rollout.max_new_tokens = T
    return dataclasses.replace(rl_step.LossSettings.from_config(c), **kw)


def _step(mc, params, batch, s, num_micro=1, critic=None, base=None, jitted=None):
    opt = optax.sgd(1.0)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        kl_coef=jnp.asarray(0.05, jnp.float32),
        critic_params=critic,
        critic_opt_state=None if critic is None else opt.init(critic),
    )
    fn = jitted or jax.jit(
        functools.partial(
            rl_step.train_step,
            model_config=mc,
            s=s,
            num_micro=num_micro,
            optimizer=opt,
            critic_optimizer=opt,
            policy_warmup=0,
        )
    )
    new, metrics = fn(state, batch, base)
    delta = lambda a, b: jax.tree.map(lambda x, y: x - y, a, b)  # noqa: E731  sgd(1): −grad
    cgrads = None if critic is None else delta(critic, new.critic_params)
    return delta(params, new.params), cgrads, metrics


def _assert_same_update(a, b, *, atol=5e-6):
    (ga, ca, ma), (gb, cb, mb) = a, b
    for x, y in zip(jax.tree.leaves((ga, ca)), jax.tree.leaves((gb, cb))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)
    assert set(ma) - set(mb) <= {"packed/micro_batches", "packed/fill"}
    for k in mb:
        np.testing.assert_allclose(ma[k], mb[k], rtol=2e-4, atol=2e-6, err_msg=k)


def test_plan_is_first_fit_decreasing_grouped_into_micro_batches(setup):
    _, _, batch = setup
    plan = packing.plan_micro_batches(
        batch.prompt_mask, batch.token_mask, budget=BUDGET, packs_per_micro=PACKS
    )
    # rows: prompt 3,3,3,3,5,5,5,5 + extent 6,1,2,6,3,5,1,4 = 9,4,5,9,8,10,6,9 tokens;
    # decreasing: r5(10) r0(9) r3(9) r7(9) r4(8) open packs 0-4; r6(6) opens pack 5;
    # r2(5) fits after r6 (6 free), r1(4) after r4 (4 free)
    np.testing.assert_array_equal(plan.extent, [6, 1, 2, 6, 3, 5, 1, 4])
    np.testing.assert_array_equal(plan.pack, [1, 4, 5, 2, 4, 0, 5, 3])
    np.testing.assert_array_equal(plan.offset, [0, 8, 6, 0, 0, 0, 0, 0])
    assert plan.used == 3  # packs 0-1, 2-3, 4-5
    np.testing.assert_array_equal(plan.micro, [0, 2, 2, 1, 2, 0, 2, 1])
    packs = packing.pack_micro_batches(batch.prompt_tokens, batch.prompt_mask, batch.tokens, plan)
    assert packs.tokens.shape == (N // PACKS, PACKS, BUDGET)  # K = ceil(N / M), static
    # row 1 (pack 4 = micro-batch 2, local pack 0, offset 8): 3 prompt tokens, 1 completion
    r1 = packs.segment_ids[2, 0] == 2
    np.testing.assert_array_equal(np.flatnonzero(r1), [8, 9, 10, 11])
    np.testing.assert_array_equal(packs.positions[2, 0, 8:12], [0, 1, 2, 3])
    np.testing.assert_array_equal(
        packs.tokens[2, 0, 8:12],
        np.concatenate([np.asarray(batch.prompt_tokens)[1, 2:], np.asarray(batch.tokens)[1, :1]]),
    )
    assert (packs.predict_pack[1, 0], packs.predict_slot[1, 0]) == (0, 10)


def test_completion_extent_covers_the_last_sampled_token():
    m = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(packing.completion_extent(m), [2, 4, 0])


def test_plan_refuses_what_cannot_be_packed():
    pm = np.ones((2, 3), np.int32)
    with pytest.raises(ValueError, match="row 1 holds 9 tokens > budget 8"):
        packing.plan_micro_batches(pm, np.array([[1, 0, 0, 0, 0, 0], [1] * 6]), budget=8, packs_per_micro=1)  # fmt: skip
    with pytest.raises(ValueError, match="row 0 has no prompt token"):
        packing.plan_micro_batches(pm * [[0], [1]], np.ones((2, 2)), budget=8, packs_per_micro=1)
    with pytest.raises(ValueError, match="must be >= 1"):
        packing.plan_micro_batches(pm, np.ones((2, 2)), budget=8, packs_per_micro=0)


@pytest.mark.parametrize("policy_loss", sorted(registry.POLICY_LOSS_SPECS))
def test_packed_update_equals_the_padded_update_for_every_policy_loss(setup, policy_loss):
    """Same gradients, losses and metrics as the padded rows in one micro-batch, from 3
    token-budget micro-batches, KL and entropy terms included."""
    mc, params, batch = setup
    s = _settings(policy_loss)
    packed, plan = _packed(batch)
    assert plan.used == 3
    want = _step(mc, params, batch, s)
    got = _step(mc, params, packed, s)
    _assert_same_update(got, want)
    assert float(got[2]["packed/micro_batches"]) == 3
    # 60 row tokens (9 + 4 + 5 + 9 + 8 + 10 + 6 + 9) in 3 micro-batches × 24 slots
    assert int(packed.packs.mask.sum()) == 60
    assert float(got[2]["packed/fill"]) == pytest.approx(60 / 72)
    assert float(jnp.abs(jax.tree.leaves(got[0])[0]).sum()) > 0


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_packed_update_equals_the_padded_update_per_row_aggregations(setup, agg):
    """Aggregations with per-row normalisers (token-mean is the default of the test above)."""
    mc, params, batch = setup
    s = _settings(agg=agg)
    _assert_same_update(_step(mc, params, _packed(batch)[0], s), _step(mc, params, batch, s, 2))


def test_packed_critic_forking_tokens_and_blocked_head(setup):
    """The critic's value loss and its gradients from packed values; forking-token selection
    (entropies of the whole packed minibatch); the vocabulary-blocked head in sequence
    chunks."""
    mc, params, batch = setup
    critic = models.init_value_params(mc, jax.random.key(1), params)
    s = _settings(forking_tokens=0.5, vocab_block=12, logprob_chunk=4)
    want = _step(mc, params, batch, s, critic=critic)
    got = _step(mc, params, _packed(batch)[0], s, critic=critic)
    _assert_same_update(got, want)
    assert float(got[2]["critic/loss"]) > 0
    v = packing.micro_values(mc, critic, _packed(batch)[0].packs, 0, 0.0)
    full = completion_values(mc, critic, batch.prompt_tokens, batch.prompt_mask, batch.tokens)
    mine = np.asarray(_packed(batch)[1].micro == 0)
    np.testing.assert_allclose(np.asarray(v)[mine], np.asarray(full)[mine] * np.asarray(batch.token_mask)[mine], atol=2e-5)  # fmt: skip


def test_packed_lora_update_equals_the_padded_one(setup):
    """With LoRA the packed pass merges the adapters into the frozen base as the padded one."""
    mc, params, batch = setup
    adapters = models.init_lora(mc, params, jax.random.key(2), rank=2, alpha=4.0)
    adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # B != 0: the adapter is live
    s = _settings()
    _assert_same_update(
        _step(mc, adapters, _packed(batch)[0], s, base=params),
        _step(mc, adapters, batch, s, base=params),
    )


def test_one_program_whatever_the_lengths(setup):
    """Other lengths, another placement and another micro-batch count reuse the compiled
    step (the count is data); the update still equals the padded one."""
    mc, params, batch = setup
    s = _settings()
    fn = jax.jit(
        functools.partial(
            rl_step.train_step,
            model_config=mc,
            s=s,
            num_micro=1,
            optimizer=optax.sgd(1.0),
            critic_optimizer=None,
            policy_warmup=0,
        )
    )
    _step(mc, params, _packed(batch)[0], s, jitted=fn)
    short = batch.replace(
        token_mask=batch.token_mask.at[:, 2:].set(0.0), mask=batch.mask.at[:, 2:].set(0.0)
    )
    packed, plan = _packed(short)
    assert plan.used == 2
    got = _step(mc, params, packed, s, jitted=fn)
    assert fn._cache_size() == 1
    _assert_same_update(got, _step(mc, params, short, s))


@pytest.mark.parametrize("packs_per_micro, used", [(PACKS, 3), (8, 1)])
def test_programs_pack_minibatches_on_a_mesh(setup, packs_per_micro, used):
    """`RLPrograms` with `train.micro_tokens` on 8 devices: `with_packs` packs the selected
    rows on the host and the sharded step equals the padded update of those rows (8 packs per
    micro-batch: the packs split over the devices; 2: replicated); the no-gradient critic
    pass with `train.pack_budget` equals the padded values."""
    from types import SimpleNamespace

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as PS

    mc, params, batch = setup
    # a copy: the step donates the state, whose critic would otherwise share the policy's
    # embedding buffers
    critic = jax.tree.map(jnp.copy, models.init_value_params(mc, jax.random.key(1), params))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows, repl = NamedSharding(mesh, PS("data")), NamedSharding(mesh, PS())
    c = config_lib.base_config()
    c.unlock()
    c.rollout.max_new_tokens = T
    c.algo.kl.coef = 0.05
    c.train.pack_budget, c.train.micro_tokens = BUDGET, BUDGET * packs_per_micro
    opt = optax.sgd(1.0)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
        kl_coef=jnp.asarray(0.05, jnp.float32),
        critic_params=critic,
        critic_opt_state=opt.init(critic),
    )
    state_sh = jax.tree.map(lambda _: repl, state)
    batch_sh = jax.tree.map(lambda _: rows, batch)
    programs = rl_step.RLPrograms(
        c, mc, opt, opt, state_shardings=state_sh, batch_sharding=batch_sh, replicated=repl
    )
    sharded = jax.device_put(batch, batch_sh)
    idx = np.array([6, 1, 4, 3, 0, 7, 2, 5])
    source = programs.pack_source(sharded)
    mb = programs.with_packs(programs.select_rows(sharded, idx), source, idx)
    assert int(mb.packs.used) == used
    assert mb.packs.tokens.sharding.spec == (PS(None, "data") if used == 1 else PS())
    picked = jax.tree.map(lambda x: x[idx], batch)
    want = _step(mc, params, picked, programs.settings, critic=critic)
    before = jax.device_get((params, critic))
    new, metrics = programs.train_step(jax.device_put(jax.tree.map(jnp.copy, state), state_sh), mb)
    delta = lambda a, b: jax.tree.map(lambda x, y: x - y, a, b)  # noqa: E731
    got = (delta(before[0], new.params), delta(before[1], new.critic_params), metrics)
    _assert_same_update(got, want)

    ro = SimpleNamespace(
        prompt_tokens=sharded.prompt_tokens,
        prompt_mask=sharded.prompt_mask,
        tokens=sharded.tokens,
        mask=sharded.token_mask,
    )
    got = programs.values(critic, ro, 0)
    want = completion_values(mc, critic, batch.prompt_tokens, batch.prompt_mask, batch.tokens)
    tm = np.asarray(batch.token_mask) > 0
    np.testing.assert_allclose(np.asarray(got)[tm], np.asarray(want)[tm], atol=2e-5)
    assert (np.asarray(got)[~tm] == 0).all()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"train.micro_tokens": 128},
            r"micro_tokens = 128 packs the update .* set train.pack_budget > 0",
        ),
        ({"train.micro_tokens": 100, "train.pack_budget": 64}, r"multiple of train.pack_budget"),
        (
            {"train.micro_tokens": 128, "train.pack_budget": 64, "train.microbatch_size": 8},
            r"microbatch_size = 8 \(rows\) cannot apply too",
        ),
    ],
)
def test_bad_micro_token_settings_are_config_errors(overrides, match):
    from tests.trainers.conftest import small_config

    c = small_config(**{"rollout.prompt_buckets": (16,), "rollout.max_new_tokens": 48}, **overrides)
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c)


@pytest.mark.parametrize("field", ["train.pack_budget", "rollout.continuous_slots"])
def test_several_processes_refuse_host_side_batching_at_start_up(tmp_path, monkeypatch, field):
    """Packing and continuous batching are planned on one host: with several processes the
    trainer refuses them when it is built, before any model or compile."""
    from jaxrl_llm.trainers import rl
    from tests.trainers.conftest import small_config

    c = small_config(**{field: 1024})
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(config_lib.ConfigError, match=rf"config\.{field} does not combine with several processes"):  # fmt: skip
        rl.Trainer(c, str(tmp_path))
