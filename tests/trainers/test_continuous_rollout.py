"""`rollout.continuous_slots`: the trainer's rollouts come from the continuous sampler, row
for row the static sampler with per-row keys; 0 keeps the static sampler."""

import jax
import numpy as np

from jaxrl_llm import rollout as rollout_lib
from jaxrl_llm.trainers import rl
from tests.trainers.conftest import small_config


def test_trainer_rollout_uses_continuous_slots(tmp_path):
    c = small_config(**{"sft.steps": 0, "train.steps": 1, "rollout.continuous_slots": 3})
    trainer = rl.Trainer(c, str(tmp_path))
    params = trainer.initial_params(log=lambda *a: None)
    examples = trainer.make_source().next(4)
    sampling = trainer.sampling.replace(n=2)
    key = jax.random.key(7)
    ro, completions = trainer.rollout(params, examples, key, sampling)
    want = rollout_lib.generate(
        params, trainer.model_config, trainer.prompt_batch(examples), key, sampling, row_keys=True
    )
    np.testing.assert_array_equal(ro.tokens, want.tokens)
    np.testing.assert_array_equal(ro.mask, want.mask)
    np.testing.assert_allclose(ro.sampler_logp, want.sampler_logp, atol=1e-5)
    assert len(completions) == 8


def test_row_keys_make_the_static_trainer_sample_what_continuous_samples(tmp_path):
    """`rollout.row_keys = True`: the static sampler's trainer rollouts are, row for row, the
    continuous trainer's (same seed, same examples and key); with the default step keys they
    are not, so the option is what makes the two comparable. Also the vmapped-seeds sampler
    takes the option: seed s equals `generate(..., row_keys=True)` of that seed."""
    base = {"sft.steps": 0, "train.steps": 1}
    runs = {}
    for name, extra in {
        "continuous": {"rollout.continuous_slots": 3},
        "row_keys": {"rollout.row_keys": True},
        "step_keys": {},
    }.items():
        trainer = rl.Trainer(small_config(**base, **extra), str(tmp_path / name))
        params = trainer.initial_params(log=lambda *a: None)
        examples = trainer.make_source().next(4)
        sampling = trainer.sampling.replace(n=2)
        runs[name] = trainer.rollout(params, examples, jax.random.key(7), sampling)[0]
    want = runs["continuous"]
    np.testing.assert_array_equal(runs["row_keys"].tokens, want.tokens)
    np.testing.assert_allclose(runs["row_keys"].sampler_logp, want.sampler_logp, atol=1e-5)
    assert not np.array_equal(runs["step_keys"].tokens, want.tokens)

    mc = trainer.model_config
    stacked = jax.tree.map(lambda x: np.stack([x, 0.9 * x]), params)
    prompts = trainer.prompt_batch(examples)
    two = rollout_lib.PromptBatch(np.stack([prompts.tokens] * 2), np.stack([prompts.mask] * 2))
    keys = jax.random.split(jax.random.key(3), 2)
    got = rollout_lib.generate_seeds(stacked, mc, two, keys, sampling, row_keys=True)
    for s, p in enumerate((params, jax.tree.map(lambda x: 0.9 * x, params))):
        one = rollout_lib.generate(p, mc, prompts, keys[s], sampling, row_keys=True)
        np.testing.assert_array_equal(np.asarray(got.tokens[s]), np.asarray(one.tokens))
