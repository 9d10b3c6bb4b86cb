"""Discrete masked diffusion on the digits (17-level pixels as token ids): samplers, time-agnostic models and the
continuous flow, side by side. Run each study alone on a quiet machine.

    python benchmarks/discrete_digits.py samplers --run runs/digits-masked
    python benchmarks/discrete_digits.py agnostic --seconds 240
    python benchmarks/discrete_digits.py agnostic --steps 3000 --seeds 0,1,2
    python benchmarks/discrete_digits.py flow --seconds 240
    python benchmarks/discrete_digits.py flow --steps 3000 --out docs/discrete/flow_3000.json

* ``samplers``: ``--num`` class-conditional samples of a trained run (the ``digits-masked`` preset's) from the
  ancestral chain at 1,000 / 100 / 25 steps, first-hitting sampling (one call per cell), and MaskGIT at 1-32 rounds;
  each scored by the main job's judge (class recognition), domain FID against the digits, the network calls of one
  batch and the wall-clock. Writes ``docs/discrete/samplers.json`` and a plot of quality against calls.
* ``agnostic``: two runs of the preset trained for the same time on the first 1,500 digits, one with a time input and
  one time-agnostic; the bound on the 297 held-out digits (bits per token; the same masks and times for both), and
  their first-hitting samples scored.
* ``flow``: the preset's masked model and the main job's flow model (``digits`` preset) trained for the same
  wall-clock on all digits (``--steps N``: each for N steps with its full learning-rate schedule, the wall-clock
  reported), each sampled with its defaults and scored alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


class CallCounter:
    """Counts the network's forward passes (a guided call makes one pass on a doubled batch, or two)."""

    def __init__(self, model: torch.nn.Module):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        self.calls += 1


