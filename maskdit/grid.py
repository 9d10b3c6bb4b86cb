"""Token grids of rank 1, 2 and 3.

A *grid* is a tensor ``(B, C, *spatial)`` with one to three spatial axes: a sequence ``L``, an image
``H x W`` or a volume / video ``T x H x W``. :func:`patchify` cuts it into non-overlapping patches (one
patch size per axis) and flattens each into a token of ``C * prod(patch)`` values, in row-major order
over the patch grid. :func:`unpatchify` is its exact inverse. Everything downstream of the patchifier
sees tokens ``(B, N, P)`` plus the fixed sin-cos positions from :func:`sincos_pos_embed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from maskdit.errors import ConfigError


def as_patch_size(patch_size: int | Sequence[int], rank: int) -> tuple[int, ...]:
    """Broadcast an int patch size to ``rank`` axes, or check a per-axis one."""
    if isinstance(patch_size, int):
        patch = (patch_size,) * rank
    else:
        patch = tuple(int(p) for p in patch_size)
    if len(patch) != rank or any(p < 1 for p in patch):
        raise ConfigError(
            f"patch_size {patch_size!r} does not fit a rank-{rank} grid: give one positive int or {rank} of them"
        )
    return patch


def parse_size(text: object) -> tuple[int, ...] | None:
    """``"6x8"`` (or an int, or a list of ints) as pixels per axis; ``None`` when it is not positive integers."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return (text,) if text > 0 else None
    parts = [str(p) for p in text] if isinstance(text, (list, tuple)) else str(text).lower().split("x")
    if not parts or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def region_indices(grid: Sequence[int], canvas: Sequence[int]) -> torch.Tensor:
    """The row-major indices ``(prod(grid),)`` in a token grid ``canvas`` of the tokens of its leading ``grid``
    corner (a smaller grid placed at the canvas's origin), in the smaller grid's own row-major order."""
    if len(grid) != len(canvas) or any(g > c for g, c in zip(grid, canvas)):
        raise ConfigError(f"grid {tuple(grid)} does not fit inside {tuple(canvas)}")
    ids = torch.arange(math.prod(canvas)).reshape(*canvas)
    return ids[tuple(slice(0, g) for g in grid)].reshape(-1)


def token_grid_shape(spatial: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """Number of patches along each axis; refuses sizes the patch does not divide."""
    if len(spatial) != len(patch):
        raise ConfigError(f"grid of rank {len(spatial)} cannot take a rank-{len(patch)} patch size {tuple(patch)}")
    for size, p in zip(spatial, patch):
        if size % p:
            raise ConfigError(
                f"input size {tuple(spatial)} is not divisible by patch size {tuple(patch)}: "
                "pick a patch size that divides every axis"
            )
    return tuple(size // p for size, p in zip(spatial, patch))


def patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, N, C * prod(patch))``.

    Token ``n`` is patch ``n`` of the patch grid in row-major order; inside a token the values are ordered
    (patch offsets..., channel), channel fastest.
    """
    b, c, *spatial = x.shape
    rank = len(spatial)
    grid = token_grid_shape(spatial, patch)
    # (B, C, n1, p1, n2, p2, ...) -> (B, n1, n2, ..., p1, p2, ..., C)
    split = [b, c] + [v for pair in zip(grid, patch) for v in pair]
    x = x.reshape(split)
    order = [0] + [2 + 2 * i for i in range(rank)] + [3 + 2 * i for i in range(rank)] + [1]
    x = x.permute(order)
    return x.reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(tokens: torch.Tensor, patch: Sequence[int], spatial: Sequence[int], channels: int) -> torch.Tensor:
    """Exact inverse of :func:`patchify`: ``(B, N, C * prod(patch))`` -> ``(B, C, *spatial)``."""
    rank = len(spatial)
    grid = token_grid_shape(spatial, patch)
    b = tokens.shape[0]
    x = tokens.reshape([b, *grid, *patch, channels])
    # (B, n1.., p1.., C) -> (B, C, n1, p1, n2, p2, ...)
    order = [0, 1 + 2 * rank] + [v for i in range(rank) for v in (1 + i, 1 + rank + i)]
    x = x.permute(order)
    return x.reshape(b, channels, *spatial)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding ``(len(positions), dim)`` of 1-D positions; ``dim`` must be even."""
    if dim % 2:
        raise ConfigError(f"a sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_time(t: torch.Tensor, size: int, scale: float = 1000.0, offset: float = 0.0,
               freq_shift: float = 0.0) -> torch.Tensor:
    """DiT's timestep features ``(B, size)``: cosines, then sines, of ``offset + scale * t`` at frequencies
    ``10000^(-i / (size / 2 - freq_shift))``. ``offset + scale * t`` is formed in float64 and then rounded to
    float32, so ``t = k / 1000`` given in float64 embeds the integer ``k`` exactly."""
    half = size // 2
    exponent = -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(exponent / (half - freq_shift))
    value = (offset + scale * t.to(torch.float64)).float()
    angles = value[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def axis_widths(dim: int, rank: int) -> list[int]:
    """Split ``dim`` channels over ``rank`` axes, each share even; the first axis takes the remainder."""
    if dim % 2:
        raise ConfigError(f"hidden size {dim} must be even for sin-cos positions")
    share = (dim // rank) // 2 * 2
    widths = [share] * rank
    widths[0] += dim - share * rank
    if min(widths) < 2:
        raise ConfigError(f"hidden size {dim} is too small for a rank-{rank} positional embedding")
    return widths


def sincos_pos_embed(dim: int, grid: Sequence[int], reverse_axes: bool = False) -> torch.Tensor:
    """Fixed positions ``(prod(grid), dim)``: one sin-cos block per axis, concatenated.

    Row ``n`` belongs to token ``n`` in :func:`patchify`'s order. The blocks follow the axes in order (for
    a video grid ``(T, H, W)`` the first block encodes the frame index, so it is also the temporal
    embedding), or with ``reverse_axes`` the last axis first: DiT's and diffusers' 2-D table, whose first
    half encodes the column.
    """
    coords = [c.reshape(-1) for c in torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")]
    if reverse_axes:
        coords = coords[::-1]
    parts = [sincos_1d(w, c) for w, c in zip(axis_widths(dim, len(grid)), coords)]
    return torch.cat(parts, dim=1).float()


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Grids ``(B, C, *S)`` at another spatial ``size`` (area-averaged when smaller, so each pixel is the mean of
    what it covers; the data's own values when the size is theirs)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=tuple(int(s) for s in size), mode="area")
