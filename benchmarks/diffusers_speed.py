"""maskdit's DiT against diffusers' DiTTransformer2DModel, same weights, side by side in one process.

    python benchmarks/diffusers_speed.py --rounds 5 --batch 8          # DiT-S/2 at 4x32x32 on the CPU

Both models are built at DiT-S/2 size with one set of random weights (diffusers' converted into maskdit by
`maskdit.interop.convert`, so both compute the same function; the max-abs difference of their outputs is printed).
Rounds interleave the two (maskdit, diffusers, maskdit, ...) so drifting machine speed hits both alike;
the figure is the median over rounds of forward+backward steps/s. Then the imported model samples
against a native maskdit model of the same architecture (same sampler, steps and batch).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskdit.cli.args import Parser, guarded, positive_int


def steps_per_s(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps per round")
    p.add_argument("--sample-steps", type=positive_int, default=10)
    args = p.parse_args(argv)
    from diffusers import DiTTransformer2DModel

    from maskdit.diffusion.objectives import DDPM
    from maskdit.diffusion.samplers import generate
    from maskdit.interop.convert import import_run, load_model
    from maskdit.model import DiT

    torch.manual_seed(0)
    theirs = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                                   num_layers=12, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    with torch.no_grad():
        for prm in theirs.parameters():
            prm.copy_(0.02 * torch.randn_like(prm))
        for block in theirs.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(theirs.transformer_blocks[0].norm1.emb.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(Path(tmp) / "hf")
        import_run(Path(tmp) / "hf", Path(tmp) / "run")
        ours = load_model(Path(tmp) / "run").train()
    theirs.train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 4, 32, 32, generator=g)
    y = torch.randint(0, 1000, (args.batch,), generator=g)
    k = torch.randint(0, 1000, (args.batch,), generator=g)
    with torch.no_grad():
        theirs.eval()
        ours.eval()
        diff = (ours(x, k.double() / 1000, y) - theirs(x, timestep=k, class_labels=y).sample).abs().max().item()
    ours.train()
    theirs.train()

    def ours_step() -> None:
        ours(x, k.double() / 1000, y).square().mean().backward()
        ours.zero_grad(set_to_none=True)

    def theirs_step() -> None:
        theirs(x, timestep=k, class_labels=y).sample.square().mean().backward()
        theirs.zero_grad(set_to_none=True)

    ours_step(), theirs_step()  # warm-up
    rates: dict[str, list[float]] = {"maskdit": [], "diffusers": []}
    for _ in range(args.rounds):
        rates["maskdit"].append(steps_per_s(ours_step, args.steps))
        rates["diffusers"].append(steps_per_s(theirs_step, args.steps))
    med = {name: statistics.median(r) for name, r in rates.items()}

    native = DiT(**{**ours.config, "time_freq_shift": 0.0, "mlp_norm_eps": 1e-6}).eval()
    ours.eval()
    labels = torch.arange(args.batch) % 1000
    timing: dict[str, list[float]] = {"imported": [], "native": []}
    for _ in range(2):
        for name, model in (("imported", ours), ("native", native)):
            start = time.perf_counter()
            generate(model, DDPM(step_offset=0), args.batch, labels, sampler="ddpm", steps=args.sample_steps)
            timing[name].append(time.perf_counter() - start)
    print(f"DiT-S/2, input 4x32x32, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds x "
          f"{args.steps} steps; outputs differ by at most {diff:.2e}")
    print("| model | forward+backward steps/s (median) | per round |\n|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {med[name]:.3f} | {', '.join(f'{v:.2f}' for v in r)} |")
    print(f"maskdit / diffusers: {med['maskdit'] / med['diffusers']:.2f}x")
    print(f"sampling {args.batch} images, {args.sample_steps} ancestral steps: imported "
          f"{min(timing['imported']):.2f} s, native {min(timing['native']):.2f} s (best of 2)")


if __name__ == "__main__":
    sys.exit(guarded(main))
