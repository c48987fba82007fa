"""DPO (and IPO / cDPO / rDPO / hinge / SimPO) on synthetic arithmetic preferences.

Command:   python -m jaxrl_llm.trainers.preference --config=configs/dpo_arith.py --workdir=runs/dpo
Laptop:    python -m jaxrl_llm.trainers.preference --config=configs/dpo_arith.py:runlocal --workdir=runs/x
Other loss: --config.train.loss=ipo (cdpo needs --config.train.label_smoothing=0.1; rdpo uses
           train.flip_rate; simpo uses train.gamma and usually a larger beta, e.g. 2.0).
Hardware:  a 2-core CPU; the tiny model of the RL recipes (hidden 128, 2 layers) after a
           300-step SFT warm start of the arithmetic answers; about 3.5 minutes (runlocal: 1).
Expected:  held-out implicit-reward accuracy (clean, length-balanced pairs) starts at exactly
           0.5 (policy = reference, every log-ratio 0) and rises to about 0.84 (measured
           0.842; runlocal 0.814). The policy's own log-prob ranking moves less (0.814 ->
           0.844) and its greedy accuracy does not improve (0.063 -> 0.023): all numbers in
           docs/reward_models.md.

Pairs: `tasks.preference_data.ArithPreferenceTask` (training labels flipped with probability
`data.noise`, a known rate: rDPO's `train.flip_rate` should match it), or preference files
(`data.train_file` / `data.heldout_file`). The `model`, `tokenizer`, `data` and `sft` groups
are those of `configs/rm_arith.py`. The config is locked: a misspelt override fails.
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(
        hf_path="",  # a local HF folder whose config.json defines the model; empty: inline
        init_checkpoint="",  # HF folder of the starting policy (= reference); skips the SFT
        architecture="qwen2",
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=384,
        rope_theta=10000.0,
        tie_embeddings=True,
        dtype="float32",
        param_dtype="float32",
        lora_rank=0,  # > 0: train LoRA adapters on the frozen initial policy (docs/lora.md)
        lora_alpha=16.0,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    c.tokenizer = dict(path="builtin")
    c.data = dict(
        digits=(1, 2),
        ops="+",
        noise=0.1,  # training label-flip rate of the synthetic pairs
        same_length_fraction=0.5,
        train_pairs=20000,
        heldout_pairs=512,
        seed=0,
        heldout_seed=12345,
        train_file="",
        heldout_file="",
    )
    # a quick SFT warm start on the arithmetic answers (ignored with model.init_checkpoint)
    c.sft = dict(steps=300, batch_size=32, lr=1e-3, warmup_steps=20, seed=0)
    c.train = dict(
        loss="dpo",  # dpo | cdpo | ipo | rdpo | hinge | simpo
        beta=0.1,  # DPO/cDPO/rDPO β, IPO τ, hinge 1/δ, SimPO β
        label_smoothing=0.0,  # cDPO only (> 0)
        flip_rate=0.1,  # rDPO only: the assumed label-flip rate ε < 0.5
        gamma=0.5,  # SimPO only: target margin in reward units
        steps=600,
        batch_size=64,
        lr=2e-4,
        warmup_steps=20,
        weight_decay=0.0,
        clip_norm=1.0,
        seed=0,
        eval_every=100,
    )
    c.eval = dict(greedy_prompts=256)  # held-out prompts for greedy accuracy (0: off)
    c.prompt_buckets = (8, 16, 32, 64, 128)  # "99+99=" is 7 tokens with BOS
    c.completion_len = 5  # answers up to 4 characters + EOS
    if arg == "runlocal":
        # The CPU test (tests/trainers/test_preference.py), about 2 min on 2 busy cores.
        c.data.train_pairs = 4000
        c.train.steps = 150
        c.train.batch_size = 32
        c.train.eval_every = 0
        c.eval.greedy_prompts = 128
    elif arg not in (None, ""):
        raise ValueError(f"configs/dpo_arith.py takes 'runlocal' or nothing, got {arg!r}")
    c.lock()
    return c
