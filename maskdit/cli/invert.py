"""``maskdit invert``: find the starting noise that samples into given images (DDIM / reverse-ODE inversion);
``maskdit sample RUN --from-noise NOISE.npz`` samples it back, or edits the images."""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from maskdit.cli.args import check_out, class_list, guidance_scale_value, positive_int
from maskdit.cli.options import add_overwrite, class_labels, load
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.diffusion.samplers import BATCH_SIZE, INVERSIONS

    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("--images", required=True,
                   help="images .npz (images N x H x W x C uint8) or clips .npz (frames N x T x H x W x C)")
    p.add_argument("--out", required=True, help="NOISE.npz: the starting noise, labels and settings")
    p.add_argument("--sampler", choices=INVERSIONS.names(),
                   help="the deterministic sampler to invert (default heun for flow, ddim for ddpm)")
    p.add_argument("--steps", type=positive_int, default=50, help="inversion (and reconstruction) steps")
    p.add_argument("--guidance-scale", type=guidance_scale_value, default=1.0,
                   help="classifier-free guidance during inversion (1 = off, which inverts best)")
    p.add_argument("--classes", type=class_list, help="labels to cycle through (default: the file's 'labels')")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help=f"inputs per network call, the last call padded (default {BATCH_SIZE})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    from maskdit.data.media import save_noise
    from maskdit.diffusion.samplers import default_sampler, generate, invert
    from maskdit.diffusion.tasks import load_context, load_labels

    if not args.out.lower().endswith(".npz"):
        raise ConfigError(f"--out {args.out}: the noise file's name must end in .npz")
    check_out(args.out, args.overwrite)
    if Path(args.out).exists() and Path(args.images).exists() and os.path.samefile(args.out, args.images):
        raise ConfigError(f"--out {args.out} is the --images file: write the noise to another file")
    loaded = load(args)
    images = load_context(args.images, loaded.model, flag="--images")
    labels = None
    if loaded.model.num_classes:
        if args.classes:
            labels = class_labels(args, loaded, len(images))
        else:
            labels = load_labels(args.images, len(images), loaded.model.num_classes, flag="--images")
            if labels is None:
                raise ConfigError(f"--images {args.images} has no 'labels' ({len(images)} integers) for this "
                                  "class-conditional model: pass --classes")
    elif args.classes:
        raise ConfigError("--classes: this model is unconditional and takes no class labels")
    elif args.guidance_scale != 1:
        raise ConfigError(f"--guidance-scale {args.guidance_scale:g}: this model is unconditional, so guidance has no "
                          "class labels to contrast and the noise would not be what the file says: pass "
                          "--guidance-scale 1 (or leave it out)")
    sampler = args.sampler or default_sampler(loaded.objective)
    settings = {"sampler": sampler, "steps": args.steps, "guidance_scale": args.guidance_scale}
    start = time.time()
    x0 = loaded.codec.encode(images)
    noise = invert(loaded.model, loaded.objective, x0, labels, sampler, args.steps, args.guidance_scale,
                   batch_size=args.batch_size, progress=True)
    if not bool(noise.isfinite().all()):
        raise ConfigError(f"inverting gave NaN or infinite noise (--guidance-scale {args.guidance_scale:g}, --steps "
                          f"{args.steps}): invert with --guidance-scale 1, which inverts best")
    back = loaded.codec.decode(generate(loaded.model, loaded.objective, len(noise), labels,
                                        batch_size=args.batch_size, start=noise, **settings))
    path = save_noise(args.out, noise, labels, settings)  # only once all went well: a failure writes nothing
    mse = float((back.double() - images.double()).pow(2).mean())
    quality = "exact (identical pixels)" if mse == 0 else f"PSNR {10 * math.log10(255**2 / mse):.1f} dB"
    print(f"wrote the starting noise of {len(noise)} inputs to {path} ({time.time() - start:.1f}s, step "
          f"{loaded.step}, " + ", ".join(f"{k}={v}" for k, v in settings.items())
          + f"); sampling it back: {quality}")
    return 0
