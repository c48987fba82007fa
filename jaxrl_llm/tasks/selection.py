"""Prompt selection as composable `PromptSource`s: difficulty filter, rollout replay, bandit curriculum.

Each wraps (or, for the curriculum, owns) prompt streams and forwards
`update(stats)`, so they stack: `ReplaySource(DifficultyFilter(TaskSource(task)))`.
`stats` per prompt: {'id', 'rewards' [G], 'advantages' (mean |A|), 'difficulty'}.

* `DifficultyFilter` — online difficulty filtering (Bae et al. 2025, "Online
  Difficulty Filtering for Reasoning Oriented RL"): keep prompts whose running
  pass-rate estimate p̂ lies in [low, high]; prompts never seen pass.
* `ReplaySource` (with `losses.importance.importance_weights`) — rollout replay (Sun et al. 2025,
  "Improving Data Efficiency for LLM RL Fine-tuning Through Difficulty-targeted
  Online Data Selection and Rollout Replay"): a buffer of recent rollout groups
  by prompt; a fraction of each batch is replayed with importance weights
  w = π_current(y) / π_behaviour(y) from the log-probs the trainer supplies.
* `CurriculumSource` — bandit curricula over difficulty levels rewarded by the
  mean |advantage| of their prompts: UCB (DUMP, Wang et al. 2025) or TD(0) value
  with softmax (Boltzmann) selection (SEC, Chen et al. 2025, "Self-Evolving Curriculum").
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import io
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrl_llm.tasks.base import Example
from jaxrl_llm.tasks.sources import ExampleStream, check_stats

__all__ = [
    "DifficultyFilter",
    "ReplaySource",
    "ReplayItem",
    "CurriculumSource",
    "CURRICULUM_METHODS",
    "prompt_stats",
    "make_prompt_source",
]

logger = logging.getLogger(__name__)

CURRICULUM_METHODS = ("ucb", "td_softmax")


def _pass_rate(rewards: Sequence[float], success: float) -> float:
    r = np.asarray(rewards, dtype=np.float64)
    return float((r >= success).mean()) if r.size else 0.0


# ----------------------------------------------------------------------------- difficulty filter
class DifficultyFilter:
    """Keeps prompts whose running pass rate p̂ ∈ [low, high] (inclusive); unseen prompts pass.

    p̂ per prompt id is the mean of all its observed pass indicators (reward ≥
    `success`), or an exponential moving average p̂ ← (1−ema)·p̂ + ema·p_step when
    `ema` is set. `next(n)` draws from the inner source, skipping out-of-band
    prompts, for at most `max_draws_factor · n` draws; if the band is too
    sparse it fills with the skipped prompts closest to the band and counts them
    in `last_stats['filled']` (logged).
    """

    def __init__(
        self,
        source: Any,
        low: float = 0.0,
        high: float = 1.0,
        *,
        success: float = 1.0,
        ema: float | None = None,
        max_draws_factor: int = 20,
    ):
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"difficulty band must satisfy 0 ≤ low ≤ high ≤ 1, got [{low}, {high}]"
            )
        if ema is not None and not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be in (0, 1] or None, got {ema}")
        self.source, self.low, self.high, self.success, self.ema = source, low, high, success, ema
        self.max_draws_factor = max_draws_factor
        self.table: dict[str, list[float]] = {}  # id -> [count, p̂]
        self.last_stats: dict = {}

    def pass_rate(self, example_id: str) -> float | None:
        entry = self.table.get(example_id)
        return None if entry is None else entry[1]

    def keeps(self, example_id: str) -> bool:
        p = self.pass_rate(example_id)
        return p is None or self.low <= p <= self.high

    def _distance(self, example_id: str) -> float:
        p = self.pass_rate(example_id)
        return 0.0 if p is None else max(self.low - p, p - self.high, 0.0)

    def next(self, n: int) -> list[Example]:
        out, skipped, draws = [], [], 0
        while len(out) < n and draws < self.max_draws_factor * max(n, 1):
            ex = self.source.next(1)[0]
            draws += 1
            (out if self.keeps(ex.id) else skipped).append(ex)
        filled = 0
        if len(out) < n:
            filled = n - len(out)
            skipped.sort(key=lambda e: self._distance(e.id))
            out += skipped[:filled]
            logger.warning(
                "difficulty filter: only %d of %d prompts in band [%g, %g] after %d draws; filled %d",
                n - filled,
                n,
                self.low,
                self.high,
                draws,
                filled,
            )
        self.last_stats = {"draws": draws, "skipped": len(skipped), "filled": filled}
        return out

    def update(self, stats: Sequence[dict]) -> None:
        check_stats(stats)
        for s in stats:
            p_step = _pass_rate(s["rewards"], self.success)
            count, p = self.table.get(s["id"], [0.0, 0.0])
            if self.ema is None or count == 0:
                p = (p * count + p_step) / (count + 1)
            else:
                p = (1 - self.ema) * p + self.ema * p_step
            self.table[s["id"]] = [count + 1, p]
        self.source.update(stats)

    def state_dict(self) -> dict:
        return {
            "source": self.source.state_dict(),
            "table": {k: list(v) for k, v in self.table.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["source"])
        self.table = {k: [float(v[0]), float(v[1])] for k, v in state["table"].items()}


# ----------------------------------------------------------------------------- replay
@dataclasses.dataclass
class ReplayItem:
    """One stored rollout group: the prompt and the trainer's payload (arrays incl. behaviour log-probs)."""

    example: Example
    payload: Any
    uses: int = 0


