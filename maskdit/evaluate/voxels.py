"""Scoring generated 3-D shapes: 1-nearest-neighbour accuracy (1-NNA) with the Chamfer distance.

Every shape becomes a point cloud (its surface voxels' centres, ``points`` of them drawn with a fixed seed,
scaled to the unit cube). 1-NNA pools the generated and the reference clouds, classifies each by its
nearest other cloud and reports the share classified correctly: 50% when the two sets cannot be told apart,
100% when every generated shape is nearer other generated shapes than any real one (collapse or junk).
Lower is better, 50% is ideal (PointFlow, Yang et al. 2019; DiT-3D and FastDiT-3D report it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from maskdit.data.voxels import NUM_OBJECTS, TEST_FROM, load_objects, surface_points
from maskdit.errors import ConfigError


def point_clouds(grids: np.ndarray, points: int = 256, seed: int = 0) -> torch.Tensor:
    """``(N, points, 3)`` clouds in ``[0, 1]^3`` of occupancy grids ``(N, 1, S, S, S)``; an empty grid gives a
    cloud at the centre (as far from any shape as a degenerate sample should be)."""
    gen = np.random.default_rng(seed)
    size = grids.shape[-1]
    out = np.full((len(grids), points, 3), 0.5, dtype=np.float32)
    for i, grid in enumerate(grids):
        pts = surface_points(grid[0]) / size
        if len(pts):
            out[i] = pts[gen.choice(len(pts), points, replace=len(pts) < points)]
    return torch.from_numpy(out)


def chamfer_matrix(a: torch.Tensor, b: torch.Tensor, block: int = 16) -> torch.Tensor:
    """Chamfer distances ``(len(a), len(b))`` between clouds ``(N, P, 3)``: the mean squared distance from
    each point to the other cloud's nearest, both ways, summed."""
    out = torch.empty(len(a), len(b))
    for i in range(0, len(a), block):
        x = a[i : i + block]
        for j in range(0, len(b), block):
            y = b[j : j + block]
            d = torch.cdist(x[:, None].expand(-1, len(y), -1, -1).reshape(-1, *x.shape[1:]),
                            y[None].expand(len(x), -1, -1, -1).reshape(-1, *y.shape[1:])).square()
            cd = d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)
            out[i : i + len(x), j : j + len(y)] = cd.reshape(len(x), len(y))
    return out


def one_nna(generated: np.ndarray, reference: np.ndarray, points: int = 256) -> dict[str, float]:
    """1-NNA (%) of generated against reference occupancy grids (``(N, 1, S, S, S)`` uint8 or bool) with the
    Chamfer distance, plus the minimum-matching distance (MMD: each reference shape's nearest generated one,
    averaged) and coverage (the share of reference shapes that are some generated shape's nearest)."""
    if len(generated) < 2 or len(reference) < 2:
        raise ConfigError(f"1-NNA needs at least 2 generated and 2 reference shapes, got {len(generated)} and "
                          f"{len(reference)}")
    g, r = point_clouds(generated, points, 0), point_clouds(reference, points, 1)
    clouds = torch.cat([g, r])
    d = chamfer_matrix(clouds, clouds)
    d.fill_diagonal_(float("inf"))
    label = torch.cat([torch.ones(len(g)), torch.zeros(len(r))])
    nearest = d.argmin(1)
    accuracy = float((label[nearest] == label).float().mean()) * 100
    gr = d[: len(g), len(g):]  # generated x reference
    return {"1nna_cd": accuracy, "mmd_cd": float(gr.min(0).values.mean()),
            "coverage_cd": float(gr.argmin(1).unique().numel() / len(r)) * 100}


def training_eval(model: torch.nn.Module, objective: Any, dataset: Any, cfg: Any) -> dict[str, Any]:
    """What ``eval_every`` logs for a voxel run: 1-NNA / MMD / coverage (Chamfer) of ``cfg.eval_num`` samples
    against as many test-split shapes."""
    from maskdit.diffusion.samplers import default_sampler, generate

    num = min(cfg.eval_num, NUM_OBJECTS - TEST_FROM)
    reference = load_objects("test", cfg.data.size, num)
    s = cfg.sample
    x = generate(model, objective, num, None, sampler=s.sampler or default_sampler(objective), steps=s.steps,
                 seed=cfg.seed)
    return {"num": num, **one_nna(dataset.codec.decode(x.cpu()).numpy(), reference)}
