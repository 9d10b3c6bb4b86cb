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

from maskdit.evaluate.metrics import psnr, ssim

#: task name -> options of :func:`maskdit.masks.task_mask` (its one fixed condition mask in the benchmark);
#: ``k=None`` stands for half the token-grid frames (4 of 8).
TASK_BENCH: dict[str, dict[str, Any]] = {
    "predict": {"k": None},
    "backward": {"k": None},
    "interpolate": {"stride": 2},
    "animate": {"frame": 0},
    "complete": {"k": None},
    "inpaint": {"box": (1, 3, 1, 3)},
}


def bench_options(task: str, frames: int) -> dict[str, Any]:
    """The :data:`TASK_BENCH` options of ``task`` for a token grid of ``frames`` frames."""
    return {k: max(1, frames // 2) if v is None and k == "k" else v for k, v in TASK_BENCH[task].items()}


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
    from maskdit.tasks import complete, given_for

    run = SimpleNamespace(model=model, objective=objective, codec=codec)
    tasks = tasks or list(TASK_BENCH)
    scores: dict[str, Any] = {}
    generated: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for task in tasks:
        grid = given_for(task, model, bench_options(task, model.token_grid[0]), torch.Generator().manual_seed(0))
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


def held_out_clips(data_cfg: Any, num: int) -> torch.Tensor:
    """``num`` uint8 clips ``(N, C, T, H, W)`` of the data set's test split (the embedded video sets draw it
    from a separate stream; a data set without one gives its first clips)."""
    from dataclasses import replace

    from maskdit.data import dataset_from_config

    return dataset_from_config(replace(data_cfg, num=num), split="test").frames[:num]
