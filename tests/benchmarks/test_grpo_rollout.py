"""benchmarks/grpo_rollout.py stays runnable: a tiny run of the three arms through the real
trainer; the report's fields and the arms' completions are checked, never its timings."""

import json
import math

from benchmarks import grpo_rollout
from jaxrl_llm import rollout as rollout_lib


def test_tiny_run_reports_three_arms_with_the_same_completions(tmp_path, capsys):
    out_file = tmp_path / "results.json"
    grpo_rollout.main(
        ["--size=tiny", "--steps=2", "--prompts=2", "--samples=4", "--max-new-tokens=48"]
        + ["--slots=3", "--reward-workers=0", f"--out={out_file}"]
    )
    report = json.loads(out_file.read_text())
    arms = report["arms"]
    assert [a["arm"] for a in arms] == ["static", "static, kv buckets", "continuous"]
    assert [a["continuous_slots"] for a in arms] == [0, 0, 3]
    assert [a["kv_buckets"] for a in arms] == [0, 4, 4]
    for a in arms:
        for key in ("rollout_s", "logprob_s", "update_s", "step_s", "rollout_tokens_per_s"):
            assert math.isfinite(a[key]) and a[key] > 0, (a["arm"], key, a[key])
        # the whole step holds the rollout, the log-prob pass and the update
        assert a["step_s"] >= a["rollout_s"] + a["update_s"]
        assert len(a["per_step"]["rollout_s"]) == 2 and a["per_step"]["step_s"][0] > 0
        lengths = a["lengths"]
        assert lengths["rows"] == 2 * 2 * 4  # 2 steps x 2 prompts x 4 samples
        assert 1 <= lengths["median"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"] <= 48
        assert lengths["tokens"] == sum(a["per_step"]["tokens"])
        assert 0 <= lengths["truncated_frac"] <= 1
    # static: the longest row of the step; continuous: 3 slots decode the 8 rows' tokens after
    # their first (drawn from the prefill), so at least (tokens - 8) / 3 loop steps
    assert arms[0]["per_step"]["decode_steps"] == arms[1]["per_step"]["decode_steps"]
    assert all(s <= 48 for s in arms[0]["per_step"]["decode_steps"])
    per_step = arms[2]["per_step"]
    assert all(3 * s >= t - 8 for s, t in zip(per_step["decode_steps"], per_step["tokens"]))
    # per-row keys in every arm: the same completions row for row, so the same lengths
    assert report["workload"]["static_keys"] == "row"
    assert report["same_completions"] and report["same_lengths"]
    assert all(a["rows_equal_to_static"] == 1.0 for a in arms)
    assert arms[0]["lengths"] == arms[1]["lengths"] == arms[2]["lengths"]
    assert arms[0]["per_step"]["tokens"] == arms[2]["per_step"]["tokens"]
    assert arms[0]["rollout_ratio_to_static"] == 1.0
    assert "| arm | rollout s | logprob s |" in capsys.readouterr().out
    # the hooks are removed after each arm
    assert rollout_lib.generate.__name__ == "generate"
    assert rollout_lib.generate_continuous.__name__ == "generate_continuous"
