"""The conditioning seam: one interface between a condition and everything that uses it.

A conditioner turns a batch of condition values (class labels, captions, control images ...) into what the
backbone consumes, and knows what "no condition" is:

* :meth:`Conditioner.forward` ``value -> Condition``: a pooled vector ``(B, D)`` the backbone adds to the time
  embedding (adaLN), and optionally a token sequence ``(B, L, D)`` with a padding mask ``(B, L)`` for the
  injection modes that attend to it (cross, joint or in-context attention).
* :meth:`Conditioner.null` ``value -> value``: the null value of the same batch, the unconditional branch of
  classifier-free guidance.
* :meth:`Conditioner.drop` ``(value, dropped) -> value``: the null value where ``dropped`` (condition dropout
  in training, drawn by the step sampler from ``model.class_dropout``).

The trainer's step, every recipe (they receive the value and pass it to the model), guidance, tasks, samplers
and accelerators only ever call these three, so adding a conditioner means one module that registers a
:class:`Conditioner` subclass in :data:`CONDITIONERS` (``model.condition=NAME`` selects it), plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskdit.registry import Registry


@dataclass
class Condition:
    """What a conditioner gives the backbone for one batch."""

    pooled: torch.Tensor  #: ``(B, D)`` added to the time embedding, which modulates every block (adaLN)
    tokens: torch.Tensor | None = None  #: ``(B, L, D)`` condition tokens, for attention-based injection
    mask: torch.Tensor | None = None  #: ``(B, L)`` bool, True where ``tokens`` are real (not padding)


class Conditioner(nn.Module):
    """Base class of conditioners: a module with trainable embeddings, built by :meth:`build` from the
    model width and the data's facts (``num_classes``)."""

    @classmethod
    def build(cls, width: int, num_classes: int) -> Conditioner | None:
        """The conditioner for a backbone of ``width`` channels on data with ``num_classes`` labels, or ``None``
        when the data gives it nothing to condition on (an unconditional model)."""
        raise NotImplementedError

    def initialize(self) -> None:
        """Set the starting weights (called by the backbone's own initialisation, in its order)."""

    def forward(self, value: Any) -> Condition:
        raise NotImplementedError

    def null(self, value: Any) -> Any:
        """The "no condition" value for each sample of ``value``'s batch."""
        raise NotImplementedError

    def drop(self, value: Any, dropped: torch.Tensor) -> Any:
        """``value`` with the samples where ``dropped`` ``(B,)`` is True replaced by the null value."""
        null = self.null(value)
        return torch.where(dropped.reshape(-1, *[1] * (value.dim() - 1)), null, value)


#: name -> :class:`Conditioner` subclass; ``model.condition`` names one.
CONDITIONERS: Registry[type[Conditioner]] = Registry("conditioner", key="model.condition")
