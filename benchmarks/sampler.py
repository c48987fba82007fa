"""Sampler throughput and time to first token: jaxrl_llm vs HF transformers vs tunix, side by side.

    python benchmarks/sampler.py --workdir /tmp/sampler_bench \
        --tunix-python /tmp/tunix_venv/bin/python --models a,b --batches 1,16,64

Models (random weights, written as HF folders with `models.save_hf` plus a
word-level tokenizer "t0 ... t151935", so all three systems read the same
safetensors):
  a: Qwen2-shaped, vocab 151936, hidden 256, 4 layers, 4 heads / 2 KV heads,
     head_dim 64, MLP 1024, tied embeddings (42.8M parameters, 39M of them the
     embedding: the LM head dominates a decode step);
  b: Qwen2.5-0.5B-shaped (hidden 896, 24 layers, 14 / 2 heads, MLP 4864, tied).
Prompts are 128 random tokens, 256 new tokens, float32, EOS disabled for all
systems. Each (system, model) runs in its own process with the same thread
count; every timed call follows a warm-up call of the same shape (`reps`
timed calls, best kept). tok/s = tokens produced / wall time of the call
(prefill included); TTFT = wall time of a 1-new-token call.

tunix (PyPI google-tunix 0.1.7) pins safetensors<0.8 while transformers 5
needs >= 0.8, so it lives in its own virtual environment, e.g.
`python -m venv /tmp/tunix_venv && /tmp/tunix_venv/bin/pip install
google-tunix==0.1.7 jax==0.10.2 "transformers<5"`; it is never a dependency
of this package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from jaxrl_llm.models import presets

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS = ("jaxrl", "hf", "tunix")

MODELS = {
    "a": dict(
        vocab_size=151936,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=1024,
    ),
    "b": presets.model_config_fields("0.5B"),  # Qwen2.5-0.5B's shape
}


def write_tokenizer(folder: str, vocab: int) -> None:
    """A word-level tokenizer whose token i is the word f"t{i}" (no special tokens besides pad t0)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", unk_token="t0")
    fast.save_pretrained(folder)  # tunix's venv reads tokenizer.json directly (transformers 4)


def prepare(workdir: str, name: str) -> str:
    """Write model `name` (random weights) as an HF folder once; returns its path."""
    folder = os.path.join(workdir, f"model_{name}")
    if os.path.exists(os.path.join(folder, "done")):
        return folder
    import jax

    from jaxrl_llm import models

    config = models.ModelConfig(
        **MODELS[name],
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        qkv_bias=True,
        architecture="qwen2",
        max_position_embeddings=32768,
        pad_token_id=0,
    )
    params = jax.jit(models.init_params, static_argnums=0)(config, jax.random.key(0))
    models.save_hf(folder, config, params)
    write_tokenizer(folder, config.vocab_size)
    count = sum(x.size for x in jax.tree.leaves(params))
    with open(os.path.join(folder, "done"), "w") as f:
        f.write(str(count))
    return folder


def param_count(folder: str) -> int:
    with open(os.path.join(folder, "done")) as f:
        return int(f.read())


