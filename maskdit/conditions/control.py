"""Control signals: a spatial condition (edges, a low-resolution or blurred copy of the image) that a model is
trained to follow, computed from the training images by :data:`CONTROL_SIGNALS` (``control.signal``).

A controlled model keeps its own conditioner (a class label, a caption, or none) and adds a control map
``(B, Cc, *S)``. Both travel as one condition value, a float tensor ``[condition flattened, control map flattened]``
per sample (:class:`Controlled` packs and splits it), so every path that hands a condition value on (the training
step, each recipe, guidance, samplers, DDP) carries the control unchanged. Guidance's unconditional branch nulls the
condition and keeps the control: it sharpens the class or caption, not the control.

How the map enters the backbone (``control.kind``: concatenation, a ControlNet branch, condition tokens, an image
prompt's cross-attention) is the model's business: :mod:`maskdit.model.control`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from maskdit.errors import ConfigError
from maskdit.registry import Registry, one_of

#: name -> ``signal(images, parameter)``: images ``(B, C, H, W)`` in model space ([-1, 1]) -> the control map
#: ``(B, Cc, H, W)`` in [-1, 1]. Facts: ``channels`` (``"one"`` or ``"same"`` as the images), ``parameter`` (what
#: ``NAME:P`` sets, ``None`` when it takes none), ``needs`` (whether ``P`` is required), ``rule`` (what ``P`` may
#: be; default positive) and ``degrades`` (a degraded copy of the image, which a restoration chain can start at:
#: ``objective.source=control``).
CONTROL_SIGNALS: Registry[Callable[[torch.Tensor, float | None], torch.Tensor]] = Registry(
    "control signal", key="control.signal")

#: What a signal's parameter may be (its ``rule`` fact): a check and how the error line says it.
POSITIVE = (lambda v: v > 0, "a positive number")
WHOLE = (lambda v: v >= 2 and v == int(v), "a whole number of at least 2")
LEVEL = (lambda v: -1 <= v < 1, "a number in [-1, 1)")

#: The Sobel gradient magnitude of a step from -1 to 1 across a pixel is 8; an edge is a quarter of that.
EDGE_THRESHOLD = 2.0


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude of the images' grey level ``(B, 1, H, W)`` (replicated borders)."""
    grey = images.float().mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device)
    kernels = torch.stack([kx, kx.T])[:, None]
    grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    return grad.square().sum(dim=1, keepdim=True).sqrt()


@CONTROL_SIGNALS.register("edges", "Sobel edges of the grey level: 1 where the gradient passes a threshold "
                          f"(edges:T, default {EDGE_THRESHOLD} in [-1, 1] units), else -1", channels="one",
                          parameter="threshold", needs=False, degrades=False)
