"""Writing samples people can look at (PNG grids) and programs can read (``.npz``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from maskdit.errors import ConfigError


def image_grid(images: torch.Tensor, labels: torch.Tensor | None = None, pad: int = 1,
               min_size: int = 32) -> np.ndarray:
    """``uint8 (N, C, H, W)`` -> one ``uint8 (rows*H', cols*W', C)`` picture.

    With labels, row ``i`` holds the samples of the ``i``-th class present (in label order); without,
    the grid is as square as possible. Small images are enlarged by an integer factor (nearest
    neighbour) to at least ``min_size`` pixels so an 8x8 digit is visible.
    """
    n, c, h, w = images.shape
    scale = max(1, -(-min_size // max(h, w)))
    imgs = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()
    if labels is not None:
        rows = [np.flatnonzero(labels.numpy() == k) for k in np.unique(labels.numpy())]
    else:
        cols = int(np.ceil(np.sqrt(n)))
        rows = [np.arange(i, min(i + cols, n)) for i in range(0, n, cols)]
    cols = max(len(r) for r in rows)
    hs, ws = h * scale + pad, w * scale + pad
    canvas = np.full((len(rows) * hs + pad, cols * ws + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, k in enumerate(row):
            canvas[pad + i * hs : pad + i * hs + h * scale, pad + j * ws : pad + j * ws + w * scale] = imgs[k]
    return canvas


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def save_samples(path: str | Path, images: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """Write ``uint8 (N, C, H, W)`` samples: ``.png`` as a grid (a row per class), ``.npz`` as
    ``images`` uint8 ``N x H x W x C`` plus ``labels`` int64 when given."""
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npz"):
        raise ConfigError(f"--out {path}: the file name must end in .png (a grid) or .npz (arrays)")
    tmp = _atomic_target(path)
    if suffix == ".png":
        grid = image_grid(images, labels)
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(tmp, format="PNG")
    else:
        arrays = {"images": images.permute(0, 2, 3, 1).numpy().astype(np.uint8)}
        if labels is not None:
            arrays["labels"] = labels.numpy().astype(np.int64)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    tmp.replace(path)
    return path
