"""Motion tasks of a motion run on the held-out DeepMimic clips, next to the simple baselines.

    python benchmarks/motion_tasks.py runs/motion --out docs/motion

Tasks, each with one fixed condition mask on 32-frame windows of the clips no training run sees (run,
dance_b, getup_faceup): *inbetween* (the first and last 8 frames given, the middle 16 generated: 50% of
frames) against spherical interpolation across the gap; *predict* (the first 16 frames given) against
holding the last given pose; *parts* (the right leg generated in every frame, or ``--columns``) against the
training data's mean pose. Errors: mean geodesic joint-rotation error (degrees) and mean joint-position
error (cm) after forward kinematics, over what was generated. ``--seen`` scores windows of the training
clips too; ``--draws K`` scores the mean of K samples per window; ``--from-slerp S`` adds in-betweening that
starts from the slerp fill noised to time S (SDEdit: the model refines the baseline). Writes ``OUT/motion.json`` and a
stick-figure GIF per task (truth in grey behind the result, generated frames on yellow), and prints a
Markdown table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from maskdit.cli.args import Parser, guarded, non_negative_int, non_negative_ints, positive_floats, positive_int
from maskdit.data.datasets import modality_name
from maskdit.data.motion import PARTS, MotionView, motion_errors, motion_windows
from maskdit.errors import ConfigError
from maskdit.evaluate.motion import baseline, refine_slerp, score_task, sound_values, task_given
from maskdit.runs import load_run

TASKS = {"inbetween": {}, "predict": {}, "parts": {}}


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's)")
    p.add_argument("--sampler", help="sampler (default: the run's)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from " + ", ".join(TASKS))
    p.add_argument("--columns", type=non_negative_ints, default=list(PARTS["right_leg"]),
                   help="parts: the joint columns generated (default: the right leg)")
    p.add_argument("--seen", action="store_true", help="also score windows of the training clips")
    p.add_argument("--draws", type=positive_int, default=1,
                   help="score the mean of this many samples per window (the conditional mean's estimate)")
    p.add_argument("--from-slerp", type=positive_floats, default=[], metavar="S,S,...",
                   help="also in-between from the slerp fill noised to each strength S in (0, 1] (SDEdit)")
    p.add_argument("--out", default="docs/motion")
    args = p.parse_args(argv)
    if any(s > 1 for s in args.from_slerp):
        raise ConfigError(f"--from-slerp {max(args.from_slerp):g}: a strength is a time in (0, 1]")
    run = load_run(args.run_dir)
    if modality_name(run.dataset["name"]) != "motion":
        raise ConfigError(f"{args.run_dir} was trained on {run.dataset['name']}, not motion: pass a motion run")
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"--tasks: unknown {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    frames = run.model.input_size[0]
    sets = {"held-out clips": motion_windows("test", frames, mirrored=False)[0]}
    train = motion_windows("train", frames)[0]
    if args.seen:
        sets["training clips"] = motion_windows("train", frames, mirrored=False)[0]
    mean_pose = train.mean((0, 2), keepdim=True)[0]
    sampling = {"sampler": args.sampler or run.config.sample.sampler, "steps": args.steps or run.config.sample.steps,
                "seed": args.seed, "batch_size": 128}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for where, grids in sets.items():
        for task in tasks:
            options = {"columns": tuple(args.columns)} if task == "parts" else TASKS[task]
            start = time.time()
            row = score_task(run, grids, task, options, mean_pose=mean_pose, draws=args.draws,
                             labels=sound_values(run.model, grids), **sampling)
            samples = row.pop("samples")
            row["seconds"] = time.time() - start
            results[f"{where}/{task}"] = row
            if where == "held-out clips":
                pick = torch.linspace(0, len(grids) - 1, 6).round().long()
                MotionView().save(out / f"{task}.gif", samples[pick], truth=grids[pick],
                                  given=task_given(run, task, options)[1].expand(len(pick), -1, -1, -1))
            print(where, task, json.dumps(row), flush=True)
        given = task_given(run, "inbetween")[1]
        frames = ~given.all(0).all(-1)
        for strength in args.from_slerp:
            out_s = refine_slerp(run, grids, strength, args.seed, sampling["steps"])
            results[f"{where}/inbetween from slerp, strength {strength:g}"] = {
                "given": float(given.float().mean()), "model": motion_errors(out_s, grids, frames),
                "baseline": motion_errors(baseline("inbetween", grids, given), grids, frames)}
    (out / "motion.json").write_text(json.dumps(results, indent=2))
    print(f"\n{run.path}, step {run.step}, {sampling}, mean of {args.draws} sample(s); windows: "
          + ", ".join(f"{len(g)} of {k}" for k, g in sets.items()) + "\n")
    print("| windows | task | given | model: rotation / position | baseline | lower by (rotation / position) |")
    print("|---|---|---|---|---|---|")
    for key, row in results.items():
        where, task = key.split("/")
        m, b = row["model"], row["baseline"]
        print(f"| {where} | {task} | {row['given']:.0%} | {m['rotation_deg']:.2f} deg / {m['position_cm']:.2f} cm | "
              f"{b['rotation_deg']:.2f} deg / {b['position_cm']:.2f} cm | "
              f"{1 - m['rotation_deg'] / b['rotation_deg']:.0%} / {1 - m['position_cm'] / b['position_cm']:.0%} |")


if __name__ == "__main__":
    sys.exit(guarded(main))
