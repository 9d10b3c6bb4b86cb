"""``maskdit captions encode``: encode a dataset's captions with a frozen text encoder into a caption store."""

from __future__ import annotations

import argparse

from maskdit.cli.args import positive_int
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["encode"], help="encode: write a caption store to train on (data.captions)")
    p.add_argument("captions", help="the captioned data: shapes, FILE.npz with a captions array, or an image folder "
                   "with a .txt beside each image")
    p.add_argument("--encoder", required=True, help="a local Hugging Face text encoder directory (T5, CLIP, an LLM)")
    p.add_argument("--out", required=True, help="the new caption store directory (must not exist)")
    p.add_argument("--length", type=positive_int, help="tokens per caption, the prefix included (default 64; the "
                   "run's model.text_length must match)")
    p.add_argument("--prefix", default="", help="an instruction put before every caption (the run's "
                   "model.text_prefix must match)")
    p.add_argument("--num", type=positive_int, help="shapes: training scenes (the run's data.num; default 2000)")
    p.add_argument("--batch", type=positive_int, default=64, help="captions per encoder call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from maskdit.conditions.hf import DEFAULT_LENGTH, write_store
    from maskdit.conditions.text import captions_of
    from maskdit.data.datasets import images_from_spec, load_dataset
    from maskdit.training.trainer import pick_device

    if args.num is not None and args.captions != "shapes":
        raise ConfigError("--num applies to the generated shapes data (CAPTIONS=shapes) only")
    if args.captions == "shapes":  # data.num's default unless --num says otherwise, as a run on shapes would
        dataset = load_dataset("shapes", **({} if args.num is None else {"num": args.num}))
    else:
        dataset = images_from_spec(args.captions, "CAPTIONS")
    captions = captions_of(dataset)
    manifest = write_store(captions, args.encoder, args.out, args.length or DEFAULT_LENGTH, args.prefix, args.batch,
                           pick_device(args.device), progress=not args.no_progress)
    print(f"wrote {manifest['count']} encoded captions ({manifest['length']} tokens of width {manifest['width']}) to "
          f"{args.out}; train with model.condition=hf model.text_encoder={args.encoder} data.captions={args.out}")
    return 0
