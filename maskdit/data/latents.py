"""VAE latents: encode an image dataset once with diffusers' ``AutoencoderKL``, train on the stored latents,
decode samples through the same VAE.

    maskdit latents IMAGES --vae DIR --out STORE       # IMAGES: an .npz, an npy directory or an image folder
    maskdit train data.name=latents data.path=STORE ...

A store is a directory: ``mean.npy`` and ``std.npy`` (float16 ``N x 2 x C x h x w``: the latent
distribution of every image [:, 0] and of its horizontal mirror [:, 1], already multiplied by the VAE's
scaling factor, e.g. SD-VAE's 0.18215), optional ``labels.npy``, and ``manifest.json`` naming the VAE
directory, its scaling factor and the image shape, written last (a store without it is incomplete).
Training reads the arrays memory-mapped (a batch reads only its rows, so the store need not fit in RAM)
and uses the latent means; ``data.flip=true`` takes the mirror's latents. The run's codec (``vae``)
decodes samples through the VAE for ``sample``, ``eval`` and ``report``. The VAE is always loaded from a
local directory: maskdit never downloads.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from maskdit.data.codec import CODECS, PIXELS
from maskdit.data.datasets import DATASETS, MAX_CLASSES, Dataset, check_labels, read_npy
from maskdit.errors import ConfigError, DataError
from maskdit.files import atomic_directory, check_parents, read_json, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "maskdit-latents"
#: What a damaged latent store's error line tells the user to do.
AGAIN = "encode the images again with maskdit latents IMAGES --vae DIR --out NEW_STORE"
SD_SCALING = 0.18215  #: Stable Diffusion's VAE scaling factor, used when a VAE's config names none


def load_vae(path: str | Path) -> Any:
    """diffusers' ``AutoencoderKL`` from a local directory (``save_pretrained`` layout), in eval mode."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ConfigError("VAE latents need diffusers: pip install 'maskdit[latents]'") from e
    root = Path(path)
    if not (root / "config.json").is_file():
        raise ConfigError(f"VAE {path} is not a local VAE directory (no config.json): maskdit never downloads; "
                          "save one with AutoencoderKL.save_pretrained(DIR), or fetch one elsewhere, e.g. "
                          "huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir DIR, and pass DIR")
    try:
        vae = AutoencoderKL.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise DataError(f"cannot load the VAE in {root}: {str(e).splitlines()[0]}") from e
    return vae.eval().requires_grad_(False)


def vae_scaling(vae: Any) -> float:
    return float(getattr(vae.config, "scaling_factor", None) or SD_SCALING)


def _to_vae_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Images ``[-1, 1]`` with 1 or 3 channels -> the VAE's input channels (gray repeated to RGB)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, *x.shape[2:])
    raise DataError(f"the VAE takes {channels}-channel images, the data has {x.shape[1]} channels")


@torch.no_grad()
def encode_images(dataset: Any, vae_dir: str | Path, out: str | Path, batch_size: int = 64,
                  device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Encode every image of ``dataset`` (uint8 ``images``) and its mirror into a new store ``out``; returns
    the manifest. ``out`` must not exist yet (nothing is ever overwritten); it appears complete or not at all:
    the store is written into a new hidden directory beside ``out`` and renamed once complete, and a failed
    write (a full disk, an interrupt) removes what it wrote."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} exists: latents go to a new directory (maskdit never overwrites files)")
    check_parents(out, "--out")
    vae = load_vae(vae_dir).to(device)
    scale = vae_scaling(vae)
    images = dataset.images
    n = len(images)
    probe = vae.encode(_to_vae_channels(PIXELS.encode(images[:1]).to(device), vae.config.in_channels)).latent_dist
    shape = (n, 2, *probe.mean.shape[1:])
    try:
        with atomic_directory(out) as tmp:
            manifest = _write_store(tmp, dataset, vae, vae_dir, scale, shape, batch_size, device, progress)
    except OSError as e:
        raise DataError(f"cannot write the latent store {out}: {e.strerror or e}; nothing was kept: free space "
                        "(or choose another --out) and run maskdit latents again") from None
    return manifest


