"""``maskdit lora merge``: fold a LoRA run's updates (and other adapters of the same base) into the base's
weights, as a plain run that needs neither."""

from __future__ import annotations

import argparse

from maskdit.cli.args import lora_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["merge"], help="merge: write the adapted weights as a plain run")
    p.add_argument("run_dir", help="a LoRA run (trained with lora.rank) or a base run with --lora")
    p.add_argument("--lora", type=lora_spec, action="append", metavar="RUN[:SCALE]",
                   help="another adapter of the same base to fold in, times SCALE (default 1); repeatable")
    p.add_argument("--out", required=True, help="the new run directory (must not exist or be empty)")


def run(args: argparse.Namespace) -> int:
    from maskdit.runs import merge_run

    ckpt = merge_run(args.run_dir, args.out, args.lora or [])
    print(f"wrote {ckpt}: a plain run with the adapters merged in; sample it with maskdit sample {args.out}")
    return 0
