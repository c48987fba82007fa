#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md in one call, in three parts of at most 9 minutes each:
#
#   train    (timeouts sum to 550 s) fused attention (cuDNN, Pallas Triton) against the XLA path, forward and gradients
#            asserted (`benchmarks/attention_parity.py`); train-step MFU and decode bandwidth
#            utilisation (`benchmarks/mfu.py`, Qwen2.5-0.5B and -1.5B shapes, XLA and cuDNN
#            attention); the 7B LoRA GRPO step of 64 rows x 1024 tokens in 8 micro-batches
#            (time and peak memory on one H200)
#   rollout  (timeouts sum to 510 s) paged / decode attention kernels against XLA, asserted
#            (`benchmarks/paged_attention_parity.py`); the sampler side by side with HF
#            transformers on the same GPU (model (b), bfloat16); the long-tail workload:
#            static, static with prefix buckets, continuous (`benchmarks/long_tail.py`)
#   decode   (timeouts sum to 400 s) seconds per decode step and HBM bandwidth utilisation at
#            1 and 256 rows, Qwen2.5-0.5B and -1.5B shapes, the XLA decode attention vs the
#            Triton decode kernel (`model.decode_attention = pallas_gpu`), in one call each
#            (`benchmarks/mfu.py --only decode`)
#
#     bash benchmarks/gpu.sh                  # every part; results under $OUT (/tmp/gpu_bench)
#     bash benchmarks/gpu.sh --only train     # or --only rollout, --only decode
#
# Needs jax with a CUDA plugin, flax, optax, orbax, ml_collections, torch (cuda) and
# transformers importable; run from the repository root (it is put on PYTHONPATH).
set -u
ONLY=all
if [ "${1:-}" = "--only" ]; then ONLY=${2:-}; fi
case "$ONLY" in all | train | rollout | decode) ;; *)
  echo "usage: bash benchmarks/gpu.sh [--only train|rollout|decode] (got: $*)" >&2
  exit 2
  ;;
esac
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, \
'transformers', transformers.__version__)"

train() {
  echo "== benchmarks/attention_parity.py: cuDNN and Pallas (Triton) attention vs XLA, asserted"
  timeout 150 python3 benchmarks/attention_parity.py --rows=8 --seq=1024 \
    > "$OUT/attention_parity.json" 2> "$OUT/attention_parity.log"
  echo "rc=$? (1: a parity check failed)"; cat "$OUT/attention_parity.json"; tail -3 "$OUT/attention_parity.log"

  echo "== benchmarks/mfu.py 0.5B (XLA attention; then cuDNN, train step only)"
  timeout 120 python3 benchmarks/mfu.py --size=0.5B --rows=64 --seq=1024 \
    --decode_rows=256 --prompt_len=256 --new_tokens=256 > "$OUT/bench_0.5B.json" 2> "$OUT/bench_0.5B.log"
  echo "rc=$?"; cat "$OUT/bench_0.5B.json"; tail -3 "$OUT/bench_0.5B.log"
  timeout 50 python3 benchmarks/mfu.py --size=0.5B --rows=64 --seq=1024 --only=train \
    --attention=cudnn > "$OUT/bench_0.5B_cudnn.json" 2> "$OUT/bench_0.5B_cudnn.log"
  echo "rc=$?"; cat "$OUT/bench_0.5B_cudnn.json"; tail -3 "$OUT/bench_0.5B_cudnn.log"

  echo "== benchmarks/mfu.py 1.5B (XLA attention; then cuDNN, train step only)"
  timeout 90 python3 benchmarks/mfu.py --size=1.5B --rows=32 --seq=1024 \
    --decode_rows=256 --prompt_len=256 --new_tokens=256 > "$OUT/bench_1.5B.json" 2> "$OUT/bench_1.5B.log"
  echo "rc=$?"; cat "$OUT/bench_1.5B.json"; tail -3 "$OUT/bench_1.5B.log"
  timeout 50 python3 benchmarks/mfu.py --size=1.5B --rows=32 --seq=1024 --only=train \
    --attention=cudnn > "$OUT/bench_1.5B_cudnn.json" 2> "$OUT/bench_1.5B_cudnn.log"
  echo "rc=$?"; cat "$OUT/bench_1.5B_cudnn.json"; tail -3 "$OUT/bench_1.5B_cudnn.log"

  echo "== benchmarks/mfu.py 7B LoRA r16 (bf16 base), 64 x 1024 tokens, 8 micro-batches"
  timeout 90 python3 benchmarks/mfu.py --size=7B --rows=64 --seq=1024 --only=train \
    --lora_rank=16 --micro=8 --attention=cudnn --repeats=2 \
    > "$OUT/bench_7B_lora.json" 2> "$OUT/bench_7B_lora.log"
  echo "rc=$?"; cat "$OUT/bench_7B_lora.json"; tail -3 "$OUT/bench_7B_lora.log"
}

rollout() {
  echo "== benchmarks/paged_attention_parity.py: Pallas paged / decode attention vs XLA, asserted"
  timeout 150 python3 benchmarks/paged_attention_parity.py > "$OUT/paged_attention_parity.json" \
    2> "$OUT/paged_attention_parity.log"; echo "rc=$? (1: a parity check failed)"; cat "$OUT/paged_attention_parity.json"

  echo "== sampler vs HF, model b, bfloat16"
  timeout 210 python3 benchmarks/sampler.py --device gpu --dtype bfloat16 --systems jaxrl,hf --reps 2 \
    --workdir /tmp/sampler_gpu --cells b:1:greedy,b:16:sampled,b:64:greedy > "$OUT/sampler.log" 2>&1
  echo "rc=$?"; tail -8 "$OUT/sampler.log"
  cp /tmp/sampler_gpu/results.json "$OUT/sampler_results.json" 2>/dev/null
  tail -5 /tmp/sampler_gpu/worker_*.log > "$OUT/sampler_workers.log" 2>/dev/null

  echo "== benchmarks/long_tail.py: static, static with kv buckets, continuous"
  timeout 150 python3 benchmarks/long_tail.py --reps 2 --json "$OUT/long_tail.json" \
    > "$OUT/long_tail.log" 2>&1
  echo "rc=$?"; grep -v '^{' "$OUT/long_tail.log" | tail -12
}

decode() {
  echo "== benchmarks/mfu.py --only decode: XLA decode attention vs the Triton decode kernel"
  for size in 0.5B 1.5B; do
    for rows in 1 256; do
      for impl in xla pallas_gpu; do
        name="decode_${size}_${rows}_${impl}"
        timeout 50 python3 benchmarks/mfu.py --size=$size --only=decode --decode_rows=$rows \
          --prompt_len=256 --new_tokens=256 --repeats=2 --decode_attention=$impl \
          > "$OUT/$name.json" 2> "$OUT/$name.log"
        echo "$name rc=$?"; grep -E '"(seconds_per_step|decode_bw_util)"' "$OUT/$name.json"
      done
    done
  done
}

case "$ONLY" in
  train) train ;;
  rollout) rollout ;;
  decode) decode ;;
  all) train; rollout; decode ;;
esac
