"""Pass@k, maj@k, mean@k and diversity metrics of sampled completions: pure host-side numpy.

The maths of held-out evaluation, shared by the evaluation CLI (`jaxrl_llm.evaluation`, which
re-exports every name here) and the trainer's periodic evaluation; it imports nothing from
`jaxrl_llm.trainers`. Tables are per prompt: `P` prompts, `n` samples each, either a `[P, n]`
array or a list of `P` lists of length `n` (answers may be any hashable value; `None` means
"no answer could be extracted").

- `pass_at_k`: unbiased pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on
  Code"), for every k <= n.
- `maj_at_k`: majority vote (self-consistency) accuracy.
- `mean_at_k`: mean reward of k samples ("avg@k").
- `per_difficulty_accuracy`, `answer_entropy`, `distinct_correct_answers`.
- `fit_entropy_performance`: R = -a * exp(H) + b (Cui et al. 2025, "The Entropy Mechanism of
  Reinforcement Learning for Reasoning Language Models").
- `summarize_samples`: the flat dict of scalars that the evaluation CLI writes to `eval.json`
  and the trainer logs as `eval/<key>`.

Metric names are legal TensorBoard tags (letters, digits, `_`, `/`, `.`, `-`): pass@k is
`pass_at_{k}`, maj@k `maj_at_{k}`, mean@k `mean_at_{k}` (docs/metrics.md). Older runs wrote
`pass@{k}` (stored by tensorboardX as `pass_{k}`); `canonical_metric_name` maps both spellings
to the current one, so readers take old and new files alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "pass_at_k",
    "pass_at_ks",
    "default_ks",
    "maj_at_k",
    "mean_at_k",
    "per_difficulty_accuracy",
    "answer_entropy",
    "distinct_correct_answers",
    "fit_entropy_performance",
    "summarize_samples",
    "format_table",
    "k_metric",
    "canonical_metric_name",
    "K_METRIC_KINDS",
]

K_METRIC_KINDS = ("pass", "maj", "mean")
_LEGACY_K = re.compile(r"(?<![A-Za-z0-9])(pass|maj|mean)(?:@|_)(\d+)$")


def k_metric(kind: str, k: int) -> str:
    """The name of an @k metric: `k_metric("pass", 4) == "pass_at_4"`."""
    if kind not in K_METRIC_KINDS:
        raise ValueError(f"k_metric: kind must be one of {K_METRIC_KINDS}, got {kind!r}")
    return f"{kind}_at_{int(k)}"


def canonical_metric_name(name: str) -> str:
    """Today's name for a metric or tag written by any version.

    'pass@4' -> 'pass_at_4' (summaries and eval.json before the rename), 'eval/pass_4' ->
    'eval/pass_at_4' (tensorboardX stored 'eval/pass@4' so), 'eval/maj@8' -> 'eval/maj_at_8';
    every other name is returned unchanged.
    """
    return _LEGACY_K.sub(r"\1_at_\2", name)


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n, c, k: int) -> np.ndarray:
    """Unbiased pass@k estimate per prompt (Chen et al. 2021, eq. 1).

        pass@k = 1 - C(n - c, k) / C(n, k)
               = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)      (no overflow)

    and exactly 1 when n - c < k (every k-subset holds a correct sample).

    Args:
      n: number of samples per prompt, int or int array (broadcasts with `c`).
      c: number of correct samples, int or int array, 0 <= c <= n.
      k: subset size, 1 <= k <= min(n).
    Returns:
      float64 array of the broadcast shape of `n` and `c`.
    """
    n, c = np.broadcast_arrays(np.asarray(n, np.int64), np.asarray(c, np.int64))
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"pass_at_k: k must be a positive int, got {k!r}")
    if n.size == 0:
        return np.zeros(n.shape, np.float64)
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("pass_at_k: need 0 <= c <= n for every prompt")
    if k > n.min():
        raise ValueError(f"pass_at_k: k={k} exceeds the number of samples n={int(n.min())}")
    j = np.arange(int(c.max()))  # the c factors i = n, n-1, ..., n-c+1
    i = n[..., None] - j
    factors = np.where(j < c[..., None], 1.0 - k / np.maximum(i, 1), 1.0)
    return np.where(n - c < k, 1.0, 1.0 - np.prod(factors, axis=-1))


def default_ks(n: int) -> list[int]:
    """Powers of two up to n: [1, 2, 4, ..., <= n]."""
    if n < 1:
        raise ValueError(f"default_ks: n must be >= 1, got {n}")
    return [2**e for e in range(int(math.log2(n)) + 1)]


def pass_at_ks(correct, ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean unbiased pass@k over prompts for each k, from a `[P, n]` correctness table."""
    correct = _as_table(correct, "correct").astype(bool)
    n = correct.shape[1]
    ks = default_ks(n) if ks is None else [int(k) for k in ks]
    c = correct.sum(axis=1)
    return {k: float(np.mean(pass_at_k(n, c, k))) for k in ks}


