"""Workers of `benchmarks/sampler.py`: one process per (system, model), timing calls on request.

    python benchmarks/sampler_workers.py SYSTEM FOLDER [--threads 2] [--device cpu|gpu] [--dtype float32|bfloat16]
    # then stdin: "16 sampled 256"

SYSTEM is `jaxrl` (this library), `hf` (transformers `generate`, torch CPU) or
`tunix` (tunix's vanilla `Sampler`; run with the interpreter of a separate
virtual environment that has google-tunix installed). Each worker imports
only its own stack, so the tunix worker runs without jaxrl_llm installed.

The orchestrator keeps one worker per system alive and sends the same
request to each in turn, so the systems are timed alternately under the same
machine conditions. A request (batch, mode, new tokens) on random 128-token
prompts answers the wall time of one call, after a warm-up call the first
time that shape is seen (the JAX systems compile then), and the tokens
actually produced (EOS disabled everywhere: no stop ids in jaxrl,
eos_token_id=None in HF, an out-of-vocabulary eos id in tunix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

PROMPT_LEN = 128


def _prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(1, vocab, PROMPT_LEN))) for _ in range(batch)]


# ----------------------------------------------------------------------- jaxrl
def setup_jaxrl(folder, threads, device="cpu", dtype="float32"):
    import jax
    import numpy as np

    from jaxrl_llm import models
    from jaxrl_llm.rollout import SamplingParams, generate, pad_prompts

    config, params = models.load_hf(folder, dtype=dtype)
    print(
        f"# jaxrl on {jax.devices()[0].device_kind}, jax {jax.__version__}, {dtype}",
        file=sys.stderr,
        flush=True,
    )
    seed = [0]

    def call(batch, mode, new_tokens):
        prompts = pad_prompts(_prompts(batch, config.vocab_size), bucket_lengths=(PROMPT_LEN,))
        seed[0] += 1
        sp = SamplingParams(new_tokens, greedy=mode == "greedy")
        t0 = time.perf_counter()
        r = jax.block_until_ready(generate(params, config, prompts, jax.random.key(seed[0]), sp))
        return time.perf_counter() - t0, int(np.asarray(r.mask).sum())

    return call


# -------------------------------------------------------------------------- hf
def setup_hf(folder, threads, device="cpu", dtype="float32"):
    import torch
    import transformers

    torch.set_num_threads(threads)
    dev = "cuda" if device == "gpu" else "cpu"
    model = (
        transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        .to(dev)
        .eval()
    )
    vocab = model.config.vocab_size
    print(
        f"# hf on {dev}, torch {torch.__version__}, transformers {transformers.__version__}, {dtype}",
        file=sys.stderr,
        flush=True,
    )

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def call(batch, mode, new_tokens):
        ids = torch.tensor(_prompts(batch, vocab), dtype=torch.long, device=dev)
        kw = (
            dict(do_sample=False)
            if mode == "greedy"
            else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        )
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=None,
                pad_token_id=0,
                **kw,
            )
        sync()
        return time.perf_counter() - t0, int((out.shape[1] - PROMPT_LEN) * out.shape[0])

    return call


# ----------------------------------------------------------------------- tunix
def setup_tunix(folder, threads, device="cpu", dtype="float32"):
    import jax
    import numpy as np
    import transformers
    from tunix.generate import sampler as sampler_lib
    from tunix.models.qwen2 import model as qwen2_model
    from tunix.models.qwen2 import params as qwen2_params

    with open(os.path.join(folder, "config.json")) as f:
        hf = json.load(f)
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 1e6)
    cfg = qwen2_model.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(theta),
        norm_eps=hf["rms_norm_eps"],
        use_tied_embedding=hf["tie_word_embeddings"],
    )
    model = qwen2_params.create_model_from_safe_tensors(folder, cfg)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(folder, "tokenizer.json"), pad_token="t0", unk_token="t0"
    )
    samplers = {}
    no_eos = [cfg.vocab_size]  # never produced: EOS disabled
    seed = [0]

    def call(batch, mode, new_tokens):
        if new_tokens not in samplers:  # the KV cache is sized to the call
            cache = sampler_lib.CacheConfig(
                cache_size=PROMPT_LEN + new_tokens,
                num_layers=cfg.num_layers,
                num_kv_heads=cfg.num_kv_heads,
                head_dim=cfg.head_dim,
            )
            samplers[new_tokens] = sampler_lib.Sampler(model, tokenizer, cache)
        texts = [" ".join(f"t{i}" for i in p) for p in _prompts(batch, cfg.vocab_size)]
        assert len(tokenizer(texts[0])["input_ids"]) == PROMPT_LEN
        kw = dict(temperature=0.0) if mode == "greedy" else dict(temperature=1.0, top_p=1.0)
        seed[0] += 1
        t0 = time.perf_counter()
        out = samplers[new_tokens](
            texts,
            max_generation_steps=new_tokens,
            max_prompt_length=PROMPT_LEN,
            eos_tokens=no_eos,
            seed=seed[0],
            **kw,
        )
        jax.block_until_ready(out.tokens)
        return time.perf_counter() - t0, int(sum(len(np.asarray(t)) for t in out.tokens))

    return call


SETUPS = {"jaxrl": setup_jaxrl, "hf": setup_hf, "tunix": setup_tunix}


def main(argv=None):
    """Serve timing requests on stdin: lines `BATCH MODE NEW_TOKENS` -> `TIME seconds tokens`.

    The first request of a shape is preceded by a warm-up call (for HF a 4-token one).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SETUPS))
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    call = SETUPS[args.system](args.folder, args.threads, args.device, args.dtype)
    seen = set()
    print("READY", flush=True)
    for line in sys.stdin:
        batch, mode, new_tokens = line.split()
        shape = (int(batch), mode, int(new_tokens))
        if shape not in seen:  # warm-up; torch compiles nothing, so a short call warms HF up
            call(shape[0], shape[1], min(shape[2], 4) if args.system == "hf" else shape[2])
            seen.add(shape)
        seconds, tokens = call(*shape)
        print(f"TIME {seconds} {tokens}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
