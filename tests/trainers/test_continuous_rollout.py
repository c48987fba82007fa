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
