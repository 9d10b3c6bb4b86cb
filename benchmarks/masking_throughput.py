"""Side-by-side training-step throughput of the masked-training recipes (one process, interleaved rounds).

    python benchmarks/masking_throughput.py --preset DiT-S/2 --input 4x32x32 --batch 8

Every configuration is timed once per round, rounds alternate the order, and the best round counts, so
background load hits all rows alike. Prints a Markdown table (speed-up against the unmasked row of the same
run) and a JSON list on its last line.
"""

from __future__ import annotations

import json
import sys

from maskdit.cli.args import Parser, guarded
from maskdit.training.bench import add_timing_arguments, benchmark, parse_shape

CONFIGS = [  # (label, recipe, ratio, mixer_depth)
    ("unmasked", "drop", 0.0, 0),
    ("(a) drop 0.5", "drop", 0.5, 0),
    ("(a) drop 0.75", "drop", 0.75, 0),
    ("(b) mae 0.5", "mae", 0.5, 0),
    ("(b) mae 0.75", "mae", 0.75, 0),
    ("(c) mdt 0.5", "mdt", 0.5, 0),
    ("(c) mdt 0.75", "mdt", 0.75, 0),
    ("deferred drop 0.5, mixer 2", "drop", 0.5, 2),
    ("deferred drop 0.75, mixer 2", "drop", 0.75, 2),
    ("(d) tread 0.5", "tread", 0.5, 0),
    ("(d) tread 0.75", "tread", 0.75, 0),
    ("(e) sprint 0.75", "sprint", 0.75, 0),
    ("(f) maskdit 0.5", "maskdit", 0.5, 0),
    ("(f) maskdit 0.75", "maskdit", 0.75, 0),
]


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    add_timing_arguments(p)
    p.add_argument("--only", help="comma-separated labels to time (the unmasked row is always timed)")
    args = p.parse_args(argv)
    shape = parse_shape(args.input)
    configs = CONFIGS
    if args.only:
        wanted = {"unmasked", *(label.strip() for label in args.only.split(","))}
        configs = [c for c in CONFIGS if c[0] in wanted]
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for label, recipe, ratio, mixer in order:
            result = benchmark(args.preset, shape, args.batch, args.steps, warmup=3, device=args.device,
                               mask_ratio=ratio, recipe=recipe, mixer_depth=mixer)
            if label not in best or result["steps_per_s"] > best[label]["steps_per_s"]:
                best[label] = {"label": label, **result}
            print(f"round {r + 1}: {label}: {result['steps_per_s']:.3f} steps/s", flush=True)
    base = best["unmasked"]["steps_per_s"]
    print(f"\n{args.preset}, input {args.input}, batch {args.batch}, device {best['unmasked']['device']}, "
          f"{best['unmasked']['threads']} threads, best of {args.rounds} rounds x {args.steps} steps\n")
    print("| configuration | kept tokens | steps/s | speed-up | GFLOP/step | training-only params |")
    print("|---|---|---|---|---|---|")
    rows = []
    for label, *_ in configs:
        b = best[label]
        b["speedup"] = b["steps_per_s"] / base
        rows.append(b)
        print(f"| {label} | {b['kept_tokens']}/{b['tokens']} | {b['steps_per_s']:.3f} | {b['speedup']:.2f}x | "
              f"{b['gflop_per_step']:.1f} | {b['training_only_params'] / 1e6:.2f}M |")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(guarded(main))
