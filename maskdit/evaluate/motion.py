"""Scoring motion tasks against the baselines a person would try first.

In-betweening is compared with spherical interpolation between the last given frame before the gap and the
first after it; prediction with holding the last given pose; body-part completion with the training data's
mean pose. Errors are the mean geodesic joint-rotation error (degrees) and the mean joint-position error
(centimetres, after forward kinematics) over the generated frames (or, for parts, the generated joints).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from maskdit.data.motion import (
    forward_kinematics,
    inbetween_slerp,
    motion_errors,
    motion_windows,
    qangle,
    split_grids,
)
from maskdit.diffusion.tasks import complete, given_for, pixel_mask


def task_given(run: Any, task: str, options: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token-grid given mask of ``task`` on ``run``'s motion grid (seeded, so repeatable) and the same mask
    over values, ``(C, T, J)``."""
    grid = given_for(task, run.model, options or {}, torch.Generator().manual_seed(0), timed=True)
    return grid, pixel_mask(grid.reshape(1, -1), run.model)[0]


def baseline(task: str, grids: torch.Tensor, given: torch.Tensor, mean_pose: torch.Tensor | None = None
             ) -> torch.Tensor:
    """What a simple method puts where ``given`` (``(C, T, J)``) leaves ``grids`` open: slerp across gaps (and
    the nearest given pose at the ends) for frame tasks, ``mean_pose`` ``(C, 1, J)`` for parts."""
    if task == "parts":
        if mean_pose is None:
            raise ValueError("the parts baseline needs the training data's mean pose")
        return torch.where(given, grids, mean_pose.expand_as(grids))
    frames = given.all(0).all(-1)
    return inbetween_slerp(grids, frames)


def part_errors(pred: torch.Tensor, truth: torch.Tensor, joints: torch.Tensor) -> dict[str, float]:
    """Rotation (degrees) and position (cm) errors of the generated joint columns ``joints`` (bool ``(J,)``)
    over every frame; a generated root position column counts in the position error only."""
    _, rp = split_grids(pred)
    _, rt = split_grids(truth)
    rot_cols = joints[1:]
    angle = torch.rad2deg(qangle(rp[..., rot_cols, :], rt[..., rot_cols, :])).mean() if rot_cols.any() else \
        torch.tensor(0.0)
    dist = (forward_kinematics(pred) - forward_kinematics(truth)).norm(dim=-1).mean()
    return {"rotation_deg": float(angle), "position_cm": float(dist * 100)}


def mean_motion(samples: list[torch.Tensor]) -> torch.Tensor:
    """The average of motion grids ``(N, 4, T, J)``: root positions averaged, each rotation the normalised mean
    of its quaternions turned into the first sample's hemisphere (a close estimate of the mean rotation when
    the samples agree roughly, as samples of one condition do)."""
    first = samples[0]
    total = torch.zeros_like(first)
    for s in samples:
        flip = ((s[:, :, :, 1:] * first[:, :, :, 1:]).sum(1, keepdim=True) < 0)
        s = s.clone()
        s[:, :, :, 1:] = torch.where(flip, -s[:, :, :, 1:], s[:, :, :, 1:])
        total += s
    return total / len(samples)


@torch.no_grad()
def score_task(run: Any, grids: torch.Tensor, task: str, options: dict[str, Any] | None = None,
               mean_pose: torch.Tensor | None = None, draws: int = 1, **sampling: Any) -> dict[str, Any]:
    """The model's and the baseline's errors on ``task`` for stored grids ``(N, 4, T, J)``; ``sampling`` goes to
    :func:`~maskdit.diffusion.tasks.complete` (``batch_size``, ``sampler``, ``steps``, ``seed``...). With
    ``draws`` > 1 the model's answer is the mean of that many samples (seeds ``seed``, ``seed + 1``...), an
    estimate of the conditional mean, which a per-joint error rewards over any single sample."""
    grid, given = task_given(run, task, options)
    seed = sampling.pop("seed", 0)
    out = mean_motion([complete(run, grids, grid, seed=seed + k, **sampling) for k in range(draws)])
    base = baseline(task, grids, given, mean_pose)
    if task == "parts":
        joints = ~given.all(0).all(0)
        model, simple = part_errors(out, grids, joints), part_errors(base, grids, joints)
    else:
        frames = ~given.all(0).all(-1)
        model, simple = motion_errors(out, grids, frames), motion_errors(base, grids, frames)
    return {"task": task, "given": float(given.float().mean()), "model": model, "baseline": simple,
            "samples": out}


def training_eval(model: torch.nn.Module, objective: Any, dataset: Any, cfg: Any) -> dict[str, Any]:
    """What ``eval_every`` logs for a motion run: in-betweening (the inbetween task's default, a quarter of the
    frames given at each end) on ``cfg.eval_num`` held-out windows, the slerp baseline's errors beside it;
    skipped for a model trained without that task."""
    if "inbetween" not in cfg.task.names:
        return {"num": 0, "skipped": "in-betweening is scored for runs trained with task.names containing inbetween"}
    grids = motion_windows("test", cfg.data.frames, mirrored=False)[0]
    grids = grids[torch.linspace(0, len(grids) - 1, min(cfg.eval_num, len(grids))).round().long().unique()]
    run = SimpleNamespace(model=model, objective=objective, codec=dataset.codec)
    s = cfg.sample
    row = score_task(run, grids, "inbetween", sampler=s.sampler, steps=s.steps, seed=cfg.seed)
    return {"num": len(grids), "inbetween_rotation_deg": row["model"]["rotation_deg"],
            "inbetween_position_cm": row["model"]["position_cm"],
            "slerp_rotation_deg": row["baseline"]["rotation_deg"], "slerp_position_cm": row["baseline"]["position_cm"]}
