"""``maskdit tokenizer train`` (an FSQ image tokenizer) and ``maskdit tokens`` (a store of images' id grids): what a
masked-diffusion model over image tokens trains on (:mod:`maskdit.data.tokens`)."""

from __future__ import annotations

import argparse

from maskdit.cli.args import positive_int, seed_value
from maskdit.errors import ConfigError


def level_list(text: str) -> list[int]:
    """``5,5,5`` -> ``[5, 5, 5]``: FSQ's levels per channel."""
    try:
        levels = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers such as 5,5,5, got {text!r}") from None
    if not levels or any(v < 2 for v in levels):
        raise argparse.ArgumentTypeError(f"must be levels of at least 2 per channel such as 5,5,5, got {text!r}")
    return levels


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train"], help="train: fit a new tokenizer")
    p.add_argument("data", help="digits, FILE.npz, a directory with images.npy, or an image folder")
    p.add_argument("--out", required=True, help="the new tokenizer directory (must not exist)")
    p.add_argument("--factor", type=positive_int, default=2, help="each factor x factor cell becomes one token (2)")
    p.add_argument("--levels", type=level_list, default=[5, 5, 5],
                   help="FSQ levels per code channel; the vocabulary is their product (default 5,5,5: 125 ids)")
    p.add_argument("--width", type=positive_int, default=64, help="convolution channels (64)")
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from maskdit.data.datasets import images_from_spec
    from maskdit.training.tokenizer import train_tokenizer

    dataset = images_from_spec(args.data, "DATA")
    facts = train_tokenizer(dataset, args.out, args.steps, args.batch, args.factor, args.levels, args.width,
                            seed=args.seed, progress=not args.no_progress)
    print(f"trained an FSQ tokenizer ({facts['vocab_size']} ids, one per {args.factor}x{args.factor} cell) for "
          f"{args.steps} steps in {facts['seconds']:.0f}s: reconstruction {facts['psnr']:.2f} dB PSNR")
    print(f"wrote {args.out}; tokenize with: maskdit tokens {args.data} --tokenizer {args.out} --out STORE.npz")
    return 0


def add_tokens_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="digits, FILE.npz, a directory with images.npy, or an image folder")
    p.add_argument("--tokenizer", required=True, help="a directory written by maskdit tokenizer train")
    p.add_argument("--out", required=True, help="the new token store, STORE.npz (must not exist)")
    p.add_argument("--batch", type=positive_int, default=256)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_tokens(args: argparse.Namespace) -> int:
    from maskdit.data.datasets import images_from_spec
    from maskdit.data.tokens import encode_store

    dataset = images_from_spec(args.data, "DATA")
    if not hasattr(dataset, "images"):
        raise ConfigError(f"DATA {args.data} holds no images to tokenize")
    facts = encode_store(dataset, args.tokenizer, args.out, args.batch, progress=not args.no_progress)
    print(f"wrote {facts['num']} id grids of {'x'.join(map(str, facts['grid']))} ({facts['vocab_size']} ids) to "
          f"{args.out}; train on them with: maskdit train objective.name=masked data.name=tokens data.path={args.out}")
    return 0
