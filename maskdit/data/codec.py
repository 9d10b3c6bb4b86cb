"""Codecs: the one place that converts between stored data and model space.

A codec ``encode``s what a dataset stores (uint8 pixels today, VAE latents next) into the tensors the model
trains on, and ``decode``s model outputs back. The CLI, the report, evaluation and tasks call the run's
codec instead of converting values themselves; the run's ``config.json`` names it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from maskdit.registry import Registry


class Codec(Protocol):
    name: str
    value_range: tuple[float, float]  #: the range of model-space values

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

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float() / 127.5 - 1.0

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name}


PIXELS = PixelCodec()


def codec_from_config(config: dict[str, Any] | None) -> Codec:
    """The codec a run's ``config.json`` names (runs written before codecs existed stored uint8 pixels)."""
    config = dict(config or {"name": "uint8"})
    return CODECS.get(config.pop("name"))(**config)
