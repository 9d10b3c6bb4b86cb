"""Score the final EMA weights of study runs again with other sample seeds: the sampling noise of a table.

    python benchmarks/reseed_eval.py runs/toolbox600/mnist32/plain_0 runs/toolbox600/mnist32/swiglu_0 --seeds 1,2

Each run is evaluated exactly as the study's final evaluation (``training_eval``: the run's own eval_num,
sampler and steps), only with ``seed`` changed; prints one line per run and seed.
"""

from __future__ import annotations

import argparse
import sys

from maskdit.checkpoint import latest_checkpoint
from maskdit.cli.args import Parser, guarded, non_negative_ints
from maskdit.data.datasets import load_dataset
from maskdit.evaluate.suite import training_eval
from maskdit.runs import load_run


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (their latest checkpoint is scored)")
    p.add_argument("--seeds", type=non_negative_ints, default=[1, 2], help="comma-separated sample seeds")
    args = p.parse_args(argv)
    checkpoints = {path: latest_checkpoint(path) for path in args.runs}
    missing = [path for path, ckpt in checkpoints.items() if ckpt is None]
    if missing:
        p.error(f"no checkpoint in {', '.join(missing)}: give study run directories (e.g. runs/toolbox/digits/plain_0)")
    for path, ckpt in checkpoints.items():
        run = load_run(ckpt)
        dataset = load_dataset(run.config.data.name, run.config.data.path)
        for seed in args.seeds:
            run.config.seed = seed
            scores = training_eval(run.model, run.objective, dataset, run.config)
            print(f"{path} seed {seed}: " + ", ".join(f"{k} {scores[k]:.2f}" for k in ("domain_fid", "class_accuracy")
                                                     if k in scores), flush=True)


if __name__ == "__main__":
    sys.exit(guarded(main))
