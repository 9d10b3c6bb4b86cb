"""Class labels: a learned vector per class plus one for "no class" (DiT's label embedding)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maskdit.conditions.base import CONDITIONERS, Condition, Conditioner


@CONDITIONERS.register("label", "a class label: a learned vector per class, plus the null label for guidance")
class LabelConditioner(Conditioner):
    """Labels ``(B,)`` in ``[0, num_classes)`` -> pooled vectors; label ``num_classes`` is the null label. The
    table is ``table`` so tensor names match DiT's layout (``y_embedder.table.weight`` in a DiT)."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    @classmethod
    def build(cls, width: int, num_classes: int, **options: Any) -> LabelConditioner | None:
        return cls(num_classes, width) if num_classes > 0 else None

    def initialize(self) -> None:
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, y: torch.Tensor) -> Condition:
        return Condition(self.table(y))

    def null(self, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, self.num_classes)
