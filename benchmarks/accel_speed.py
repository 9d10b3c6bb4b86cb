"""Sampling wall-clock of the accelerators on a preset model with random weights (speed only, any device).

    python benchmarks/accel_speed.py --preset DiT-S/2 --input 4x32x32 --num 64 --device cuda

Quality needs a trained model (benchmarks/inference.py); what a setting saves in time does not, since the
work per step is fixed by the setting. Plain sampling and each setting run in interleaved rounds (best round
counts), Heun with guidance, under bf16 autocast on CUDA.
"""

from __future__ import annotations

import sys
import time

import torch

from maskdit.cli.args import Parser, guarded, positive_int
from maskdit.diffusion.objectives import FlowMatching
from maskdit.diffusion.samplers import generate
from maskdit.distributed import autocast
from maskdit.model import build_model
from maskdit.training.bench import parse_shape


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="DiT-S/2")
    p.add_argument("--input", default="4x32x32")
    p.add_argument("--num", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=25)
    p.add_argument("--rounds", type=positive_int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--accels", default="cache:every=2;cache:every=3;ras:ratio=0.5;ras:ratio=0.25",
                   help="settings separated by ';'")
    args = p.parse_args(argv)
    shape = parse_shape(args.input)
    dev = torch.device(args.device)
    model = build_model(args.preset, shape[1:], shape[0], 1000).to(dev).eval()
    labels = torch.arange(args.num) % 1000
    settings: list[str | None] = [None, *(s for s in args.accels.split(";") if s)]
    mixed = autocast("auto", dev)  # bf16 on a GPU, fp32 on a CPU, as training does by default
    best: dict[str | None, float] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for setting in settings if r % 2 else settings[::-1]:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            with mixed, torch.no_grad():
                generate(model, FlowMatching(), args.num, labels, sampler="heun", steps=args.steps,
                         guidance_scale=4.0, batch_size=args.num, accel=setting)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - start
            if r > 0:
                best[setting] = min(best.get(setting, float("inf")), seconds)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{args.preset}, input {args.input} ({model.num_tokens} tokens), {args.num} samples, Heun {args.steps} "
          f"steps, guidance 4, {name}, best of {args.rounds} rounds\n")
    print("| sampling | seconds | speed-up |")
    print("|---|---|---|")
    for setting in settings:
        print(f"| {setting or 'plain'} | {best[setting]:.3f} | {best[None] / best[setting]:.2f}x |")


if __name__ == "__main__":
    sys.exit(guarded(main))