class ReplaySource:
    """Fresh prompts from `source` plus replayed rollout groups from a FIFO buffer by prompt id.

    `next(n)` returns n − k fresh prompts, k = min(⌊fraction·n⌋, available), and
    sets `replayed()` to the k items chosen (uniformly, seeded) among buffered
    groups used fewer than `max_reuse` times. The trainer generates for the
    fresh prompts, `add(example, payload)`s each new group (latest per prompt;
    oldest evicted beyond `capacity`), and trains on fresh + replayed rows with
    `importance_weights` (or the replayed behaviour log-probs as old_logp).
    `state_dict` holds the buffer too (payloads: nested dicts / lists of numpy arrays,
    strings, numbers, None; arrays stored as base64 `.npy` bytes), so a resumed run
    replays exactly what the uninterrupted run would have.
    """

    def __init__(
        self,
        source: Any,
        fraction: float,
        *,
        capacity: int = 256,
        max_reuse: int = 1,
        seed: int = 0,
    ):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
        if capacity < 1 or max_reuse < 1:
            raise ValueError("capacity and max_reuse must be ≥ 1")
        self.source, self.fraction, self.capacity, self.max_reuse = (
            source,
            fraction,
            capacity,
            max_reuse,
        )
        self.rng = np.random.default_rng(seed)
        self.buffer: collections.OrderedDict[str, ReplayItem] = collections.OrderedDict()
        self._replayed: list[ReplayItem] = []

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, example: Example, payload: Any) -> None:
        self.buffer.pop(example.id, None)
        self.buffer[example.id] = ReplayItem(example, payload)
        while len(self.buffer) > self.capacity:
            self.buffer.popitem(last=False)

    def next(self, n: int) -> list[Example]:
        available = [k for k, it in self.buffer.items() if it.uses < self.max_reuse]
        k = min(int(math.floor(self.fraction * n)), len(available))
        chosen = (
            [
                available[int(i)]
                for i in np.sort(self.rng.choice(len(available), size=k, replace=False))
            ]
            if k
            else []
        )
        self._replayed = []
        for key in chosen:
            item = self.buffer[key]
            item.uses += 1
            self._replayed.append(item)
        return self.source.next(n - k)

    def replayed(self) -> list[ReplayItem]:
        """The stored groups chosen by the last `next` call."""
        return list(self._replayed)

    def update(self, stats: Sequence[dict]) -> None:
        self.source.update(stats)

    def state_dict(self) -> dict:
        buffer = [
            {
                "example": _example_to_json(it.example),
                "uses": it.uses,
                "payload": _to_json(it.payload),
            }
            for it in self.buffer.values()
        ]
        return {
            "source": self.source.state_dict(),
            "rng": self.rng.bit_generator.state,
            "buffer": buffer,
        }

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["source"])
        self.rng.bit_generator.state = state["rng"]
        self.buffer.clear()
        self._replayed = []
        for item in state.get("buffer", ()):  # checkpoints written before the buffer was saved
            example = _example_from_json(item["example"])
            self.buffer[example.id] = ReplayItem(
                example, _from_json(item["payload"]), int(item["uses"])
            )


_NDARRAY = "__ndarray__"


def _to_json(x):
    """Nested dicts / lists / tuples of numpy arrays, str, numbers, bool, None → JSON values."""
    if isinstance(x, dict):
        if _NDARRAY in x:
            raise ValueError(f"replay payload key {_NDARRAY!r} is reserved")
        return {str(k): _to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_json(v) for v in x]
    if isinstance(x, np.ndarray) or type(x).__module__.startswith(("jax", "jaxlib")):
        buf = io.BytesIO()
        np.save(buf, np.asarray(x), allow_pickle=False)
        return {_NDARRAY: base64.b64encode(buf.getvalue()).decode("ascii")}
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise TypeError(
        f"replay payload: cannot store a {type(x).__name__} in a checkpoint; use "
        "dicts / lists of numpy arrays, strings and numbers"
    )


