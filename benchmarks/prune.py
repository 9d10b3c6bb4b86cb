"""Depth pruning with a recovery finetune against the full model: domain FID and class accuracy.

    python benchmarks/prune.py runs/digits --keep 3 --finetune 0.2 --num 400 --distill 1.0

For each method (learned TinyFusion search, evenly spaced) the run is pruned to ``--keep`` blocks, scored
as pruned, finetuned from there for ``--finetune`` x the run's training steps with its own config
(``init_from``), and scored again; with ``--distill W`` also finetuned with the full run as the teacher
(``distill.teacher``, ``distill.weight=W``: TinyFusion's recovery by distillation). The full model is scored
alongside. Scores: domain FID and class
accuracy of ``--num`` samples (the run's sampler, steps and guidance), two noise seeds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from maskdit.cli.args import Parser, guarded, non_negative_float, positive_int


def score(run_dir: Path, num: int, dataset) -> list[dict]:
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.suite import score_samples
    from maskdit.runs import load_run

    run = load_run(run_dir)
    s = run.config.sample
    labels = torch.arange(num) % run.model.num_classes if run.model.num_classes else None
    out = []
    for seed in (0, 1):
        x = generate(run.model, run.objective, num, labels, sampler=s.sampler, steps=s.steps,
                     guidance_scale=s.guidance_scale, seed=seed)
        out.append(score_samples(run.codec.decode(x), labels, dataset, ["domain_fid", "class"], progress=False))
    return out


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--keep", type=positive_int, default=3)
    p.add_argument("--finetune", type=non_negative_float, default=0.2,
                   help="finetune steps as a share of the run's steps")
    p.add_argument("--search-steps", type=positive_int, default=200)
    p.add_argument("--num", type=positive_int, default=400)
    p.add_argument("--methods", default="learned,every-other")
    p.add_argument("--distill", type=non_negative_float, default=0.0,
                   help="also finetune with the full run as teacher at this distill.weight (0 = not)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="finetune config overrides, e.g. lr=3e-4")
    args = p.parse_args(argv)
    from maskdit.cli.app import main as cli
    from maskdit.data.datasets import dataset_from_config
    from maskdit.runs import load_run
    from maskdit.training.prune import PRUNERS, prune_run

    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in PRUNERS.names() for m in methods):  # before the full model is scored
        p.error(f"--methods {args.methods!r}: choose from {', '.join(PRUNERS.names())}, separated by commas")
    full = load_run(args.run)
    dataset = dataset_from_config(full.config.data)
    steps = max(1, round(args.finetune * full.config.steps))
    rows = [("full model", len(full.model.blocks), "-", score(args.run, args.num, dataset), 0.0)]
    work = Path(tempfile.mkdtemp(prefix="prune-"))
    for method in methods:
        start = time.perf_counter()
        pruned = work / method
        r = prune_run(args.run, pruned, args.keep, method, args.search_steps)
        search_s = time.perf_counter() - start
        rows.append((f"{method}, pruned", args.keep, str(r["kept"]), score(pruned, args.num, dataset), search_s))
        for distill in [0.0, args.distill] if args.distill else [0.0]:
            cfg = load_run(pruned).config.to_dict()
            out = work / f"{method}-ft{'-kd' if distill else ''}"
            cfg.update(steps=steps, init_from=str(pruned), run_dir=str(out), ckpt_every=steps, keep_checkpoints=1)
            if distill:
                cfg["distill"] = {"teacher": str(args.run), "weight": distill}
            config_path = work / f"{out.name}.yaml"
            config_path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if v is not None}))
            start = time.perf_counter()
            assert cli(["train", "--no-progress", str(config_path), *args.overrides]) == 0
            how = f" distilled (weight {distill:g})" if distill else ""
            rows.append((f"{method}, + finetune {steps} steps{how}", args.keep, str(r["kept"]),
                         score(out, args.num, dataset), time.perf_counter() - start))
    base = sum(s["domain_fid"] for s in rows[0][3]) / 2
    print(f"\nrun {args.run} (step {full.step}, {len(full.model.blocks)} blocks), {args.num} samples x seeds 0 "
          "and 1\n")
    print("| model | blocks | kept | domain FID (seed 0 / 1) | vs full | class accuracy | seconds (search/finetune) |")
    print("|---|---|---|---|---|---|---|")
    for name, blocks, kept, scores, seconds in rows:
        fid = sum(s["domain_fid"] for s in scores) / 2
        fids = " / ".join(f"{s['domain_fid']:.1f}" for s in scores)
        accs = " / ".join(f"{s['class_accuracy']:.3f}" for s in scores)
        print(f"| {name} | {blocks} | {kept} | {fids} | {fid / base:.2f}x | {accs} | {seconds:.0f} |")


if __name__ == "__main__":
    sys.exit(guarded(main))
