"""A small CNN classifier trained on a labelled dataset: judges class-conditional samples.

Its held-out accuracy on real images is reported next to every figure it produces, so a reader can tell
how far to trust the rate at which it recognises the class that was asked for. Trained weights are cached
per dataset (keyed by a fingerprint of the images and labels) under ``$MASKDIT_CACHE`` (default
``~/.cache/maskdit``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from maskdit.data.datasets import ImageDataset
from maskdit.errors import ConfigError, DataError


def cache_dir() -> Path:
    """``$MASKDIT_CACHE`` or ``~/.cache/maskdit``, created on first use; refused clearly when unusable."""
    path = Path(os.environ.get("MASKDIT_CACHE", Path.home() / ".cache" / "maskdit"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cache directory {path} cannot be used ({e.strerror or e}): set MASKDIT_CACHE to a "
                          "writable directory") from e
    return path


def fingerprint(dataset: ImageDataset) -> str:
    """Content hash of images and labels: changes whenever the dataset does."""
    h = hashlib.sha256()
    h.update(str(tuple(dataset.images.shape)).encode())
    h.update(dataset.images.contiguous().numpy().tobytes())
    if dataset.labels is not None:
        h.update(dataset.labels.numpy().tobytes())
    return h.hexdigest()[:16]


class DigitNet(nn.Module):
    """Three conv layers, global pooling, a feature layer and a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.GELU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Classifier:
    """A trained network (a :class:`DigitNet`) plus its held-out accuracy on real data."""

    def __init__(self, net: nn.Module, holdout_accuracy: float):
        self.net, self.holdout_accuracy = net.eval(), holdout_accuracy

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class predictions for images in ``[-1, 1]`` ``(N, C, H, W)``."""
        return torch.cat([self.net(images[i : i + batch_size].float()).argmax(1)
                          for i in range(0, len(images), batch_size)])


def _train(dataset: ImageDataset, epochs: int, seed: int, progress: bool) -> Classifier:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(dataset)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, n // 5)
    val, tr = perm[:n_val], perm[n_val:]
    net = DigitNet(dataset.shape[0], dataset.num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = max(1, len(tr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * steps_per_epoch)
    for _ in tqdm(range(epochs), desc="classifier", disable=not progress, leave=False):
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(steps_per_epoch):
            x, y = dataset.batch(order[i * 64 : (i + 1) * 64])
            x = x + 0.1 * torch.randn(x.shape, generator=gen)  # robustness to slightly off samples
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    clf = Classifier(net, 0.0)
    x, y = dataset.batch(val)
    clf.holdout_accuracy = (clf.predict(x) == y).float().mean().item()
    return clf


def cached_classifier(key: str, net: nn.Module, train: Callable[[], Classifier],
                      kind: type[Classifier] = Classifier, **facts: Any) -> Classifier:
    """The classifier cached as ``key``, its weights loaded into ``net``; else ``train()``'s, cached for next time
    with ``facts`` beside its held-out accuracy (weights written to a temporary file and renamed into place)."""
    root = cache_dir()  # checked before minutes of training, not after
    weights, meta = root / f"{key}.safetensors", root / f"{key}.json"
    if weights.is_file() and meta.is_file():
        net.load_state_dict(load_file(weights))
        return kind(net, json.loads(meta.read_text())["holdout_accuracy"])
    with torch.inference_mode(False), torch.enable_grad():  # callers may be sampling under no_grad
        clf = train()
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in clf.net.state_dict().items()}, tmp)
    tmp.replace(weights)
    meta.write_text(json.dumps({"holdout_accuracy": clf.holdout_accuracy, **facts}))
    return clf


def load_classifier(dataset: ImageDataset, epochs: int = 30, seed: int = 0, progress: bool = True) -> Classifier:
    """The dataset's classifier, from the cache or trained now (about ten seconds for digits on a CPU)."""
    if dataset.labels is None or dataset.num_classes < 2:
        raise DataError(f"dataset {dataset.name} has no class labels: a classifier needs at least two classes")
    return cached_classifier(f"classifier-{fingerprint(dataset)}-e{epochs}-s{seed}",
                             DigitNet(dataset.shape[0], dataset.num_classes),
                             lambda: _train(dataset, epochs, seed, progress), dataset=dataset.name)
