"""``maskdit latents``: encode images with a VAE into a latent store to train on."""

from __future__ import annotations

import argparse

from maskdit.cli.args import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", help="digits, FILE.npz, a directory with images.npy, or an image folder")
    p.add_argument("--vae", required=True, help="a local diffusers AutoencoderKL directory (save_pretrained)")
    p.add_argument("--out", required=True, help="the new latent store directory (must not exist)")
    p.add_argument("--resize", type=positive_int, help="image folders: centre-crop and resize to this size")
    p.add_argument("--batch", type=positive_int, default=64, help="images per VAE call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from maskdit.data.datasets import images_from_spec
    from maskdit.data.latents import encode_images
    from maskdit.training.trainer import pick_device

    dataset = images_from_spec(args.images, "IMAGES", args.resize)
    manifest = encode_images(dataset, args.vae, args.out, args.batch, pick_device(args.device),
                             progress=not args.no_progress)
    shape = "x".join(map(str, manifest["latent_shape"]))
    print(f"wrote {manifest['num']} latents of {shape} (and their mirrors), scaling factor "
          f"{manifest['scaling_factor']:g}, to {args.out}; train with data.name=latents data.path={args.out}")
    return 0
