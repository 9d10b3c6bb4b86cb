"""Side-by-side training-step throughput of MoE DiTs against the dense DiT (one process, interleaved rounds).

    python benchmarks/moe_throughput.py --preset DiT-S/2 --input 4x32x32 --batch 64 --device cuda

"Equal active parameters": a token passes through as many feed-forward weights as in the dense model —
top-1 routing over full-width experts, or top-2 over half-width ones (``mlp_ratio`` 2, fine-grained
experts). Each configuration is timed once per round, rounds alternate the order, and the best round
counts. Prints a Markdown table and a JSON list on its last line.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from maskdit.cli.args import Parser, guarded
from maskdit.model.config import MoEConfig
from maskdit.training.bench import add_timing_arguments, benchmark, parse_shape


def moe(experts: int, top_k: int, capacity: float = 2.0, shared: int = 0, **more: Any) -> dict[str, Any]:
    """Model fields for an MoE of ``experts`` (the config's defaults for the rest) plus ``more``."""
    spec = MoEConfig(experts=experts, shared=shared, top_k=top_k, capacity=capacity)
    return {"moe": dataclasses.asdict(spec), **more}


CONFIGS = [  # (label, model fields)
    ("dense", {}),
    ("MoE 4 experts, top-1, capacity 2", moe(4, 1)),
    ("MoE 4 experts, top-1, capacity 1.25", moe(4, 1, 1.25)),
    ("MoE 8 experts, top-1, capacity 1.25", moe(8, 1, 1.25)),
    ("MoE 8 half-width experts, top-2, capacity 1.25", moe(8, 2, 1.25, mlp_ratio=2.0)),
    ("MoE 3+1 shared half-width, top-1, capacity 1.25", moe(3, 1, 1.25, shared=1, mlp_ratio=2.0)),
]


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    add_timing_arguments(p)
    args = p.parse_args(argv)
    shape = parse_shape(args.input)
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for label, fields in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
            result = benchmark(args.preset, shape, args.batch, args.steps, warmup=3, device=args.device,
                               model_fields=fields)
            if label not in best or result["steps_per_s"] > best[label]["steps_per_s"]:
                best[label] = {"label": label, **result}
            print(f"round {r + 1}: {label}: {result['steps_per_s']:.3f} steps/s", flush=True)
    base = best["dense"]
    print(f"\n{args.preset}, input {args.input}, batch {args.batch}, device {base['device']}, "
          f"best of {args.rounds} rounds x {args.steps} steps\n")
    print("| configuration | params | active params | steps/s | vs dense | GFLOP/step | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for label, _ in CONFIGS:
        b = best[label]
        b["vs_dense"] = b["steps_per_s"] / base["steps_per_s"]
        print(f"| {label} | {b['params'] / 1e6:.1f}M | {b['active_params'] / 1e6:.1f}M | {b['steps_per_s']:.2f} | "
              f"{b['vs_dense']:.2f}x | {b['gflop_per_step']:.1f} | {b['peak_mem_mb']:.0f} MiB |")
    print(json.dumps(list(best.values())))


if __name__ == "__main__":
    sys.exit(guarded(main))
