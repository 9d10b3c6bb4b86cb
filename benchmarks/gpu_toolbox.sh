#!/usr/bin/env bash
# One prepared GPU run for the toolbox, fast sampling and scale: (2) MoE DiT-S/2 training throughput
# against the dense DiT-S/2 at equal active parameters; (3) sampling wall-clock of the accelerators at
# DiT-XL/2 size; (4) DiT-XL/2's compiled training step (MFU); (5) the bouncing-digits preset trained on the
# GPU, its last checkpoint copied to $OUT/bd (flat) for the CPU-side studies. Prints Markdown-ready lines.
# ((1), FSDP against DDP, was dropped: one process trains without a strategy, so one GPU cannot test it.)
#   OUT=out bash benchmarks/gpu_toolbox.sh
#   DEVICE=cpu PRESET_S=tiny PRESET_XL=tiny INPUT=1x8x8 OUT=/tmp/dry bash benchmarks/gpu_toolbox.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
PY=${PY:-python3}; OUT=${OUT:-out}; DEVICE=${DEVICE:-cuda}; INPUT=${INPUT:-4x32x32}
PRESET_S=${PRESET_S:-DiT-S/2}; PRESET_XL=${PRESET_XL:-DiT-XL/2}; ONLY=${ONLY:-2345}; BD_ARGS=${BD_ARGS:-}  # the sections to run
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__)"
start=$(date +%s)
lap() { echo "--- $1 done at $(( $(date +%s) - start )) s"; }
want() { [[ "$ONLY" == *"$1"* ]]; }

if want 2; then
  echo "## (2) MoE throughput"
  $PY benchmarks/moe_throughput.py --preset "$PRESET_S" --input "$INPUT" --batch 64 --steps 10 --rounds 2 \
    --device "$DEVICE" | grep -v '^\[{'
  lap "(2)"
fi

if want 3; then
  echo "## (3) accelerated sampling speed"
  $PY benchmarks/accel_speed.py --preset "$PRESET_XL" --input "$INPUT" --num 64 --steps 25 --rounds 2 --device "$DEVICE" \
    --accels "cache:every=2;cache:every=3;ras:ratio=0.5;ras:ratio=0.25;int8;int8+ras:ratio=0.5"
  lap "(3)"
fi

if want 4; then
  echo "## (4) compiled training step"
  for ratio in 0 0.5; do
    $PY -m maskdit bench --preset "$PRESET_XL" --input "$INPUT" --batch 64 --steps 10 --warmup 3 --device "$DEVICE" \
      --compile --mask-ratio "$ratio" | head -2
  done
  lap "(4)"
fi

if want 5; then
  echo "## (5) bouncing-digits preset on the GPU"
  rm -rf /tmp/bd
  $PY -m maskdit train --preset bouncing-digits --no-progress "device=$DEVICE" run_dir=/tmp/bd $BD_ARGS 2>&1 | tail -3
  ckpt=$(ls -d /tmp/bd/checkpoints/step_* | tail -1)
  mkdir -p "$OUT/bd" && cp "$ckpt"/ema.safetensors "$ckpt"/model.safetensors "$ckpt"/state.json "$ckpt"/config.json "$OUT/bd/"
  cp /tmp/bd/metrics.jsonl "$OUT/bd/" && echo "copied $ckpt"
  lap "(5)"
fi