# ----------------------------------------------------------------------------- maj@k


def _answer_ids(row: Sequence[Hashable]) -> tuple[np.ndarray, list]:
    """Integer id per sample (-1 for None) and the list of distinct answers, in order of first occurrence."""
    index: dict = {}
    ids = np.empty(len(row), np.int64)
    for j, a in enumerate(row):
        ids[j] = -1 if a is None else index.setdefault(a, len(index))
    return ids, list(index)


def _vote(ids: np.ndarray, subsets: np.ndarray, num_answers: int) -> np.ndarray:
    """Majority answer id for each subset row ([R, k] sample positions, ascending); -1 if no answer.

    Ties go to the answer whose first occurrence in the subset comes earliest.
    """
    sub = ids[subsets]  # [R, k]
    r, k = sub.shape
    if num_answers == 0:
        return np.full(r, -1)
    onehot = sub[..., None] == np.arange(num_answers)  # [R, k, U]
    counts = onehot.sum(axis=1)  # [R, U]
    first = np.where(onehot.any(axis=1), onehot.argmax(axis=1), k)
    score = counts * (k + 1) - first  # more votes first, then earlier
    winner = score.argmax(axis=1)
    return np.where(counts.max(axis=1) > 0, winner, -1)


def maj_at_k(
    answers,
    correct,
    k: int,
    *,
    mode: str = "first",
    max_subsets: int = 4096,
    num_resamples: int = 1024,
    seed: int = 0,
) -> np.ndarray:
    """Majority-vote accuracy per prompt (self-consistency; Wang et al. 2023).

    Among k samples of a prompt, the most frequent extracted answer wins
    (samples without an answer, `None`, do not vote; ties go to the answer seen
    first in sample order); maj@k is 1 if the winning answer is correct.

    Args:
      answers: `[P][n]` hashable answers (`None` = no answer).
      correct: `[P][n]` bool table (the correctness of an answer is read at its
        first occurrence), or a callable `correct(prompt_index, answer) -> bool`.
      k: votes per prompt, 1 <= k <= n.
      mode: "first": the vote over the first k samples (deterministic).
        "expected": the expectation over k-subsets drawn uniformly without
        replacement, exact by enumeration when C(n, k) <= `max_subsets`, else
        estimated from `num_resamples` random subsets (numpy `seed`).
    Returns:
      float64 `[P]`.
    """
    if mode not in ("first", "expected"):
        raise ValueError(f"maj_at_k: mode must be one of ('first', 'expected'), got {mode!r}")
    answers = [list(row) for row in answers]
    num_prompts = len(answers)
    if num_prompts == 0:
        return np.zeros(0)
    n = len(answers[0])
    if any(len(row) != n for row in answers):
        raise ValueError("maj_at_k: every prompt needs the same number of answers n")
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k: need 1 <= k <= n={n}, got k={k}")
    table = None
    if not callable(correct):
        table = _as_table(correct, "correct").astype(bool)
        if table.shape != (num_prompts, n):
            raise ValueError(
                f"maj_at_k: correct has shape {table.shape}, answers ({num_prompts}, {n})"
            )

    if mode == "first":
        subsets = np.arange(k)[None]
    elif math.comb(n, k) <= max_subsets:
        subsets = np.asarray(list(_combinations(n, k)), np.int64)
    else:
        rng = np.random.default_rng(seed)
        subsets = np.sort(rng.random((num_resamples, n)).argsort(axis=1)[:, :k], axis=1)

    out = np.empty(num_prompts)
    for p, row in enumerate(answers):
        ids, distinct = _answer_ids(row)
        if table is not None:
            first_pos = [int(np.argmax(ids == u)) for u in range(len(distinct))]
            ok = np.array([table[p, j] for j in first_pos] + [False])
        else:
            ok = np.array([bool(correct(p, a)) for a in distinct] + [False])
        out[p] = ok[_vote(ids, subsets, len(distinct))].mean()  # id -1 indexes the trailing False
    return out


