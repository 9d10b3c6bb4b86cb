"""Per-task quality of a task-trained video model on held-out clips: PSNR and SSIM per condition-mask task.

Each task has one fixed condition mask (:data:`TASK_BENCH`): predict / backward give half the frames (4 of
8), interpolate every 2nd frame and the last, animate frame 0, complete half the frames at random, inpaint
everything but a centred box. The model fills the rest of every clip; PSNR (capped at 60 dB) and SSIM on
0-255 frames are averaged over the frames that were not wholly given. Used by ``benchmarks/video_tasks.py``
and, for video models trained on tasks, by the training loop's evaluation (``eval_every``, ``eval_every_s``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from maskdit.evaluate.metrics import psnr, ssim

#: task name -> options of :func:`maskdit.masks.task_mask` (its one fixed condition mask in the benchmark);
#: ``k=None`` stands for half the token-grid frames (4 of 8).
TASK_BENCH: dict[str, dict[str, Any]] = {
    "predict": {"k": None},
    "backward": {"k": None},
    "interpolate": {"stride": 2},
    "animate": {"frame": 0},
    "complete": {"k": None},
    "inpaint": {"box": None},
}


def bench_options(task: str, grid: tuple[int, ...]) -> dict[str, Any]:
    """The :data:`TASK_BENCH` options of ``task`` for a token grid ``(frames, height, width)``: ``k`` is half
    the frames; the inpainting box is the centre half of each side, the same pixels at any patch size."""
    options = dict(TASK_BENCH[task])
    if "k" in options and options["k"] is None:
        options["k"] = max(1, grid[0] // 2)
    if "box" in options and options["box"] is None:
        options["box"] = tuple(v for side in grid[-2:] for v in (side // 4, side - side // 4))
    return options


def frame_scores(pred: torch.Tensor, truth: torch.Tensor, frames: list[int]) -> dict[str, float]:
    """Mean PSNR (capped at 60 dB) and SSIM over ``frames`` of every uint8 clip ``(N, C, T, H, W)``."""
    p = pred[:, :, frames].transpose(1, 2).flatten(0, 1).float() / 255.0  # (N*F, C, H, W)
    t = truth[:, :, frames].transpose(1, 2).flatten(0, 1).float() / 255.0
    return {"psnr": psnr(p, t).clamp(max=60).mean().item(), "ssim": ssim(p, t).mean().item()}


def given_frames(grid: torch.Tensor) -> list[int]:
    """Token-grid frames a condition mask gives wholly."""
    return [f for f in range(grid.shape[0]) if bool(grid[f].all())]


def task_quality(model: torch.nn.Module, objective: Any, codec: Any, clips: torch.Tensor,
                 tasks: list[str] | None = None, **sampling: Any
                 ) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Scores ``{task: {"psnr", "ssim"}, "mean_psnr": ...}`` for each of ``tasks`` (default: every
    :data:`TASK_BENCH` task) on uint8 ``clips``, and ``{task: (condition mask, generated clips)}``."""
    from maskdit.diffusion.tasks import complete, given_for

    run = SimpleNamespace(model=model, objective=objective, codec=codec)
    tasks = tasks or list(TASK_BENCH)
    scores: dict[str, Any] = {}
    generated: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for task in tasks:
        grid = given_for(task, model, bench_options(task, tuple(model.token_grid)), torch.Generator().manual_seed(0))
        clips_out = complete(run, clips, grid, **sampling)
        scored = [f for f in range(grid.shape[0]) if f not in given_frames(grid)]
        scores[task] = frame_scores(clips_out, clips, scored)
        generated[task] = (grid, clips_out)
    scores["mean_psnr"] = sum(scores[t]["psnr"] for t in tasks) / len(tasks)
    return scores, generated


def bench_tasks(model: torch.nn.Module, trained: list[str]) -> list[str]:
    """The benchmark tasks a model trained on ``trained`` can be scored on (frame tasks need video grids)."""
    rank = len(model.token_grid)
    return [t for t in TASK_BENCH if t in trained and (rank == 3 or t == "inpaint")]


def held_out_set(data_cfg: Any, num: int) -> Any:
    """The data set's test split with ``num`` clips (the embedded video sets draw it from a separate stream)."""
    from dataclasses import replace

    from maskdit.data.datasets import dataset_from_config

    return dataset_from_config(replace(data_cfg, num=num), split="test")


def held_out_clips(data_cfg: Any, num: int) -> torch.Tensor:
    """``num`` uint8 clips ``(N, C, T, H, W)`` of the data set's test split (a data set without a separate
    test stream gives its first clips)."""
    return held_out_set(data_cfg, num).frames[:num]


def sprite_crops(frames: torch.Tensor, sprite: int) -> torch.Tensor:
    """Where each uint8 frame ``(M, C, H, W)`` draws its one sprite: the ``sprite`` x ``sprite`` window
    ``(M, C, sprite, sprite)`` holding the most intensity, and among windows that hold it all (a digit with
    blank margins fits several) the one centred nearest the frame's intensity centroid, as the digits
    themselves are roughly centred in their 8 x 8 boxes."""
    weight = frames.float().sum(1)  # (M, H, W)
    mass = weight.sum((1, 2)).clamp(min=1e-6)
    ys = torch.arange(frames.shape[-2], dtype=torch.float32)
    xs = torch.arange(frames.shape[-1], dtype=torch.float32)
    cy, cx = (weight.sum(2) * ys).sum(1) / mass, (weight.sum(1) * xs).sum(1) / mass
    energy = F.avg_pool2d(weight.unsqueeze(1), sprite, stride=1)[:, 0]  # (M, places_y, places_x)
    centre = (sprite - 1) / 2
    dist = (ys[:energy.shape[1], None] + centre - cy[:, None, None]) ** 2 + \
        (xs[None, :energy.shape[2]] + centre - cx[:, None, None]) ** 2
    best = energy >= energy.amax((1, 2), keepdim=True) * 0.999
    corner = torch.where(best, -dist, torch.tensor(float("-inf"))).flatten(1).argmax(1)
    width = energy.shape[2]
    return torch.stack([f[:, y:y + sprite, x:x + sprite] for f, y, x in
                        zip(frames, (corner // width).tolist(), (corner % width).tolist())])


def identity_rate(classifier: Any, clips: torch.Tensor, labels: torch.Tensor, frames: list[int],
                  sprite: int = 8) -> float:
    """Share of ``frames`` of uint8 ``clips`` ``(N, 1, T, H, W)`` whose sprite crop the digits classifier
    reads as the clip's digit ``labels`` ``(N,)`` (crops of a sprite enlarged ``k`` times are averaged
    down to the classifier's 8 x 8)."""
    from maskdit.data.datasets import from_uint8

    crops = sprite_crops(clips[:, :, frames].transpose(1, 2).flatten(0, 1), sprite)
    if sprite != 8:
        crops = F.avg_pool2d(crops.float(), sprite // 8).round().to(torch.uint8)
    predicted = classifier.predict(from_uint8(crops))
    return (predicted == labels.repeat_interleave(len(frames))).float().mean().item()