def _write_store(tmp: Path, dataset: Any, vae: Any, vae_dir: str | Path, scale: float, shape: tuple[int, ...],
                 batch_size: int, device: str | torch.device, progress: bool) -> dict[str, Any]:
    """The store's files in ``tmp``: the arrays written in order with plain writes (a full disk fails the
    write, never a memory-mapped page later), the manifest last."""

    images, n = dataset.images, len(dataset.images)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": shape}
    with open(tmp / "mean.npy", "wb") as mean, open(tmp / "std.npy", "wb") as std:
        for f in (mean, std):
            np.lib.format.write_array_header_1_0(f, header)
        for start in tqdm(range(0, n, batch_size), desc="encoding", unit="batch", disable=not progress):
            x = _to_vae_channels(PIXELS.encode(images[start:start + batch_size]).to(device), vae.config.in_channels)
            dists = [vae.encode(pixels).latent_dist for pixels in (x, x.flip(-1))]  # the image, its mirror
            for f, part in ((mean, "mean"), (std, "std")):
                rows = torch.stack([getattr(d, part) * scale for d in dists], dim=1)  # (b, 2, C, h, w)
                f.write(rows.cpu().numpy().astype(np.float16).tobytes())
        for f in (mean, std):
            f.flush()
            os.fsync(f.fileno())
    if dataset.labels is not None:
        np.save(tmp / "labels.npy", dataset.labels.numpy())
    manifest = {"format": FORMAT, "version": 1, "vae": str(Path(vae_dir).resolve()),
                "scaling_factor": scale, "latent_shape": list(shape[2:]), "image_shape": list(images.shape[1:]),
                "num": n, "num_classes": dataset.num_classes if dataset.labels is not None else 0,
                "class_names": list(getattr(dataset, "class_names", [])), "source": dataset.name}
    write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _positive_ints(value: Any, length: int | None = None) -> bool:
    return isinstance(value, list) and (length is None or len(value) == length) and len(value) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)


#: The manifest's keys: what each must be (a test and its words for the error line).
MANIFEST_KEYS: dict[str, tuple[Any, str]] = {
    "format": (lambda v: v == FORMAT, f"'{FORMAT}'"),
    "vae": (lambda v: isinstance(v, str), "the VAE directory (a string)"),
    "scaling_factor": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       and v > 0, "a positive number"),
    "image_shape": (lambda v: _positive_ints(v, 3), "[C, H, W] of the encoded images"),
    "num": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "the number of latents (>= 1)"),
    "num_classes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a count >= 0"),
}


def read_manifest(root: Path) -> dict[str, Any]:
    """A latent store's ``manifest.json``, checked: a JSON object with every key of :data:`MANIFEST_KEYS`
    (and, when present, ``latent_shape`` a list of positive ints and ``class_names`` a list of strings)."""

    path = root / MANIFEST
    manifest = read_json(path, tuple(MANIFEST_KEYS), AGAIN, DataError)
    for key, (ok, wanted) in MANIFEST_KEYS.items():
        if not ok(manifest[key]):
            raise DataError(f"latent store {path} key {key} must be {wanted}, got {_short(manifest[key])}: "
                            f"{AGAIN}")
    if manifest["num_classes"] > MAX_CLASSES:
        raise DataError(f"latent store {path} key num_classes {manifest['num_classes']} is beyond the "
                        f"maximum of {MAX_CLASSES} classes: {AGAIN}")
    if "latent_shape" in manifest and not _positive_ints(manifest["latent_shape"], 3):
        raise DataError(f"latent store {path} key latent_shape must be [C, h, w], got "
                        f"{_short(manifest['latent_shape'])}: {AGAIN}")
    names = manifest.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DataError(f"latent store {path} key class_names must be a list of strings, got {_short(names)}: "
                        f"{AGAIN}")
    return manifest


