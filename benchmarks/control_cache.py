"""Condition-token caching (``control.kind=tokens``): sampling with each block's condition keys and values computed
once per batch against recomputing them at every network call, side by side, and whether the samples differ.

    python benchmarks/control_cache.py                              # the digits preset's size, 16 and 256 tokens
    python benchmarks/control_cache.py --run /tmp/maskdit-control/edges-tokens   # a trained run as it is

The condition tokens attend only to themselves, so their keys and values depend on the map and the label alone,
not on the noisy image or the time: one pass of the condition stream serves every step. Timing needs no trained
weights (random ones are used unless ``--run`` is given). Best of ``--rounds`` interleaved rounds; run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maskdit.conditions.control import compute_signal  # noqa: E402
from maskdit.diffusion.objectives import FlowMatching  # noqa: E402
from maskdit.diffusion.samplers import generate  # noqa: E402
from maskdit.model import DiT  # noqa: E402


def model_of(side: int, rank: int) -> DiT:
    """The digits preset's backbone (depth 6, width 128, patch 2) at ``side`` x ``side`` with condition tokens."""
    torch.manual_seed(0)
    model = DiT(input_size=(side, side), in_channels=1, patch_size=2, hidden_size=128, depth=6, num_heads=4,
                num_classes=10, control="edges", control_kind="tokens", control_options={"rank": rank})
    with torch.no_grad():  # trained-looking weights: the zero-initialised layers drawn too
        for p in model.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.eval()


def measure(model: DiT, num: int, steps: int, rounds: int) -> dict:
    side = model.input_size[-1]
    images = torch.rand(num, 1, side, side) * 2 - 1
    y = model.conditioner.pack(torch.arange(num) % 10, compute_signal("edges", images))
    objective, times, out = FlowMatching(), {True: [], False: []}, {}
    for _ in range(rounds):
        for caching in (False, True):
            model.control.caching = caching
            start = time.perf_counter()
            out[caching] = generate(model, objective, num, y, sampler="heun", steps=steps, guidance_scale=1.5,
                                    batch_size=num)
            times[caching].append(time.perf_counter() - start)
    cached, recomputed = min(times[True]), min(times[False])
    return {"tokens": model.num_tokens, "num": num, "steps": steps, "recompute_s": round(recomputed, 3),
            "cached_s": round(cached, 3), "speedup": round(recomputed / cached, 2),
            "max_abs_difference": float((out[True] - out[False]).abs().max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a trained run with control.kind=tokens (default: random weights at --sides)")
    p.add_argument("--sides", type=int, nargs="+", default=[8, 32], help="image sides (patch 2: side^2/4 tokens)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    if args.run:
        from maskdit.runs import load_run

        models = [load_run(args.run).model.eval()]
    else:
        models = [model_of(side, args.rank) for side in args.sides]
    rows = []
    print("| tokens | samples x steps (heun, cfg 1.5) | recompute (s) | cached (s) | speedup | max difference |")
    print("|---|---|---|---|---|---|")
    for model in models:
        row = measure(model, args.num, args.steps, args.rounds)
        rows.append(row)
        print(f"| {row['tokens']} | {row['num']} x {row['steps']} | {row['recompute_s']:.3f} | {row['cached_s']:.3f} "
              f"| {row['speedup']:.2f}x | {row['max_abs_difference']:.1e} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
