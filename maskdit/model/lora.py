"""LoRA (Hu et al., 2021): adapt a trained DiT by low-rank updates ``W + (alpha / rank) * up @ down`` on chosen
linear layers of its blocks, the base weights frozen.

A LoRA run (``lora.rank=R`` with ``init_from=BASE``) trains only ``up`` and ``down``: ``up`` starts at zero, so
step 0 computes exactly what the base computes. Its checkpoints hold only the adapter (``*.lora_down.weight``,
``*.lora_up.weight`` under the adapted layer's name) and name their base by path and content hash
(:func:`fingerprint`): an adapter loaded onto other weights is refused, because it would silently compute
something else. Sampling merges an adapter into the weights (:func:`merge`, any number of them, each with a
scale), so an adapted model samples as fast as the base and every accelerator (int8, caching) sees plain layers.

The base is the base run's EMA weights, the ones it samples with: the adapter learns a correction to what the
base generates, and the merged model is that base plus the correction.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskdit.checkpoint import load_weights
from maskdit.errors import CheckpointError, ConfigError, check_keys
from maskdit.model.blocks import Attention, Mlp, SwiGLU
from maskdit.model.text import CrossAttention
from maskdit.registry import Registry, one_of

#: name -> ``selects(qualified name, parent module)``: which linear layers of the blocks ``lora.targets`` adapts.
LORA_TARGETS: Registry[Callable[[str, nn.Module], bool]] = Registry("LoRA target", key="lora.targets")
LORA_TARGETS.add("attention", lambda name, parent: isinstance(parent, (Attention, CrossAttention)),
                 "the attention projections: self-attention's qkv and proj, cross-attention's q, kv and proj "
                 "(the text stream's too)")
LORA_TARGETS.add("mlp", lambda name, parent: isinstance(parent, (Mlp, SwiGLU)),
                 "the feed-forward layers fc1 and fc2 (dense MLPs; experts of a mixture are not adapted)")
LORA_TARGETS.add("adaln", lambda name, parent: ".adaLN_modulation." in f".{name}",
                 "each block's adaLN modulation (how time and condition steer it)")
LORA_TARGETS.add("all", lambda name, parent: any(LORA_TARGETS[t](name, parent) for t in ("attention", "mlp", "adaln")),
                 "attention, mlp and adaln together")

DOWN, UP = "lora_down", "lora_up"
BASE_WEIGHTS = "ema.safetensors"  #: the base's weights a LoRA run adapts: the ones it samples with


@dataclass
class LoraConfig:
    rank: int = 0  #: 0 = off; R > 0 trains rank-R updates on the frozen weights of init_from's run
    alpha: float | None = None  #: the updates are scaled by alpha / rank (default alpha = rank: scale 1)
    targets: list[str] = field(default_factory=lambda: ["attention"])  #: lora.targets: LORA_TARGETS names

    def validate(self) -> None:
        check_keys("lora.", self, [
            ("rank", self.rank >= 0, "a non-negative whole number (0 = no LoRA)"),
            ("alpha", self.alpha is None or self.alpha > 0, "null (= rank) or positive"),
            ("targets", bool(self.targets) and all(t in LORA_TARGETS for t in self.targets),
             "a non-empty list of " + one_of(LORA_TARGETS.names())),
        ])

    @property
    def scale(self) -> float:
        return (self.alpha or self.rank) / max(1, self.rank)


class LoRALinear(nn.Module):
    """A linear layer's frozen ``weight`` and ``bias`` (kept under their own names, so the base's state dict
    still fits) plus a trainable update ``scale * lora_up(lora_down(x))`` that starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.in_features, self.out_features, self.scale = base.in_features, base.out_features, scale
        self.weight, self.bias = base.weight, base.bias
        self.lora_down = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_up = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * self.lora_up(self.lora_down(x))