class LatentDataset:
    """A latent store (see the module docstring) behind the dataset protocol, memory-mapped."""

    mirrors = True  #: ``batch(idx, mirrored)`` gives the latents of mirrored images (``data.flip``)

    def __init__(self, path: str | Path):

        root = Path(path)
        if not (root / MANIFEST).is_file():
            raise DataError(f"{root} is not a latent store (no {MANIFEST}): make one with maskdit latents IMAGES "
                            f"--vae DIR --out {root}")
        self.manifest = m = read_manifest(root)
        if not (root / "mean.npy").is_file():
            raise DataError(f"latent store {root} has no mean.npy (the latents): {AGAIN}")
        self.mean = read_npy(root / "mean.npy", "r", AGAIN)
        labels = read_npy(root / "labels.npy", None, AGAIN) if (root / "labels.npy").exists() else None
        if not np.issubdtype(self.mean.dtype, np.floating) or self.mean.dtype.itemsize > 8:
            raise DataError(f"latent store {root}: mean.npy holds {self.mean.dtype} values, not floating-point "
                            f"latents: {AGAIN}")
        if self.mean.ndim != 5 or self.mean.shape[1] != 2 or len(self.mean) != m["num"] \
                or min(self.mean.shape, default=0) < 1:
            raise DataError(f"latent store {root}: mean.npy is {self.mean.shape}, the manifest says {m['num']} "
                            f"latents of N x 2 x C x h x w: {AGAIN}")
        if "latent_shape" in m and list(self.mean.shape[2:]) != m["latent_shape"]:
            raise DataError(f"latent store {root}: mean.npy holds latents of {list(self.mean.shape[2:])}, the "
                            f"manifest says latent_shape {m['latent_shape']}: {AGAIN}")
        classes = m["num_classes"]
        if labels is None and classes:
            raise DataError(f"latent store {root}: the manifest says {classes} classes but labels.npy is missing: "
                            f"restore labels.npy, set num_classes to 0 in {root / MANIFEST}, or {AGAIN}")
        if labels is not None:
            found = check_labels(labels, len(self.mean), f"latent store {root}: labels.npy")
            if found > classes:
                allowed = f"labels must be 0..{classes - 1}" if classes else "an unlabelled store has no labels.npy"
                raise DataError(f"latent store {root}: labels.npy has label {found - 1}, beyond the manifest's "
                                f"num_classes {classes} ({allowed}): fix num_classes in {root / MANIFEST} or the "
                                f"labels, or {AGAIN}")
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))
        self.num_classes = int(classes)
        self.class_names = list(m.get("class_names") or [])
        self.name = root.name
        self.codec = VAECodec(m["vae"], m["scaling_factor"], m["image_shape"][0])

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape[2:])

    def batch(self, idx: torch.Tensor, mirrored: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latent means at ``idx``; where ``mirrored`` (bool) is set, those of the mirrored image."""
        side = np.zeros(len(idx), np.int64) if mirrored is None else mirrored.numpy().astype(np.int64)
        x = torch.from_numpy(np.asarray(self.mean[idx.numpy(), side], dtype=np.float32))
        return x, (self.labels[idx] if self.labels is not None else None)


@CODECS.register("vae", "VAE latents -> uint8 pixels through diffusers' AutoencoderKL (loaded on first use)")
class VAECodec:
    """Stored values are scaled latents (model space as is); ``decode`` runs the VAE's decoder."""

    name = "vae"
    value_range = (-float("inf"), float("inf"))
    stores_pixels = False

    def __init__(self, vae: str, scaling_factor: float, channels: int = 3):
        self.vae_dir, self.scaling_factor, self.channels = str(vae), float(scaling_factor), int(channels)
        self._vae: Any = None

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        if self._vae is None:
            if not self.vae_dir:
                raise ConfigError("this run decodes latents through a VAE it was never given: import it again with "
                                  "--vae DIR (a local diffusers AutoencoderKL directory, e.g. SD's VAE saved with "
                                  "save_pretrained)")
            self._vae = load_vae(self.vae_dir)
        vae = self._vae.to(x.device)
        parts = [vae.decode(part.float() / self.scaling_factor).sample for part in x.split(batch_size)]
        images = torch.cat(parts)
        if self.channels == 1:
            images = images.mean(dim=1, keepdim=True)
        return PIXELS.decode(images).cpu()

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "vae": self.vae_dir, "scaling_factor": self.scaling_factor,
                "channels": self.channels}


@DATASETS.register("latents", "data.path=STORE made by maskdit latents: VAE latents, memory-mapped; samples "
                   "decode through the VAE", needs_path=True, rank=2)
def _latents(cfg: Any, split: str) -> Dataset:
    return LatentDataset(cfg.path)
