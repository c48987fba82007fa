"""Evaluation metrics for sampled completions: pass@k, maj@k, mean@k, diversity.

All functions here are host-side numpy over per-prompt sample tables: `P`
prompts, `n` samples each. A table is either a `[P, n]` array or a list of `P`
lists of length `n` (answers may be any hashable value; `None` means "no
answer could be extracted").

- `pass_at_k`: unbiased pass@k (Chen et al. 2021, "Evaluating Large Language
  Models Trained on Code"), for every k <= n.
- `maj_at_k`: majority vote (self-consistency) accuracy.
- `mean_at_k`: mean reward of k samples ("avg@k").
- `per_difficulty_accuracy`, `answer_entropy`, `distinct_correct_answers`.
- `fit_entropy_performance`: R = -a * exp(H) + b (Cui et al. 2025, "The Entropy
  Mechanism of Reinforcement Learning for Reasoning Language Models").
- `summarize_samples`: the flat dict of scalars that the evaluation CLI and
  the trainer's periodic evaluation log (`eval/<key>`).
- `evaluate_task`: sample n completions per held-out prompt (through a given
  sampling function), score them with the task, summarise.

The CLI samples from a trained policy and prints / writes the metrics:

    python -m jaxrl_llm.evaluation --config=configs/grpo_arith.py --checkpoint=runs/grpo_arith \
        --n=64 --k=1,2,4,8,16,32,64 [--size=200] [--temperature=1.0] [--config.a.b=v]

`--checkpoint` is a run workdir (the latest orbax checkpoint in
`<dir>/checkpoints`, or `--step`) or a Hugging Face folder (`*.safetensors`).

The JSON file an evaluation writes next to a run (`<workdir>/eval.json`, read
by `experiments/collate.py`) is `{"step": int, "n": int, "metrics": {...}}`
with `metrics` the dict of `summarize_samples`; see `write_eval_json`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
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
    "write_eval_json",
    "read_eval_json",
    "first_line_answer",
    "evaluate_task",
    "format_table",
]

EVAL_JSON = "eval.json"


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
      keys `num_prompts`, `num_samples`, `accuracy`, `reward`, `pass@{k}`,
      `maj@{k}`, `mean@{k}`, `answer_entropy`, `distinct_correct_answers`,
      `completion_chars`, and `accuracy/difficulty_{d}` per difficulty.
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
        out[f"pass@{k}"] = float(pass_at_k(n, c, k).mean())
    for k in ks:
        out[f"maj@{k}"] = float(maj_at_k(answers, correct, k, mode=maj_mode).mean())
    for k in ks:
        out[f"mean@{k}"] = float(mean_at_k(rewards, k).mean())
    out["answer_entropy"] = float(answer_entropy(answers).mean())
    out["distinct_correct_answers"] = float(distinct_correct_answers(answers, correct).mean())
    out["completion_chars"] = float(np.mean([len(s) for row in completions for s in row]))
    if examples is not None:
        levels = [_get(e, difficulty_key) for e in examples]
        if all(d is not None for d in levels):
            for d, v in per_difficulty_accuracy(correct, levels).items():
                out[f"accuracy/difficulty_{d}"] = v["accuracy"]
    return out


def write_eval_json(
    workdir: str, metrics: Mapping[str, float], *, step: int, n: int, filename: str = EVAL_JSON
) -> str:
    """Write `{"step", "n", "metrics"}` to `<workdir>/eval.json` (atomically); returns the path."""
    path = os.path.join(workdir, filename)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(
            {"step": int(step), "n": int(n), "metrics": {k: float(v) for k, v in metrics.items()}},
            f,
            indent=1,
            sort_keys=True,
        )
    os.replace(tmp, path)
    return path


def read_eval_json(workdir: str, filename: str = EVAL_JSON) -> dict | None:
    """The dict `write_eval_json` wrote, or None if the file does not exist."""
    path = os.path.join(workdir, filename)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _get(example, key):
    if isinstance(example, Mapping):
        return example.get(key)
    return getattr(example, key, None)


def _as_table(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [P, n] table, got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------- sampling a task


def first_line_answer(completion: str, example=None) -> str | None:
    """The stripped first non-empty line of a completion (None if there is none)."""
    del example
    for line in str(completion).splitlines():
        if line.strip():
            return line.strip()
    return None


def _default_answer_fn(task) -> Callable:
    fn = getattr(task, "extract_answer", None)
    if fn is None:
        return first_line_answer
    return lambda completion, example: fn(completion)


def _default_score_fn(task) -> Callable:
    def score(completions, examples):
        from jaxrl_llm.tasks import score_in_process  # host-only, no jax

        rewards, info = score_in_process(task, list(completions), list(examples))
        rewards = np.asarray(rewards, np.float64)
        correct = info.get("components", {}).get("correct")
        correct = rewards >= 1.0 - 1e-6 if correct is None else np.asarray(correct) > 0.5
        return rewards, correct

    return score


def evaluate_task(
    task,
    examples,
    sample_fn: Callable,
    *,
    n: int,
    ks: Sequence[int] | None = None,
    batch_prompts: int = 8,
    score_fn: Callable | None = None,
    answer_fn: Callable | None = None,
    maj_mode: str = "first",
) -> tuple[dict, dict]:
    """Sample `n` completions for every example, score them, and summarise.

    Args:
      task: a `jaxrl_llm.tasks` task (reward / `reward_details`; optional `extract_answer`).
      examples: the P held-out examples.
      sample_fn: `sample_fn(chunk_examples, chunk_index) -> list[str]` of
        `len(chunk_examples) * n` completions, rows grouped per prompt (row r
        belongs to prompt r // n). Chunks always hold `batch_prompts` examples
        (the last one is padded by repeating its final example, and the padding
        rows are dropped), so a jitted sampler compiles once.
      n, ks: samples per prompt and the k values (default powers of two <= n).
      score_fn: `(completions, examples) -> (rewards [N], correct [N] bool)`;
        default: the task's reward in-process, correctness from its `correct`
        component, else reward >= 1.
      answer_fn: `(completion, example) -> answer | None` for maj@k and the
        diversity metrics; default `task.extract_answer` or `first_line_answer`.
    Returns:
      (metrics from `summarize_samples`, {"completions", "rewards", "correct"} as [P][n] tables).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate_task: no examples")
    if n < 1 or batch_prompts < 1:
        raise ValueError(
            f"evaluate_task: n and batch_prompts must be >= 1, got {n}, {batch_prompts}"
        )
    score_fn = score_fn or _default_score_fn(task)
    answer_fn = answer_fn or _default_answer_fn(task)
    completions: list[list[str]] = []
    for i, start in enumerate(range(0, len(examples), batch_prompts)):
        chunk = examples[start : start + batch_prompts]
        padded = chunk + [chunk[-1]] * (batch_prompts - len(chunk))
        out = list(sample_fn(padded, i))
        if len(out) != batch_prompts * n:
            raise ValueError(
                f"evaluate_task: sample_fn returned {len(out)} completions for "
                f"{batch_prompts} prompts x n={n}"
            )
        completions += [out[j * n : (j + 1) * n] for j in range(len(chunk))]
    flat = [c for row in completions for c in row]
    rep = [e for e in examples for _ in range(n)]
    rewards, correct = score_fn(flat, rep)
    rewards = np.asarray(rewards, np.float64).reshape(len(examples), n)
    correct = np.asarray(correct, bool).reshape(len(examples), n)
    answers = [[answer_fn(c, e) for c in row] for row, e in zip(completions, examples)]
    metrics = summarize_samples(
        examples, completions, rewards, answers, ks, correct=correct, maj_mode=maj_mode
    )
    return metrics, {"completions": completions, "rewards": rewards, "correct": correct}


def format_table(metrics: Mapping[str, float]) -> str:
    """A Markdown table k | pass@k | maj@k | mean@k, followed by the other metrics."""
    ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("pass@"))
    lines = ["| k | pass@k | maj@k | mean@k |", "|---|---|---|---|"]
    for k in ks:
        lines.append(
            f"| {k} | {metrics[f'pass@{k}']:.4f} | {metrics.get(f'maj@{k}', float('nan')):.4f} | "
            f"{metrics.get(f'mean@{k}', float('nan')):.4f} |"
        )
    rest = [k for k in metrics if "@" not in k]
    lines += [""] + [f"{k}: {metrics[k]:.4g}" for k in rest]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the CLI