def targets(model: nn.Module, names: list[str]) -> Iterator[tuple[str, nn.Module, str, nn.Linear]]:
    """``(qualified name, parent, attribute, layer)`` of every linear layer in ``model.blocks`` that one of the
    ``names`` (:data:`LORA_TARGETS`) selects."""
    selects = [LORA_TARGETS[n] for n in names]
    for parent_name, parent in model.blocks.named_modules(prefix="blocks"):
        for attr, child in parent.named_children():
            name = f"{parent_name}.{attr}"
            if isinstance(child, nn.Linear) and not isinstance(parent, LoRALinear) \
                    and any(s(name, parent) for s in selects):
                yield name, parent, attr, child


def add_lora(model: nn.Module, cfg: LoraConfig) -> int:
    """Freeze ``model`` and give the layers ``cfg.targets`` selects a trainable rank-``cfg.rank`` update;
    returns how many layers were adapted."""
    model.requires_grad_(False)
    found = list(targets(model, cfg.targets))
    if not found:
        raise ConfigError(f"config key lora.targets={cfg.targets} selects no linear layer of this model's blocks: "
                          f"choose among {one_of(LORA_TARGETS.names())}")
    for _, parent, attr, layer in found:
        setattr(parent, attr, LoRALinear(layer, cfg.rank, cfg.scale))
    return len(found)


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key is a LoRA update's (what a LoRA run's checkpoint holds)."""
    return f".{DOWN}." in key or f".{UP}." in key


def merge(model: nn.Module, adapter: dict[str, torch.Tensor], scale: float, source: str) -> None:
    """Add ``scale * up @ down`` of every layer in ``adapter`` (a LoRA checkpoint's tensors, the run's
    ``alpha / rank`` times the user's scale already in ``scale``) into the weights of the plain ``model``."""
    layers = dict(model.named_modules())
    pairs = sorted({k.rsplit(".", 2)[0] for k in adapter})
    for name in pairs:
        down, up = adapter.get(f"{name}.{DOWN}.weight"), adapter.get(f"{name}.{UP}.weight")
        layer = layers.get(name)
        if down is None or up is None or not isinstance(layer, nn.Linear) or down.dim() != 2 or up.dim() != 2 \
                or up.shape[1] != down.shape[0] or (up.shape[0], down.shape[1]) != tuple(layer.weight.shape):
            raise CheckpointError(f"{source} holds a LoRA update for {name} that does not fit this model: it is an "
                                  "adapter of another model; apply it to the run it was trained on")
        with torch.no_grad():
            delta = up.to(torch.float64) @ down.to(torch.float64)
            layer.weight.add_((scale * delta).to(device=layer.weight.device, dtype=layer.weight.dtype))


def fingerprint(weights: str | Path) -> str:
    """The SHA-256 of a weights file: what a LoRA run records of its base and checks before it loads."""
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_info(ckpt: Path) -> dict[str, str]:
    """What a LoRA run records of its base checkpoint ``ckpt``: where it is and its EMA weights' hash."""
    ckpt = Path(ckpt).resolve()
    return {"base": str(ckpt), "sha256": fingerprint(ckpt / BASE_WEIGHTS)}


def load_base(model: nn.Module, lora: dict, what: str) -> None:
    """Load the base weights a LoRA run (``what``; ``lora``: its saved ``lora`` facts) was trained on into the
    plain ``model``, refusing a base that is gone or whose weights changed."""
    if not isinstance(lora, dict) or not all(isinstance(lora.get(k), str) for k in ("base", "sha256")) \
            or not isinstance(lora.get("scale"), (int, float)):
        raise CheckpointError(f"{what}: its config.json's lora entry is damaged (it needs base, sha256 and scale)")
    weights = Path(lora["base"]) / BASE_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{what} is a LoRA adapter of {lora['base']}, which is gone: put that checkpoint back "
                              "(an adapter holds only its updates), or merge adapters while the base exists "
                              "(maskdit lora merge)")
    if fingerprint(weights) != lora["sha256"]:
        raise CheckpointError(f"{what} is a LoRA adapter of {lora['base']}, whose weights changed since it was "
                              "trained (their SHA-256 differs): the adapter would compute something else on them; "
                              "use the base it was trained on")
    load_weights(model, weights)
