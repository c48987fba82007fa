"""Pre-registered entropy-mechanism study (docs/reproductions/entropy_mechanism.md).

`get_config("<sft_dir>")`: the task and SFT checkpoint accepted by the headroom pilot
(`configs/repro_headroom.py` candidate A: `arith`, 2-digit operands, `+ - *`, 2,000 SFT steps,
no flawed demonstrations); `<sft_dir>` is that checkpoint's folder (`model.init_checkpoint`).
All variants: GRPO advantages, token-mean, no KL, lr 1e-4, 16 prompts x 8 samples,
temperature 1, 100 RL steps, `train.minibatch_size = 32` (four optimizer steps per batch),
held-out accuracy on 128 prompts x 8 samples every 20 steps. `sweep(add)` holds the five
variants of the design's table (`VARIANTS`).

Clip-Cov and KL-Cov run with the policy losses' own default keyword arguments, which are the
pre-registered values (`PREREGISTERED_LOSS_KWARGS`; `algo.loss_kwargs` is a group the command
line cannot set, and tests/experiments/test_repro_headroom.py checks those defaults).

Command (5 variants x 5 vmapped seeds, pass@k up to 256 with per-prompt counts):
  python experiments/repro_headroom.py --root runs/repro_entropy --stage entropy_study \
      --sft_dir runs/repro_headroom/pilot_A_sft2000
  python experiments/repro_headroom.py --root runs/repro_entropy --stage entropy_fit
Hardware: the 2-core development CPU; about 55 min (the design's cost section).
Expected result: run on 2026-12-06; see the design's Results section (entropy fell, no variant raised pass@1; E1b not reproduced).
"""

import importlib.util
import os


def _load_headroom():
    """configs/repro_headroom.py, read from beside this file (config files are loaded by path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "repro_headroom.py")
    spec = importlib.util.spec_from_file_location("_repro_headroom_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CANDIDATE = "A"  # the accepted pilot row

PREREGISTERED_LOSS_KWARGS = {
    "clip_cov": {"clip_ratio": 2e-4, "cov_lb": 1.0, "cov_ub": 5.0},
    "kl_cov": {"k_ratio": 2e-3, "kl_coef": 1.0},
}

VARIANTS = {
    "grpo": {"algo.policy_loss": "ppo_clip"},
    "clip_higher": {"algo.policy_loss": "ppo_clip", "algo.clip_high": 0.28},
    "clip_cov": {"algo.policy_loss": "clip_cov"},
    "kl_cov": {"algo.policy_loss": "kl_cov"},
    "entropy_bonus": {"algo.policy_loss": "ppo_clip", "algo.entropy_coef": 0.005},
}


def get_config(arg=None):
    """`arg`: '<sft_dir>', optionally followed by ',runlocal' (30 RL steps), or 'runlocal'."""
    headroom, arg = _load_headroom(), _CANDIDATE + "," + (arg or "")
    c = headroom.get_config(arg)
    c.algo.advantage = "grpo"
    c.algo.eps = 1e-6
    c.algo.ddof = 1
    c.algo.policy_loss = "ppo_clip"
    c.algo.clip_low = 0.2
    c.algo.clip_high = 0.2
    c.algo.entropy_coef = 0.0
    c.train.steps = headroom.RUNLOCAL_STEPS if headroom.parse_arg(arg)[2] else 100
    c.train.minibatch_size = 32
    c.eval.every = 20
    c.eval.size = 128
    c.eval.n = 8
    c.eval.seed = 12345
    return c


def sweep(add):
    for overrides in VARIANTS.values():
        add(**overrides)
