"""benchmarks/long_tail.py stays runnable: a tiny run of both arms and the kernel proxy;
the report's fields are checked, never its timings."""

import numpy as np

from benchmarks import long_tail


def test_lengths_are_fixed_long_tailed_and_shuffled_by_seed():
    a = long_tail.make_lengths(400, 20, 1000, seed=0)
    assert np.median(a) == 20 and 7 <= np.percentile(a, 99) / 20 <= 9
    np.testing.assert_array_equal(np.sort(a), np.sort(long_tail.make_lengths(400, 20, 1000, 1)))
    assert (a != long_tail.make_lengths(400, 20, 1000, seed=1)).any()


def test_tiny_run_reports_both_arms_and_the_proxy(capsys):
    out = long_tail.main(
        ["--size=tiny", "--prompts=4", "--n=2", "--slots=4", "--prompt-len=8"]
        + ["--max-new=16", "--median=3", "--buckets=2", "--reps=1"]
    )
    assert [a["arm"] for a in out["arms"]] == ["static", "static, kv buckets", "continuous"]
    for arm in out["arms"]:
        assert set(arm) == {
            "arm",
            "seconds",
            "tokens_per_s",
            "rows_per_s",
            "decode_steps",
            "slot_utilisation",
        }
    assert out["workload"]["jobs"] == 8 and out["workload"]["kv_buckets"] == [16, 24]
    assert out["refills"] == 8 - 4 and "speedup" in out
    assert {p["weights"] for p in out["proxy"]} == {"unfused", "fused"}
    assert all(p["kernels"] > 0 for p in out["proxy"])
    assert "| arm | seconds | tokens/s | rows/s |" in capsys.readouterr().out
