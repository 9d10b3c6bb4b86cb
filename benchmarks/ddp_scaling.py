"""Training throughput of 1 process against N torchrun processes at the same global batch.

    python benchmarks/ddp_scaling.py --nproc 2 --steps 60 --batch 64          # CPU: gloo, one thread per process
    python benchmarks/ddp_scaling.py --strategies ddp,fsdp ...                  # DDP and FSDP2 side by side

Each configuration trains the same run (``--preset``, global ``--batch``, ``--steps``) in a fresh run
directory under ``--runs``, one after the other, and reads the steady-state rate from ``metrics.jsonl``
(steps after the first ``--skip`` are counted, so start-up and the first steps' warm-up are left out).
Tokens/s counts every token of every sample the step trains on. On the CPU every process gets
``--threads`` threads, and the 1-process row is run with ``nproc x threads`` threads, so both use the
same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from maskdit.checkpoint import remove_run
from maskdit.cli.args import Parser, guarded, non_negative_int, positive_int


def run(nproc: int, threads: int, args: argparse.Namespace, strategy: str = "ddp") -> dict:
    run_dir = Path(args.runs) / (f"nproc{nproc}" + (f"_{strategy}" if nproc > 1 else ""))
    remove_run(run_dir)  # the benchmark's own scratch run from an earlier try
    overrides = [f"batch_size={args.batch}", f"steps={args.steps}", "log_every=1", f"ckpt_every={args.steps}",
                 f"dist.strategy={strategy}", f"run_dir={run_dir}", *args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    done = subprocess.run([*launcher, "-m", "maskdit", "train", "--no-progress", "--preset", args.preset, *overrides],
                          env=env, stdout=subprocess.DEVNULL)
    if done.returncode:  # maskdit has said why on stderr
        sys.exit(done.returncode)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "steps_per_s" in r and r["step"] > args.skip]
    seconds = sum(1 / r["steps_per_s"] for r in timed)
    tokens = json.loads((run_dir / "config.json").read_text())["model"]
    grid = [s // p for s, p in zip(tokens["input_size"], tokens["patch_size"])]
    per_sample = 1
    for g in grid:
        per_sample *= g
    steps_per_s = len(timed) / seconds
    return {"nproc": nproc, "strategy": strategy if nproc > 1 else "-", "threads": threads, "steps_per_s": steps_per_s,
            "tokens_per_s": steps_per_s * args.batch * per_sample, "loss": records[-1]["loss"]}


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=positive_int, default=2)
    p.add_argument("--threads", type=positive_int, default=1, help="threads per process")
    p.add_argument("--preset", default="digits")
    p.add_argument("--batch", type=positive_int, default=64, help="global batch")
    p.add_argument("--steps", type=positive_int, default=60)
    p.add_argument("--skip", type=non_negative_int, default=10, help="first steps left out of the rate")
    p.add_argument("--strategies", default="ddp", help="comma-separated dist.strategy values for the N-process rows")
    p.add_argument("--runs", default="runs/ddp_scaling")
    p.add_argument("extra", nargs="*", help="more config overrides (key=value)")
    args = p.parse_args(argv)
    rows = [run(1, args.nproc * args.threads, args),
            *(run(args.nproc, args.threads, args, strategy) for strategy in args.strategies.split(","))]
    print(f"\npreset {args.preset}, global batch {args.batch}, {args.steps} steps, {os.cpu_count()} CPUs\n")
    print("| processes | strategy | threads each | steps/s | tokens/s | x 1 process | final loss |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nproc']} | {r['strategy']} | {r['threads']} | {r['steps_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['steps_per_s'] / rows[0]['steps_per_s']:.2f} | {r['loss']:.4f} |")


if __name__ == "__main__":
    sys.exit(guarded(main))
