"""Pre-registered PSR / NSR / W-REINFORCE study with headroom (docs/reproductions/nsr_headroom.md).

`get_config("A" | "B" | "C")` is a candidate task of the pilot (section 1 there), optionally
followed by `,<sft_dir>`: the SFT checkpoint folder (Hugging Face layout, the trainer's
`<workdir>/sft`) RL starts from (`model.init_checkpoint`); a last `,runlocal` (or `runlocal`
alone, candidate A) is the quick form of every recipe: 30 RL steps. `sweep(add)` holds the five variants
of section 2, those of `configs/nsr_repro.py` unchanged apart from the task. The accepted pilot
row is candidate A with 2,000 SFT steps.

Command (the whole study: pilot, 5 variants x 5 vmapped seeds x 60 steps, pass@k up to 256
with per-prompt counts, tables and verdicts):
  python experiments/repro_headroom.py --root runs/repro_headroom --stage pilot
  python experiments/repro_headroom.py --root runs/repro_headroom --stage study
  python experiments/repro_headroom.py --root runs/repro_headroom --stage analyse
One cell:
  python -m jaxrl_llm.main --config=configs/repro_headroom.py:A,SFT_DIR --workdir=runs/x \
      --config.tokenizer.path=SFT_TOKENIZER --config.algo.advantage=nsr
Hardware: the 2-core development CPU; about 53 min for the study stage (section 5 there).
Expected result: run on 2026-12-06; see the design's Results section (no variant raised pass@1 in 60 steps; NSR and W-REINFORCE lowered pass@k).
"""

import ml_collections

from jaxrl_llm.trainers.config import base_config

# Section 1's candidate rows: task kwargs, rollout.max_new_tokens, SFT steps. A's SFT steps
# are the accepted pilot row's (2,000); B's and C's are the table's starting values.
CANDIDATES = {
    "A": dict(kwargs=dict(digits=(2,), ops="+-*", num_terms=(2,)), max_new_tokens=6, sft=2000),
    "B": dict(kwargs=dict(digits=(2, 3), ops="+-", num_terms=(2,)), max_new_tokens=6, sft=1000),
    "C": dict(kwargs=dict(digits=(1, 2), ops="+-*", num_terms=(3,)), max_new_tokens=8, sft=1500),
}

# Section 2's variants: configs/nsr_repro.py's sweep, by name.
VARIANTS = {
    "psr": {"algo.advantage": "psr"},
    "nsr": {"algo.advantage": "nsr"},
    "w_reinforce": {"algo.advantage": "w_reinforce"},
    "grpo": {"algo.advantage": "grpo"},
    "ppo": {
        "algo.advantage": "gae",
        "critic.enabled": True,
        "critic.warmup_steps": 2,
        "algo.lam": 0.95,
    },
}


RUNLOCAL_STEPS = 30  # base_config(runlocal=True)'s


def parse_arg(arg):
    """'A', 'A,<sft_dir>', either followed by ',runlocal', or 'runlocal' -> (candidate,
    sft_dir or '', runlocal); the folder may itself hold commas."""
    arg = (arg or "A").strip()
    runlocal = arg == "runlocal" or arg.endswith(",runlocal")
    if runlocal:
        arg = arg[: -len("runlocal")].rstrip(",") or "A"
    candidate, _, sft_dir = arg.partition(",")
    candidate = candidate.strip()
    if candidate not in CANDIDATES:
        raise ValueError(
            f"configs/repro_headroom.py: unknown candidate {candidate!r}; one of "
            f"{sorted(CANDIDATES)}, optionally followed by ',<sft_dir>' and ',runlocal'"
        )
    return candidate, sft_dir.strip(), runlocal


def get_config(arg=None):
    candidate, sft_dir, runlocal = parse_arg(arg)
    row = CANDIDATES[candidate]
    c = base_config(runlocal=False)
    c.model.init_checkpoint = sft_dir
    c.task.name = "arith"
    c.task.kwargs = ml_collections.ConfigDict(dict(row["kwargs"]))
    c.rollout.max_new_tokens = row["max_new_tokens"]
    c.sft.steps = row["sft"]
    c.sft.seed = 0
    c.sft.flawed_fraction = 0.0
    # Section 2, as configs/nsr_repro.py: one on-policy update per batch (REINFORCE through
    # the PPO loss at ratio 1), no KL, token-mean, lr 1e-4 constant after 5 warm-up steps,
    # 16 prompts x 8 samples, temperature 1.
    c.algo.advantage = "w_reinforce"
    c.algo.policy_loss = "ppo_clip"
    c.algo.aggregation = "token-mean"
    c.algo.w_lambda = 0.1
    c.train.steps = RUNLOCAL_STEPS if runlocal else 60
    c.train.num_epochs = 1
    c.eval.n = 4
    c.eval.ks = (1, 2, 4)
    c.checkpoint.every = 0
    c.log.progress = False
    return c


def sweep(add):
    for overrides in VARIANTS.values():
        add(**overrides)
