"""The auxiliary-loss channel: any module may add a term to the training loss (an MoE balance loss, a
representation-alignment loss) without the layers around it knowing.

A module calls :func:`report_aux_loss` in its forward pass; :class:`maskdit.training.step.TrainingStep` collects the
reported terms with :func:`collect_aux_losses`, adds them to the loss and logs each by name. Outside a
training step (sampling, evaluation) nothing collects them and reporting is free.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_collector: ContextVar[list[tuple[str, torch.Tensor, bool]] | None] = ContextVar("maskdit_aux_losses",
                                                                                  default=None)


def aux_active() -> bool:
    """True inside a training step that collects reports (so modules can skip computing them otherwise)."""
    return _collector.get() is not None


def report_aux_loss(name: str, value: torch.Tensor) -> None:
    """Add ``value`` (a scalar that already carries its weight) to the loss of the running training step."""
    bag = _collector.get()
    if bag is not None:
        bag.append((name, value, True))


def report_aux_stat(name: str, value: torch.Tensor) -> None:
    """Log ``value`` (a detached scalar, e.g. an expert's load) with the step's metrics, without adding it to
    the loss; several reports under one name are averaged."""
    bag = _collector.get()
    if bag is not None:
        bag.append((name, value.detach(), False))


@contextmanager
def collect_aux_losses() -> Iterator[list[tuple[str, torch.Tensor, bool]]]:
    """Collect the ``(name, value, adds_to_loss)`` reports made inside the ``with`` block."""
    bag: list[tuple[str, torch.Tensor, bool]] = []
    token = _collector.set(bag)
    try:
        yield bag
    finally:
        _collector.reset(token)
