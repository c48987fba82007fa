"""The calculator agent learns to use its tool (the multi-turn learning criterion).

Stated before running it: the SFT model's with-tool success on held-out problems is in
[0.2, 0.8]; after RL (configs/grpo_calculator_tool.py:runlocal), with-tool success beats the
SFT start and the same final checkpoint with the tool disabled, each by >= 5 points and > 2
standard errors; the share of episodes with a valid tool call rises by >= 10 points. The SFT
warm start (600 steps on environment transcripts, half of them without the tool) is part of
this test's time, which is over the 3-minute target (measured 569 s on a 2-core machine
running two other jobs; the RL part and its four evaluations take about 100-140 s).
Measured: 0.395 -> 0.82 with the tool, 0.00 without; valid tool calls 0.405 -> 0.945.
"""

from experiments import calculator_tool


def test_calculator_agent_learns_to_use_its_tool(tmp_path):
    c = calculator_tool._recipe(runlocal=True)
    c.unlock()
    c.log.progress = False
    c.mesh.num_devices = 1
    res = calculator_tool.run(c, str(tmp_path), log=lambda *a: None)
    print(
        {k: res[k]["eval/accuracy"] for k in ("start", "start_no_tool", "final", "final_no_tool")}
    )
    assert res["passed"], res