def load_policy(config, checkpoint: str, *, step: int | None = None):
    """(model_config, params, tokenizer, mesh, rules, step) for a run workdir or an HF folder.

    A run workdir is read from its orbax checkpoints (the latest, or `step`);
    only the policy parameters are kept. A folder with `*.safetensors` is read
    with `models.load_hf`. Parameters are placed with the config's mesh and rules.
    """
    import glob
    import tempfile

    import jax

    from jaxrl_llm import models, parallel
    from jaxrl_llm.trainers import rl

    ckpt_dir = os.path.join(checkpoint, "checkpoints")
    is_run = os.path.isdir(ckpt_dir)
    is_hf = bool(glob.glob(os.path.join(checkpoint, "*.safetensors")))
    if not (is_run or is_hf):
        raise FileNotFoundError(
            f"--checkpoint={checkpoint}: neither a run workdir (no checkpoints/) "
            "nor a Hugging Face folder (no *.safetensors)"
        )
    mesh = parallel.make_mesh({k: config.mesh[k] for k in ("data", "fsdp", "tensor")})
    rules = tuple(tuple(r) for r in config.mesh.rules) or parallel.DEFAULT_RULES
    tok_dir = checkpoint if is_run or config.tokenizer.path != "builtin" else tempfile.mkdtemp()
    tokenizer = rl.build_tokenizer(config, tok_dir)
    if is_hf:
        model_config, params = models.load_hf(checkpoint, mesh=mesh, rules=rules)
        return model_config, params, tokenizer, mesh, rules, step
    import orbax.checkpoint as ocp

    model_config = rl.build_model_config(config, tokenizer)
    manager = ocp.CheckpointManager(
        os.path.abspath(ckpt_dir), item_handlers=dict(state=ocp.PyTreeCheckpointHandler())
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    shardings = parallel.logical_to_sharding(models.logical_axes(model_config), mesh, rules)
    abstract = jax.eval_shape(models.init_params, model_config, jax.random.key(0))
    item = {
        "params": jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
    }
    # Only the policy is read (partial restore): no optimiser state, reference or critic.
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            )
        ),
    )
    manager.close()
    return model_config, restored.state["params"], tokenizer, mesh, rules, step


