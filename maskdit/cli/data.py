"""``maskdit data``: export clips of an embedded video dataset (.npz, .gif or .mp4), or captioned shape scenes
(``shapes``: images, captions, kinds and scenes in one .npz)."""

from __future__ import annotations

import argparse

from maskdit.cli.args import check_out, positive_int, seed_value
from maskdit.cli.options import add_overwrite
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.data.video import SPLITS, VIDEO_DATASETS

    p.add_argument("name", choices=[*VIDEO_DATASETS, "shapes"])
    p.add_argument("--split", choices=list(SPLITS), help="default: test for videos, train for shapes")
    p.add_argument("--num", type=positive_int, default=16)
    p.add_argument("--frames", type=positive_int, default=8)
    p.add_argument("--size", type=positive_int, default=16)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", required=True, help="clips.npz (frames N x T x H x W x C uint8), .gif or .mp4; "
                   "shapes: FILE.npz")
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    if args.name == "shapes":
        return run_shapes(args)
    from maskdit.data.media import save_video
    from maskdit.data.video import load_video_dataset

    args.split = args.split or "test"

    if not args.out.lower().endswith((".npz", ".gif", ".mp4")):
        raise ConfigError(f"--out {args.out}: the file name must end in .npz, .gif or .mp4")
    check_out(args.out, args.overwrite)
    data = load_video_dataset(args.name, args.split, args.num, args.seed, frames=args.frames, size=args.size)
    frames = data.frames.permute(0, 2, 3, 4, 1).numpy()  # N x T x H x W x C
    save_video(args.out, frames)
    shape = "x".join(map(str, frames.shape[1:]))
    print(f"wrote {len(frames)} {args.split} clips of {args.name} ({shape}) to {args.out}")
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    """``maskdit data shapes --num N --out FILE.npz [--split train|test] [--seed S]``."""
    import numpy as np

    from maskdit.data.shapes import shapes_dataset
    from maskdit.files import atomic_file

    if not args.out.lower().endswith(".npz"):
        raise ConfigError(f"--out {args.out}: shapes are written as one .npz (images, captions, kinds, scenes): "
                          "name the file FILE.npz")
    check_out(args.out, args.overwrite)
    split = args.split or "train"
    data = shapes_dataset(args.num, split, args.seed)
    with atomic_file(args.out, "--out") as tmp:
        np.savez(tmp, **data)
    print(f"wrote {args.num} {split} shape scenes with captions to {args.out}")
    return 0
