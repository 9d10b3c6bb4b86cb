"""``maskdit encoder train``: fit a small ViT by masked autoencoding, the target of representation alignment."""

from __future__ import annotations

import argparse

from maskdit.cli.args import positive_int, ratio, seed_value
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train"], help="train: fit a new encoder")
    p.add_argument("data", help="digits, FILE.npz, a directory with images.npy, or an image folder")
    p.add_argument("--out", required=True, help="the new encoder directory (must not exist)")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--patch", type=positive_int, default=2, help="patch size (the model's, to align 1:1)")
    p.add_argument("--width", type=positive_int, default=128)
    p.add_argument("--depth", type=positive_int, default=4)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--mask-ratio", type=ratio, default=0.75, help="share of patches dropped (MAE: 0.75)")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from maskdit.data.datasets import images_from_spec
    from maskdit.training.encoder import train_encoder

    if args.width % args.heads:
        raise ConfigError(f"--heads {args.heads} must divide --width {args.width}")
    dataset = images_from_spec(args.data, "DATA")
    facts = train_encoder(dataset, args.out, args.steps, args.batch, args.mask_ratio, args.patch, args.width,
                          args.depth, args.heads, seed=args.seed, progress=not args.no_progress)
    print(f"trained a {args.depth}-block ViT (width {args.width}, patch {args.patch}) for {args.steps} steps in "
          f"{facts['seconds']:.0f}s: masked reconstruction error {facts['first_loss']:.3f} -> "
          f"{facts['final_loss']:.3f}")
    print(f"wrote {args.out}; align with: maskdit train align.weight=0.5 align.encoder={args.out}")
    return 0
