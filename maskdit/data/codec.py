"""Codecs: the one place that converts between stored data and model space.

A codec ``encode``s what a dataset stores (uint8 pixels, VAE latents, token ids) into the tensors the model
trains on, and ``decode``s model outputs back. A *discrete* codec has a ``vocab_size``: its model space holds
token ids ``0..vocab_size-1`` (as floats, exact), which a masked-diffusion model reads and predicts. The CLI,
the report, evaluation and tasks call the run's codec instead of converting values themselves; the run's
``config.json`` names it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from maskdit.errors import ConfigError
from maskdit.registry import Registry


class Codec(Protocol):
    name: str
    value_range: tuple[float, float]  #: the range of model-space values
    stores_pixels: bool  #: the dataset stores uint8 pixels and ``decode`` returns pixels like them

    def encode(self, stored: torch.Tensor) -> torch.Tensor: ...

    def decode(self, x: torch.Tensor) -> torch.Tensor: ...

    @property
    def config(self) -> dict[str, Any]: ...


#: name -> codec class (``cls(**config)`` rebuilds one from ``config.json``).
CODECS: Registry[type] = Registry("codec", key="codec")


@CODECS.register("uint8", "uint8 pixels 0-255 <-> [-1, 1]")
class PixelCodec:
    """uint8 pixels 0-255 <-> model space ``[-1, 1]``; decoding clips and rounds."""

    name = "uint8"
    value_range = (-1.0, 1.0)
    stores_pixels = True

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float() / 127.5 - 1.0

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name}


PIXELS = PixelCodec()


@CODECS.register("levels", "uint8 pixels quantised to K levels <-> token ids 0..K-1 (discrete models, data.levels)")
class LevelsCodec:
    """uint8 pixels <-> token ids: pixel ``p`` is level ``round(p * (K - 1) / 255)``, level ``k`` decodes to
    ``round(k * 255 / (K - 1))``. The digits (17 values, stored as ``round(v * 255 / 16)``) round-trip exactly
    at ``K = 17``. Model space holds the ids as floats; ``vocab_size`` is ``K``."""

    name = "levels"
    stores_pixels = True

    def __init__(self, levels: int):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
            raise ConfigError(f"data.levels must be an integer in [2, 256] (pixel levels become token ids), got "
                              f"{levels!r}")
        self.levels = levels
        self.vocab_size = levels
        self.value_range = (0.0, float(levels - 1))

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return torch.round(stored.float() * ((self.levels - 1) / 255.0))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.round().clamp(0, self.levels - 1)
        return torch.round(ids * (255.0 / (self.levels - 1))).to(torch.uint8)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "levels": self.levels}


@CODECS.register("standard", "float values <-> model space by a mean and std per channel and column (motion, audio)")
class StandardCodec:
    """Stored floats ``(N, C, *S)`` <-> ``(x - mean) / std``, ``mean`` and ``std`` broadcasting over one example:
    motion's ``(C, 1, J)`` measured on its training data by :meth:`fit` (a floor keeps near-constant values from
    blowing up noise), or audio's one scale ``(1, 1)``."""

    name = "standard"
    stores_pixels = False
    value_range = (-4.0, 4.0)

    def __init__(self, mean: list, std: list):
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        if self.mean.shape != self.std.shape or self.mean.dim() < 1 or not bool((self.std > 0).all()):
            raise ConfigError("codec standard: mean and std must be arrays of one shape, std positive")

    @classmethod
    def fit(cls, data: torch.Tensor, floor: float = 0.05) -> StandardCodec:
        dims = [0, *range(2, data.dim() - 1)]
        mean = data.mean(dims, keepdim=True)[0]
        std = data.std(dims, keepdim=True)[0].clamp_min(floor)
        return cls(mean.tolist(), std.tolist())

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return (stored.float() - self.mean) / self.std

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.std + self.mean

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "mean": self.mean.tolist(), "std": self.std.tolist()}


def codec_from_config(config: dict[str, Any] | None) -> Codec:
    """The codec a run's ``config.json`` names (runs written before codecs existed stored uint8 pixels)."""
    config = dict(config or {"name": "uint8"})
    return CODECS.get(config.pop("name"))(**config)
