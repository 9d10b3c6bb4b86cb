"""Sampling accelerators against plain sampling, side by side in one process: wall-clock and quality.

    python benchmarks/inference.py runs/digits --num 400 --steps 10 --accels cache:every=2,cache:every=3

For each setting (plain first) the run's EMA model draws ``--num`` samples with Heun at ``--steps`` steps
and the run's guidance, for two noise seeds (their spread is the run-to-run noise of the quality figures);
for a task-trained video run, it completes ``--num`` held-out clips for every benchmark task (PSNR per task);
the settings are timed in interleaved rounds, and the samples scored by domain FID and class accuracy
against the run's data. Speed-up is plain time / accelerated time from the same rounds. A setting that
calibrates (int8) does so once before the rounds; that one-off cost is printed apart.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from maskdit.cli.args import Parser, guarded, positive_int


def settings_of(text: str) -> list[str | None]:
    return [None] + [a for a in text.replace(";", "|").replace(",cache", "|cache").split("|") if a]


def calibrate_first(run, settings, labels, kw) -> None:
    """Calibrate int8 settings now (cached on the model), outside the timed rounds."""
    from maskdit.diffusion.samplers import generate

    for setting in settings:
        if setting and "int8" in setting:
            start = time.perf_counter()
            generate(run.model, run.objective, 1, labels[:1] if labels is not None else None, accel=setting, **kw)
            print(f"{setting}: calibration {time.perf_counter() - start:.1f} s (once per model and settings)")


def save_grid(path: Path, rows: list[torch.Tensor], per_row: int) -> None:
    """One row of ``per_row`` uint8 images ``(C, H, W)`` per setting, 4x upscaled, 2-pixel gaps."""
    from PIL import Image

    c, h, w = rows[0].shape[1:]
    scale, gap = 4, 2
    canvas = np.full((len(rows) * (h * scale + gap), per_row * (w * scale + gap), c), 255, np.uint8)
    for r, images in enumerate(rows):
        for i, img in enumerate(images[:per_row]):
            tile = img.permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)
            y, x = r * (h * scale + gap), i * (w * scale + gap)
            canvas[y:y + h * scale, x:x + w * scale] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)


def image_table(run, args, settings) -> None:
    from maskdit.data.datasets import dataset_from_config
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.suite import score_samples

    dataset = dataset_from_config(run.config.data)
    labels = torch.arange(args.num) % run.model.num_classes if run.model.num_classes else None
    kw = dict(sampler="heun", steps=args.steps, guidance_scale=run.config.sample.guidance_scale)
    calibrate_first(run, settings, labels, kw)
    seconds: dict[str | None, list[float]] = {s: [] for s in settings}
    scores: dict[str | None, list[dict]] = {s: [] for s in settings}
    firsts: dict[str | None, torch.Tensor] = {}
    for seed in (0, 1):
        for setting in settings:
            start = time.perf_counter()
            x = generate(run.model, run.objective, args.num, labels, seed=seed, accel=setting, **kw)
            seconds[setting].append(time.perf_counter() - start)
            images = run.codec.decode(x)
            firsts.setdefault(setting, images[:20])
            scores[setting].append(score_samples(images, labels, dataset, ["domain_fid", "class"], progress=False))
    base = sum(seconds[None])
    print(f"run {args.run} (step {run.step}), {args.num} samples, Heun {args.steps} steps, seeds 0 and 1, "
          f"{torch.get_num_threads()} threads\n")
    print("| sampling | seconds (2 seeds) | speed-up | domain FID (seed 0 / 1) | class accuracy |")
    print("|---|---|---|---|---|")
    for setting in settings:
        fid = " / ".join(f"{s['domain_fid']:.1f}" for s in scores[setting])
        acc = " / ".join(f"{s['class_accuracy']:.3f}" for s in scores[setting])
        print(f"| {setting or 'plain'} | {sum(seconds[setting]):.1f} | {base / sum(seconds[setting]):.2f}x | {fid} | "
              f"{acc} |")
    if args.grid:
        save_grid(Path(args.grid), [firsts[s] for s in settings], 20)
        print(f"\nwrote {args.grid}: the first 20 samples of seed 0, one row per setting in the table's order")


def video_table(run, args, settings) -> None:
    from maskdit.evaluate.video import bench_tasks, held_out_clips, task_quality

    clips = held_out_clips(run.config.data, args.num)
    tasks = bench_tasks(run.model, run.config.task.names)
    kw = dict(sampler=run.config.sample.sampler or "euler", steps=args.steps, batch_size=64)
    calibrate_first(run, settings, None, {k: v for k, v in kw.items() if k != "batch_size"})
    seconds: dict[str | None, list[float]] = {s: [] for s in settings}
    psnr: dict[str | None, dict[str, list[float]]] = {s: {t: [] for t in tasks} for s in settings}
    for seed in (0, 1):
        for setting in settings:
            start = time.perf_counter()
            scores, _ = task_quality(run.model, run.objective, run.codec, clips, tasks, seed=seed, accel=setting, **kw)
            seconds[setting].append(time.perf_counter() - start)
            for t in tasks:
                psnr[setting][t].append(scores[t]["psnr"])
    base = sum(seconds[None])
    print(f"run {args.run} (step {run.step}), {len(clips)} held-out clips per task, {kw['sampler']} {args.steps} "
          f"steps, seeds 0 and 1, {torch.get_num_threads()} threads; PSNR dB (seed 0 / 1)\n")
    print("| sampling | seconds (2 seeds, all tasks) | speed-up | " + " | ".join(tasks) + " | worst drop vs plain |")
    print("|---" * (4 + len(tasks)) + "|")
    for setting in settings:
        cells = [" / ".join(f"{v:.2f}" for v in psnr[setting][t]) for t in tasks]
        drop = max(sum(psnr[None][t]) / 2 - sum(psnr[setting][t]) / 2 for t in tasks)
        print(f"| {setting or 'plain'} | {sum(seconds[setting]):.1f} | {base / sum(seconds[setting]):.2f}x | "
              + " | ".join(cells) + f" | {drop:+.2f} dB |")


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--num", type=positive_int, default=400, help="samples (image runs) or held-out clips (video runs)")
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--accels", default="cache:every=2,cache:every=3", help="settings, separated by ';' or ','")
    p.add_argument("--grid", help="image runs: write a PNG with the first samples of each setting")
    args = p.parse_args(argv)
    from maskdit.runs import load_run

    run = load_run(args.run)
    settings = settings_of(args.accels)
    if len(run.model.input_size) == 3:
        video_table(run, args, settings)
    else:
        image_table(run, args, settings)


if __name__ == "__main__":
    sys.exit(guarded(main))
