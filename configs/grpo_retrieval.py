"""GRPO over retrieval episodes: the model learns to search before it answers.

Command:   python -m jaxrl_llm.main --config=configs/grpo_retrieval.py --workdir=runs/retrieval
Laptop:    python -m jaxrl_llm.main --config=configs/grpo_retrieval.py:runlocal --workdir=runs/x
Experiment: python experiments/agent_env.py --recipe=configs/grpo_retrieval.py --runlocal \
               --workdir=runs/retrieval
Hardware:  a 2-core CPU (tiny inline model, char-level tokenizer).
Task:      env `retrieval` over a generated corpus of 3000 passages ("Quillon bridge: Built by
           Dorrow in 1887.", `synthetic=300`), one question each ("Who built the Quillon
           bridge?" / "In which year was the Quillon bridge built?"), the question alone as the
           prompt; at most 3 actions of <= 48 tokens, observations <= 48 tokens; reward 1 for an
           accepted answer. A quarter of the questions are held out: their answers can only come
           from a search.
SFT:       the environment's demonstrations (search the passage title, then answer), half of
           them answering without the search (`sft.flawed_fraction` = 0.5).
Credit:    trajectory-level GRPO on the episode return.
Expected:  runlocal, measured (docs/envs.md): held-out success with search 0.26 -> 0.475
           (s.e. 0.036, 0.048; search disabled: 0.00), valid-search rate 0.46 -> 0.94, in 30
           steps from a 1200-step SFT at lr 2e-3; the criterion of experiments/agent_env.py
           (start success in [0.2, 0.8]; after RL, success beats the start and the same
           checkpoint with search disabled by >= 5 points and > 2 s.e.; valid-search rate up by
           >= 10 points) passed. About 22 minutes on a shared 2-core CPU, 19 of them the SFT.
"""

from jaxrl_llm.trainers.config import base_config


def get_config(arg=None):
    runlocal = arg == "runlocal"
    c = base_config(runlocal=runlocal)
    c.env.name = "retrieval"
    c.env.kwargs = {"synthetic": 3000, "instructions": False}
    c.env.max_turns = 3
    c.env.max_action_tokens = 48
    c.env.max_observation_tokens = 48
    c.env.credit = "episode"
    c.rollout.max_new_tokens = 128
    c.rollout.prompt_buckets = (64, 256)
    c.algo.advantage = "grpo"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "seq-mean-token-mean"
    c.train.prompts_per_step = 8
    c.train.samples_per_prompt = 4
    c.train.steps = 30 if runlocal else 100
    c.optim.lr = 2e-4
    c.sft.steps = 1200 if runlocal else 2500  # 600 (runlocal): success 0.135 at the start
    c.sft.lr = 2e-3 if runlocal else 1e-3
    c.sft.flawed_fraction = 0.5
    c.eval.size = 100  # of about 750 held-out questions
    c.eval.n = 2
    c.eval.ks = (1, 2)
    c.eval.every = 0
    c.checkpoint.every = 0
    return c


def sweep(add):
    for credit in ("episode", "turn"):
        add(**{"env.credit": credit})
