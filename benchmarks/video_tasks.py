"""Per-task PSNR / SSIM of a task-trained video model on held-out clips, next to simple baselines.

    python benchmarks/video_tasks.py runs/bouncing-digits --num 64 --out docs/tasks

For each task one condition mask is fixed (predict / backward: 4 frames given; interpolate: every 2nd
frame and the last; animate: frame 0; complete: 4 random frames; inpaint: a centred box over all
frames), the model fills the rest of every test clip, and PSNR / SSIM (on 0-255 frames) are averaged
over the frames that were not wholly given. Baselines: *copy last given frame* (each generated frame
repeats the nearest given frame before it, or after it when there is none) and *linear interpolation*
between the given frames around it (copying at the ends). On one-digit bouncing digits it also reports
*identity*: the share of generated frames whose sprite crop (:func:`maskdit.evaluate.video.sprite_crops`)
the digits classifier reads as the clip's digit, next to the same share for the true frames (the
ceiling). On bouncing balls, animating from frame 0 is also scored against a *perfect sample*: the
same ball launched with another velocity from the data's own distribution (what a flawless sampler
draws, averaged over 16 launches), and the pixel mean of those 16 futures (near the best PSNR any
prediction can have, a blur). Writes ``OUT/tasks.json``, a GIF per task (context | truth | generated)
and prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from maskdit.cli.args import Parser, guarded, non_negative_float, non_negative_int, positive_int
from maskdit.data.media import save_video
from maskdit.diffusion.tasks import comparison_frames
from maskdit.evaluate.video import TASK_BENCH, frame_scores, given_frames, held_out_set, identity_rate, task_quality
from maskdit.runs import load_run


def baselines(clips: torch.Tensor, frames_given: list[int]) -> dict[str, torch.Tensor]:
    """Copy-last-given-frame and linear-interpolation fills of uint8 clips ``(N, C, T, H, W)``."""
    t_len = clips.shape[2]
    copy, lerp = clips.clone(), clips.clone().float()
    for f in range(t_len):
        if f in frames_given:
            continue
        before = [g for g in frames_given if g < f]
        after = [g for g in frames_given if g > f]
        a = before[-1] if before else after[0]
        copy[:, :, f] = clips[:, :, a]
        if before and after:
            b = after[0]
            w = (f - a) / (b - a)
            lerp[:, :, f] = (1 - w) * clips[:, :, a].float() + w * clips[:, :, b].float()
        else:
            lerp[:, :, f] = clips[:, :, a].float()
    return {"copy last given frame": copy, "linear interpolation": lerp.round().to(torch.uint8)}


def perfect_samples(cfg: Any, clips: torch.Tensor, draws: int = 16) -> list[torch.Tensor] | None:
    """On bouncing balls, ``draws`` other futures ``(N, C, T, H, W)`` of each held-out clip's first frame, each
    exactly as likely as the real one (the generator's ``velocity_seed``); ``None`` for other data."""
    if cfg.data.name != "bouncing-balls":
        return None
    from maskdit.data.video import load_video_dataset

    futures = [load_video_dataset("bouncing-balls", "test", len(clips), frames=cfg.data.frames, size=cfg.data.size,
                                  velocity_seed=k).frames for k in range(draws)]
    if not all(torch.equal(f[:, :, 0], clips[:, :, 0]) for f in futures):
        raise RuntimeError("the relaunched balls do not start from the held-out clips' first frames")
    return futures


def oracle_scores(futures: list[torch.Tensor], clips: torch.Tensor, scored: list[int]) -> dict[str, dict]:
    """Scores of a perfect sample (averaged over the futures) and of the futures' pixel mean."""
    each = [frame_scores(f, clips, scored) for f in futures]
    mean = torch.stack(futures).float().mean(0).round().to(torch.uint8)
    return {"perfect sample": {k: sum(e[k] for e in each) / len(each) for k in each[0]},
            "mean of perfect samples": frame_scores(mean, clips, scored)}


def identity_reader(data: Any, cfg: Any) -> tuple[Any, int] | None:
    """The digits classifier and the sprite size, where identity can be read (one digit per clip)."""
    if cfg.data.name != "bouncing-digits" or data.labels is None or data.labels.dim() != 1:
        return None
    from maskdit.data.datasets import load_digits
    from maskdit.evaluate.classifier import load_classifier

    return load_classifier(load_digits(), progress=False), 8 * (2 if cfg.data.size >= 32 else 1)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--num", type=positive_int, default=64, help="held-out clips")
    p.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's)")
    p.add_argument("--sampler", help="sampler (default: the run's)")
    p.add_argument("--guidance", help="guidance mode, e.g. context (default: none)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=1.0)
    p.add_argument("--tasks", help="comma-separated tasks (default: every benchmark task)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
    p.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA or training weights")
    p.add_argument("--device", default="cpu",
                   help="where the model samples (cpu, cuda); scores are computed on the CPU")
    p.add_argument("--out", default="docs/tasks")
    args = p.parse_args(argv)
    run = load_run(args.run_dir, ema=args.weights == "ema", device=args.device)
    cfg = run.config
    data = held_out_set(cfg.data, args.num)
    clips, labels = data.frames[:args.num], None if data.labels is None else data.labels[:args.num]
    reader = identity_reader(data, cfg)
    futures = perfect_samples(cfg, clips)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = {"sampler": args.sampler or cfg.sample.sampler, "steps": args.steps or cfg.sample.steps,
                "seed": args.seed}
    if args.guidance_scale != 1.0:
        sampling.update(guidance=args.guidance or "cfg", guidance_scale=args.guidance_scale)
    results = {}
    for task in args.tasks.split(",") if args.tasks else TASK_BENCH:
        start = time.time()
        scores, generated = task_quality(run.model, run.objective, run.codec, clips, [task], batch_size=64,
                                         **sampling)
        seconds = time.time() - start
        grid, generated = generated[task]
        frames_given = given_frames(grid)
        scored = [f for f in range(grid.shape[0]) if f not in frames_given]
        row = {"model": scores[task], "given_frames": frames_given, "seconds": seconds, **sampling}
        if frames_given and task != "inpaint":
            for name, fill in baselines(clips, frames_given).items():
                row[name] = frame_scores(fill, clips, scored)
            if futures is not None and frames_given == [0]:
                row.update(oracle_scores(futures, clips, scored))
            if reader is not None:
                clf, sprite = reader
                row["identity"] = identity_rate(clf, generated, labels, scored, sprite)
                row["identity_real"] = identity_rate(clf, clips, labels, scored, sprite)
        results[task] = row
        save_video(out / f"{task}.gif", comparison_frames(clips[:8], generated[:8], grid, run.model))
        print(task, json.dumps(row), flush=True)
    (out / "tasks.json").write_text(json.dumps(results, indent=2))
    print(f"\n{args.num} held-out clips, {cfg.data.name}, step {run.step}, {sampling}\n")
    columns = ["model", "copy last given frame", "linear interpolation"]
    columns += [k for k in ("perfect sample", "mean of perfect samples") if any(k in r for r in results.values())]
    print("| task | model PSNR / SSIM | identity (real) | " + " | ".join(columns[1:]) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for task, row in results.items():
        cells = [f"{row[k]['psnr']:.2f} dB / {row[k]['ssim']:.3f}" if k in row else "-" for k in columns]
        ident = f"{row['identity']:.1%} ({row['identity_real']:.1%})" if "identity" in row else "-"
        print(f"| {task} | {cells[0]} | {ident} | " + " | ".join(cells[1:]) + " |")


if __name__ == "__main__":
    sys.exit(guarded(main))
