"""A reward model's folder and its scoring: the value head at the last valid token.

The reward of a (prompt, completion) is the value model's (`models.value`: backbone + scalar
head) output at the LAST VALID TOKEN of the concatenation prompt + completion. The last valid
token is found from the mask (`last_valid_index`), so right-padded completions (the RL
layout), left-padded ones, or a left-padded prompt followed by a right-padded completion all
give the same reward as the unpadded sequence.

    model_config, params = load_reward_model(path)
    score = make_score_fn(model_config)     # jitted
    rewards = score(params, prompt_tokens, prompt_mask, completion_tokens, completion_mask)  # [N]

Folder (`save_reward_model`), HF-style: `config.json` + `model.safetensors` of the backbone
(`models.save_hf`; an untied model's unused LM head is written as zeros),
`reward_head.safetensors` (`kernel [H]`, `bias []`), `reward_model.json` (what the folder
is, how the reward is read out, the training run's held-out accuracy) and the tokenizer files.
An HF `*ForSequenceClassification` folder with one label (`save_pretrained` of e.g.
`Qwen2ForSequenceClassification`) loads too: its decoder is the backbone and its `score.weight`
[1, H] the head (bias 0); HF reads the score at the last non-pad token, which is this module's
last valid token for the padded layouts above (tested against transformers).
Training lives in `trainers/reward_model.py`; scoring inside the RL step in `rewards.learned`.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm import models

__all__ = [
    "BACKBONE_KEYS",
    "HEAD_FILE",
    "META_FILE",
    "last_valid_index",
    "sequence_rewards",
    "make_score_fn",
    "save_reward_model",
    "load_reward_model",
    "load_hf_sequence_classifier",
    "hf_classifier_config",
]

BACKBONE_KEYS = ("embed", "layers", "final_norm")
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


# ------------------------------------------------------------------ scoring
def last_valid_index(mask) -> jax.Array:
    """Index of the last position with mask 1 in each row `[N]` (0 for an all-zero row)."""
    s = mask.shape[1]
    return (s - 1 - jnp.argmax(jnp.flip(mask, axis=1) > 0, axis=1)).astype(jnp.int32) * jnp.any(
        mask > 0, axis=1
    )


def sequence_rewards(
    config, params, prompt_tokens, prompt_mask, completion_tokens, completion_mask
) -> jax.Array:
    """Reward `[N]` float32: the value head at the last valid token of prompt + completion.

    Any padding of prompt or completion: positions are `cumsum(mask) − 1` over the
    concatenation and padded keys are masked, so only the valid tokens count. An empty
    completion (mask all 0) reads the value at the last prompt token.
    """
    if prompt_tokens.shape != prompt_mask.shape or completion_tokens.shape != completion_mask.shape:
        raise ValueError(
            f"tokens and masks must match: prompt {prompt_tokens.shape} vs {prompt_mask.shape}, "
            f"completion {completion_tokens.shape} vs {completion_mask.shape}"
        )
    tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1).astype(jnp.int32)
    mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    values = models.apply_value(config, params, tokens, positions, mask)
    idx = last_valid_index(mask)
    return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0].astype(jnp.float32)


def make_score_fn(config):
    """Jitted `score(params, prompt_tokens, prompt_mask, completion_tokens, completion_mask) -> [N]`."""
    return jax.jit(functools.partial(sequence_rewards, config))


# ------------------------------------------------------------------ checkpoint
def save_reward_model(path, model_config, params, *, tokenizer=None, meta=None) -> None:
    """Writes the HF-style reward-model folder described in the module doc."""
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    path = os.fspath(path)
    backbone = {k: params[k] for k in BACKBONE_KEYS}
    if not model_config.tie_embeddings:
        kernel = params.get("lm_head", {}).get("kernel")
        if kernel is None:  # the reward never reads the LM head
            dtype = np.asarray(jax.device_get(params["final_norm"]["scale"])).dtype
            kernel = np.zeros((model_config.hidden_size, model_config.vocab_size), dtype)
        backbone["lm_head"] = {"kernel": kernel}
    models.save_hf(path, model_config, backbone)
    head = params["value_head"]
    save_file(
        {k: np.ascontiguousarray(np.asarray(jax.device_get(head[k]))) for k in ("kernel", "bias")},
        os.path.join(path, HEAD_FILE),
    )
    info = {
        "format": "jaxrl_llm.reward_model",
        "version": 1,
        "head_file": HEAD_FILE,
        "reward": "value head at the last valid token of prompt + completion",
    }
    info.update(meta or {})
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump(info, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def hf_classifier_config(path: str) -> dict | None:
    """The folder's HF config when it is a `*ForSequenceClassification` checkpoint, else None."""
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        return None
    with open(config_file) as f:
        hf = json.load(f)
    if not any(str(a).endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
        return None
    return hf


def load_hf_sequence_classifier(path, *, dtype=None):
    """`(model_config, params)` of an HF `*ForSequenceClassification` folder with one label."""
    path = os.fspath(path)
    hf = hf_classifier_config(path)
    if hf is None:
        raise ValueError(f"{path!r} is not an HF *ForSequenceClassification folder")
    # transformers writes id2label unless it is its default of two labels
    labels = int(hf.get("num_labels") or len(hf.get("id2label") or {0: "", 1: ""}))
    if labels != 1:
        raise ValueError(
            f"{path!r}: a sequence classifier with {labels} labels; a reward model has one "
            "(num_labels = 1)"
        )
    arch = next(a for a in hf["architectures"] if a.endswith("ForSequenceClassification"))
    backbone = dict(
        hf,
        architectures=[arch.replace("ForSequenceClassification", "ForCausalLM")],
        tie_word_embeddings=True,  # a classifier has no LM head; the backbone never uses one
    )
    config, full = models.load_hf(
        path, dtype=dtype, hf_config=backbone, extra_tensors=("score.weight",)
    )
    score = models.read_tensor(path, "score.weight")
    if score.shape != (1, config.hidden_size):
        raise ValueError(
            f"{path!r}: score.weight has shape {score.shape}; expected (1, {config.hidden_size})"
        )
    params = {k: full[k] for k in BACKBONE_KEYS}
    params["value_head"] = {
        "kernel": jnp.asarray(score[0], dtype=config.param_dtype),
        "bias": jnp.zeros((), config.param_dtype),
    }
    return config, params


def load_reward_model(path, *, dtype=None):
    """`(model_config, params)` of a folder written by `save_reward_model`, or of an HF
    `*ForSequenceClassification` folder with one label."""
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    path = os.fspath(path)
    if not os.path.exists(os.path.join(path, META_FILE)):
        if hf_classifier_config(path) is not None:
            return load_hf_sequence_classifier(path, dtype=dtype)
        raise ValueError(
            f"{path!r} is not a reward-model folder (no {META_FILE}) nor an HF "
            "*ForSequenceClassification folder"
        )
    config, full = models.load_hf(path, dtype=dtype)
    head = load_file(os.path.join(path, HEAD_FILE))
    if head["bias"].size == 1:  # a 0-d tensor may come back as [1]
        head["bias"] = head["bias"].reshape(())
    if head["kernel"].shape != (config.hidden_size,) or head["bias"].shape != ():
        raise ValueError(
            f"{HEAD_FILE} holds kernel {head['kernel'].shape} and bias {head['bias'].shape}; "
            f"expected ({config.hidden_size},) and ()"
        )
    params = {k: full[k] for k in BACKBONE_KEYS}
    params["value_head"] = {
        k: jnp.asarray(head[k], dtype=config.param_dtype) for k in ("kernel", "bias")
    }
    return config, params
