#!/usr/bin/env bash
# The one prepared GPU run for "scale": step throughput and MFU of DiT-S/2, B/2, XL/2 at 4x32x32 (ImageNet-256
# latents), compile off and on, unmasked and masked (ratio 0.5); then TRAIN_S seconds of DiT-B/2 training on
# a synthetic latent store (steps/s, images/s, peak memory). Prints Markdown-ready lines; nothing downloads.
#
#   bash benchmarks/gpu_scaling.sh                         # on the GPU machine
#   DEVICE=cpu PRESETS="tiny:8" TRAIN_PRESET=tiny TRAIN_S=10 STEPS=2 bash benchmarks/gpu_scaling.sh   # dry run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
DEVICE=${DEVICE:-cuda}
PRESETS=${PRESETS:-"DiT-S/2:64 DiT-B/2:64 DiT-XL/2:32"}   # preset:batch
STEPS=${STEPS:-20}
TRAIN_PRESET=${TRAIN_PRESET:-DiT-B/2}
TRAIN_S=${TRAIN_S:-120}
OUT=${OUT:-runs/gpu_scaling}
mkdir -p "$OUT"

for spec in $PRESETS; do
    preset=${spec%%:*}; batch=${spec##*:}
    for compile in "" "--compile"; do
        for ratio in 0 0.5; do
            $PY -m maskdit bench --preset "$preset" --input 4x32x32 --batch "$batch" --steps "$STEPS" --warmup 5 \
                --device "$DEVICE" --mask-ratio "$ratio" $compile | tail -1 >> "$OUT/bench.jsonl"
            tail -1 "$OUT/bench.jsonl"
        done
    done
done

# synthetic latents: 4x32x32 Gaussian "means" with 1000 classes (training never decodes them)
$PY - "$OUT/latents" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
root = Path(sys.argv[1])
if not (root / "manifest.json").exists():
    root.mkdir(parents=True, exist_ok=True)
    n, rng = 8192, np.random.default_rng(0)
    np.save(root / "mean.npy", rng.standard_normal((n, 2, 4, 32, 32), dtype=np.float32).astype(np.float16))
    np.save(root / "std.npy", np.full((n, 2, 4, 32, 32), 0.01, np.float16))
    np.save(root / "labels.npy", rng.integers(0, 1000, n))
    (root / "manifest.json").write_text(json.dumps({
        "format": "maskdit-latents", "version": 1, "vae": "none (synthetic)", "scaling_factor": 0.18215,
        "latent_shape": [4, 32, 32], "image_shape": [3, 256, 256], "num": n, "num_classes": 1000,
        "class_names": [], "source": "synthetic"}))
EOF
rm -rf "$OUT/train"   # the script's own scratch run
$PY -m maskdit train --no-progress data.name=latents "data.path=$OUT/latents" "model.preset=$TRAIN_PRESET" \
    batch_size=256 steps=100000000 "max_seconds=$TRAIN_S" log_every=20 ckpt_every=100000000 data.workers=4 \
    compile=true "device=$DEVICE" "run_dir=$OUT/train" | tail -2
$PY - "$OUT/train/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"steps_per_s"' in line]
steady = rows[len(rows) // 2:]  # the second half: compiled and warm
rate = sum(r["steps_per_s"] for r in steady) / len(steady)
print(f"training: {rows[-1]['step']} steps in {rows[-1]['elapsed_s']:.0f} s; steady {rate:.2f} steps/s, "
      f"{rate * 256:.0f} images/s at batch 256")
EOF
