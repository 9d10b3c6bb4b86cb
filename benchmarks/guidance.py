"""A recipe's own guidance against classifier-free guidance: sampling time and quality.

    python benchmarks/guidance.py runs/convergence/mnist32/sprint_0_75_finetune_1 --scales 1.5,3 --num 400
    python benchmarks/guidance.py runs/convergence/mnist32/tread_0_5_0 --scales 1.5,3 --num 400

For each scale, ``cfg`` (the weak branch is the whole model with the null label) and the run's recipe's
guidance sample the same ``--num`` class-conditional images from the same noise: ``path-drop`` for SPRINT
(null label and the deep path replaced by mask tokens, so the branch runs only the dense blocks),
``route-contrast`` for TREAD (the model routing 30% against 70% of the tokens past its route, both with the
label). Rows give the sampling seconds (one process) and the data set's domain FID and class accuracy.
Scale 1 (no guidance, one conditional pass) is the reference row.
"""

from __future__ import annotations

import sys
import time

import torch

from maskdit.cli.args import Parser, guarded, positive_floats, positive_int
from maskdit.data.datasets import load_dataset
from maskdit.diffusion.samplers import generate
from maskdit.evaluate.suite import score_samples
from maskdit.runs import load_run


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run trained with mask.recipe=sprint or tread")
    p.add_argument("--scales", type=positive_floats, default="1.5,3")
    p.add_argument("--num", type=positive_int, default=400)
    p.add_argument("--steps", type=positive_int, default=10, help="Heun steps")
    args = p.parse_args(argv)
    run = load_run(args.run)
    cfg = run.config
    own = {"sprint": "path-drop", "tread": "route-contrast"}.get(cfg.mask.recipe)
    if own is None:
        p.error(f"{args.run} was trained with mask.recipe={cfg.mask.recipe}: this compares the guidance of sprint "
                "or tread runs with cfg; pass such a run")
    if own == "route-contrast" and run.model.tread_route is None:  # a TREAD run saved before routes were kept
        run.model.tread_route = cfg.tread_route()
    dataset = load_dataset(cfg.data.name, cfg.data.path)
    labels = torch.arange(args.num) % run.model.num_classes
    rows = []
    settings = [(1.0, "cfg")] + [(s, g) for s in args.scales for g in ("cfg", own)]
    for scale, guidance in settings:
        start = time.perf_counter()
        x = generate(run.model, run.objective, args.num, labels, "heun", args.steps, scale, guidance=guidance, seed=7)
        seconds = time.perf_counter() - start
        scores = score_samples(run.codec.decode(x), labels, dataset, ["domain_fid", "class"], progress=False)
        rows.append((scale, guidance if scale != 1.0 else "none", seconds, scores["domain_fid"],
                     scores["class_accuracy"]))
        print(rows[-1], flush=True)
    base = rows[0][2]
    print(f"\n{args.num} samples, Heun {args.steps} steps, {torch.get_num_threads()} CPU threads\n")
    print("| guidance | scale | sampling s | x unguided time | domain FID | class acc. |")
    print("|---|---|---|---|---|---|")
    for scale, guidance, seconds, fid, acc in rows:
        print(f"| {guidance} | {scale:g} | {seconds:.1f} | {seconds / base:.2f} | {fid:.2f} | {acc:.3f} |")


if __name__ == "__main__":
    sys.exit(guarded(main))
