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

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from maskdit.data.codec import CODECS, PIXELS
from maskdit.errors import ConfigError, DataError

MANIFEST = "manifest.json"
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
    the manifest. ``out`` must not exist yet (nothing is ever overwritten); it appears complete or not at all."""
    from maskdit.checkpoint import write_json_atomic

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} exists: latents go to a new directory (maskdit never overwrites files)")
    vae = load_vae(vae_dir).to(device)
    scale = vae_scaling(vae)
    images = dataset.images
    n = len(images)
    probe = vae.encode(_to_vae_channels(PIXELS.encode(images[:1]).to(device), vae.config.in_channels)).latent_dist
    shape = (n, 2, *probe.mean.shape[1:])
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from an interrupted run
    tmp.mkdir(parents=True)
    mean = np.lib.format.open_memmap(tmp / "mean.npy", mode="w+", dtype=np.float16, shape=shape)
    std = np.lib.format.open_memmap(tmp / "std.npy", mode="w+", dtype=np.float16, shape=shape)
    for start in tqdm(range(0, n, batch_size), desc="encoding", unit="batch", disable=not progress):
        x = _to_vae_channels(PIXELS.encode(images[start:start + batch_size]).to(device), vae.config.in_channels)
        for side, pixels in enumerate((x, x.flip(-1))):
            dist = vae.encode(pixels).latent_dist
            mean[start:start + len(x), side] = (dist.mean * scale).cpu().numpy()
            std[start:start + len(x), side] = (dist.std * scale).cpu().numpy()
    mean.flush()
    std.flush()
    del mean, std
    if dataset.labels is not None:
        np.save(tmp / "labels.npy", dataset.labels.numpy())
    manifest = {"format": "maskdit-latents", "version": 1, "vae": str(Path(vae_dir).resolve()),
                "scaling_factor": scale, "latent_shape": list(shape[2:]), "image_shape": list(images.shape[1:]),
                "num": n, "num_classes": dataset.num_classes if dataset.labels is not None else 0,
                "class_names": list(getattr(dataset, "class_names", [])), "source": dataset.name}
    write_json_atomic(tmp / MANIFEST, manifest)
    tmp.rename(out)
    return manifest


class LatentDataset:
    """A latent store (see the module docstring) behind the dataset protocol, memory-mapped."""

    mirrors = True  #: ``batch(idx, mirrored)`` gives the latents of mirrored images (``data.flip``)

    def __init__(self, path: str | Path):
        root = Path(path)
        if not (root / MANIFEST).is_file():
            raise DataError(f"{root} is not a latent store (no {MANIFEST}): make one with maskdit latents IMAGES "
                            f"--vae DIR --out {root}")
        try:
            self.manifest = json.loads((root / MANIFEST).read_text())
            self.mean = np.load(root / "mean.npy", mmap_mode="r", allow_pickle=False)
            labels = np.load(root / "labels.npy", allow_pickle=False) if (root / "labels.npy").is_file() else None
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise DataError(f"latent store {root} is damaged ({e}): encode it again") from e
        m = self.manifest
        if self.mean.ndim != 5 or self.mean.shape[1] != 2 or len(self.mean) != m.get("num"):
            raise DataError(f"latent store {root}: mean.npy is {self.mean.shape}, the manifest says {m.get('num')} "
                            "latents: encode it again")
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))
        self.num_classes = int(m.get("num_classes", 0))
        self.class_names = list(m.get("class_names", []))
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
