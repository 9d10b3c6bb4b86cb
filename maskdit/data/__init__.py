"""Datasets: embedded scikit-learn digits, ``.npz`` files and image folders.

Every loader returns an :class:`ImageDataset` holding the whole set in memory as ``uint8``
``(N, C, H, W)``; :meth:`ImageDataset.batch` turns a batch into model space ``[-1, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.errors import ConfigError, DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageDataset:
    """Images ``uint8 (N, C, H, W)``, optional labels ``int64 (N,)`` and the number of classes."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DataError(f"dataset {self.name} holds no images: point data.path at a non-empty dataset")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(
                f"dataset {self.name} has {len(self.labels)} labels for {len(self.images)} images: "
                "give exactly one label per image"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images at ``idx`` as floats in ``[-1, 1]`` and their labels (``None`` when unlabelled)."""
        x = from_uint8(self.images[idx])
        return x, (self.labels[idx] if self.labels is not None else None)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` 0-255 -> model space ``[-1, 1]`` (float32); the inverse of :func:`to_uint8`."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model space ``[-1, 1]`` -> ``uint8`` 0-255 (clipped, rounded)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0-16 scaled to 0-255), 10 classes."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageDataset(
        torch.from_numpy(images), torch.from_numpy(d.target.astype(np.int64)), 10, "digits",
        [str(i) for i in range(10)],
    )


def load_npz(path: str | Path) -> ImageDataset:
    """``.npz`` with ``images`` uint8 ``N x H x W`` or ``N x H x W x C`` and optional integer ``labels``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist: check data.path")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile / numpy raise several types for a damaged file
        raise DataError(f"cannot read {path} as .npz ({e}): save it with numpy.savez") from e
    if "images" not in arrays:
        raise DataError(f"{path} has no 'images' array (found: {', '.join(arrays) or 'nothing'})")
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: 'images' must be uint8 N x H x W or N x H x W x C, got {images.dtype} {images.shape}"
        )
    if images.ndim == 3:
        images = images[..., None]
    labels = arrays.get("labels")
    num_classes = 0
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise DataError(f"{path}: {len(labels)} labels for {len(images)} images; give one label per image")
        if len(labels) and labels.min() < 0:
            raise DataError(f"{path}: labels must be non-negative, found {labels.min()}")
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        torch.from_numpy(labels.astype(np.int64)) if labels is not None else None,
        num_classes, path.stem, [str(i) for i in range(num_classes)],
    )


def load_folder(path: str | Path) -> ImageDataset:
    """An image folder with one subfolder per class; all images must share one size."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: check data.path")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {root} has no class subfolders: put images in {root}/<class>/")
    files = [
        (f, label) for label, name in enumerate(classes)
        for f in sorted((root / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"image folder {root} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    pictures = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                pictures.append(im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"cannot read image {f}: {e}; remove or replace the file") from e
    first = pictures[0].size
    for (f, _), im in zip(files, pictures):
        if im.size != first:
            raise DataError(
                f"images in {root} have mixed sizes: {files[0][0]} is {first[0]}x{first[1]} but {f} is "
                f"{im.size[0]}x{im.size[1]}; resize them to one size"
            )
    color = any(im.mode == "RGB" for im in pictures)
    arrays = [np.asarray(im.convert("RGB") if color else im) for im in pictures]
    images = np.stack(arrays)
    images = images if color else images[..., None]
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), labels, len(classes),
        root.name, classes,
    )


def load_dataset(name: str = "digits", path: str | None = None, split: str = "train", num: int = 2000,
                 frames: int = 8, size: int = 16, seed: int = 0) -> Any:
    """Load a dataset by kind: ``digits`` (embedded), ``npz`` or ``folder`` (both need ``path``), or an
    embedded video set (``bouncing-digits``, ``bouncing-balls``: ``num`` clips of ``frames`` frames of
    ``size`` x ``size`` from ``split``)."""
    if name in ("bouncing-digits", "bouncing-balls"):
        from maskdit.data.video import load_video_dataset

        return load_video_dataset(name, split, num, seed, frames=frames, size=size)
    if name == "digits":
        return load_digits()
    if name in ("npz", "folder"):
        if not path:
            raise ConfigError(f"data.name={name} needs data.path=PATH")
        return load_npz(path) if name == "npz" else load_folder(path)
    raise ConfigError(f"data.name must be one of digits, npz, folder, bouncing-digits, bouncing-balls; got {name!r}")


def dataset_from_config(cfg: Any, split: str = "train") -> Any:
    """The dataset a :class:`maskdit.config.DataConfig` describes."""
    return load_dataset(cfg.name, cfg.path, split, cfg.num, cfg.frames, cfg.size)
