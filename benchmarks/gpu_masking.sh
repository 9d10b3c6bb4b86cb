#!/usr/bin/env bash
# The masking study's GPU part, as one prepared run (docs/masking.md): training-step throughput of the
# recipes at DiT-B/2 and DiT-XL/2 scale (4x32x32 input = 256 tokens, batch 128, bf16 autocast), then the
# equal-wall-clock convergence arms at DiT-B/2 on mnist32 (256 tokens, batch 128, bf16).
#   OUT=out BUDGET=70 bash benchmarks/gpu_masking.sh      (needs .bench/mnist32.npz, see masking_convergence.py)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
OUT=${OUT:-out}; BUDGET=${BUDGET:-70}
mkdir -p "$OUT/gpu"
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
start=$(date +%s)
{
  python3 benchmarks/masking_throughput.py --preset DiT-B/2 --input 4x32x32 --batch 128 --steps 10 --rounds 1 \
    --device cuda --only "(a) drop 0.5,(d) tread 0.5,(e) sprint 0.75,(f) maskdit 0.5"
  python3 benchmarks/masking_throughput.py --preset DiT-XL/2 --input 4x32x32 --batch 128 --steps 5 --rounds 1 \
    --device cuda --only "(d) tread 0.5,(e) sprint 0.75"
} 2>&1 | grep -v '^\[{' | tee "$OUT/throughput.txt"
echo "throughput took $(( $(date +%s) - start ))s"
for arm in "unmasked" "sprint 0.75" "tread 0.5" "maskdit 0.5"; do
  python3 benchmarks/masking_convergence.py --data mnist32 --data-path .bench/mnist32.npz --device cuda \
    --preset DiT-B/2 --batch 128 --lr 2e-4 --ema 0.99 --budget "$BUDGET" --points 3 --num 1000 --sample-steps 10 \
    --arms "$arm" --out "$OUT/gpu" --runs /tmp/maskdit-runs || echo "arm $arm FAILED"
  echo "elapsed $(( $(date +%s) - start ))s"
done
