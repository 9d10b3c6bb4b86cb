"""``maskdit autoencoder train``: fit a small 1-D waveform autoencoder, the latent path for audio."""

from __future__ import annotations

import argparse
import math

from maskdit.cli.args import non_negative_float, positive_float, positive_int, positive_ints, seed_value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train"], help="train: fit a new autoencoder")
    p.add_argument("store", help="an audio store FILE.npz (maskdit data spoken-digits --out FILE.npz)")
    p.add_argument("--out", required=True, help="the new autoencoder directory (must not exist)")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--channels", type=positive_int, default=16, help="latent channels")
    p.add_argument("--width", type=positive_int, default=128, help="channels of the convolutions")
    p.add_argument("--strides", type=positive_ints, default=[2],
                   help="downsampling of the STFT frames per stage, comma-separated (default 2)")
    p.add_argument("--n-fft", type=positive_int, default=256, help="STFT window in samples (default 256)")
    p.add_argument("--hop", type=positive_int, default=64, help="STFT hop in samples (default 64)")
    p.add_argument("--kl", type=non_negative_float, default=1e-4, help="weight of the KL term")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from maskdit.data.audio import load_store
    from maskdit.training.autoencoder import train_autoencoder

    store = load_store(args.store, flag="STORE")
    facts = train_autoencoder(store.audio, args.out, args.steps, args.batch, args.channels, args.width,
                              tuple(args.strides), args.n_fft, args.hop, args.kl, args.lr, args.seed,
                              not args.no_progress, str(args.store))
    hop = args.hop * math.prod(args.strides)
    print(f"trained a 1-D autoencoder ({args.channels} latent channels, {hop} samples per latent frame) for "
          f"{args.steps} steps in {facts['seconds']:.0f}s: loss {facts['first_loss']:.3f} -> "
          f"{facts['final_loss']:.3f}, log-magnitude error {facts['log_magnitude_error']:.3f}")
    print(f"wrote {args.out}; train on its latents: maskdit train data.name=audio data.path={args.store} "
          f"data.autoencoder={args.out}")
    return 0
