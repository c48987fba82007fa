"""A stand-in for `python -m jaxrl_llm.main` used by the grid-runner tests.

    python fake_train.py --config=C --workdir=W [--config.key=value ...]
    python fake_train.py --config=C --seeds=0,1 --workdirs=W0 --workdirs=W1 [...]   # vmapped seeds

Writes tensorboardX scalars with known values into W, resumes from
W/progress.json, and writes W/done.json at the end. Overrides it reads:
  train.steps (default 5), train.seed (0), algo.advantage (grpo),
  fail_at=K        exit 3 when reaching step K (every invocation),
  fail_once_at=K   exit 3 at step K on the first invocation only,
  wait_peers=M     before training, wait until M cells of the grid have started
                   (a barrier that only passes when cells run concurrently).
Values: train/reward = BASE[advantage] + 0.1 * seed + 0.01 * step,
        train/entropy = 1 - 0.05 * step, eval/pass@k = 1 - (1 - final_reward)^k.
"""

import glob
import json
import os
import sys
import time

sys.modules["torch"] = None  # tensorboardX imports torch when present; not needed here
from tensorboardX import SummaryWriter  # noqa: E402

BASE = {"psr": 0.2, "nsr": 0.3, "w_reinforce": 0.4, "grpo": 0.1}


def main(argv):
    args = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    over = {k[len("config.") :]: v for k, v in args.items() if k.startswith("config.")}
    if "seeds" in args:  # one process for several seeds, each in its own workdir
        group = args["seeds"].split(",")
        workdirs = [a.split("=", 1)[1] for a in argv if a.startswith("--workdirs=")]
        for seed, workdir in zip(group, workdirs):
            rc = train(workdir, {**over, "train.seed": seed, "group": args["seeds"]})
            if rc:
                return rc
        return 0
    return train(args["workdir"], over)


def train(workdir, over):
    steps = int(over.get("train.steps", 5))
    seed = int(over.get("train.seed", 0))
    base = BASE[over.get("algo.advantage", "grpo")]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "invocations.txt"), "a") as f:
        f.write(json.dumps(over) + "\n")
    with open(os.path.join(workdir, "invocations.txt")) as f:
        invocation = len(f.read().splitlines())

    if "wait_peers" in over:
        root = os.path.dirname(os.path.abspath(workdir))
        open(os.path.join(root, "started." + os.path.basename(workdir)), "w").close()
        deadline = time.time() + 60
        while len(glob.glob(os.path.join(root, "started.*"))) < int(over["wait_peers"]):
            if time.time() > deadline:
                print("barrier timed out", flush=True)
                return 4
            time.sleep(0.05)

    progress = os.path.join(workdir, "progress.json")
    start = json.load(open(progress))["step"] if os.path.exists(progress) else 0
    fail_at = int(over.get("fail_at", -1))
    if invocation == 1:
        fail_at = int(over.get("fail_once_at", fail_at))
    writer = SummaryWriter(workdir)
    reward = None
    for step in range(start, steps):
        if step == fail_at:
            writer.close()
            print(f"failing at step {step}", flush=True)
            return 3
        reward = base + 0.1 * seed + 0.01 * step
        writer.add_scalar("train/reward", reward, step)
        writer.add_scalar("train/entropy", 1.0 - 0.05 * step, step)
        with open(progress, "w") as f:
            json.dump({"step": step + 1}, f)
    for k in (1, 2, 4):
        writer.add_scalar(f"eval/pass@{k}", 1 - (1 - reward) ** k, steps)
    writer.close()
    with open(os.path.join(workdir, "done.json"), "w") as f:
        json.dump({"step": steps, "resumed_from": start, "final": {"train/reward": reward}}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
