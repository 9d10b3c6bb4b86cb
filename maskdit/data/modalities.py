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

from maskdit.data.datasets import DATASETS, npz_reason
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
    if dataset_name not in DATASETS:
        return None
    name = DATASETS.entry(dataset_name).facts.get("modality")
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
    if not path.is_file():
        raise DataError(f"{flag} {path} " + ("is a directory: give an .npz file" if path.is_dir() else
                                            "does not exist"))
    try:
        with np.load(path, allow_pickle=False) as f:
            if key not in f.files:
                raise DataError(f"{flag} {path} holds no '{key}' array (found: {', '.join(f.files) or 'nothing'}): "
                                f"write one with maskdit data or maskdit sample")
            array = f[key]
    except DataError:
        raise
    except Exception as e:  # zipfile / numpy raise several types for a damaged file
        raise DataError(f"cannot read {flag} {path} as .npz ({npz_reason(e)}): save it with numpy.savez") from e
    want = (*shape[1:], shape[0])
    if array.dtype.kind != "f" or array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != want or not len(array):
        raise DataError(f"{flag} {path}: '{key}' must be floats N x {' x '.join(map(str, want))} with N >= 1 for "
                        f"this model, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{flag} {path}: '{key}' holds NaN or infinite values: fix the file")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array.astype(np.float32), -1, 1)))