def _combinations(n: int, k: int):
    import itertools

    return itertools.combinations(range(n), k)


# ----------------------------------------------------------------------------- other metrics


def mean_at_k(rewards, k: int) -> np.ndarray:
    """Mean reward of the first k samples per prompt ("avg@k"), float64 `[P]`.

    Samples are i.i.d., so this is an unbiased estimate of the expected reward
    for every k; larger k only lowers its variance.
    """
    rewards = _as_table(rewards, "rewards").astype(np.float64)
    if not 1 <= k <= rewards.shape[1]:
        raise ValueError(f"mean_at_k: need 1 <= k <= n={rewards.shape[1]}, got k={k}")
    return rewards[:, :k].mean(axis=1)


def per_difficulty_accuracy(
    correct, difficulties: Sequence[Hashable]
) -> dict[Any, dict[str, float]]:
    """Accuracy (mean correctness over all samples) per difficulty level.

    Returns `{difficulty: {"accuracy": float, "num_prompts": int}}`, keys sorted.
    """
    correct = _as_table(correct, "correct").astype(np.float64)
    if len(difficulties) != correct.shape[0]:
        raise ValueError(
            f"per_difficulty_accuracy: {len(difficulties)} difficulties for "
            f"{correct.shape[0]} prompts"
        )
    levels = sorted(set(difficulties), key=lambda d: (str(type(d)), d))
    out = {}
    for d in levels:
        rows = np.array([x == d for x in difficulties])
        out[d] = {"accuracy": float(correct[rows].mean()), "num_prompts": int(rows.sum())}
    return out


def answer_entropy(answers, *, count_none: bool = True) -> np.ndarray:
    """Answer-level entropy per prompt, in nats: H = -sum_a p(a) log p(a).

    p(a) is the empirical frequency of extracted answer a among the prompt's
    samples (not the token-level entropy of the policy). With `count_none`,
    samples without an answer form one category of their own; otherwise they
    are dropped (a prompt with no answer at all has entropy 0).
    """
    out = []
    for row in answers:
        row = [a for a in row if count_none or a is not None]
        if not row:
            out.append(0.0)
            continue
        _, counts = np.unique(np.array(_answer_ids(row)[0]), return_counts=True)
        p = counts / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return np.asarray(out)


def distinct_correct_answers(answers, correct) -> np.ndarray:
    """Number of distinct answers among the correct samples, per prompt (int `[P]`).

    Answers are compared as given: normalise them (e.g. the task's canonical
    form) before calling if equivalent answers should count once.
    """
    correct = _as_table(correct, "correct").astype(bool)
    return np.asarray(
        [
            len({a for a, ok in zip(row, okrow) if ok and a is not None})
            for row, okrow in zip(answers, correct)
        ],
        np.int64,
    )


