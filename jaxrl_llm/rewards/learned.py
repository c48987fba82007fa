"""RLHF against a learned reward: a reward model scored inside the collect stage, on device.

    lr = LearnedReward(path, vocab=tokenizer.get_vocab(), mesh=mesh, rules=rules)
    scores = lr.score(rollout)                   # float32 [N], on device, row-sharded
    total, terms = combine({"task": r_task, "learned": r_rm}, weights, mode="sum", group=G)

`LearnedReward` loads a folder written by `trainers.reward_model` (`rewards.model`), places
its parameters on the policy's mesh (the same logical rules as the policy: `models.
param_shardings`) and scores a `Rollout` with one jitted program that reads the rollout's
device arrays as they are (prompt left-padded, completion right-padded: the reward is the
value head at the last valid token of prompt + completion). No token goes to the host for
scoring; only the `[N]` scores come back to be combined with the host-side terms.

When the folder's tokenizer (its tokenizer files) differs from the policy's, the completions
are **re-tokenised on the host**: `rewards(rollout, prompts, completions)` encodes each
prompt text as BOS + ids (left-padded) and each completion text as ids + EOS (no EOS when the
row was truncated), right-padded, both to powers of two (one program per size class), and
scores them with the same jitted program. A folder without tokenizer files must cover the
policy's vocabulary (`vocab_size`), else one `ValueError`.

Combining terms (`combine`), as the issue's reward-design papers do:
  sum:  `Σ_k w_k r_k` (weighted sum);
  gdpo: each term normalised within its group of G samples of one prompt
        (`(r - mean_g) / (std_g + eps)`, std with ddof 0; a constant group gives 0) before
        the weighted sum, so a term's scale does not decide its weight (GDPO).
`normalize = "batch"` first whitens the learned term over the batch (mean 0, std 1), the
usual reward normalisation of PPO-RLHF (Ziegler et al. 2019 normalise under the initial
policy; here per batch, with no state to checkpoint). The KL-in-reward of that recipe is
`algo.kl.placement = "reward"`.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import numpy as np

from jaxrl_llm import models, parallel
from jaxrl_llm.parallel import multihost
from jaxrl_llm.rewards import model as rm_model

__all__ = [
    "LearnedReward",
    "combine",
    "encode_texts",
    "COMBINE_MODES",
    "NORMALIZE_MODES",
    "check_folder",
]

COMBINE_MODES = ("sum", "gdpo")
NORMALIZE_MODES = ("none", "batch")


def check_folder(path: str) -> None:
    """Raises ValueError (one line) unless `path` is a reward-model folder."""
    if not os.path.isdir(path):
        raise ValueError(f"reward model {path!r} is not a folder")
    if not os.path.exists(os.path.join(path, rm_model.META_FILE)):
        if rm_model.hf_classifier_config(path) is not None:
            return
        raise ValueError(
            f"reward model {path!r} has no {rm_model.META_FILE} and is not an HF "
            "*ForSequenceClassification folder: train one with "
            "python -m jaxrl_llm.trainers.reward_model"
        )


def _folder_vocab(path: str):
    """The folder's tokenizer vocabulary (dict), or None when it holds no tokenizer files."""
    if not any(
        os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        return None
    return models.load_tokenizer(path).get_vocab()


class LearnedReward:
    """A reward model on the policy's mesh; `score(rollout)` is one jitted program.

    Args:
      path: a folder written by `trainers.reward_model` (`rewards.model.save_reward_model`),
        or an HF `*ForSequenceClassification` folder with one label.
      vocab: the policy tokenizer's `get_vocab()`; checked against the folder's tokenizer.
      mesh, rules: the policy's mesh and logical rules (None: one device).
    """

    def __init__(self, path: str, *, vocab: dict, mesh=None, rules=None):
        check_folder(path)
        self.path = path
        config, params = rm_model.load_reward_model(path)
        theirs = _folder_vocab(path)
        # its own tokenizer when it differs from the policy's: completions are re-tokenised
        self.tokenizer = None
        if theirs is not None and theirs != vocab:
            self.tokenizer = models.load_tokenizer(path)
        if theirs is None and config.vocab_size < len(vocab):
            raise ValueError(
                f"reward model {path!r}: vocab_size {config.vocab_size} is smaller than the "
                f"policy tokenizer's {len(vocab)} tokens"
            )
        self.config = config
        self.mesh, self.rules = mesh, rules
        if mesh is not None:  # laid out by the policy's rules, like the critic
            specs = models.value_logical_axes(config)
            shardings = parallel.logical_to_sharding(specs, mesh, rules, shapes=params)
            params = jax.tree.map(jax.device_put, params, shardings)
        self.params = params
        self._program = jax.jit(functools.partial(rm_model.sequence_rewards, config))

    def score(self, rollout) -> jax.Array:
        """float32 `[N]`: the reward model at the last valid token of each row's prompt +
        completion (`rollout.mask`: for a multi-turn rollout, the whole episode)."""
        args = (rollout.prompt_tokens, rollout.prompt_mask, rollout.tokens, rollout.mask)
        if self.mesh is None:
            return self._program(self.params, *args)
        with jax.sharding.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._program(self.params, *args)

    def rewards(self, rollout, prompts=None, completions=None) -> np.ndarray:
        """The scores on the host (gathered from every process), float32 `[N]`: `score` of the
        rollout, or with a tokenizer of its own, of the re-tokenised `prompts` / `completions`
        texts (N each)."""
        if self.tokenizer is None:
            return np.asarray(multihost.gather_to_host(self.score(rollout)), np.float32)
        if prompts is None or completions is None:
            raise ValueError(
                "this reward model has its own tokenizer: rewards() needs the prompt and "
                "completion texts to re-tokenise"
            )
        ended = ~np.asarray(multihost.gather_to_host(rollout.truncated), bool)
        args = encode_texts(self.tokenizer, prompts, completions, ended)
        if self.mesh is None:
            return np.asarray(self._program(self.params, *args), np.float32)
        with jax.sharding.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return np.asarray(self._program(self.params, *args), np.float32)


def _pow2(n: int, floor: int = 8) -> int:
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


def encode_texts(tokenizer, prompts, completions, ended):
    """Host arrays `(prompt_tokens, prompt_mask, tokens, mask)` int32 of texts in `tokenizer`:
    BOS + prompt left-padded, completion + EOS (where `ended`) right-padded, lengths rounded up
    to powers of two."""
    if len(prompts) != len(completions) or len(prompts) != len(ended):
        raise ValueError(
            f"{len(prompts)} prompts, {len(completions)} completions and {len(ended)} rows"
        )
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    p_ids = [bos + list(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
    c_ids = [
        list(tokenizer.encode(c, add_special_tokens=False)) + ([eos] if e else [])
        for c, e in zip(completions, ended)
    ]
    p_len, c_len = _pow2(max(map(len, p_ids))), _pow2(max(map(len, c_ids)))
    n = len(prompts)
    pt, pm = np.full((n, p_len), pad, np.int32), np.zeros((n, p_len), np.int32)
    ct, cm = np.full((n, c_len), pad, np.int32), np.zeros((n, c_len), np.int32)
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        pt[i, p_len - len(p) :], pm[i, p_len - len(p) :] = p, 1
        ct[i, : len(c)], cm[i, : len(c)] = c, 1
    return pt, pm, ct, cm


def _group_normalize(r: np.ndarray, group: int, eps: float) -> np.ndarray:
    g = r.reshape(-1, group)
    return ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + eps)).reshape(-1)


def combine(
    terms: dict,
    weights: dict,
    *,
    mode: str = "sum",
    group: int = 1,
    normalize: str = "none",
    normalize_key: str = "learned",
    eps: float = 1e-6,
):
    """Combines reward terms `{name: [N]}` into one `[N]` reward (module doc).

    Returns (total float32 [N], {name: the term as it entered the sum (after normalisation)}).
    Terms with weight 0 are left out. `group` is G (rows of one prompt are consecutive).
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"combine mode {mode!r}: expected one of {COMBINE_MODES}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize {normalize!r}: expected one of {NORMALIZE_MODES}")
    used = {k: np.asarray(v, np.float64) for k, v in terms.items() if weights.get(k, 0.0) != 0}
    if not used:
        raise ValueError(f"every reward term has weight 0: {weights}")
    n = {len(v) for v in used.values()}
    if len(n) != 1 or next(iter(n)) % group:
        raise ValueError(f"reward terms of lengths {sorted(n)} for groups of {group}")
    if normalize == "batch" and normalize_key in used:
        v = used[normalize_key]
        used[normalize_key] = (v - v.mean()) / (v.std() + eps)
    if mode == "gdpo":
        used = {k: _group_normalize(v, group, eps) for k, v in used.items()}
    total = sum(weights[k] * v for k, v in used.items())
    return np.asarray(total, np.float32), {k: np.asarray(v, np.float32) for k, v in used.items()}
