"""The latent workflow end to end, timed: make a VAE, `maskdit latents`, train on the store, sample.

    python benchmarks/latent_workflow.py --out runs/latent_workflow

No pretrained VAE can be downloaded here, so the script builds a randomly initialised diffusers
`AutoencoderKL` with SD-VAE's layout at a reduced width (4 latent channels, 8x down-sampling: 64x64 RGB
-> 4x8x8), saves it with `save_pretrained` and uses that directory exactly as a user would use SD's VAE.
The images are the digits scaled to 64x64 and written as an image folder. Samples decode through a
random VAE, so they show the pipeline works, not what it would draw with real weights: the figures are
time and throughput.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from maskdit.cli.args import Parser, guarded, positive_int


def run(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "maskdit", *args], stdout=subprocess.DEVNULL)
    if done.returncode:  # maskdit has said why on stderr
        sys.exit(done.returncode)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/latent_workflow", help="a new directory for everything it makes")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--width", type=positive_int, default=32, help="the VAE's first block width (SD's VAE: 128)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        p.error(f"{out} exists: pass a new --out directory")
    from diffusers import AutoencoderKL
    from PIL import Image
    from sklearn.datasets import load_digits

    w = args.width
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(w, 2 * w, 4 * w, 4 * w),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=min(32, w), sample_size=64)
    vae.save_pretrained(out / "vae")
    digits = load_digits()
    folder = out / "images"
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = (image * (255 / 16)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((64, 64), Image.BICUBIC).save(folder / str(label) / f"{i:04d}.png")
    n = len(digits.images)
    params = sum(p.numel() for p in vae.parameters()) / 1e6

    encode_s = run(["latents", str(folder), "--vae", str(out / "vae"), "--out", str(out / "store"), "--no-progress"])
    train_s = run(["train", "--no-progress", "--preset", "digits", "data.name=latents", f"data.path={out / 'store'}",
                   "data.flip=true", f"steps={args.steps}", f"ckpt_every={args.steps}", "log_every=25",
                   f"run_dir={out / 'run'}"])
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in records if "steps_per_s" in r][1:]
    sample_s = run(["sample", str(out / "run"), "--num", "64", "--out", str(out / "samples.png")])
    print(f"VAE: {params:.1f}M parameters (SD-VAE layout, first width {w}), 64x64x3 -> 4x8x8")
    print("| stage | figure | command |\n|---|---|---|")
    print(f"| encode {n} images and their mirrors | {encode_s:.1f} s ({2 * n / encode_s:.0f} images/s, "
          f"including start-up) | maskdit latents {folder} --vae VAE --out STORE |")
    print(f"| train on the store, digits preset, {args.steps} steps | {train_s:.1f} s in all, "
          f"{np.median(rates):.1f} steps/s | maskdit train data.name=latents data.path=STORE data.flip=true |")
    print(f"| sample 64 and decode through the VAE | {sample_s:.1f} s | maskdit sample RUN --num 64 --out FILE.png |")


if __name__ == "__main__":
    sys.exit(guarded(main))
