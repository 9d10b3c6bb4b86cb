"""What happens when a RoPE model samples at a size it was not trained at.

    python benchmarks/rope_sizes.py --train-s 180 --num 400            # digits, trained at 8x8, CPU

Trains the digits preset with ``model.pos=rope`` for ``--train-s`` seconds (or takes ``--run``), samples
``--num`` images at 8x8 (its training size), 12x12 and 16x16, scales the larger ones back to 8x8 (area
average) and scores all three against the real digits with the same domain classifier: domain FID and
class accuracy. A table-position (sin-cos) model cannot sample at another size at all; this measures what
rotary positions buy and what they do not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdit.cli.args import Parser, guarded, positive_float, positive_int, positive_ints


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="an existing run trained with model.pos=rope (default: train one)")
    p.add_argument("--train-s", type=positive_float, default=180.0)
    p.add_argument("--num", type=positive_int, default=400)
    p.add_argument("--steps", type=positive_int, default=10, help="Heun steps")
    p.add_argument("--sizes", type=positive_ints, default="8,12,16")
    args = p.parse_args(argv)
    from maskdit.checkpoint import remove_run
    from maskdit.config import load_config
    from maskdit.data.datasets import load_dataset
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.suite import score_samples
    from maskdit.runs import load_run
    from maskdit.training.trainer import train

    run_dir = Path(args.run or "runs/rope_sizes")
    if not args.run:
        remove_run(run_dir)  # the benchmark's own scratch run from an earlier try
        train(load_config("digits", overrides=["model.pos=rope", "steps=100000000", "lr_schedule=constant",
                                               f"max_seconds={args.train_s}", "ckpt_every=100000000",
                                               f"run_dir={run_dir}"]), progress=False)
    run = load_run(run_dir)
    dataset = load_dataset("digits")
    labels = torch.arange(args.num) % run.model.num_classes
    print(f"run {run_dir}, step {run.step}; {args.num} samples per size, Heun {args.steps} steps, guidance "
          f"{run.config.sample.guidance_scale}\n")
    print("| sampled at | scored at | domain FID | class accuracy |\n|---|---|---|---|")
    for side in args.sizes:
        x = generate(run.model, run.objective, args.num, labels, sampler="heun", steps=args.steps,
                     guidance_scale=run.config.sample.guidance_scale, size=(side, side), seed=0)
        if side != 8:
            x = F.interpolate(x, size=(8, 8), mode="area")
        scores = score_samples(run.codec.decode(x), labels, dataset, ["domain_fid", "class"], progress=False)
        print(f"| {side}x{side} | 8x8 | {scores['domain_fid']:.1f} | {scores['class_accuracy']:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(guarded(main))
