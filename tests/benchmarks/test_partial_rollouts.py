"""benchmarks/partial_rollouts.py stays runnable: a tiny run of both arms; the report's fields
and the work each arm did are checked, never its timings."""

from benchmarks import partial_rollouts
from jaxrl_llm.rollout import partial as partial_lib
from jaxrl_llm.trainers import partial_rollouts as pool_lib


def test_tiny_run_reports_both_arms_and_restores_the_pool():
    out = partial_rollouts.main(
        ["--size=tiny", "--steps=3", "--prompts-per-step=2", "--n=2", "--prompt-len=8"]
        + ["--max-new=32", "--median=3", "--budget=8"]
    )
    sync, partial = out["arms"]
    assert (sync["arm"], partial["arm"]) == ("sync", "partial")
    # sync: one call per step, each decoding until its longest row ends
    assert 3 <= sync["decode_steps"] <= 3 * 32
    # partial: rounds of <= 8 tokens; at least one per step; a token is at most a few steps old
    assert partial["rounds"] >= 3 and partial["decode_steps"] == 8 * partial["rounds"]
    assert 0 <= partial["staleness_mean"] <= partial["staleness_max"] <= 32 // 8 + 1
    for arm in (sync, partial):
        assert arm["trained_tokens"] >= 3 * 2 * 2  # every trained row holds >= 1 token
        assert arm["seconds"] > 0 and arm["trained_tokens_per_s"] > 0
    assert pool_lib.start_rows is partial_lib.start_rows  # the benchmark's hook is removed
