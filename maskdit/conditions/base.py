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

from maskdit.errors import ConfigError
from maskdit.registry import Registry


@dataclass
class Condition:
    """What a conditioner gives the backbone for one batch."""

    pooled: torch.Tensor  #: ``(B, D)`` added to the time embedding, which modulates every block (adaLN)
    tokens: torch.Tensor | None = None  #: ``(B, L, D)`` condition tokens, for attention-based injection
    mask: torch.Tensor | None = None  #: ``(B, L)`` bool, True where ``tokens`` are real (not padding)


class Conditioner(nn.Module):
    """Base class of conditioners: a module with trainable embeddings, built by :meth:`build` from the
    model width and the data's facts (``num_classes``; a text conditioner's vocabulary, in ``options``)."""

    gives_tokens = False  #: its :class:`Condition` has ``tokens`` (what ``model.text`` injects)
    #: what ``maskdit sample`` reads its values from: ``labels`` (``--classes``), ``text`` (``--prompt``),
    #: ``observations`` or ``audio`` (the flags of those names)
    reads = "labels"

    def value_spec(self) -> tuple[tuple[int, ...], torch.dtype]:
        """The shape of one sample's condition value and its dtype (a class label: ``((), int64)``), so a value
        can travel packed beside other per-sample data (a control map)."""
        return (), torch.int64

    @classmethod
    def build(cls, width: int, num_classes: int, **options: Any) -> Conditioner | None:
        """The conditioner for a backbone of ``width`` channels on data with ``num_classes`` labels, or ``None``
        when the data gives it nothing to condition on (an unconditional model); ``options``: the model's
        ``condition_options`` (:meth:`data_options` plus the conditioner's settings)."""
        raise NotImplementedError

    @classmethod
    def data_options(cls, dataset: Any, settings: dict[str, Any], saved: dict[str, Any] | None) -> dict[str, Any]:
        """The ``condition_options`` a run on ``dataset`` builds this conditioner with: its ``settings`` (from the
        config) and what it learns from the data (a vocabulary); ``saved``: the options of the run it starts
        from or resumes, whose facts must be kept so its weights keep their meaning."""
        return {}

    def values(self, dataset: Any) -> torch.Tensor | None:
        """The condition value of every example of ``dataset`` as one tensor (token ids ``(N, L)``), what training
        batches index; ``None``: the dataset's own labels, as they are."""
        return None

    def parse(self, texts: list[str]) -> torch.Tensor:
        """Condition values from what a person types (``maskdit sample --prompt``): refused unless the
        conditioner reads text."""
        raise ConfigError(f"this model is conditioned by {type(self).__name__}, not on text: it takes no prompts")

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


def flagged(values: torch.Tensor) -> torch.Tensor:
    """Real-valued condition values ``(B, D)`` with the flag column that marks them given: ``(B, D + 1)``, the last
    column 1. A conditioner of such values reads flag 0 (the all-zero null value) as "no condition"."""
    return torch.cat([values.float(), torch.ones(len(values), 1, device=values.device)], dim=1)


#: name -> :class:`Conditioner` subclass; ``model.condition`` names one.
CONDITIONERS: Registry[type[Conditioner]] = Registry("conditioner", key="model.condition")
