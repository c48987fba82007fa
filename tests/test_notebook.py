"""notebooks/quickstart.ipynb runs top to bottom on CPU (its TINY setting) and shows that GRPO learned.

The notebook is executed once per module with nbclient in a fresh `python3` kernel, from the
repository root, with `JAXRL_LLM_NOTEBOOK_TEST=1` (skips the install cell, turns on TINY: one-digit
sums, 300 SFT steps, 20 GRPO steps) and one CPU device. The checks read the cell outputs:

- the install cell was skipped, no cell raised;
- a PNG (the reward plot) was displayed;
- the per-step rewards: one per GRPO step, each a multiple of 1/64 (64 samples scored 0 or 1),
  the printed first/last 5-step means agree with them, and the last 5-step mean is above the
  first (the warm-started model writes the rejected flaw "." about half of the time; GRPO
  removes it — with these settings the rise was 0.14–0.22 over seeds, per-step noise ~0.05);
- each printed sample: the answer is the hand-computed sum, and the reward is 1 exactly when
  the completion's first line is that sum;
- the pass@k table: rows k = 1, 2, 4, 8, pass@k in [0, 1] and non-decreasing in k, and pass@1
  equal to the mean accuracy (the unbiased estimator's identity for k = 1).
"""

import base64
import json
import os
import re
import struct
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
CELL_TIMEOUT_S = 900


def _kernel_env(workdir):
    env = dict(os.environ)
    # One CPU device: drop the virtual-device flag the test conftest sets for the mesh tests.
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the PNG
    env["JAXRL_LLM_NOTEBOOK_TEST"] = "1"
    env["JAXRL_LLM_NOTEBOOK_WORKDIR"] = str(workdir)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """(the executed notebook, all of its stdout text)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": REPO}},
    )
    client.execute(env=_kernel_env(tmp_path_factory.mktemp("quickstart")))
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                text.append(out["text"])
    return nb, "".join(text)


def _line(text, prefix):
    lines = [l for l in text.splitlines() if l.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in the notebook output:\n{text[-3000:]}"
    return lines[-1][len(prefix) :]


def test_notebook_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata.kernelspec.name == "python3"


def test_install_cell_skipped_and_no_errors(executed):
    nb, text = executed
    assert "install skipped" in text
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out


def test_reward_plot_is_a_png(executed):
    nb, _ = executed
    pngs = [
        out["data"]["image/png"]
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(pngs) == 1
    raw = base64.b64decode(pngs[0])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    assert width >= 200 and height >= 100, (width, height)


def test_reward_rises(executed):
    _, text = executed
    rewards = json.loads(_line(text, "REWARDS "))
    num_steps = int(re.search(r"^(\d+) GRPO steps", text, re.M).group(1))
    assert len(rewards) == num_steps == 20
    m = re.search(r"GRPO steps: (\d+) x (\d+) prompts x (\d+) samples", text)
    assert m and int(m.group(1)) == num_steps, text[:3000]
    rows = int(m.group(2)) * int(m.group(3))  # every sample's reward is 0 or 1
    for r in rewards:
        assert 0.0 <= r <= 1.0
        assert abs(r * rows - round(r * rows)) < 1e-3, r
    m = re.fullmatch(r"first=([0-9.]+) last=([0-9.]+)", _line(text, "REWARD ").strip())
    assert m, text
    first, last = float(m.group(1)), float(m.group(2))
    assert first == pytest.approx(sum(rewards[:5]) / 5, abs=1e-4)
    assert last == pytest.approx(sum(rewards[-5:]) / 5, abs=1e-4)
    assert last > first, rewards


def test_samples_scored_by_the_verifier(executed):
    _, text = executed
    pattern = re.compile(r"^SAMPLE (\d+)\+(\d+)= -> (.*) \(answer (-?\d+), reward ([01])\.0\)$")
    samples = [pattern.match(l) for l in text.splitlines() if l.startswith("SAMPLE ")]
    assert len(samples) == 8 and all(samples), [l for l in text.splitlines() if "SAMPLE" in l]
    for m in samples:
        a, b, answer, reward = int(m.group(1)), int(m.group(2)), int(m.group(4)), int(m.group(5))
        completion = eval(m.group(3), {})  # a Python string literal (repr)
        assert answer == a + b
        first_line = completion.strip().split("\n", 1)[0].strip()
        assert reward == int(first_line == str(a + b)), (m.group(0), first_line)


def test_pass_at_k_table(executed):
    _, text = executed
    after = text.split("PASS@K TABLE\n", 1)[1]
    rows = re.findall(r"^\| (\d+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", after, re.M)
    table = {int(k): float(p) for k, p, _, _ in rows[:4]}
    assert list(table) == [1, 2, 4, 8], rows
    values = [table[k] for k in (1, 2, 4, 8)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values), values
    accuracy = float(re.search(r"^accuracy: ([0-9.e-]+)$", after, re.M).group(1))
    assert table[1] == pytest.approx(accuracy, abs=1e-3)
    assert "BEFORE RL" in text and "| k | pass@k before | pass@k after |" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
