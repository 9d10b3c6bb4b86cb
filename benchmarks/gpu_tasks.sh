#!/usr/bin/env bash
# Task-quality arms of the bouncing-digits preset trained side by side on one GPU (issue 14), then every
# checkpoint of every arm scored on the held-out task benchmark on the same GPU. Each arm is the preset plus
# COMMON plus its own overrides; training stops at its step count or after TRAIN_S seconds (with a
# checkpoint); the last checkpoint is also scored with context guidance 2. Back in $OUT: log.txt (one EVAL
# line per checkpoint) and evals.tar (every tasks.json, the training logs and metrics, the GIFs of each arm's
# last checkpoint; the device returns at most 8 files, 16 MiB each, so no weights come back).
#   OUT=out bash benchmarks/gpu_tasks.sh
#   DEVICE=cpu TRAIN_S=20 NUM=4 ARMS="a:steps=6 ckpt_every=3" OUT=/tmp/dry bash benchmarks/gpu_tasks.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # many processes share the host's cores
PY=${PY:-python3}; OUT=${OUT:-out}; DEVICE=${DEVICE:-cuda}; TRAIN_S=${TRAIN_S:-270}; NUM=${NUM:-64}
GUIDED=${GUIDED:-1}  # 1: also score each arm's last checkpoint with context guidance 2
# the sweep's base: the preset of that day (patch 1x4x4, batch 32, lr 1e-3) with the weighted task mix
COMMON=${COMMON:-"model.patch_size=[1,4,4] batch_size=32 lr=1e-3 task.weights=[0.5,4,1,4,1,1,0.5] compile=false precision=auto"}
BIG="data.num=40000 batch_size=256 steps=2400 ckpt_every=600"  # 8.75x the preset's clips seen, 40k distinct
ARMS=${ARMS:-"b32:steps=2340 ckpt_every=1170;\
b256:$BIG;\
b256_lr2e-3:$BIG lr=2e-3;\
b256_width256:$BIG model.hidden_size=256;\
b256_patch2:$BIG model.patch_size=[1,2,2];\
b256_full:$BIG model.attention=full"}
W=/tmp/gpu_tasks
rm -rf "$W"; mkdir -p "$OUT" "$W/eval"
exec > >(tee "$OUT/log.txt") 2>&1
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__)"
start=$(date +%s)

score() {  # one checkpoint scored into $W/eval/ARM/NAME, one EVAL line printed
  local arm=$1 ckpt=$2 name=$3
  shift 3
  $PY benchmarks/video_tasks.py "$ckpt" --num "$NUM" --device "$DEVICE" --out "$W/eval/$arm/$name" "$@" \
    > "$W/eval/$arm/$name.log" 2>&1 || { echo "!! $arm $name failed"; tail -3 "$W/eval/$arm/$name.log"; return; }
  $PY -c 'import json, sys
cells = []
for task, row in json.load(open(sys.argv[2])).items():
    psnr, ident = row["model"]["psnr"], row.get("identity")
    cells.append(f"{task} {psnr:.2f}" + ("" if ident is None else f"/{ident:.0%}"))
print(f"EVAL {sys.argv[1]}: " + "  ".join(cells), flush=True)' "$arm $name" "$W/eval/$arm/$name/tasks.json"
}

evaluate() {  # every checkpoint of one arm, oldest first; the last one also with context guidance 2
  local arm=$1 ckpt last=""
  for ckpt in "$W/$arm"/checkpoints/step_*; do
    [ -d "$ckpt" ] || continue
    score "$arm" "$ckpt" "${ckpt##*/}"
    last=$ckpt
  done
  [ -z "$last" ] || [ "$GUIDED" != 1 ] || score "$arm" "$last" "ctx2-${last##*/}" --guidance context --guidance-scale 2
}

IFS=';' read -ra specs <<< "$ARMS"
pids=()
for spec in "${specs[@]}"; do
  name=${spec%%:*}; overrides=${spec#*:}
  mkdir -p "$W/eval/$name"
  (
    # shellcheck disable=SC2086
    $PY -m maskdit train --preset bouncing-digits --no-progress "device=$DEVICE" max_seconds="$TRAIN_S" \
      keep_checkpoints=20 "run_dir=$W/$name" $COMMON $overrides > "$W/eval/$name/train.log" 2>&1
    echo "-- $name trained at $(( $(date +%s) - start )) s: $(grep -E 'trained steps|rror' "$W/eval/$name/train.log" | tail -2)"
    cp "$W/$name/metrics.jsonl" "$W/eval/$name/" 2>/dev/null
    evaluate "$name"
    echo "-- $name evaluated at $(( $(date +%s) - start )) s"
  ) &
  pids+=($!)
done
wait "${pids[@]}"  # not a bare wait: that would also wait for the tee above, which never ends

for dir in "$W"/eval/*/; do  # the GIFs of each arm's last checkpoint only
  last=$(ls -d "$dir"step_*/ 2>/dev/null | sort | tail -1)
  for ev in "$dir"*/; do [ "$ev" = "$last" ] || rm -f "$ev"*.gif; done
done
tar -cf "$OUT/evals.tar" -C "$W/eval" .
ls -la "$OUT"
echo "done at $(( $(date +%s) - start )) s"
