"""GRPO on GSM8K from a local Hugging Face checkpoint folder (GPU / TPU).

Command:   python -m jaxrl_llm.main --config=configs/grpo_hf_gsm8k.py:/ckpt/Qwen2.5-0.5B-Instruct,data=/data/gsm8k \
               --workdir=runs/grpo_gsm8k
           The argument is "MODEL_DIR[,data=PATH][,runlocal]": MODEL_DIR is an HF folder
           (config.json, *.safetensors, tokenizer files); PATH is a GSM8K-format file
           (.json / .jsonl / .parquet with 'question' and 'answer' '… #### N' fields, split
           train / test by a stable hash), a folder with train.* and test.* files, or a hub
           name (default 'openai/gsm8k', needs network or a local datasets cache).
Laptop:    ...:MODEL_DIR,data=FILE,runlocal  — 2 steps of 8 prompts × 2 samples, 16 new tokens
           (the test suite runs this with a tiny random HF model and a generated jsonl).
Hardware:  one 80 GB GPU or a TPU v4-8 for a 0.5B–1.5B model; about 1 h for 200 steps of
           32 prompts × 8 samples × 512 new tokens (an estimate, not a measurement).
Expected:  held-out GSM8K accuracy (greedy, last number / #### / \\boxed{}) rises over the
           checkpoint's; for Qwen2.5-0.5B-Instruct a few points within 200 steps.
"""

import ml_collections

from jaxrl_llm.trainers.config import base_config

TEMPLATE = (
    "Question: {question}\n"
    "Solve it step by step, then write the final number after '####'.\n"
    "Answer:"
)


def _parse(arg):
    if not arg:
        raise ValueError(
            "configs/grpo_hf_gsm8k.py needs an argument: MODEL_DIR[,data=PATH][,runlocal]"
        )
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    opts = {"model": parts[0], "data": "openai/gsm8k", "runlocal": False}
    for p in parts[1:]:
        if p == "runlocal":
            opts["runlocal"] = True
        elif p.startswith("data="):
            opts["data"] = p[len("data=") :]
        else:
            raise ValueError(
                f"unknown option {p!r} in the config argument; allowed: data=PATH, runlocal"
            )
    return opts


def get_config(arg=None):
    opts = _parse(arg)
    c = base_config(runlocal=opts["runlocal"])
    c.model.hf_path = opts["model"]
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.tokenizer.path = opts["model"]
    c.task.name = "gsm8k"
    c.task.kwargs = ml_collections.ConfigDict(
        dict(path=opts["data"], prompt_template=TEMPLATE, extract_mode="auto", test_fraction=0.1)
    )
    c.task.reward_workers = 4
    c.task.reward_timeout_s = 10.0
    c.rollout.max_new_tokens = 512
    c.rollout.temperature = 1.0
    c.rollout.prompt_buckets = (128, 256, 512)
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-mean"
    c.algo.kl.coef = 0.04
    c.algo.kl.kind = "k3"
    c.algo.kl.placement = "loss"
    c.train.prompts_per_step = 32
    c.train.samples_per_prompt = 8
    c.train.minibatch_size = 64
    c.train.microbatch_size = 16
    c.train.steps = 200
    c.train.logprob_chunk = 128
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.sft.steps = 0
    c.checkpoint.every = 25
    c.eval.every = 50
    c.eval.size = 500
    c.eval.temperature = 0.0
    if opts["runlocal"]:
        c.model.dtype = "float32"
        c.task.reward_workers = 1
        c.rollout.max_new_tokens = 16
        c.rollout.prompt_buckets = (64, 128, 256)
        c.train.prompts_per_step = 8  # divides over 8 (virtual) devices
        c.train.samples_per_prompt = 2
        c.train.minibatch_size = 0
        c.train.microbatch_size = 0
        c.train.steps = 2
        c.train.logprob_chunk = 0
        c.checkpoint.every = 2
        c.eval.every = 0
        c.eval.size = 8
    return c
