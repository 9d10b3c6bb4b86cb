"""Sampling far beyond the training size by tiles with structure guidance (after ASGDiffusion and its forerunners,
SDEdit's re-noising and MultiDiffusion's averaged tiles), for any model: no rotary positions needed.

1. Sample at the training size (the structure), and upsample it to the target size.
2. Re-noise the upsampled image to time ``strength`` (flow: ``x = (1 - t) up + t eps``).
3. Integrate from there to 0 at the target size, where every velocity is the mean of the model's velocities on
   overlapping tiles of the training size (each tile a plain call at a size the model knows), pulled towards the
   upsampled structure: ``v = v_tiles + w(t) (v_up - v_tiles)`` with ``v_up = (x - up) / t`` (the velocity that
   leads to the structure) and ``w(t) = structure * t / strength``, strong at the start and gone at the end, as
   ASG's structure guidance fades. ``structure=0`` is plain tiled re-noising (whose tiles may each grow a whole
   object); ``structure=1`` starts fully held to the structure and lets the tiles add detail as it fades.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from maskdit.diffusion.guidance import ModelFn
from maskdit.errors import ConfigError


def tile_starts(length: int, tile: int, overlap: float, step: int) -> list[int]:
    """Where tiles of ``tile`` cells start along an axis of ``length`` so they cover it, each ``tile * (1 -
    overlap)`` (rounded down to a multiple of ``step``, at least ``step``) after the last, the last flush with
    the end."""
    if tile >= length:
        return [0]
    stride = max(step, int(tile * (1 - overlap)) // step * step)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tiled(fn: ModelFn, tile: Sequence[int], overlap: float, step: Sequence[int]) -> ModelFn:
    """``fn(x, t)`` on inputs larger than ``tile``: the mean of ``fn`` over overlapping tiles (MultiDiffusion)."""
    def run(x: torch.Tensor, t: float) -> torch.Tensor:
        total, count = torch.zeros_like(x), torch.zeros_like(x[:1, :1])
        axes = [tile_starts(n, s, overlap, p) for n, s, p in zip(x.shape[2:], tile, step)]
        for corner in itertools.product(*axes):
            where = (slice(None), slice(None), *[slice(c, c + s) for c, s in zip(corner, tile)])
            total[where] += fn(x[where], t)
            count[where] += 1
        return total / count
    return run


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, C, *S)`` interpolated to ``size`` (linear along every axis)."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def refine(fn: ModelFn, up: torch.Tensor, noise: torch.Tensor, steps: int, strength: float, structure: float,
           tile: Sequence[int], overlap: float, step: Sequence[int]) -> torch.Tensor:
    """Heun from ``strength`` to 0 at ``up``'s size with tiled, structure-guided velocities (module docstring)."""
    tiles = tiled(fn, tile, overlap, step)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:  # w(t) ((x - up) / t - v), without dividing by t
        v = tiles(x, t)
        return v + structure / strength * ((x - up) - t * v) if structure else v

    x = (1 - strength) * up + strength * noise
    ts = torch.linspace(strength, 0.0, steps + 1).tolist()
    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        v = velocity(x, ts[i])
        x = x + dt * 0.5 * (v + velocity(x + dt * v, ts[i + 1]))
    return x


def generate_large(model: torch.nn.Module, objective: Any, num: int, labels: torch.Tensor | None,
                   size: Sequence[int], *, strength: float = 0.5, structure: float = 1.0, overlap: float = 0.5,
                   steps: int = 25, guidance_scale: float = 1.0, seed: int = 0, batch_size: int | None = None,
                   progress: bool = False, **options: Any) -> torch.Tensor:
    """``num`` samples ``(num, C, *size)`` of a flow model at a ``size`` beyond its training one: the structure at the
    training size (:func:`~maskdit.diffusion.samplers.generate` with ``options``), then :func:`refine` in batches.
    The refinement takes ``ceil(steps * strength)`` Heun steps of one call per tile each."""
    from maskdit.diffusion.guidance import guided
    from maskdit.diffusion.samplers import BATCH_SIZE, batches, generate, padded

    if objective.name != "flow":
        raise ConfigError(f"tiled sampling re-noises and integrates a flow; objective.name={objective.name} is not "
                          "one: sample at the training size, or train with objective.name=flow")
    if not 0 < strength <= 1 or not 0 <= structure <= 1 or not 0 <= overlap < 1:
        raise ConfigError(f"tiled sampling takes a strength in (0, 1], a structure weight in [0, 1] and an overlap in "
                          f"[0, 1); got {strength}, {structure}, {overlap}")
    tile = tuple(model.input_size)
    if len(size) != len(tile) or any(s < t or s % p for s, t, p in zip(size, tile, model.patch_size)):
        raise ConfigError(f"tiled sampling makes sizes at least the training size {'x'.join(map(str, tile))} along "
                          f"every axis, in multiples of the patch {'x'.join(map(str, model.patch_size))}; got "
                          f"{'x'.join(map(str, size))}")
    batch_size = batch_size or BATCH_SIZE
    low = generate(model, objective, num, labels, steps=steps, guidance_scale=guidance_scale, seed=seed,
                   batch_size=batch_size, progress=progress, **options)
    device = next(model.parameters()).device
    up = upsample(low, size)
    noise = torch.randn((num, model.in_channels, *size), generator=torch.Generator().manual_seed(seed + 1))
    out = []
    for first in batches(num, batch_size):
        part = slice(first, first + batch_size)
        kept = len(up[part])
        y = padded(labels[part], batch_size).to(device) if labels is not None else None
        fn = guided(model, y, guidance_scale, options.get("guidance_interval"), guidance=options.get("guidance", "cfg"),
                    channels=options.get("guidance_channels"), power=options.get("guidance_power"))
        x = refine(fn, padded(up[part], batch_size).to(device), padded(noise[part], batch_size).to(device),
                   max(1, math.ceil(steps * strength)), strength, structure, tile, overlap, model.patch_size)
        out.append(x[:kept].float().cpu())
    return torch.cat(out)
