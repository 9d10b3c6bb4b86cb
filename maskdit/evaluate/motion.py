"""Scoring motion tasks against the baselines a person would try first.

In-betweening is compared with spherical interpolation between the last given frame before the gap and the
first after it; prediction with holding the last given pose; body-part completion with the training data's
mean pose. Errors are the mean geodesic joint-rotation error (degrees) and the mean joint-position error
(centimetres, after forward kinematics) over the generated frames (or, for parts, the generated joints).

An audio-driven model (``model.condition=audio``, trained on ``data.name=footsteps``) is also scored on following
the sound: motion generated from the footstep sounds of held-out windows alone, its steps matched to the steps
that made the sounds (precision, recall and F1 within two frames).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch

from maskdit.data.footsteps import foot_steps, footstep_sounds, step_scores
from maskdit.data.motion import (
    forward_kinematics,
    inbetween_slerp,
    motion_errors,
    motion_windows,
    qangle,
    split_grids,
)
from maskdit.diffusion.guidance import guided
from maskdit.diffusion.objectives import hold_given
from maskdit.diffusion.samplers import generate
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
               mean_pose: torch.Tensor | None = None, draws: int = 1, labels: torch.Tensor | None = None,
               **sampling: Any) -> dict[str, Any]:
    """The model's and the baseline's errors on ``task`` for stored grids ``(N, 4, T, J)``; ``sampling`` goes to
    :func:`~maskdit.diffusion.tasks.complete` (``batch_size``, ``sampler``, ``steps``, ``seed``...). With
    ``draws`` > 1 the model's answer is the mean of that many samples (seeds ``seed``, ``seed + 1``...), an
    estimate of the conditional mean, which a per-joint error rewards over any single sample. ``labels``: the
    condition values of ``grids`` (an audio-driven model's sounds: :func:`sound_values`)."""
    grid, given = task_given(run, task, options)
    seed = sampling.pop("seed", 0)
    out = mean_motion([complete(run, grids, grid, labels, seed=seed + k, **sampling) for k in range(draws)])
    base = baseline(task, grids, given, mean_pose)
    if task == "parts":
        joints = ~given.all(0).all(0)
        model, simple = part_errors(out, grids, joints), part_errors(base, grids, joints)
    else:
        frames = ~given.all(0).all(-1)
        model, simple = motion_errors(out, grids, frames), motion_errors(base, grids, frames)
    return {"task": task, "given": float(given.float().mean()), "model": model, "baseline": simple,
            "samples": out}


@torch.no_grad()
def refine_slerp(run: Any, grids: torch.Tensor, strength: float, seed: int = 0, steps: int = 20) -> torch.Tensor:
    """In-betweening that starts from the slerp fill instead of noise (SDEdit): the fill is noised to time
    ``strength`` and Euler-integrated to 0 in ``ceil(steps * strength)`` steps, the given frames held. Strength 1 is
    the model's own in-betweening; towards 0, slerp's. (A flow run only.)"""
    if run.objective.name != "flow" or not 0 < strength <= 1:
        raise ValueError("refining the slerp fill needs a flow run and a strength in (0, 1]")
    model = run.model
    grid, given = task_given(run, "inbetween")
    flat = grid.reshape(1, -1).expand(len(grids), -1)
    context = run.codec.encode(grids)
    fn = guided(model, None, 1.0, None, given=flat)

    def hold(x: torch.Tensor) -> torch.Tensor:
        return hold_given(x, context, flat, model.patch_size)

    fill = run.codec.encode(baseline("inbetween", grids, given))
    noise = torch.randn(fill.shape, generator=torch.Generator().manual_seed(seed))
    x = hold((1 - strength) * fill + strength * noise)
    ts = torch.linspace(strength, 0.0, math.ceil(steps * strength) + 1).tolist()
    for a, b in zip(ts, ts[1:]):
        x = hold(x + (b - a) * fn(x, a))
    return torch.where(given, grids, run.codec.decode(x))


def sound_values(model: torch.nn.Module, grids: torch.Tensor) -> torch.Tensor | None:
    """An audio-driven model's condition values for motion grids ``(N, 4, T, J)``: the footstep sounds they make;
    ``None`` for any other model."""
    conditioner = getattr(model, "conditioner", None)
    return conditioner.given(footstep_sounds(grids)) if getattr(conditioner, "reads", None) == "audio" else None


@torch.no_grad()
def follow_steps(run: Any, grids: torch.Tensor, guidance_scale: float = 1.0, values: torch.Tensor | None = None,
                 **sampling: Any) -> dict[str, Any]:
    """How well an audio-driven model steps to the sound: motion generated from nothing but the footstep sounds of
    ``grids`` ``(N, 4, T, J)``, scored by :func:`~maskdit.data.footsteps.step_scores` against the steps that made
    the sounds. ``values``: the grids' :func:`sound_values`, when already computed."""
    values = sound_values(run.model, grids) if values is None else values
    if values is None:
        raise ValueError("following steps needs an audio-driven model (model.condition=audio)")
    out = run.codec.decode(generate(run.model, run.objective, len(grids), values, guidance_scale=guidance_scale,
                                    **sampling))
    return {**step_scores(out, foot_steps(grids)), "samples": out}


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
    sounds = sound_values(model, grids)
    row = score_task(run, grids, "inbetween", labels=sounds, sampler=s.sampler, steps=s.steps, seed=cfg.seed)
    model_errors, slerp_errors = row["model"], row["baseline"]
    scores = {"num": len(grids), "inbetween_rotation_deg": model_errors["rotation_deg"],
              "inbetween_position_cm": model_errors["position_cm"], "slerp_rotation_deg": slerp_errors["rotation_deg"],
              "slerp_position_cm": slerp_errors["position_cm"]}
    if sounds is not None:
        steps = follow_steps(run, grids, s.guidance_scale, sounds, sampler=s.sampler, steps=s.steps, seed=cfg.seed)
        scores.update({"step_f1": steps["f1"], "step_precision": steps["precision"], "step_recall": steps["recall"]})
    return scores
