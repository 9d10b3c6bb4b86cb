"""``maskdit report``: one self-contained HTML page about a run."""

from __future__ import annotations

import argparse
import time

from maskdit.cli.args import check_out, positive_int, seed_value
from maskdit.cli.options import add_overwrite
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
    add_overwrite(p)
    p.add_argument("--per-class", type=positive_int, default=4, help="samples per class in each checkpoint's grid")
    p.add_argument("--seed", type=seed_value, default=0, help="noise seed of the sample grids (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from maskdit.evaluate.report import write_report
    from maskdit.training.trainer import pick_device

    if args.out is not None and not args.out.lower().endswith((".html", ".htm")):
        raise ConfigError(f"--out {args.out}: the report is HTML; give a file name ending in .html")
    if args.out is not None:  # the default RUN_DIR/report.html is the project's own file
        check_out(args.out, args.overwrite)
    start = time.time()
    path = write_report(args.run_dir, args.out, per_class=args.per_class, seed=args.seed,
                        device=pick_device(args.device))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {time.time() - start:.1f}s); "
          "it is self-contained and opens offline")
    print(path)
    return 0