def fit_entropy_performance(entropies, performances) -> tuple[float, float, float]:
    """Fit R = -a * exp(H) + b by linear least squares in exp(H) (Cui et al. 2025).

    Args:
      entropies: policy entropy H at each point of a run, `[M]`.
      performances: performance R at the same points, `[M]`.
    Returns:
      (a, b, r2) with r2 the coefficient of determination of the fit.
    """
    h = np.asarray(entropies, np.float64).ravel()
    r = np.asarray(performances, np.float64).ravel()
    if h.shape != r.shape or h.size < 2:
        raise ValueError(
            f"fit_entropy_performance: need two equal-length series of >= 2 points, "
            f"got {h.shape} and {r.shape}"
        )
    x = np.exp(h)
    design = np.stack([-x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    resid = r - design @ np.array([a, b])
    ss_tot = float(((r - r.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), r2


# ----------------------------------------------------------------------------- summary


def summarize_samples(
    examples,
    completions,
    rewards,
    answers=None,
    ks: Sequence[int] | None = None,
    *,
    correct=None,
    threshold: float = 0.5,
    difficulty_key: str = "difficulty",
    maj_mode: str = "first",
) -> dict[str, float]:
    """Flat dict of scalar metrics over `P` prompts with `n` samples each.

    Args:
      examples: `P` task examples (mappings or objects); if they carry
        `difficulty_key`, per-difficulty accuracies are added. May be None.
      completions: `[P][n]` completion strings.
      rewards: `[P][n]` rewards.
      answers: `[P][n]` extracted answers (`None` = none); defaults to the
        stripped completions.
      ks: the k values (each <= n); default powers of two up to n.
      correct: `[P][n]` bool table; default `rewards > threshold`.
      maj_mode: see `maj_at_k`.
    Returns:
      keys `num_prompts`, `num_samples`, `accuracy`, `reward`, `pass_at_{k}`,
      `maj_at_{k}`, `mean_at_{k}`, `answer_entropy`, `distinct_correct_answers`,
      `completion_chars`, and `accuracy/difficulty_{d}` per difficulty (characters of `d`
      outside `[A-Za-z0-9_.-]` become `_`). Every key is a legal TensorBoard tag.
    """
    rewards = _as_table(rewards, "rewards").astype(np.float64)
    num_prompts, n = rewards.shape
    if len(completions) != num_prompts or any(len(row) != n for row in completions):
        raise ValueError(
            f"summarize_samples: completions must be [P={num_prompts}][n={n}] like rewards"
        )
    if examples is not None and len(examples) != num_prompts:
        raise ValueError(f"summarize_samples: {len(examples)} examples for {num_prompts} prompts")
    if answers is None:
        answers = [[str(c).strip() for c in row] for row in completions]
    if len(answers) != num_prompts or any(len(row) != n for row in answers):
        raise ValueError(
            f"summarize_samples: answers must be [P={num_prompts}][n={n}] like rewards"
        )
    correct = rewards > threshold if correct is None else _as_table(correct, "correct").astype(bool)
    if correct.shape != rewards.shape:
        raise ValueError(
            f"summarize_samples: correct has shape {correct.shape}, rewards {rewards.shape}"
        )
    ks = default_ks(n) if ks is None else [int(k) for k in ks]
    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"summarize_samples: every k must be in [1, n={n}], got {ks}")

    out: dict[str, float] = {
        "num_prompts": float(num_prompts),
        "num_samples": float(n),
        "accuracy": float(correct.mean()),
        "reward": float(rewards.mean()),
    }
    c = correct.sum(axis=1)
    for k in ks:
        out[k_metric("pass", k)] = float(pass_at_k(n, c, k).mean())
    for k in ks:
        out[k_metric("maj", k)] = float(maj_at_k(answers, correct, k, mode=maj_mode).mean())
    for k in ks:
        out[k_metric("mean", k)] = float(mean_at_k(rewards, k).mean())
    out["answer_entropy"] = float(answer_entropy(answers).mean())
    out["distinct_correct_answers"] = float(distinct_correct_answers(answers, correct).mean())
    out["completion_chars"] = float(np.mean([len(s) for row in completions for s in row]))
    if examples is not None:
        levels = [_get(e, difficulty_key) for e in examples]
        if all(d is not None for d in levels):
            for d, v in per_difficulty_accuracy(correct, levels).items():
                out[f"accuracy/difficulty_{_tag_part(d)}"] = v["accuracy"]
    return out


def _get(example, key):
    if isinstance(example, Mapping):
        return example.get(key)
    return getattr(example, key, None)


def _as_table(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [P, n] table, got shape {arr.shape}")
    return arr


def format_table(metrics: Mapping[str, float]) -> str:
    """A Markdown table k | pass@k | maj@k | mean@k, followed by the other metrics.

    Takes `summarize_samples` dicts, with or without an `eval/` prefix, in today's names or the
    older `pass@k` ones.
    """
    metrics = {canonical_metric_name(k): v for k, v in metrics.items()}
    prefix = "eval/" if any(k.startswith("eval/pass_at_") for k in metrics) else ""
    ks = sorted(
        int(m.group(1))
        for k in metrics
        if (m := re.fullmatch(re.escape(prefix) + r"pass_at_(\d+)", k))
    )
    nan = float("nan")
    lines = ["| k | pass@k | maj@k | mean@k |", "|---|---|---|---|"]
    for k in ks:
        row = [metrics.get(prefix + k_metric(kind, k), nan) for kind in K_METRIC_KINDS]
        lines.append(f"| {k} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    k_names = {prefix + k_metric(kind, k) for kind in K_METRIC_KINDS for k in ks}
    rest = [k for k in metrics if k not in k_names]
    lines += [""] + [f"{k}: {metrics[k]:.4g}" for k in rest]
    return "\n".join(lines)


def _tag_part(value) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(value))
