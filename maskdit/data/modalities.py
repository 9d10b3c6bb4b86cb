"""How a modality beyond images, video and text reaches files: the ``.npz`` array that holds its examples,
how ``maskdit sample`` writes samples and task results, and how a person looks at them.

A dataset names its modality with the ``modality`` fact of its :data:`~maskdit.data.datasets.DATASETS`
entry; the CLI and the report read :data:`MODALITIES` instead of branching on data set names. Images, video
and text keep their own writers in :mod:`maskdit.data.media`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from maskdit.data.datasets import modality_name, read_npz
from maskdit.errors import DataError
from maskdit.registry import Registry


class Modality(Protocol):
    key: str  #: the ``.npz`` array holding examples, channels last: ``N x *S x C``
    suffixes: tuple[str, ...]  #: what ``sample --out`` may write, the first the plain array file

    def preview(self, values: torch.Tensor) -> bytes:
        """An image (PNG or animated GIF bytes) of stored values ``(N, C, *S)`` for the report."""

    def load(self, path: str | Path, shape: tuple[int, ...], flag: str = "--context") -> torch.Tensor:
        """Stored values ``(N, C, *S)`` from an ``.npz`` holding :attr:`key`, checked against ``shape``."""

    def save(self, path: str | Path, values: torch.Tensor, truth: torch.Tensor | None = None,
             given: torch.Tensor | None = None) -> Path:
        """Write stored values ``(N, C, *S)``; a task's result also gets the inputs ``truth`` and the per-value
        given mask ``given`` (bool, shaped like ``values``) for a side-by-side view."""


#: modality name -> its :class:`Modality` (a dataset's ``modality`` fact names one).
MODALITIES: Registry[Modality] = Registry("modality")


def modality_of(dataset_name: str) -> Modality | None:
    """The modality of data set ``dataset_name``, or None for images, video, text and unknown (imported) sets."""
    name = modality_name(dataset_name)
    return None if name is None else MODALITIES.get(name)


def save_array(path: str | Path, key: str, values: torch.Tensor) -> Path:
    """``values (N, C, *S)`` as ``key``: float32 ``N x *S x C`` in an ``.npz``, written atomically."""
    from maskdit.files import atomic_file

    with atomic_file(path, "--out") as tmp:
        np.savez(tmp, **{key: np.ascontiguousarray(np.moveaxis(values.float().numpy(), 1, -1))})
    return Path(path)


def load_array(path: str | Path, key: str, shape: tuple[int, ...], flag: str = "--context") -> torch.Tensor:
    """The float array ``key`` (``N x *S x C``) of the ``.npz`` at ``path`` as ``(N, C, *S)`` float32, checked
    against ``shape`` = ``(C, *S)``; every problem is one line naming ``flag``."""
    path = Path(path)
    fix = "write one with maskdit data or maskdit sample"
    arrays = read_npz(path, flag, fix)
    if key not in arrays:
        raise DataError(f"{flag} {path} holds no '{key}' array (found: {', '.join(arrays) or 'nothing'}): {fix}")
    array = arrays[key]
    want = (*shape[1:], shape[0])
    if array.dtype.kind != "f" or array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != want or not len(array):
        raise DataError(f"{flag} {path}: '{key}' must be floats N x {' x '.join(map(str, want))} with N >= 1 for "
                        f"this model, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{flag} {path}: '{key}' holds NaN or infinite values: fix the file")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array.astype(np.float32), -1, 1)))
