"""Held-out evaluation: sample n completions per prompt, score them, summarise; and its CLI.

The metric maths (pass@k, maj@k, mean@k, diversity, `summarize_samples`, `format_table`) lives
in `jaxrl_llm.passk`, which imports nothing from the trainers; it is re-exported here, so
`evaluation.summarize_samples` and friends keep working.

- `evaluate_task`: sample n completions per held-out prompt (through a given sampling
  function), score them with the task, summarise.
- `eval_sampling_params` (defined in `trainers/text.py`, re-exported): the held-out
  `SamplingParams` of a config, used by the CLI and by the trainer's periodic evaluation, so
  that `eval/accuracy` and `eval.json` sample alike (temperature `eval.temperature`, top-k /
  top-p / min-p of `rollout`).
- `write_eval_json` / `read_eval_json`: `<workdir>/eval.json`.

The CLI samples from a trained policy and prints / writes the metrics:

    python -m jaxrl_llm.evaluation --config=configs/grpo_arith.py --checkpoint=runs/grpo_arith \
        --n=64 --k=1,2,4,8,16,32,64 [--size=200] [--temperature=1.0] [--per_prompt] \
        [--config.a.b=v]

`--checkpoint` is a run workdir (the newest orbax checkpoint in `<dir>/checkpoints` that
restores, or `--step`) or a Hugging Face folder (`*.safetensors`). The CLI prints which
checkpoint step it evaluated. `--temperature` defaults to 1.0 (pass@k needs sampling), not to
`eval.temperature`, which may be 0 (greedy) for the trainer's held-out accuracy.

The JSON file an evaluation writes next to a run (`<workdir>/eval.json`, read by
`experiments/collate.py`) is `{"step": int | null, "n": int, "checkpoint": str, "metrics":
{...}}` with `step` the checkpoint step evaluated (null for a Hugging Face folder) and
`metrics` the dict of `summarize_samples`; see `write_eval_json`. With `--per_prompt` it also
holds `"correct_counts"` (`[P]` ints: correct samples out of n per held-out prompt, in prompt
order) and `"prompts"` (`[P]` prompt texts, so that paired analyses can check two evaluations
saw the same prompts in the same order): `experiments.repro_analysis.per_prompt_pass_at_k`
turns the counts into per-prompt pass@k, whose prompt mean is the file's `pass_at_{k}`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxrl_llm import workdir as workdir_lib
from jaxrl_llm.passk import (
    K_METRIC_KINDS,
    answer_entropy,
    canonical_metric_name,
    default_ks,
    distinct_correct_answers,
    fit_entropy_performance,
    format_table,
    k_metric,
    maj_at_k,
    mean_at_k,
    pass_at_k,
    pass_at_ks,
    per_difficulty_accuracy,
    summarize_samples,
)
from jaxrl_llm.trainers.text import eval_sampling_params  # one definition, shared with the trainer

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
    "k_metric",
    "canonical_metric_name",
    "K_METRIC_KINDS",
    "write_eval_json",
    "read_eval_json",
    "per_prompt_record",
    "first_line_answer",
    "evaluate_task",
    "eval_sampling_params",
    "format_table",
    "load_policy",
]

EVAL_JSON = workdir_lib.EVAL_JSON


def write_eval_json(
    workdir: str,
    metrics: Mapping[str, float],
    *,
    step: int | None,
    n: int,
    filename: str = EVAL_JSON,
    checkpoint: str | None = None,
    per_prompt: Mapping[str, Sequence] | None = None,
) -> str:
    """Write `{"step", "n", "checkpoint", "metrics"}` to `<workdir>/eval.json` atomically.

    `step` is the checkpoint step evaluated (None: not a run checkpoint, e.g. an HF folder).
    `per_prompt` adds top-level per-prompt lists (the CLI's `--per_prompt`: `correct_counts`,
    `prompts`); their keys must not be one of the fixed ones. Returns the path.
    """
    record = {
        "step": None if step is None else int(step),
        "n": int(n),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    if checkpoint is not None:
        record["checkpoint"] = checkpoint
    for key, values in (per_prompt or {}).items():
        if key in ("step", "n", "metrics", "checkpoint"):
            raise ValueError(f"write_eval_json: per-prompt key {key!r} is a fixed field")
        record[key] = list(values)
    return workdir_lib.write_json_atomic(
        os.path.join(workdir, filename), record, indent=1, sort_keys=True
    )


def read_eval_json(workdir: str, filename: str = EVAL_JSON) -> dict | None:
    """The dict `write_eval_json` wrote, or None if the file does not exist."""
    return workdir_lib.read_json(os.path.join(workdir, filename))


def per_prompt_record(examples, correct) -> dict[str, list]:
    """`{"correct_counts": [P] ints, "prompts": [P] str}` from the `[P][n]` correct table of
    `evaluate_task` (the per-prompt data `--per_prompt` writes into eval.json)."""
    correct = np.asarray(correct, bool)
    if correct.ndim != 2 or correct.shape[0] != len(examples):
        raise ValueError(
            f"per_prompt_record: correct must be [P={len(examples)}, n], got {correct.shape}"
        )
    return {
        "correct_counts": [int(c) for c in correct.sum(axis=1)],
        "prompts": [str(getattr(e, "prompt", e)) for e in examples],
    }


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


# ----------------------------------------------------------------------------- the CLI


def load_policy(config, checkpoint: str, *, step: int | None = None):
    """(model_config, params, tokenizer, mesh, rules, step) for a run workdir or an HF folder.

    A run workdir is read from its orbax checkpoints: `step`, or else the newest step that
    restores (an unreadable newer step is logged, one line each, and skipped; nothing is
    moved). Only the policy parameters are kept. A folder with `*.safetensors` is read with
    `models.load_hf` (step None). Parameters are placed with the config's mesh and rules.
    A LoRA run (`model.lora_rank > 0`) checkpoints adapters: they are merged into the run's
    base (`_lora_base`), and the merged params are returned.
    """
    import glob
    import tempfile

    import jax

    from jaxrl_llm import models, parallel
    from jaxrl_llm.checkpoint import CheckpointRestoreError
    from jaxrl_llm.trainers import rl

    ckpt_dir = workdir_lib.checkpoint_dir(checkpoint)
    is_run = os.path.isdir(ckpt_dir)
    is_hf = bool(glob.glob(os.path.join(checkpoint, "*.safetensors")))
    if not (is_run or is_hf):
        raise FileNotFoundError(
            f"--checkpoint={checkpoint}: neither a run workdir (no {workdir_lib.CHECKPOINT_DIR}/) "
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

    from jaxrl_llm.checkpoint import one_line_error

    model_config = rl.build_model_config(config, tokenizer)
    manager = ocp.CheckpointManager(
        ckpt_dir, item_handlers=dict(state=ocp.PyTreeCheckpointHandler())
    )
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    shardings = parallel.logical_to_sharding(models.logical_axes(model_config), mesh, rules)
    abstract = jax.eval_shape(models.init_params, model_config, jax.random.key(0))
    base = None
    if config.model.lora_rank:
        base = _lora_base(config, checkpoint, model_config, mesh, rules)
        m = config.model
        abstract = jax.eval_shape(
            lambda p: models.init_lora(
                model_config,
                p,
                jax.random.key(0),
                rank=m.lora_rank,
                alpha=m.lora_alpha,
                targets=m.lora_targets,
            ),
            base,
        )
        specs = models.lora_logical_axes(model_config, abstract)
        shardings = parallel.logical_to_sharding(specs, mesh, rules, shapes=abstract)
    item = {
        "params": jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
    }
    failures = []
    try:
        for s in steps:
            try:
                # Only the policy is read (partial restore): no optimiser state, reference, critic.
                restored = manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(
                            item=item,
                            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                            partial_restore=True,
                        )
                    ),
                )
            except Exception as e:  # noqa: BLE001 - an unreadable step: report it, try the next
                failures.append(f"step {s}: {one_line_error(e)}")
                logging.warning("checkpoint %s does not restore, skipped", failures[-1])
                continue
            params = restored.state["params"]
            if base is not None:
                params = models.merge_lora(model_config, base, params)
            return model_config, params, tokenizer, mesh, rules, s
    finally:
        manager.close()
    raise CheckpointRestoreError(
        f"no checkpoint in {ckpt_dir} restores the policy:\n  " + "\n  ".join(failures)
    )


def _lora_base(config, workdir, model_config, mesh, rules):
    """The frozen base of a LoRA run, found as its trainer found it: `model.init_checkpoint` /
    `model.hf_path`, else the run's SFT folder, else the random init of seed `sft.seed`; with
    `model.lora_quantize` (QLoRA) quantised again as the trainer did (deterministic)."""
    import jax

    from jaxrl_llm import models, parallel
    from jaxrl_llm.models import quant

    path = config.model.init_checkpoint or config.model.hf_path
    if not path and workdir_lib.has_sft_model(workdir):
        path = workdir_lib.sft_dir(workdir)
    if path:
        base = models.load_hf(path, mesh=mesh, rules=rules, dtype=config.model.param_dtype)[1]
    elif config.sft.steps > 0:
        raise FileNotFoundError(
            f"the LoRA run {workdir} has no SFT folder ({workdir_lib.sft_dir(workdir)}): its "
            "frozen base cannot be rebuilt"
        )
    else:
        shardings = parallel.logical_to_sharding(models.logical_axes(model_config), mesh, rules)
        init = jax.jit(models.init_params, static_argnums=0, out_shardings=shardings)
        base = init(model_config, jax.random.key(config.sft.seed))
    m = config.model
    if m.lora_quantize:
        fn = lambda p: quant.quantize_params(p, m.lora_quantize, m.lora_targets)  # noqa: E731
        shapes = jax.eval_shape(fn, base)
        specs = quant.quantized_logical_axes(model_config, shapes)
        shardings = parallel.logical_to_sharding(specs, mesh, rules, shapes=shapes)
        base = jax.jit(fn, out_shardings=shardings)(base)
    return base


def _make_sample_fn(config, model_config, params, tokenizer, mesh, rules, *, sampling, seed):
    import jax

    from jaxrl_llm import rollout as rollout_lib
    from jaxrl_llm.trainers import text

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
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest that restores).")
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
    flags.DEFINE_bool(
        "per_prompt",
        False,
        "Also write correct_counts ([P] ints, correct samples out of n) and prompts ([P] texts).",
    )
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
        if step is None:
            print(f"evaluating {FLAGS.checkpoint} (Hugging Face folder, no checkpoint step)")
        else:
            print(f"evaluating checkpoint step {step} of {FLAGS.checkpoint}")
        sampling = eval_sampling_params(config, tokenizer, n=FLAGS.n, temperature=FLAGS.temperature)
        sample_fn = _make_sample_fn(
            config, model_config, params, tokenizer, mesh, rules, sampling=sampling, seed=seed
        )
        metrics, tables = evaluate_task(
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
            step=step,
            n=FLAGS.n,
            filename=os.path.basename(out),
            checkpoint=os.path.abspath(FLAGS.checkpoint),
            per_prompt=per_prompt_record(examples, tables["correct"]) if FLAGS.per_prompt else None,
        )
        print(f"wrote {out} (checkpoint step {step})")

    app.run(main)


if __name__ == "__main__":
    _cli()