def score(run, sampler: str, steps: int, num: int, batch: int, seed: int = 0, **draws) -> dict:
    """Samples of ``run`` with ``sampler``, scored: recognition, domain FID, calls per batch, seconds."""
    from maskdit.data.datasets import load_digits
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.suite import score_samples

    labels = torch.arange(num) % 10
    counter = CallCounter(run.model)
    start = time.time()
    x = generate(run.model, run.objective, num, labels, sampler=sampler, steps=steps,
                 guidance_scale=run.config.sample.guidance_scale, seed=seed, batch_size=batch, **draws)
    seconds = time.time() - start
    counter.handle.remove()
    scores = score_samples(run.codec.decode(x), labels, load_digits(), ["domain_fid", "class"], progress=False)
    batches = -(-num // batch)
    return {"sampler": sampler, "steps": steps, "calls_per_batch": counter.calls / batches,
            "seconds": round(seconds, 2), "class_accuracy": scores["class_accuracy"],
            "domain_fid": scores["domain_fid"], **draws}


def samplers(args: argparse.Namespace) -> dict:
    from maskdit.runs import load_run

    run = load_run(args.run)
    arms = [("ancestral", 1000), ("ancestral", 100), ("ancestral", 25), ("first-hitting", 1)]
    arms += [("maskgit", s) for s in (1, 2, 4, 8, 16, 32)]
    rows = []
    for sampler, steps in arms:
        row = score(run, sampler, steps, args.num, args.batch)
        print(json.dumps(row), flush=True)
        rows.append(row)
    plot(rows, Path(args.out).with_suffix(".png"))
    return {"run": str(args.run), "num": args.num, "batch": args.batch, "rows": rows}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "domain_fid", "domain FID (lower is better)"),
                           (axes[1], "class_accuracy", "recognised as the class asked for")):
        mg = [r for r in rows if r["sampler"] == "maskgit"]
        ax.plot([r["calls_per_batch"] for r in mg], [r[key] for r in mg], "o-", label="maskgit (1-32 rounds)")
        for r in rows:
            if r["sampler"] != "maskgit":
                name = f"ancestral {r['steps']}" if r["sampler"] == "ancestral" else r["sampler"]
                ax.plot(r["calls_per_batch"], r[key], "s", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("network passes per batch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def train(run_dir: Path, seconds: float | None, *overrides: str, preset: str = "digits-masked") -> Path:
    """A fresh run of ``preset`` for ``seconds`` of training (``None``: the steps the overrides say)."""
    from maskdit.checkpoint import remove_run
    from maskdit.config import load_config
    from maskdit.training.trainer import train as train_run

    remove_run(run_dir)
    budget = ["steps=100000", f"max_seconds={seconds}"] if seconds is not None else []
    cfg = load_config(preset, overrides=[f"run_dir={run_dir}", "ckpt_every=100000", *budget, *overrides])
    return train_run(cfg, progress=False)


def agnostic(args: argparse.Namespace) -> dict:
    from control_edges import split_digits

    from maskdit.data.codec import LevelsCodec
    from maskdit.data.datasets import load_npz
    from maskdit.diffusion.masked import bits_per_token
    from maskdit.runs import load_run

    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    train_path, test_path = split_digits(root, 1500)
    test = load_npz(test_path)
    x0 = LevelsCodec(17).encode(test.images)
    budget = [f"steps={args.steps}"] if args.steps else []
    result = {"seconds": None if args.steps else args.seconds, "steps": args.steps, "held_out": len(test),
              "seeds": args.seeds}
    for seed in args.seeds:
        for name, agnostic_model in (("time_conditioned", False), ("time_agnostic", True)):
            run_dir = train(root / name, None if args.steps else args.seconds, "data.name=npz",
                            f"data.path={train_path}", f"objective.time_agnostic={str(agnostic_model).lower()}",
                            f"seed={seed}", *budget)
            run = load_run(run_dir)
            bound = bits_per_token(run.model, run.objective, x0, test.labels, times=args.times, seed=1)
            row = {"seed": seed, "train_steps": last_step(run_dir), **bound}
            if seed == args.seeds[0]:
                row.update(score(run, "first-hitting", 1, args.num, args.batch))
            print(name, json.dumps(row), flush=True)
            result.setdefault(name, []).append(row)
    mean = {name: sum(r["bits_per_token"] for r in result[name]) / len(args.seeds)
            for name in ("time_conditioned", "time_agnostic")}
    result["mean_bits_per_token"] = mean
    result["relative_difference"] = (mean["time_agnostic"] - mean["time_conditioned"]) / mean["time_conditioned"]
    return result


def last_step(run_dir: Path) -> int:
    return json.loads((run_dir / "metrics.jsonl").read_text().strip().splitlines()[-1])["step"]


def flow(args: argparse.Namespace) -> dict:
    from maskdit.runs import load_run

    root = Path(args.runs)
    result = {"seconds": None if args.steps else args.seconds, "steps": args.steps}
    for name, preset, sampler, steps in (("masked", "digits-masked", "ancestral", 100),
                                         ("masked_fhs", "digits-masked", "first-hitting", 1),
                                         ("flow", "digits", "heun", 20)):
        run_dir = root / f"vs_{preset}"
        if name != "masked_fhs":
            start = time.time()
            train(run_dir, None if args.steps else args.seconds, *([f"steps={args.steps}"] if args.steps else []),
                  preset=preset)
            result[f"{preset}_train_seconds"] = round(time.time() - start, 1)
        row = {"train_steps": last_step(run_dir), **score(load_run(run_dir), sampler, steps, args.num, args.batch)}
        print(name, json.dumps(row), flush=True)
        result[name] = row
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=["samplers", "agnostic", "flow"])
    p.add_argument("--run", default="runs/digits-masked", help="samplers: the trained masked run")
    p.add_argument("--seconds", type=float, default=240.0, help="agnostic, flow: training wall-clock of each run")
    p.add_argument("--num", type=int, default=500, help="samples scored per arm")
    p.add_argument("--batch", type=int, default=100, help="samples per network call")
    p.add_argument("--times", type=int, default=64, help="agnostic: times per held-out digit in the bound")
    p.add_argument("--steps", type=int, default=0, help="agnostic, flow: train each run for this many steps instead of "
                   "--seconds (its whole learning-rate schedule)")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0],
                   help="agnostic: the seeds each arm is trained with (comma-separated)")
    p.add_argument("--runs", default="/tmp/maskdit-discrete", help="scratch directory of the trained runs")
    p.add_argument("--out", default=None, help="default docs/discrete/STUDY.json")
    args = p.parse_args()
    args.out = args.out or f"docs/discrete/{args.study}.json"
    from control_edges import write_result

    result = {"samplers": samplers, "agnostic": agnostic, "flow": flow}[args.study](args)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
