"""The paper plan's arithmetic: bytes per device and step time by hand."""

import dataclasses
import logging
import os
import subprocess
import sys

from jaxrl_llm.tools import plan


def test_device_bytes_by_hand(caplog):
    """1.5B on (1, 8, 1), pure FSDP: every parameter with an `embed` axis splits 8 ways; the
    q/k/v biases ([L, heads, head_dim]: no `embed` axis) stay whole on every device."""
    config = plan.qwen25_config("1.5B")
    total, _ = plan.param_counts(config)
    work = plan.Workload()
    with caplog.at_level(logging.WARNING):
        b = plan.device_bytes(config, (1, 8, 1), work)
    biases = 28 * (12 + 2 + 2) * 128
    assert b["params"] == ((total - biases) // 8 + biases) * 4 and b["adam"] == 2 * b["params"]
    # KV: 2 · L · rows · S · kv_heads · head_dim · 2 bytes, rows over fsdp = 8
    assert b["kv_cache"] == 2 * 28 * 512 * 2048 * 2 * 128 * 2 // 8
    # tensor = 4 does not divide the 2 KV heads: k/v kernels and the cache stay whole on tensor
    b4 = plan.device_bytes(config, (1, 2, 4), work)
    assert b4["kv_cache"] == 2 * 28 * 512 * 2048 * 2 * 128 * 2 // 2
    assert b4["params"] > b["params"]


def test_step_time_pure_fsdp_decode_is_link_bound():
    config = plan.qwen25_config("7B")
    hw = plan.HARDWARE["v5e-64"]
    t = plan.step_time(config, (1, 64, 1), hw, plan.Workload())
    _, n = plan.param_counts(config)
    weights = (n + 152064 * 3584) * 4  # fp32, the untied embedding read as a table
    per_token = weights * 63 / 64 / hw.link_bw / 0.6
    assert abs(t["sample"] - 1536 * per_token) / t["sample"] < 0.01
    assert t["sample"] > t["update+ref"]


def test_runs_as_a_module_and_prints_one_table_per_size():
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_llm.tools.plan"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    ).stdout
    for size in plan.PLAN_SIZES:
        assert f"### Qwen2.5-{size}:" in out


def test_lora_device_bytes_by_hand():
    """7B, LoRA rank 16 on q and down_proj over a bf16 base, pure FSDP (1, 8, 1): the optimiser,
    gradients and reference are the adapters'; the base is counted once at 2 bytes."""
    config = plan.qwen25_config("7B")
    full = plan.device_bytes(config, (1, 8, 1), plan.Workload(param_bytes=2))
    work = plan.Workload(param_bytes=2, lora_rank=16, lora_targets=("q_proj", "down_proj"))
    b = plan.device_bytes(config, (1, 8, 1), work)
    L, h, m, r = 28, 3584, 18944, 16
    # A [L, in, r] splits its embed input 8 ways (q); down's A has `mlp` input (tensor = 1), its
    # B [L, r, embed] splits 8 ways
    adapters = L * r * (h // 8 + h) + L * r * (m + h // 8)
    assert b["grads"] == adapters * 4 and b["adam"] == 2 * b["grads"] == 2 * b["reference"]
    assert b["params"] == full["params"] + adapters * 4
    # merged copy (bf16) + fp32 gradient of the two targeted kernels, embed axes split 8 ways
    assert b["lora_merge"] == (L * h * h // 8 + L * m * h // 8) * (2 + 4)
    assert b["kv_cache"] == full["kv_cache"] and "lora_merge" not in full
    state = ("params", "grads", "adam", "reference")
    assert sum(b[k] for k in state) + b["lora_merge"] < sum(full[k] for k in state) / 2


def test_qlora_device_bytes_by_hand():
    """The same 7B LoRA on an nf4 base: the two targeted kernels cost 0.5 byte per entry of
    codes plus a 4-byte scale per block of 64 instead of 2 bytes; nothing else changes."""
    config = plan.qwen25_config("7B")
    work = plan.Workload(param_bytes=2, lora_rank=16, lora_targets=("q_proj", "down_proj"))
    b = plan.device_bytes(config, (1, 8, 1), work)
    q = plan.device_bytes(config, (1, 8, 1), dataclasses.replace(work, lora_quantize="nf4"))
    L, h, m = 28, 3584, 18944
    targeted = L * h * h // 8 + L * m * h // 8
    assert q["params"] == b["params"] - targeted * (2 - (0.5 + 4 / 64))
    assert {k: v for k, v in q.items() if k != "params"} == {
        k: v for k, v in b.items() if k != "params"
    }
    int8 = plan.device_bytes(config, (1, 8, 1), dataclasses.replace(work, lora_quantize="int8"))
    assert int8["params"] == b["params"] - targeted * (2 - (1 + 4 / 64))
    try:
        plan.device_bytes(config, (1, 8, 1), plan.Workload(lora_quantize="nf4"))
    except ValueError as e:
        assert "needs lora_rank > 0" in str(e)
    else:
        raise AssertionError("a quantised base without LoRA was accepted")


def test_activations_by_remat_policy_and_attention_by_hand():
    """1.5B on one device, 8-row micro-batches of 1024 tokens: what each remat policy keeps per
    token and layer (bf16), the fp32 logits chunk, and one layer's fp32 scores with xla."""
    config = plan.qwen25_config("1.5B")
    L, h, i, nh, nkv, d, v = 28, 1536, 8960, 12, 2, 128, 151936
    work = plan.Workload(
        prompts=8, group=8, prompt_len=256, new_tokens=768, micro_rows=8, vocab_block=0
    )
    chunk = 8 * 256 * v * 4
    scores = 8 * nh * 1024**2 * 4
    saved = {
        "full": h,
        "block_outputs": 3 * h,
        "qkv_attn": h + (nh + 2 * nkv) * d + nh * d,
        "dots": h + (nh + 2 * nkv) * d + 2 * h + 2 * i,
    }
    for policy, per_token in saved.items():
        for attention, extra in (("xla", scores), ("fused", 0)):
            w = dataclasses.replace(work, remat_policy=policy, attention=attention)
            got = plan.device_bytes(config, (1, 1, 1), w)["activations"]
            assert got == L * 8 * 1024 * per_token * 2 + chunk + extra, (policy, attention)
    blocked = dataclasses.replace(work, vocab_block=8192)  # the default: two live blocks
    got = plan.device_bytes(config, (1, 1, 1), blocked)["activations"]
    assert got == L * 8 * 1024 * h * 2 + 2 * 8 * 256 * 8192 * 4 + scores
    try:
        plan.device_bytes(config, (1, 1, 1), dataclasses.replace(work, remat_policy="x"))
    except ValueError as e:
        assert "allowed ['block_outputs', 'dots', 'full', 'qkv_attn']" in str(e)
    else:
        raise AssertionError("an unknown remat policy was accepted")


def test_packed_passes_scale_the_reference_forward_only():
    config = plan.qwen25_config("7B")
    hw = plan.HARDWARE["8xH100"]
    full = plan.step_time(config, (1, 8, 1), hw, plan.Workload())
    half = plan.step_time(config, (1, 8, 1), hw, plan.Workload(pack_fill=0.5))
    _, n = plan.param_counts(config)
    attn = 28 * 28 * 128 * 2048
    ref = 512 * 2048 * (2 * n + 4 * attn)
    assert abs((full["model_flops"] - half["model_flops"]) - 0.5 * ref) / ref < 1e-9


def test_a_packed_update_counts_micro_tokens_in_packs():
    """`micro_tokens` = 4096 in packs of 1024 on 2 batch shards: 2 packs of 1024 tokens per
    device hold the activations, one logits chunk and one layer's scores per pack; the update's
    FLOPs scale by the fill and its attention term by pack_budget / S."""
    config = plan.qwen25_config("1.5B")
    L, h, nh = 28, 1536, 12
    work = plan.Workload(
        prompts=8, group=8, prompt_len=256, new_tokens=768, micro_tokens=4096, pack_budget=1024
    )
    got = plan.device_bytes(config, (2, 1, 1), work)["activations"]
    assert got == L * 2 * 1024 * h * 2 + 2 * 2 * 256 * 8192 * 4 + 2 * nh * 1024**2 * 4
    for bad in (dict(pack_budget=0), dict(pack_budget=1000)):
        try:
            plan.device_bytes(config, (1, 1, 1), dataclasses.replace(work, **bad))
        except ValueError as e:
            assert "micro_tokens = 4096 needs pack_budget > 0 dividing it" in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
    hw = plan.HARDWARE["8xH100"]
    padded = plan.step_time(config, (1, 8, 1), hw, dataclasses.replace(work, micro_tokens=0))
    packed = plan.step_time(config, (1, 8, 1), hw, dataclasses.replace(work, pack_fill=0.5))
    _, n = plan.param_counts(config)
    attn = L * nh * 128 * 1024
    tokens = 64 * 1024
    want = tokens * (6 * n + 12 * attn + 2 * n + 4 * attn)  # padded: everything on S slots
    assert abs(padded["model_flops"] - want) / want < 1e-9
    want = tokens * 0.5 * (6 * n + 12 * attn + 2 * n + 4 * attn)  # S = pack_budget = 1024
    assert abs(packed["model_flops"] - want) / want < 1e-9


def test_fits_table_single_hosts():
    """7B: full fine-tuning (fp32 params, grads, Adam, reference: 16 bytes / parameter, > 110
    GiB) does not fit one H200; LoRA on a bf16 base does; the table prints every size."""
    rows = {r["hardware"]: r for r in plan.fit_rows("7B")}
    lora = {
        r["hardware"]: r
        for r in plan.fit_rows(
            "7B", dataclasses.replace(plan.FIT_WORKLOAD, param_bytes=2, lora_rank=16)
        )
    }
    assert not rows["1xH200"]["fits"] and rows["1xH200"]["total"] > 7.6e9 * 16 / 2**30
    assert lora["1xH200"]["fits"] and lora["1xH200"]["total"] < rows["1xH200"]["total"] / 2
    assert rows["v5p-8"]["mesh"][0] * rows["v5p-8"]["mesh"][1] * rows["v5p-8"]["mesh"][2] == 4
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_llm.tools.plan", "--fits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    ).stdout
    for size in plan.FIT_SIZES:
        assert f"| Qwen2.5-{size} | LoRA r16" in out and f"| Qwen2.5-{size} | full" in out
        assert f"| Qwen2.5-{size} | QLoRA r16" in out
