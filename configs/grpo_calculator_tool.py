"""GRPO over multi-turn calculator episodes: the model learns to call the `calc` tool.

Command:   python -m jaxrl_llm.main --config=configs/grpo_calculator_tool.py --workdir=runs/calc
Laptop:    python -m jaxrl_llm.main --config=configs/grpo_calculator_tool.py:runlocal --workdir=runs/x
Hardware:  a 2-core CPU (tiny inline model, char-level tokenizer).
Task:      products of two 2-digit numbers (env `calculator`, the question alone as the prompt:
           `instructions=False`), at most 3 actions of <= 32 tokens, observations <= 8 tokens;
           reward 1 for the exact `<answer>`.
SFT:       transcripts of the environment's demonstrations, half of them answering without the
           tool (`sft.flawed_fraction` = 0.5 is the no-tool share), so the warm start calls the
           tool on about half of the problems and cannot multiply in its head.
Credit:    trajectory-level GRPO on the episode return (`env.credit = "turn"` for per-turn returns).
Expected:  runlocal, measured (docs/envs.md): held-out success with the tool 0.395 -> 0.82
           (tool disabled: 0.00), valid-tool-call rate 0.405 -> 0.945, in 40 steps from a
           600-step SFT at lr 2e-3 (1500 steps at 1e-3 gave 0.43 -> 0.885).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    runlocal = arg == "runlocal"
    c = base_config(runlocal=runlocal)
    c.env.name = "calculator"
    c.env.kwargs = {"digits": (2,), "ops": "*", "instructions": False}
    c.env.max_turns = 3
    c.env.max_action_tokens = 32
    c.env.max_observation_tokens = 8
    c.env.credit = "episode"
    c.rollout.max_new_tokens = 64
    c.rollout.prompt_buckets = (32, 256)
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-mean"
    c.train.prompts_per_step = 8
    c.train.samples_per_prompt = 4
    c.train.steps = 40 if runlocal else 100
    c.optim.lr = 2e-4
    c.sft.steps = 600 if runlocal else 2500
    if runlocal:  # a shorter warm start, so the CI learning test stays near its time target
        c.sft.lr = 2e-3
    c.sft.flawed_fraction = 0.5
    c.eval.size = 100 if runlocal else 200
    c.eval.n = 2
    c.eval.ks = (1, 2)
    c.eval.every = 0
    c.checkpoint.every = 0
    return c


def sweep(add):
    for credit in ("episode", "turn"):
        add(**{"env.credit": credit})
