#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md in one call: fused attention (cuDNN, Pallas Triton) against the
# XLA path, forward and gradients asserted (`benchmarks/attention_parity.py`), train-step MFU
# and decode bandwidth utilisation (`benchmarks/mfu.py`, Qwen2.5-0.5B and -1.5B shapes), then
# the sampler side by side with HF transformers on the same GPU (model (b), bfloat16).
#
#     bash benchmarks/gpu.sh              # results under $OUT (default /tmp/gpu_bench)
#
# Needs jax with a CUDA plugin, flax, optax, orbax, ml_collections, torch (cuda) and
# transformers importable; run from the repository root (it is put on PYTHONPATH).
set -u
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, \
'transformers', transformers.__version__)"

echo "== benchmarks/attention_parity.py: cuDNN and Pallas (Triton) attention vs XLA, asserted"
timeout 240 python3 benchmarks/attention_parity.py --rows=8 --seq=1024 \
  > "$OUT/attention_parity.json" 2> "$OUT/attention_parity.log"
echo "rc=$? (1: a parity check failed)"; cat "$OUT/attention_parity.json"; tail -3 "$OUT/attention_parity.log"

echo "== benchmarks/paged_attention_parity.py: Pallas paged / decode attention vs XLA, asserted"
timeout 180 python3 benchmarks/paged_attention_parity.py > "$OUT/paged_attention_parity.json" \
  2> "$OUT/paged_attention_parity.log"; echo "rc=$? (1: a parity check failed)"; cat "$OUT/paged_attention_parity.json"

echo "== benchmarks/mfu.py 0.5B"
timeout 150 python3 benchmarks/mfu.py --size=0.5B --rows=64 --seq=1024 \
  --decode_rows=256 --prompt_len=256 --new_tokens=256 > "$OUT/bench_0.5B.json" 2> "$OUT/bench_0.5B.log"
echo "rc=$?"; cat "$OUT/bench_0.5B.json"; tail -3 "$OUT/bench_0.5B.log"

echo "== sampler vs HF, model b, bfloat16"
timeout 210 python3 benchmarks/sampler.py --device gpu --dtype bfloat16 --systems jaxrl,hf --reps 2 \
  --workdir /tmp/sampler_gpu --cells b:1:greedy,b:16:sampled,b:64:greedy > "$OUT/sampler.log" 2>&1
echo "rc=$?"; tail -8 "$OUT/sampler.log"
cp /tmp/sampler_gpu/results.json "$OUT/sampler_results.json" 2>/dev/null
tail -5 /tmp/sampler_gpu/worker_*.log > "$OUT/sampler_workers.log" 2>/dev/null

echo "== benchmarks/mfu.py 1.5B"
timeout 120 python3 benchmarks/mfu.py --size=1.5B --rows=32 --seq=1024 \
  --decode_rows=256 --prompt_len=256 --new_tokens=256 > "$OUT/bench_1.5B.json" 2> "$OUT/bench_1.5B.log"
echo "rc=$?"; cat "$OUT/bench_1.5B.json"; tail -3 "$OUT/bench_1.5B.log"