class Worker:
    """One system's worker process (`sampler_workers.py`), answering timing requests."""

    def __init__(
        self,
        python: str,
        system: str,
        folder: str,
        threads: int,
        logdir: str,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        env = dict(
            os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
        )
        env.pop("XLA_FLAGS", None)
        if device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
        else:  # the systems share one GPU: JAX allocates as it goes instead of taking 75 % up front
            env.pop("JAX_PLATFORMS", None)
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        self.system = system
        self.log = open(os.path.join(logdir, f"worker_{system}.log"), "a")
        self.proc = subprocess.Popen(
            [
                python,
                os.path.join(HERE, "sampler_workers.py"),
                system,
                folder,
                "--threads",
                str(threads),
                "--device",
                device,
                "--dtype",
                dtype,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self.ok = self._read() == "READY"

    def _read(self) -> str:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return ""
            if line.startswith(("READY", "TIME")):
                return line.strip()

    def time(self, batch: int, mode: str, new_tokens: int):
        """(seconds, tokens) of one call, or None if the worker died."""
        if not self.ok:
            return None
        self.proc.stdin.write(f"{batch} {mode} {new_tokens}\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply:
            self.ok = False
            print(f"# {self.system} worker died; see {self.log.name}", flush=True)
            return None
        _, seconds, tokens = reply.split()
        return float(seconds), int(tokens)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


def measure(workers: dict, batch: int, mode: str, new_tokens: int, reps: int) -> dict:
    """Time every system alternately `reps` times; best TTFT and best full call per system."""
    best = {s: dict(ttft_s=float("inf"), total_s=float("inf"), tokens=0) for s in workers}
    for _ in range(reps):
        for system, worker in workers.items():
            ttft = worker.time(batch, mode, 1)
            full = worker.time(batch, mode, new_tokens)
            if ttft is None or full is None:
                continue
            best[system]["ttft_s"] = min(best[system]["ttft_s"], ttft[0])
            if full[0] < best[system]["total_s"]:
                best[system].update(total_s=full[0], tokens=full[1])
    return {s: r for s, r in best.items() if r["tokens"]}


def table(results: list[dict]) -> str:
    """Markdown table, one line per (model, batch, mode), systems side by side, with ratios."""
    keyed = {(r["model"], r["batch"], r["mode"], r["system"]): r for r in results}
    cells = sorted({(r["model"], r["batch"], r["mode"]) for r in results})
    lines = [
        "| model | batch | mode | jaxrl tok/s | HF tok/s | tunix tok/s | jaxrl / HF | jaxrl / tunix "
        "| TTFT ms jaxrl / HF / tunix |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def tps(r):
        return r["tokens"] / r["total_s"] if r else None

    def fmt(x, spec="{:.0f}"):
        return "–" if x is None else spec.format(x)

    for model, batch, mode in cells:
        rows = {s: keyed.get((model, batch, mode, s)) for s in SYSTEMS}
        t = {s: tps(r) for s, r in rows.items()}
        ratio = lambda other, t=t: None if not (t["jaxrl"] and t[other]) else t["jaxrl"] / t[other]
        ttft = " / ".join(fmt(r and r["ttft_s"] * 1e3) for r in rows.values())
        lines.append(
            f"| {model} | {batch} | {mode} | {fmt(t['jaxrl'])} | {fmt(t['hf'])} | {fmt(t['tunix'])} "
            f"| {fmt(ratio('hf'), '{:.2f}x')} | {fmt(ratio('tunix'), '{:.2f}x')} | {ttft} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "sampler_bench")
    )
    parser.add_argument("--models", default="a,b")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--modes", default="sampled,greedy")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--cells",
        default=None,
        help="explicit MODEL:BATCH:MODE list (overrides --models/--batches/--modes)",
    )
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tunix-python", default=None, help="python of the venv with google-tunix")
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: every system on the first GPU (torch cuda, JAX's default backend)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights and compute dtype of every system (tunix: its own default)",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)

    if args.cells:
        plan = [tuple(c.split(":")) for c in args.cells.split(",")]
        plan = [(m, int(b), mode) for m, b, mode in plan]
    else:
        plan = [
            (m, int(b), mode)
            for m in args.models.split(",")
            for b in args.batches.split(",")
            for mode in args.modes.split(",")
        ]
    systems = args.systems.split(",")
    if "tunix" in systems and not args.tunix_python:
        print("# no --tunix-python given: tunix skipped", flush=True)
        systems.remove("tunix")

    results = []
    for model in sorted({m for m, _, _ in plan}):
        folder = prepare(args.workdir, model)
        workers = {}
        for system in systems:
            python = args.tunix_python if system == "tunix" else sys.executable
            workers[system] = Worker(
                python, system, folder, args.threads, args.workdir, args.device, args.dtype
            )
            if not workers[system].ok:
                print(
                    f"# {system} worker failed to start; see {workers[system].log.name}", flush=True
                )
        for m, batch, mode in plan:
            if m != model:
                continue
            t0 = time.time()
            for system, row in measure(workers, batch, mode, args.new_tokens, args.reps).items():
                results.append(
                    dict(
                        model=model,
                        params=param_count(folder),
                        system=system,
                        batch=batch,
                        mode=mode,
                        **row,
                    )
                )
                print(json.dumps(results[-1]), flush=True)
            print(f"# cell {model}:{batch}:{mode} took {time.time() - t0:.0f}s", flush=True)
        for worker in workers.values():
            worker.close()

    info = dict(
        machine=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        load_average_at_end=os.getloadavg(),
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
        new_tokens=args.new_tokens,
        prompt_len=128,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        command=" ".join(
            [os.path.basename(sys.executable), "benchmarks/sampler.py"] + sys.argv[1:]
        ),
    )
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(dict(info=info, results=results), f, indent=1)
    print(json.dumps(info))
    print(table(results))


if __name__ == "__main__":
    main()
