"""Real vectors as conditions: a robot's observation, embedded by a small MLP (a diffusion policy's condition).

A value is the vector with one more entry, a flag: 1 for a real vector, 0 for "no condition", whose embedding is
a learned null vector (so classifier-free guidance and condition dropout work as for labels). Observations are
standardised inside the conditioner by the mean and std of the training data's, kept in the model's
``condition_options``, so callers pass raw observations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maskdit.conditions.base import CONDITIONERS, Condition, Conditioner, flagged
from maskdit.errors import ConfigError


@CONDITIONERS.register("vector", "a real vector per example (a robot's observation): an MLP embedding, plus a "
                       "learned null vector for guidance")
class VectorConditioner(Conditioner):
    """Values ``(B, dim + 1)``: the vector and a flag (1 given, 0 null) -> pooled ``(B, width)``."""

    reads = "observations"

    def __init__(self, width: int, dim: int, mean: list[float], std: list[float]):
        super().__init__()
        self.dim = dim
        self.embed = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width))
        self.null_vector = nn.Parameter(torch.zeros(width))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def value_spec(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (self.dim + 1,), torch.float32

    @classmethod
    def build(cls, width: int, num_classes: int, dim: int = 0, mean: list[float] | None = None,
              std: list[float] | None = None, **options: Any) -> VectorConditioner | None:
        if not dim:
            return None
        return cls(width, dim, mean or [0.0] * dim, std or [1.0] * dim)

    @classmethod
    def data_options(cls, dataset: Any, settings: dict[str, Any], saved: dict[str, Any] | None) -> dict[str, Any]:
        if saved and saved.get("dim"):
            return {k: saved[k] for k in ("dim", "mean", "std")}
        vectors = getattr(dataset, "observations", None)
        if vectors is None:
            raise ConfigError(f"model.condition=vector needs data with a vector per example (an observation), and "
                              f"{getattr(dataset, 'name', 'this dataset')} has none: use data.name=hopper, or "
                              "model.condition=label")
        return {"dim": int(vectors.shape[1]), "mean": vectors.mean(0).tolist(),
                "std": vectors.std(0).clamp_min(1e-3).tolist()}

    def values(self, dataset: Any) -> torch.Tensor:
        return self.given(dataset.observations)

    def initialize(self) -> None:
        for layer in (self.embed[0], self.embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, value: torch.Tensor) -> Condition:
        vector, flag = value[:, :-1].float(), value[:, -1:].float()
        embedded = self.embed((vector - self.mean) / self.std)
        return Condition(flag * embedded + (1 - flag) * self.null_vector)

    def null(self, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(value)

    def given(self, vectors: torch.Tensor) -> torch.Tensor:
        """Condition values of raw vectors ``(B, dim)``."""
        return flagged(vectors)