def _make_sample_fn(config, model_config, params, tokenizer, mesh, rules, *, n, temperature, seed):
    import jax

    from jaxrl_llm import rollout as rollout_lib
    from jaxrl_llm.trainers import text

    sampling = rollout_lib.SamplingParams(
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=temperature if temperature > 0 else 1.0,
        greedy=temperature <= 0,
        top_k=config.rollout.top_k,
        top_p=config.rollout.top_p,
        min_p=config.rollout.min_p,
        stop_token_ids=text.stop_ids(tokenizer),
        n=n,
    )
    key = jax.random.key(seed)
    pad_id = int(tokenizer.pad_token_id or 0)

    def sample(examples, index):
        ids = text.encode_prompts(tokenizer, [e.prompt for e in examples])
        prompts = rollout_lib.pad_prompts(
            ids, bucket_lengths=tuple(config.rollout.prompt_buckets), pad_id=pad_id
        )
        ro = rollout_lib.generate(
            params,
            model_config,
            prompts,
            jax.random.fold_in(key, index),
            sampling,
            mesh=mesh,
            rules=rules,
        )
        return rollout_lib.decode_completions(tokenizer, ro)

    return sample


def _cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Recipe file (configs/*.py[:arg]).", lock_config=True
    )
    flags.DEFINE_string("checkpoint", None, "Run workdir (orbax checkpoints) or HF folder.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("n", 64, "Samples per prompt.")
    flags.DEFINE_string("k", "", "Comma-separated k values (default: powers of two <= n).")
    flags.DEFINE_integer("size", None, "Held-out prompts (default: config.eval.size).")
    flags.DEFINE_string("split", "test", "Task split.")
    flags.DEFINE_integer("seed", None, "Prompt and sampling seed (default: config.eval.seed).")
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature (<= 0: greedy).")
    flags.DEFINE_integer(
        "batch_prompts", 0, "Prompts per sampler call (default: train.prompts_per_step)."
    )
    flags.DEFINE_enum(
        "maj_mode",
        "first",
        ["first", "expected"],
        "maj@k over the first k samples or the expectation over k-subsets.",
    )
    flags.DEFINE_string("out", None, "Where to write eval.json (default: <checkpoint>/eval.json).")
    FLAGS = flags.FLAGS

    def main(argv):
        del argv
        if FLAGS.checkpoint is None:
            raise app.UsageError("--checkpoint is required")
        config = config_flag.value
        from jaxrl_llm import tasks

        model_config, params, tokenizer, mesh, rules, step = load_policy(
            config, FLAGS.checkpoint, step=FLAGS.step
        )
        task = tasks.make_task(config.task.name, **config.task.kwargs.to_dict())
        seed = config.eval.seed if FLAGS.seed is None else FLAGS.seed
        examples = task.examples(FLAGS.split, FLAGS.size or config.eval.size, seed)
        ks = [int(k) for k in FLAGS.k.split(",") if k.strip()] or None
        sample_fn = _make_sample_fn(
            config,
            model_config,
            params,
            tokenizer,
            mesh,
            rules,
            n=FLAGS.n,
            temperature=FLAGS.temperature,
            seed=seed,
        )
        metrics, _ = evaluate_task(
            task,
            examples,
            sample_fn,
            n=FLAGS.n,
            ks=ks,
            batch_prompts=FLAGS.batch_prompts or config.train.prompts_per_step,
            maj_mode=FLAGS.maj_mode,
        )
        print(format_table(metrics))
        out = FLAGS.out or os.path.join(FLAGS.checkpoint, EVAL_JSON)
        write_eval_json(
            os.path.dirname(os.path.abspath(out)),
            metrics,
            step=step or 0,
            n=FLAGS.n,
            filename=os.path.basename(out),
        )
        print(f"wrote {out}")

    app.run(main)


if __name__ == "__main__":
    _cli()
