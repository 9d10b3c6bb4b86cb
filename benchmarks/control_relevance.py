"""RelaCtrl's relevance-guided placement on the digits: how much each control layer of a full ControlNet branch
matters, and whether a branch with half the control layers, placed where they matter, follows the control as well.

    python benchmarks/control_relevance.py --full /tmp/maskdit-control/edges-controlnet --base runs/digits \\
        --seconds 150 --out docs/adapters/kinds/relevance.json

1. ``--full`` is a run trained with ``control.kind=controlnet`` over every block (``benchmarks/control_edges.py
   --kind controlnet --set control.blocks=6``). Each control layer's relevance is the edge F1 its branch loses on
   the held-out digits when that one layer's residual is left out (``ControlBranch.skip``), everything else kept.
2. The ``--keep`` most relevant places (default half) make a new branch, ``control.blocks=[...]``, trained from the
   same base for the same wall-clock (``--seconds``) as the full one and scored the same way; so is a branch of the
   same size on the first blocks (plain ControlNet) for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def edge_f1(model, objective, test: Path, num: int, steps: int) -> float:
    """Edge F1 of ``model``'s samples against the held-out digits' edge maps (Heun, guidance 1.5, seed 0)."""
    from maskdit.data.datasets import load_npz
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.control import adherence

    data = load_npz(test)
    sources, labels = data.batch(torch.arange(num) % len(data))
    y = model.conditioner.value(labels, sources)
    x = generate(model, objective, num, y, sampler="heun", steps=steps, guidance_scale=1.5, seed=0)
    return adherence(x, sources, model.control_signal)["edge_f1"]


def train_placed(base: str, places: list[int], seconds: float, root: Path, train_npz: Path, name: str) -> Path:
    from maskdit.checkpoint import remove_run
    from maskdit.config import load_config
    from maskdit.training.trainer import train

    run = root / name
    remove_run(run)
    train(load_config("digits", overrides=[
        f"run_dir={run}", f"init_from={base}", "control.signal=edges", "control.kind=controlnet",
        f"control.blocks={json.dumps(places)}", "data.name=npz", f"data.path={train_npz}", "steps=1000000",
        f"max_seconds={seconds}", "ckpt_every=1000000", "lr=1e-3", "warmup_steps=50"]), progress=False)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", required=True, help="a run with control.kind=controlnet over every block")
    p.add_argument("--base", required=True, help="the base that run started from (init_from)")
    p.add_argument("--keep", type=int, default=None, help="control layers placed (default: half)")
    p.add_argument("--seconds", type=float, default=150.0, help="training wall-clock of each new branch")
    p.add_argument("--runs", default="/tmp/maskdit-control", help="scratch directory")
    p.add_argument("--train", type=int, default=1500, help="digits that train; the rest are held out")
    p.add_argument("--num", type=int, default=297)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="docs/adapters/kinds/relevance.json")
    args = p.parse_args()

    from control_edges import split_digits, write_result

    from maskdit.runs import load_run

    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    train_npz, test_npz = split_digits(root, args.train)
    full = load_run(args.full)
    branch = full.model.control
    places = list(branch.places)
    torch.set_grad_enabled(False)
    full_f1 = edge_f1(full.model, full.objective, test_npz, args.num, args.steps)
    relevance = {}
    for place in places:
        branch.skip = {place}
        relevance[place] = full_f1 - edge_f1(full.model, full.objective, test_npz, args.num, args.steps)
        print(f"control layer after block {place}: edge F1 {full_f1 - relevance[place]:.4f} without it "
              f"(relevance {relevance[place]:+.4f})", flush=True)
    branch.skip = set()
    keep = args.keep or max(1, len(places) // 2)
    chosen = sorted(sorted(places, key=lambda i: -relevance[i])[:keep])
    torch.set_grad_enabled(True)
    arms = {"relevance-placed": chosen, "first blocks": list(range(keep))}
    scores = {}
    for label, where in arms.items():
        run = train_placed(args.base, where, args.seconds, root, train_npz, f"placed-{'-'.join(map(str, where))}")
        model = load_run(run)
        with torch.no_grad():
            scores[label] = edge_f1(model.model, model.objective, test_npz, args.num, args.steps)
        control = sum(p.numel() for p in model.model.control.parameters())
        scores[label + " params"] = control
        print(f"{label} {where}: edge F1 {scores[label]:.4f} with {control / 1e6:.3f}M control parameters",
              flush=True)
    full_params = sum(p.numel() for p in branch.parameters())
    print(f"full branch {places}: edge F1 {full_f1:.4f} with {full_params / 1e6:.3f}M control parameters")
    result = {"full": {"places": places, "edge_f1": full_f1, "params": full_params}, "relevance": relevance,
              "placed": {label: {"places": where, "edge_f1": scores[label], "params": scores[label + " params"]}
                         for label, where in arms.items()}, "num": args.num, "steps": args.steps,
              "seconds": args.seconds}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
