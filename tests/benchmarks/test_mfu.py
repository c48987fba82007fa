"""benchmarks/mfu.py stays runnable: a tiny-shape run of both halves on the 8-device CPU mesh."""

from benchmarks import mfu


def test_tiny_run_reports_train_and_decode_figures(capsys):
    out = mfu.main(
        ["--size=tiny", "--rows=8", "--seq=32", "--decode_rows=8", "--prompt_len=8"]
        + ["--new_tokens=4", "--repeats=1"]
    )
    assert out["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert out["train"]["seconds"] > 0 and out["train"]["tokens"] == 8 * 32
    # a difference of two timings: on a busy shared CPU it can come out <= 0, so only its
    # presence is checked here
    assert set(out["decode"]) == {
        "seconds_per_step",
        "bytes_per_step",
        "tokens_per_s",
        "decode_attention",
        "kv_buckets",
    }
    assert (out["decode"]["decode_attention"], out["decode"]["kv_buckets"]) == ("xla", 0)
    assert out["decode"]["bytes_per_step"] > 0
    assert '"decode"' in capsys.readouterr().out  # the JSON report


def test_tiny_lora_run_in_micro_batches_trains_the_adapters_only():
    """`--lora_rank`: the step runs on adapters over a bf16 base in 2 micro-batches; the
    trainable count is the adapters' (`lora.lora_param_count`), not the model's."""
    from jaxrl_llm.models import lora

    out = mfu.main(
        ["--size=tiny", "--rows=8", "--seq=32", "--repeats=1", "--only=train"]
        + ["--lora_rank=4", "--micro=2"]
    )
    config = mfu._config("tiny")
    assert out["train"]["micro"] == 2 and out["train"]["lora_rank"] == 4
    assert out["train"]["trainable"] == lora.lora_param_count(config, rank=4, targets=lora.TARGETS)
