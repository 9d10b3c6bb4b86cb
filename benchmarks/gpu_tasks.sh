#!/usr/bin/env bash
# Task-quality arms of the bouncing-digits preset trained side by side on one GPU (issue 14): each arm is
# the preset plus overrides, trained for the preset's steps; the newest checkpoint of every arm is copied to
# $OUT/ARM every 10 s, so a run cut short still returns what it reached. Evaluate on the CPU afterwards:
#   python benchmarks/video_tasks.py OUT/ARM --num 64 --out docs/tasks-arms/ARM
#   OUT=out bash benchmarks/gpu_tasks.sh            (DEVICE=cpu STEPS=20 for a dry run)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
PY=${PY:-python3}; OUT=${OUT:-out}; DEVICE=${DEVICE:-cuda}; STEPS=${STEPS:-2400}; DEADLINE=${DEADLINE:-170}
ARMS=${ARMS:-"tt:model.token_time=true;full:model.attention=full;full_tt:model.attention=full model.token_time=true"}
mkdir -p "$OUT"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
copy() {  # the newest checkpoint of every arm, flat, with its metrics
  for dir in /tmp/arms/*; do
    arm=$(basename "$dir"); ckpt=$(ls -d "$dir"/checkpoints/step_* 2>/dev/null | tail -1)
    [ -n "$ckpt" ] || continue
    mkdir -p "$OUT/$arm" && cp "$ckpt"/ema.safetensors "$ckpt"/model.safetensors "$ckpt"/state.json \
      "$ckpt"/config.json "$OUT/$arm/" 2>/dev/null && cp "$dir"/metrics.jsonl "$OUT/$arm/" 2>/dev/null
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
