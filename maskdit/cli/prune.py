"""``maskdit prune``: keep K of a run's blocks (learned TinyFusion search or evenly spaced) as a new run to
finetune (``maskdit train init_from=NEW_RUN distill.teacher=RUN ...``)."""

from __future__ import annotations

import argparse
import time

from maskdit.cli.args import positive_int
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.training.prune import PRUNERS, SEARCH_STEPS

    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("--keep-blocks", type=positive_int, required=True, help="blocks to keep")
    p.add_argument("--out", required=True, help="the new run directory (must not exist or be empty)")
    p.add_argument("--method", choices=PRUNERS.names(), default="learned",
                   help="; ".join(f"{n}: {d}" for n, d in PRUNERS.describe()))
    p.add_argument("--search-steps", type=positive_int,
                   help=f"learned: training steps of the search (on the run's data; default {SEARCH_STEPS})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from maskdit.training.prune import SEARCH_STEPS, prune_run
    from maskdit.training.trainer import pick_device

    if args.search_steps is not None and args.method != "learned":
        raise ConfigError(f"--search-steps applies to --method learned; --method {args.method} does not search: "
                          "leave --search-steps out")
    start = time.time()
    r = prune_run(args.run_dir, args.out, args.keep_blocks, args.method, args.search_steps or SEARCH_STEPS,
                  device=pick_device(args.device), progress=True)
    print(f"kept blocks {r['kept']} ({args.method}, {time.time() - start:.1f}s); denoising loss on held-out batches: "
          f"full {r['loss_full']:.4f}, kept {r['loss_kept']:.4f}, evenly spaced {r['every_other']} "
          f"{r['loss_every_other']:.4f}")
    print(f"wrote {args.out}; recover with: maskdit train init_from={args.out} model.depth={args.keep_blocks} "
          f"distill.teacher={args.run_dir} run_dir=NEW_DIR steps=N (plus the options the run was trained with; "
          "the full run as teacher recovers best, docs/inference.md)")
    return 0
