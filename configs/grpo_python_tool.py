"""GRPO over Python-tool episodes: the model learns to write a program, run it in the sandbox
and answer with what it printed.

Command:   python -m jaxrl_llm.main --config=configs/grpo_python_tool.py --workdir=runs/py
Laptop:    python -m jaxrl_llm.main --config=configs/grpo_python_tool.py:runlocal --workdir=runs/x
Experiment: python experiments/agent_env.py --recipe=configs/grpo_python_tool.py --runlocal \
               --workdir=runs/python_tool
Hardware:  a 2-core CPU (tiny inline model, char-level tokenizer); the `python` tool runs in
           the sandbox (envs/sandbox.py), which must be available (it fails closed).
Task:      env `python_tool`: sums of squares of 1..N (N < 1000) and digit sums of 2**K
           (K < 500), families 0 and 2, values a small model cannot compute in its head; the
           question alone as the prompt; at most 3 actions of <= 80 tokens, observations <= 16
           tokens; reward 1 for the exact integer.
SFT:       the environment's demonstrations (`print(sum(i*i for i in range(1,N+1)))`,
           `print(sum(map(int,str(2**K))))`, then the answer), half of them answering without
           the tool (`sft.flawed_fraction` = 0.5).
Credit:    trajectory-level GRPO on the episode return.
Expected:  runlocal, measured (docs/envs.md): held-out success with the tool 0.345 -> 0.765
           (tool disabled: 0.00), valid-tool-call rate 0.39 -> 0.87 in 40 steps; the tool
           criterion of experiments/agent_env.py passed (+42 points over the start, 2 s.e. 9.4).
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    runlocal = arg == "runlocal"
    c = base_config(runlocal=runlocal)
    c.env.name = "python_tool"
    c.env.kwargs = {"families": (0, 2), "instructions": False}
    c.env.max_turns = 3
    c.env.max_action_tokens = 80
    c.env.max_observation_tokens = 16
    c.env.credit = "episode"
    c.rollout.max_new_tokens = 128
    c.rollout.prompt_buckets = (64, 256)
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-mean"
    c.train.prompts_per_step = 8
    c.train.samples_per_prompt = 4
    c.train.steps = 40 if runlocal else 100
    c.optim.lr = 2e-4
    c.sft.steps = 600 if runlocal else 2500
    c.sft.lr = 2e-3 if runlocal else 1e-3
    c.sft.flawed_fraction = 0.5
    c.eval.size = 100
    c.eval.n = 2
    c.eval.ks = (1, 2)
    c.eval.every = 0
    c.checkpoint.every = 0
    return c


def sweep(add):
    for credit in ("episode", "turn"):
        add(**{"env.credit": credit})
