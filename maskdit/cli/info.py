"""``maskdit info``: describe what a run or checkpoint holds."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")


def run(args: argparse.Namespace) -> int:
    from maskdit.evaluate.report import describe_checkpoint

    lines, record = describe_checkpoint(args.run_dir)
    for line in lines:
        print(line)
    print(json.dumps(record))
    return 0
