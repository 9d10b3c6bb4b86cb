"""Convergence at equal wall-clock: unmasked training against each masked-training recipe.

    python benchmarks/masking_convergence.py --budget 120 --out docs/masking

Every configuration trains the digits preset (or ``--data-npz FILE``) for the same wall-clock budget with a
constant learning rate, checkpointing every ``--ckpt-every`` steps; then every checkpoint's EMA weights are
scored (class recognition rate of class-conditional samples and domain FID) and plotted
against the training seconds it took to reach. Writes ``OUT/convergence.png``, ``OUT/convergence.json``
and prints a Markdown table. Runs one training at a time: the timings are only comparable on an idle CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from maskdit.checkpoint import list_checkpoints, load_run, read_json
from maskdit.config import load_config
from maskdit.data import load_dataset
from maskdit.evaluate.suite import score_samples
from maskdit.samplers import generate
from maskdit.train import train

CONFIGS = {  # label: overrides
    "unmasked": [],
    "(a) drop 0.5": ["mask.recipe=drop", "mask.ratio=0.5"],
    "(b) mae 0.5": ["mask.recipe=mae", "mask.ratio=0.5"],
    "(c) mdt 0.5": ["mask.recipe=mdt", "mask.ratio=0.5"],
    "deferred drop 0.5, mixer 2": ["mask.recipe=drop", "mask.ratio=0.5", "model.mixer_depth=2"],
    "deferred drop 0.75, mixer 2": ["mask.recipe=drop", "mask.ratio=0.75", "model.mixer_depth=2"],
}
FINETUNE = "(a) drop 0.5 + unmask finetune"


def seconds_at(step: int, metrics: list[dict]) -> float:
    """Training seconds at ``step``: the last logged time at or before it, extrapolated at the logged rate."""
    logged = [m for m in metrics if "elapsed_s" in m and m["step"] <= step]
    if not logged:
        return float("nan")
    last = logged[-1]
    return last["elapsed_s"] + (step - last["step"]) / last["steps_per_s"]


def score(run_dir: Path, dataset, num: int, steps: int) -> list[dict]:
    """Domain FID and class recognition of every checkpoint of a run, with the training seconds it took."""
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    offset = read_json(run_dir / "config.json").get("offset_s", 0.0)
    rows = []
    for ckpt in list_checkpoints(run_dir):
        run = load_run(ckpt)
        labels = torch.arange(num) % dataset.num_classes
        x = run.codec.decode(generate(run.model, run.objective, num, labels, "heun", steps, 1.0, seed=123))
        scores = score_samples(x, labels, dataset, ["domain_fid", "class"], progress=False)
        rows.append({"step": run.step, "seconds": offset + seconds_at(run.step, metrics),
                     "class_accuracy": scores["class_accuracy"], "domain_fid": scores["domain_fid"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="training seconds per configuration")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--num", type=int, default=300, help="samples per evaluation")
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--runs", default="runs/convergence")
    p.add_argument("--out", default="docs/masking")
    p.add_argument("--data-npz", help="use this .npz dataset instead of digits")
    p.add_argument("--only", nargs="*", help="labels to run (default: all)")
    args = p.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ["data.name=npz", f"data.path={args.data_npz}"] if args.data_npz else []
    common = ["steps=1000000", "lr_schedule=constant", f"ckpt_every={args.ckpt_every}", "keep_checkpoints=1000",
              f"max_seconds={args.budget}", *data]
    configs = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only}
    for label, overrides in configs.items():
        run_dir = runs / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        if not list_checkpoints(run_dir):
            print(f"training {label} for {args.budget:.0f}s", flush=True)
            train(load_config("digits", overrides=[*common, *overrides, f"run_dir={run_dir}"]), progress=False)
    if not args.only or FINETUNE in args.only:  # 80% masked, then 20% unmasking finetune from its weights
        base = runs / "finetune_masked"
        ft = runs / "finetune_unmasked"
        if not list_checkpoints(ft):
            train(load_config("digits", overrides=[*common, "mask.ratio=0.5", f"max_seconds={0.8 * args.budget}",
                                                   f"run_dir={base}"]), progress=False)
            used = json.loads((base / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"]
            cfg = load_config("digits", overrides=[*common, f"max_seconds={args.budget - used}", f"init_from={base}",
                                                   "warmup_steps=0", f"run_dir={ft}"])
            train(cfg, progress=False)
            info = read_json(ft / "config.json")
            info["offset_s"] = used
            (ft / "config.json").write_text(json.dumps(info, indent=2))
        configs[FINETUNE] = None
    dataset = load_dataset("npz", args.data_npz) if args.data_npz else load_dataset("digits")
    results = {}
    for label in configs:
        if label == FINETUNE:
            rows = score(runs / "finetune_masked", dataset, args.num, args.sample_steps)
            rows += score(runs / "finetune_unmasked", dataset, args.num, args.sample_steps)
        else:
            run_dir = runs / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            rows = score(run_dir, dataset, args.num, args.sample_steps)
        results[label] = rows
        print(label, json.dumps(rows), flush=True)
    (out / "convergence.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "convergence.png")
    table(results)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key in zip(axes, ["class_accuracy", "domain_fid"]):
        for label, rows in results.items():
            ax.plot([r["seconds"] for r in rows], [r[key] for r in rows], marker="o", label=label)
        ax.set_xlabel("training wall-clock (s, 2-core CPU)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict) -> None:
    base = results.get("unmasked")
    target = base[-1]["domain_fid"] if base else None
    print("\n| configuration | steps in budget | final domain_fid | seconds to reach unmasked final |")
    print("|---|---|---|---|")
    for label, rows in results.items():
        reach = next((r["seconds"] for r in rows if target is not None and r["domain_fid"] <= target), None)
        print(f"| {label} | {rows[-1]['step']} | {rows[-1]['domain_fid']:.3f} | "
              f"{'-' if reach is None else f'{reach:.0f}'} |")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f}s")
