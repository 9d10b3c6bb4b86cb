#!/usr/bin/env bash
# Task-quality arms of the bouncing-digits preset trained side by side on one GPU (issue 14): each arm is
# the preset plus overrides, trained for STEPS steps; the newest checkpoint of every arm (weights, state,
# config, metrics) is packed into $OUT/ARM.tar every 10 s, so a run cut short still returns what it reached,
# one file per arm (the device returns at most 8 files a call). Evaluate on the CPU afterwards:
#   mkdir -p runs/ARM/checkpoints/step_N && tar -xf OUT/ARM.tar -C runs/ARM/checkpoints/step_N
#   python benchmarks/video_tasks.py runs/ARM --num 64 --out docs/tasks-arms/ARM
#   OUT=out bash benchmarks/gpu_tasks.sh            (DEVICE=cpu STEPS=20 for a dry run)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
PY=${PY:-python3}; OUT=${OUT:-out}; DEVICE=${DEVICE:-cuda}; STEPS=${STEPS:-2400}; DEADLINE=${DEADLINE:-170}
ARMS=${ARMS:-"factorised:model.full_every=0 model.token_time=false;full:model.attention=full;preset:"}
mkdir -p "$OUT"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
copy() {  # the newest checkpoint of every arm and its metrics, one tar per arm (written whole, then moved)
  for dir in /tmp/arms/*; do
    arm=$(basename "$dir"); ckpt=$(ls -d "$dir"/checkpoints/step_* 2>/dev/null | tail -1)
    [ -n "$ckpt" ] || continue
    cp "$dir"/metrics.jsonl "$ckpt"/ 2>/dev/null
    tar -cf "$OUT/.$arm.tar" -C "$ckpt" . 2>/dev/null && mv "$OUT/.$arm.tar" "$OUT/$arm.tar"
  done
}
rm -rf /tmp/arms; mkdir -p /tmp/arms
start=$(date +%s)
IFS=';' read -ra specs <<< "$ARMS"
for spec in "${specs[@]}"; do
  name=${spec%%:*}; overrides=${spec#*:}
  # shellcheck disable=SC2086
  $PY -m maskdit train --preset bouncing-digits --no-progress "device=$DEVICE" "steps=$STEPS" ckpt_every=400 \
    max_seconds=100000 "run_dir=/tmp/arms/$name" $overrides > "$OUT/$name.log" 2>&1 &
done
while [ -n "$(jobs -r)" ] && [ $(( $(date +%s) - start )) -lt "$DEADLINE" ]; do sleep 10; copy; done
copy
for spec in "${specs[@]}"; do name=${spec%%:*}; echo "== $name"; tail -2 "$OUT/$name.log"; done
echo "done at $(( $(date +%s) - start )) s"
