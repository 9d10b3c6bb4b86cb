"""Control on held-out images: the digits model finetuned to follow a control map (``--signal``, default Sobel
``edges``; ``--kind``, default ``concat``), scored by edge F1 between each sample's edges and the edges it was asked
to follow, or for a degradation (``lowres:F``: super-resolution) by the PSNR of the sample against the image the map
came from, beside bicubic upsampling of the same low-resolution copy.

    python benchmarks/control_edges.py --base runs/digits --steps 1500 --num 297
    python benchmarks/control_edges.py --base runs/digits --signal lowres:4 --out docs/adapters/control_lowres4.json
    python benchmarks/control_edges.py --base runs/digits --kind controlnet --set control.blocks=1 --seconds 150 \
        --out docs/adapters/kinds/controlnet.json

``--seconds`` trains for that much wall-clock instead of a step count (the kinds compared at equal time).

The digits are split: the first 1,500 train the controlled model, the last 297 are held out, and their edge maps
(with their labels) condition the samples that are scored. The uncontrolled base, sampled with the same labels,
is the floor: what edge F1 the class alone explains. Run it alone on a quiet machine.
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


def write_result(path: str | Path, result: dict) -> None:
    """Write a study's figures as JSON (its folder made if needed) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def split_digits(root: Path, train: int) -> tuple[Path, Path]:
    from maskdit.data.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images[:, 0].numpy(), digits.labels.numpy()
    paths = root / "digits_train.npz", root / "digits_test.npz"
    np.savez(paths[0], images=images[:train], labels=labels[:train])
    np.savez(paths[1], images=images[train:], labels=labels[train:])
    return paths


def evaluate(run: Path, test: Path, num: int, control: bool) -> dict:
    extra = ["--control", str(test), "--metrics", "control,domain_fid,class"] if control else \
        ["--metrics", "domain_fid,class"]
    out = subprocess.run([sys.executable, "-m", "maskdit", "eval", str(run), "--data", str(test), "--num", str(num),
                          *extra], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bicubic(test: Path, num: int, factor: int) -> float:
    """PSNR (dB) of bicubic upsampling of the held-out images' FxF means against the images themselves."""
    import torch
    import torch.nn.functional as F

    from maskdit.data.datasets import load_npz
    from maskdit.evaluate.control import psnr

    data = load_npz(test)
    sources, _ = data.batch(torch.arange(num) % len(data))
    small = F.avg_pool2d(sources, factor)
    up = F.interpolate(small, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)
    return psnr(up, sources).mean().item()


def base_floor(base: Path, test: Path, num: int, signal: str) -> dict:
    """The base's samples for the held-out labels, scored against the held-out images' maps."""
    import torch

    from maskdit.data.datasets import load_npz
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.control import adherence
    from maskdit.runs import load_run

    run = load_run(base)
    data = load_npz(test)
    index = torch.arange(num) % len(data)
    sources, labels = data.batch(index)
    s = run.config.sample
    x = generate(run.model, run.objective, num, labels, steps=s.steps, guidance_scale=s.guidance_scale, seed=0)
    return adherence(x, sources, signal)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a digits run (the preset's) to finetune")
    p.add_argument("--signal", default="edges", help="control.signal (edges, lowres:F, blur:S)")
    p.add_argument("--runs", default="/tmp/maskdit-control", help="scratch directory")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train", type=int, default=1500, help="digits that train; the rest are held out")
    p.add_argument("--num", type=int, default=297, help="held-out samples scored")
    p.add_argument("--kind", default="concat", help="control.kind (concat, controlnet, tokens)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another config override (control.blocks=1, control.rank=8), repeatable")
    p.add_argument("--seconds", type=float, default=None, help="train for this much wall-clock (not --steps)")
    p.add_argument("--out", default="docs/adapters/control_edges.json")
    args = p.parse_args()

    from maskdit.checkpoint import remove_run
    from maskdit.config import load_config
    from maskdit.runs import load_run
    from maskdit.training.trainer import train

    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    train_npz, test_npz = split_digits(root, args.train)
    run = root / f"{args.signal.replace(':', '')}-{args.kind}"
    remove_run(run)
    steps = 10**6 if args.seconds else args.steps
    budget = [f"max_seconds={args.seconds}", f"ckpt_every={steps}"] if args.seconds else [f"ckpt_every={steps}"]
    cfg = load_config("digits", overrides=[f"run_dir={run}", f"init_from={args.base}", f"control.signal={args.signal}",
                                           f"control.kind={args.kind}", "data.name=npz", f"data.path={train_npz}",
                                           f"steps={steps}", f"lr={args.lr}", "warmup_steps=50", *budget, *args.set])
    start = time.time()
    train(cfg, progress=False)
    seconds = time.time() - start
    from maskdit.checkpoint import latest_checkpoint
    from maskdit.files import read_json

    trained = int(read_json(latest_checkpoint(run) / "state.json", keys=("step",))["step"])
    controlled = evaluate(run, test_npz, args.num, control=True)
    floor = base_floor(Path(args.base), test_npz, args.num, args.signal)
    model = load_run(run).model
    trainable = sum(p.numel() for name, p in model.named_parameters()
                    if name.startswith("control.") or not model.control.frozen_base)
    result = {"signal": args.signal, "kind": args.kind, "overrides": args.set, "steps": trained,
              "train_s": round(seconds, 1), "trainable_params": trainable, "num": args.num,
              "controlled": controlled, "base_floor": floor}
    ctl = controlled["control"]
    follows = (f"edge F1 {ctl['edge_f1']:.3f} (precision {ctl['edge_precision']:.3f}, recall "
               f"{ctl['edge_recall']:.3f})" if "edge_f1" in ctl else
               f"degraded sample vs map {ctl['control_psnr']:.2f} dB")
    print(f"controlled ({args.signal}, {args.kind} {' '.join(args.set)}, {trainable / 1e6:.3f}M trainable, {trained} "
          f"steps, {seconds:.0f}s): {follows}, sample vs source "
          f"{ctl['source_psnr']:.2f} dB, class accuracy {controlled.get('class_accuracy', float('nan')):.3f}, "
          f"domain FID {controlled.get('domain_fid', float('nan')):.2f}")
    print(f"base, same labels, no control: sample vs source {floor['source_psnr']:.2f} dB"
          + (f", edge F1 {floor['edge_f1']:.3f}" if "edge_f1" in floor else ""))
    if args.signal.startswith("lowres:"):
        result["bicubic_psnr"] = bicubic(test_npz, args.num, int(float(args.signal.split(":")[1])))
        print(f"bicubic upsampling of the same low-resolution copies: {result['bicubic_psnr']:.2f} dB")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
