#!/usr/bin/env bash
# Text to image on a GPU, as one prepared run (docs/text.md): the shapes-text model trained for BUDGET seconds
# at 64 tokens, then masking with text at 256 tokens (patch 2): unmasked against the routed and masked recipes
# at equal wall-clock, each scored by the GenEval-style judge on held-out captions.
#   OUT=out BUDGET=120 bash benchmarks/gpu_text.sh   (PYTHON=.venv/bin/python DEVICE=cpu BATCH=8 BUDGET=5 NUM=12: a smoke run)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1
OUT=${OUT:-out}; BUDGET=${BUDGET:-120}; DEVICE=${DEVICE:-cuda}; BATCH=${BATCH:-256}; NUM=${NUM:-300}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
common=(--data shapes-text --device "$DEVICE" --batch "$BATCH" --lr 2e-3 --ema 0.999 --budget "$BUDGET" --points 2
        --num "$NUM" --sample-steps 20)
"$PY" benchmarks/masking_convergence.py "${common[@]}" --arm-set text --arms cross --out "$OUT/modes" \
  --runs /tmp/maskdit-text-runs data.num=20000 || echo "the 64-token run FAILED"
echo "elapsed $(( $(date +%s) - start ))s"
for arm in "unmasked" "tread 0.5" "sprint 0.75 + finetune" "drop 0.5 + mixer 2"; do
  "$PY" benchmarks/masking_convergence.py "${common[@]}" --arms "$arm" --out "$OUT/masking-256" \
    --runs /tmp/maskdit-text-runs model.patch_size=2 data.num=20000 || echo "arm $arm FAILED"
  echo "elapsed $(( $(date +%s) - start ))s"
done
"$PY" benchmarks/masking_convergence.py --data shapes-text --table --out "$OUT/masking-256"
