"""The paper plan's arithmetic: Qwen2.5 parameter counts and bytes per device by hand."""

import logging

from jaxrl_llm.parallel import plan


def test_qwen25_parameter_counts_match_the_released_checkpoints():
    # Totals of the released safetensors (embedding + tied or untied head, q/k/v biases).
    assert plan.param_counts(plan.qwen25_config("1.5B"))[0] == 1_543_714_304
    assert plan.param_counts(plan.qwen25_config("7B"))[0] == 7_615_616_512


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