def edges(images: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    return torch.where(sobel_magnitude(images) >= (threshold or EDGE_THRESHOLD), 1.0, -1.0)


@CONTROL_SIGNALS.register("mask", "a region: 1 where the grey level is above a threshold (mask:T, default 0 in "
                          "[-1, 1] units: the ink of a digit, a shape's area), else -1", channels="one",
                          parameter="threshold", needs=False, degrades=False, rule=LEVEL)
def mask(images: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    grey = images.float().mean(dim=1, keepdim=True)
    return torch.where(grey > (threshold or 0.0), 1.0, -1.0)


@CONTROL_SIGNALS.register("lowres", "a copy at 1/F of the resolution (means over FxF cells), repeated back to full "
                          "size (lowres:F; super-resolution)", channels="same", parameter="factor", needs=True,
                          degrades=True, rule=WHOLE)
def lowres(images: torch.Tensor, factor: float | None) -> torch.Tensor:
    f = int(factor)
    small = F.avg_pool2d(images.float(), f)
    return small.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)


@CONTROL_SIGNALS.register("blur", "a Gaussian blur of standard deviation S pixels (blur:S; deblurring)",
                          channels="same", parameter="sigma", needs=True, degrades=True)
def blur(images: torch.Tensor, sigma: float | None) -> torch.Tensor:
    radius = max(1, math.ceil(3 * float(sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-offsets.square() / (2 * float(sigma) ** 2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    x = F.pad(images.float(), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@CONTROL_SIGNALS.register("noise", "the image plus Gaussian noise of standard deviation S (in [-1, 1] units), "
                          "clipped; one fixed draw per position in the batch (noise:S; denoising)", channels="same",
                          parameter="sigma", needs=True, degrades=True)
def noise(images: torch.Tensor, sigma: float | None) -> torch.Tensor:
    draw = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)).to(images.device)
    return (images.float() + float(sigma) * draw).clamp(-1, 1)


@CONTROL_SIGNALS.register("image", "the image itself: an image prompt (control.kind=adapter, IP-Adapter)",
                          channels="same", parameter=None, needs=False, degrades=False)
def image(images: torch.Tensor, parameter: float | None = None) -> torch.Tensor:
    return images.float()


def parse_signal(spec: str) -> tuple[str, float | None]:
    """``"edges"``, ``"lowres:4"``, ``"blur:1.5"`` -> ``(name, parameter)``; anything else is a ConfigError."""
    name, _, raw = spec.partition(":")
    if name not in CONTROL_SIGNALS:
        raise ConfigError(f"config key control.signal={spec!r}: choose one of {one_of(CONTROL_SIGNALS.names())} "
                          "(with :P where it takes a parameter, e.g. lowres:4)")
    facts = CONTROL_SIGNALS.entry(name).facts
    if not raw:
        if facts["needs"]:
            raise ConfigError(f"config key control.signal={spec!r}: {name} needs its {facts['parameter']}, e.g. "
                              f"{name}:{4 if name == 'lowres' else 1}")
        return name, None
    if facts["parameter"] is None:
        raise ConfigError(f"config key control.signal={spec!r}: {name} takes no parameter; write {name}")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    check, allowed = facts.get("rule", POSITIVE)
    if not (math.isfinite(value) and check(value)):
        raise ConfigError(f"config key control.signal={spec!r}: its {facts['parameter']} must be {allowed}")
    return name, value


def signal_channels(spec: str, in_channels: int) -> int:
    """The channels of the control map ``spec`` makes from images of ``in_channels`` channels."""
    return 1 if CONTROL_SIGNALS.entry(parse_signal(spec)[0]).facts["channels"] == "one" else in_channels


def check_fits(spec: str, spatial: Sequence[int]) -> None:
    """Refuse examples of ``spatial`` size that ``spec`` cannot read: 2-D images only, and for ``lowres:F`` sides
    divisible by F."""
    name, value = parse_signal(spec)
    if len(spatial) != 2:
        raise ConfigError(f"config key control.signal={spec} reads 2-D images, but the examples are "
                          f"{'x'.join(map(str, spatial))} (sequences and volumes are not built)")
    if name == "lowres" and any(s % int(value) for s in spatial):
        raise ConfigError(f"config key control.signal={spec} averages cells of {int(value)}x{int(value)} pixels, "
                          f"which must divide the image sides {tuple(spatial)}")


def compute_signal(spec: str, images: torch.Tensor) -> torch.Tensor:
    """The control map of model-space images ``(B, C, H, W)`` (:func:`check_fits` says which it reads)."""
    check_fits(spec, images.shape[2:])
    name, value = parse_signal(spec)
    return CONTROL_SIGNALS[name](images, value)


@dataclass(frozen=True)
class ControlInput:
    """One call's control, as :attr:`Context.control <maskdit.model.blocks.Context>` carries it to the kind."""

    map: torch.Tensor  #: ``(B, Cc, *S)``
    clean: torch.Tensor  #: ``(B, D)``: the conditioning at time 0 (the label without noise), for condition tokens


class Controlled:
    """The conditioner of a controlled model, as the rest of maskdit sees it: condition values are
    ``[condition, control map]`` packed per sample as one float row (just the map for a model without a condition):
    the model's own condition (a class label, a caption's token ids or encoder values, flattened) first. It
    delegates the condition to the model's own conditioner ``inner`` and keeps the map through ``null`` and
    ``drop``."""

    def __init__(self, inner: Any, signal: str, shape: Sequence[int]):
        self.inner, self.signal, self.shape = inner, signal, tuple(shape)  #: shape: the map's (Cc, *S)
        self.gives_tokens = bool(getattr(inner, "gives_tokens", False))
        self.reads = getattr(inner, "reads", "labels")
        self.inner_shape, self.inner_dtype = ((), None) if inner is None else inner.value_spec()
        self.inner_size = 0 if inner is None else math.prod(self.inner_shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def pack(self, labels: torch.Tensor | None, control: torch.Tensor) -> torch.Tensor:
        """One float row per sample: ``labels`` (the inner conditioner's values; ``None`` without one), then
        ``control`` ``(B, Cc, *S)`` flattened."""
        flat = control.float().reshape(control.shape[0], -1)
        if self.inner is None:
            return flat
        return torch.cat([labels.float().reshape(len(flat), -1).to(flat.device), flat], dim=1)

    def split(self, value: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(condition values, control map)`` of a packed value (``None`` for a model without a condition)."""
        width = self.size + self.inner_size
        if value.dim() != 2 or value.shape[1] != width or not value.is_floating_point():
            what = f"its condition {tuple(self.inner_shape) or 'label'} and " if self.inner is not None else ""
            raise ConfigError(f"this model is controlled ({self.signal}): its condition value is a float tensor "
                              f"(B, {width}) of {what}the control map {tuple(self.shape)}, got {tuple(value.shape)} "
                              f"({value.dtype})")
        control = value[:, self.inner_size:].reshape(-1, *self.shape)
        if self.inner is None:
            return None, control
        inner = value[:, :self.inner_size].reshape(-1, *self.inner_shape)
        return (inner.round().to(self.inner_dtype) if not self.inner_dtype.is_floating_point else inner), control

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """The control maps of model-space ``images`` (computed in chunks)."""
        return torch.cat([compute_signal(self.signal, images[i:i + 512]) for i in range(0, len(images), 512)])

    def value(self, labels: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        """The packed value of ``labels`` with the control maps of model-space ``images``."""
        return self.pack(labels, self.maps(images))

    def with_condition(self, value: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``value`` with its condition replaced by ``labels`` and its maps kept (a negative prompt's)."""
        return self.pack(labels, self.split(value)[1])

    def _with_labels(self, value: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``value`` with its condition changed by ``change`` and its map kept (as it is without one)."""
        if self.inner is None:
            return value
        labels, control = self.split(value)
        return self.pack(change(labels), control)

    def null(self, value: torch.Tensor) -> torch.Tensor:
        return self._with_labels(value, lambda labels: self.inner.null(labels))

    def drop(self, value: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return self._with_labels(value, lambda labels: self.inner.drop(labels, dropped))

    def values(self, dataset: Any) -> torch.Tensor:
        """Every example's packed value: its condition (label, caption) and the control map of its image (computed
        once)."""
        images, labels = dataset.batch(torch.arange(len(dataset)))
        if self.inner is not None:
            own = self.inner.values(dataset)  # a caption model's values; None: the labels as they are
            labels = own if own is not None else labels
            if labels is None:
                raise ConfigError(f"data.name={dataset.name} has no labels for this class-conditional controlled "
                                  "model")
        return self.value(labels, images)

    def parse(self, texts: list[str]) -> torch.Tensor:
        """The inner conditioner's values of ``texts`` (to be packed with maps: :meth:`pack`)."""
        if not self.gives_tokens:
            raise ConfigError("this model is controlled by a class label and a control map, not text: it takes no "
                              "prompts")
        return self.inner.parse(texts)