def _from_json(x):
    if isinstance(x, dict):
        if set(x) == {_NDARRAY}:
            return np.load(io.BytesIO(base64.b64decode(x[_NDARRAY])), allow_pickle=False)
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return x


def _deep_tuple(x):
    return tuple(_deep_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _example_to_json(e: Example) -> dict:
    return {
        "id": e.id,
        "prompt": e.prompt,
        "answer": e.answer,
        "difficulty": int(e.difficulty),
        "meta": _to_json(e.meta),
    }


def _example_from_json(d: dict) -> Example:
    return Example(
        id=d["id"],
        prompt=d["prompt"],
        answer=d["answer"],
        difficulty=int(d["difficulty"]),
        meta=_deep_tuple(d["meta"]),
    )


# ----------------------------------------------------------------------------- bandit curriculum
class CurriculumSource:
    """A bandit over difficulty levels (arms); arm reward = mean |advantage| of its prompts in a step.

    method='ucb' (DUMP): score_a = Q̄_a + c·sqrt(2·ln(Σ_b n_b) / n_a), Q̄_a the mean of the
      last `window` step rewards of arm a, n_a the prompts drawn from it; unvisited arms first.
      A batch of n prompts is assigned slot by slot to the arg-max score, counting the
      slots already assigned in n_a (so the exploration bonus shrinks within a batch).
    method='td_softmax' (SEC): Q_a ← α·r_a + (1−α)·Q_a (TD(0) with no bootstrap), arms
      drawn i.i.d. from softmax(Q / temperature).
    Each arm cycles its own epoch-shuffled stream of the examples at that difficulty.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        method: str = "ucb",
        c: float = 1.0,
        window: int = 10,
        alpha: float = 0.5,
        temperature: float = 0.1,
        seed: int = 0,
    ):
        if method not in CURRICULUM_METHODS:
            raise ValueError(
                f"curriculum method must be one of {CURRICULUM_METHODS}, got {method!r}"
            )
        if temperature <= 0 or not 0 < alpha <= 1 or window < 1:
            raise ValueError("need temperature > 0, 0 < alpha ≤ 1, window ≥ 1")
        by_arm: dict[int, list[Example]] = {}
        for e in examples:
            by_arm.setdefault(int(e.difficulty), []).append(e)
        if not by_arm:
            raise ValueError("CurriculumSource needs examples")
        self.arms = tuple(sorted(by_arm))
        self.streams = {a: ExampleStream(by_arm[a], seed=seed * 1000 + a) for a in self.arms}
        self.method, self.c, self.window, self.alpha, self.temperature = (
            method,
            c,
            window,
            alpha,
            temperature,
        )
        self.rng = np.random.default_rng(seed)
        self.counts = {a: 0 for a in self.arms}
        self.q = {a: 0.0 for a in self.arms}
        self.history: dict[int, list[float]] = {a: [] for a in self.arms}

    def probabilities(self) -> np.ndarray:
        """softmax(Q / temperature) over `arms` (the td_softmax policy)."""
        z = np.array([self.q[a] for a in self.arms]) / self.temperature
        z = np.exp(z - z.max())
        return z / z.sum()

    def ucb_scores(self, extra: dict | None = None) -> np.ndarray:
        extra = extra or {}
        n = {a: self.counts[a] + extra.get(a, 0) for a in self.arms}
        total = sum(n.values())
        scores = []
        for a in self.arms:
            if n[a] == 0:
                scores.append(math.inf)
                continue
            mean = float(np.mean(self.history[a][-self.window :])) if self.history[a] else 0.0
            scores.append(mean + self.c * math.sqrt(2.0 * math.log(max(total, 1)) / n[a]))
        return np.array(scores)

    def choose_arms(self, n: int) -> list[int]:
        if self.method == "td_softmax":
            idx = self.rng.choice(len(self.arms), size=n, p=self.probabilities())
            return [self.arms[int(i)] for i in idx]
        assigned: dict[int, int] = {}
        out = []
        for _ in range(n):
            a = self.arms[int(np.argmax(self.ucb_scores(assigned)))]
            assigned[a] = assigned.get(a, 0) + 1
            out.append(a)
        return out

    def next(self, n: int) -> list[Example]:
        arms = self.choose_arms(n)
        for a in arms:
            self.counts[a] += 1
        return [self.streams[a].next(1)[0] for a in arms]

    def update(self, stats: Sequence[dict]) -> None:
        check_stats(stats)
        per_arm: dict[int, list[float]] = {}
        for s in stats:
            per_arm.setdefault(int(s["difficulty"]), []).append(float(s["advantages"]))
        for a, values in per_arm.items():
            if a not in self.q:
                raise ValueError(f"stat for difficulty {a}, not one of the arms {self.arms}")
            r = float(np.mean(values))
            self.q[a] = self.alpha * r + (1 - self.alpha) * self.q[a]
            self.history[a] = (self.history[a] + [r])[-self.window :]

    def state_dict(self) -> dict:
        return {
            "streams": {str(a): s.state_dict() for a, s in self.streams.items()},
            "counts": {str(a): v for a, v in self.counts.items()},
            "q": {str(a): v for a, v in self.q.items()},
            "history": {str(a): list(v) for a, v in self.history.items()},
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        for a in self.arms:
            self.streams[a].load_state_dict(state["streams"][str(a)])
            self.counts[a] = int(state["counts"][str(a)])
            self.q[a] = float(state["q"][str(a)])
            self.history[a] = [float(v) for v in state["history"][str(a)]]
        self.rng.bit_generator.state = state["rng"]


# ----------------------------------------------------------------------------- helpers for the trainer
def prompt_stats(
    examples: Sequence[Example], rewards, abs_advantages, group_size: int
) -> list[dict]:
    """Per-prompt stats for `source.update` from one step's rows.

    examples: [B]; rewards: [B·G] (contiguous groups); abs_advantages: [B·G] per-row |A|
    (e.g. the masked token mean of |A| per row) or [B] already per prompt.
    Returns [{'id', 'rewards': [G floats], 'advantages': mean |A| of the group, 'difficulty'}].
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    a = np.abs(np.asarray(abs_advantages, dtype=np.float64).reshape(-1))
    B = len(examples)
    if r.size != B * group_size:
        raise ValueError(
            f"rewards has {r.size} rows, expected len(examples)·group_size = {B}·{group_size}"
        )
    if a.size == B * group_size:
        a = a.reshape(B, group_size).mean(axis=1)
    elif a.size != B:
        raise ValueError(f"abs_advantages has {a.size} values, expected {B} or {B * group_size}")
    r = r.reshape(B, group_size)
    return [
        {
            "id": e.id,
            "rewards": r[i].tolist(),
            "advantages": float(a[i]),
            "difficulty": int(e.difficulty),
        }
        for i, e in enumerate(examples)
    ]


def make_prompt_source(
    task: Any,
    *,
    split: str = "train",
    seed: int = 0,
    num_examples: int | None = 10_000,
    curriculum: str = "",
    curriculum_kwargs: dict | None = None,
    filter_band: tuple | None = None,
    filter_ema: float | None = None,
    filter_success: float = 1.0,
    replay_fraction: float = 0.0,
    replay_capacity: int = 256,
    replay_max_reuse: int = 1,
    encode_fn: Callable | None = None,
    max_prompt_len: int | None = None,
) -> Any:
    """The composed prompt source a config asks for (each part off by default).

    base: `CurriculumSource(method=curriculum)` when `curriculum` ∈ CURRICULUM_METHODS,
    else `TaskSource`; then `DifficultyFilter(band=filter_band)` when a band is given;
    then `ReplaySource(fraction=replay_fraction)` when the fraction is > 0.
    With `max_prompt_len` and `encode_fn`, prompts longer than `max_prompt_len`
    tokens are dropped at load and counted (`sources.load_examples`).
    """
    from jaxrl_llm.tasks.sources import TaskSource, load_examples

    if curriculum:
        if curriculum not in CURRICULUM_METHODS:
            raise ValueError(
                f"curriculum must be '' (off) or one of {CURRICULUM_METHODS}, got {curriculum!r}"
            )
        examples, _ = load_examples(
            task, split, num_examples, seed, encode_fn=encode_fn, max_prompt_len=max_prompt_len
        )
        source: Any = CurriculumSource(
            examples,
            method=curriculum,
            seed=seed,
            **(curriculum_kwargs or {}),
        )
    else:
        source = TaskSource(
            task,
            split,
            seed,
            num_examples=num_examples,
            encode_fn=encode_fn,
            max_prompt_len=max_prompt_len,
        )
    if filter_band is not None:
        low, high = filter_band
        source = DifficultyFilter(source, low, high, success=filter_success, ema=filter_ema)
    if replay_fraction > 0:
        source = ReplaySource(
            source, replay_fraction, capacity=replay_capacity, max_reuse=replay_max_reuse, seed=seed
        )
    return source
