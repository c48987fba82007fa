"""Generative verifier / LLM-as-judge rewards: a judge model reads (prompt, completion) and
writes a verdict, parsed into a reward.

    judge = JudgeReward(path, template=DEFAULT_TEMPLATE, verdict="yes_no")
    rewards, info = judge.score(prompts, completions)   # float32 [N]; info counts

The judge is any checkpoint `models.load_hf` reads (with its tokenizer files in the same
folder). Each (prompt, completion) is put into `template` (`{prompt}`, `{completion}`),
tokenised with the judge's tokenizer (BOS first when it has one), and decoded GREEDILY by
the library's own sampler (`rollout.generate`, one jitted program per batch bucket) for at
most `max_new_tokens` tokens, stopping at EOS. The verdict text is parsed by `parse_verdict`:

  yes_no: the first standalone "yes" / "no" (any case; also "correct" / "incorrect",
          "true" / "false") → 1.0 / 0.0;
  score:  the first number, optionally "n/m" → n / m, else n / `score_max`, clipped to [0, 1].

A verdict that does not parse is *malformed*: it gets `malformed_reward` and is counted
(`info["malformed"]`); a judge that raises is not caught here (the trainer counts it).
Verdicts are cached per (prompt, completion) (bounded LRU, `cache_size` entries), so a
repeated completion, e.g. a group's duplicates or an evaluation's, is judged once
(`info["cache_hits"]`).
"""

from __future__ import annotations

import collections
import re

import jax
import numpy as np

from jaxrl_llm import models
from jaxrl_llm import rollout as rollout_lib

__all__ = ["JudgeReward", "parse_verdict", "VERDICT_MODES", "DEFAULT_TEMPLATE"]

VERDICT_MODES = ("yes_no", "score")
DEFAULT_TEMPLATE = (
    "Question: {prompt}\nAnswer: {completion}\nIs the answer correct? Reply yes or no.\nVerdict:"
)

_YES = {"yes", "correct", "true"}
_NO = {"no", "incorrect", "false", "wrong"}
_WORD = re.compile(r"[A-Za-z]+")
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?")


def parse_verdict(text: str, mode: str = "yes_no", *, score_max: float = 10.0) -> float | None:
    """The reward a verdict text gives, in [0, 1]; None when it does not parse (module doc)."""
    if mode == "yes_no":
        for word in _WORD.findall(text):
            w = word.lower()
            if w in _YES:
                return 1.0
            if w in _NO:
                return 0.0
        return None
    if mode == "score":
        m = _NUMBER.search(text)
        if m is None:
            return None
        value = float(m.group(1))
        top = float(m.group(2)) if m.group(2) else score_max
        if top <= 0:
            return None
        return float(np.clip(value / top, 0.0, 1.0))
    raise ValueError(f"verdict mode {mode!r}: expected one of {VERDICT_MODES}")


class JudgeReward:
    """A judge model that scores (prompt, completion) pairs with the library's sampler.

    Args:
      path: a Hugging Face folder (`config.json`, safetensors, tokenizer files).
      template: a format string with `{prompt}` and `{completion}`.
      verdict: "yes_no" or "score" (`parse_verdict`).
      malformed_reward: the reward of a verdict that does not parse.
      max_new_tokens: verdict tokens at most.
      batch_size: pairs per sampler call (the last batch is padded to a bucket of rows).
      cache_size: verdicts kept (LRU); 0 turns the cache off.
      prompt_buckets: the judge prompt lengths compiled for.
    """

    def __init__(
        self,
        path: str,
        *,
        template: str = DEFAULT_TEMPLATE,
        verdict: str = "yes_no",
        malformed_reward: float = 0.0,
        max_new_tokens: int = 8,
        score_max: float = 10.0,
        batch_size: int = 64,
        cache_size: int = 65536,
        prompt_buckets=(64, 128, 256, 512, 1024),
    ):
        if verdict not in VERDICT_MODES:
            raise ValueError(f"judge verdict {verdict!r}: expected one of {VERDICT_MODES}")
        if "{prompt}" not in template or "{completion}" not in template:
            raise ValueError(
                f"judge template must contain {{prompt}} and {{completion}}, got {template!r}"
            )
        self.template, self.verdict = template, verdict
        self.malformed_reward, self.score_max = float(malformed_reward), float(score_max)
        self.batch_size, self.cache_size = int(batch_size), int(cache_size)
        self.buckets = tuple(prompt_buckets)
        self.tokenizer = models.load_tokenizer(path)
        self.config, self.params = models.load_hf(path)
        models.check_tokenizer_fits(self.tokenizer, self.config)
        eos = self.tokenizer.eos_token_id
        self.sampling = rollout_lib.SamplingParams(
            max_new_tokens=int(max_new_tokens),
            greedy=True,
            stop_token_ids=() if eos is None else (int(eos),),
        )
        self._cache: collections.OrderedDict = collections.OrderedDict()

    def _encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token_id
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        return ([int(bos)] if bos is not None else []) + ids

    def verdicts(self, prompts, completions) -> list[str]:
        """The judge's greedy verdict texts, one per pair (no cache)."""
        texts = [self.template.format(prompt=p, completion=c) for p, c in zip(prompts, completions)]
        ids = [self._encode(t) for t in texts]
        longest = max((len(i) for i in ids), default=0)
        if longest > max(self.buckets):
            raise ValueError(
                f"a judge prompt has {longest} tokens, more than the largest bucket "
                f"{max(self.buckets)}; shorten the template or raise prompt_buckets"
            )
        out = []
        pad = int(self.tokenizer.pad_token_id or 0)
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            prompts_b = rollout_lib.pad_prompts(
                chunk, bucket_lengths=self.buckets, pad_id=pad, batch_bucket=self.batch_size
            )
            ro = rollout_lib.generate(
                self.params, self.config, prompts_b, jax.random.key(0), self.sampling
            )
            out += rollout_lib.decode_completions(self.tokenizer, ro)[: len(chunk)]
        return out

    def score(self, prompts, completions):
        """(rewards float32 [N], info) for N pairs; info: `malformed`, `cache_hits`, `judged`."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        keys = list(zip(prompts, completions))
        rewards = np.zeros(len(keys), np.float32)
        todo, hits = {}, 0
        for i, k in enumerate(keys):
            if k in self._cache:
                self._cache.move_to_end(k)
                rewards[i] = self._cache[k][0]
                hits += 1
            else:
                todo.setdefault(k, []).append(i)
        malformed = 0
        if todo:
            texts = self.verdicts([k[0] for k in todo], [k[1] for k in todo])
            for (k, rows), text in zip(todo.items(), texts):
                r = parse_verdict(text, self.verdict, score_max=self.score_max)
                bad = r is None
                malformed += bad * len(rows)
                value = self.malformed_reward if bad else r
                rewards[rows] = value
                if self.cache_size:
                    self._cache[k] = (value, bad)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        # a cached malformed verdict counts as malformed again
        malformed += sum(1 for k in keys if k not in todo and self._cache.get(k, (0.0, False))[1])
        return rewards, {"malformed": int(malformed), "cache_hits": hits, "judged": len(todo)}
