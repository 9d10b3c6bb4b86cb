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

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskdit.checkpoint import load_weights
from maskdit.errors import CheckpointError, ConfigError, check_keys
from maskdit.files import file_sha256
from maskdit.model.attention import Attention
from maskdit.model.blocks import Mlp, SwiGLU
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

DOWN, UP, GAIN, SHIFT = "lora_down", "lora_up", "lora_gain", "lora_shift"
BASE_WEIGHTS = "ema.safetensors"  #: the base's weights a LoRA run adapts: the ones it samples with


@dataclass
class LoraConfig:
    rank: int = 0  #: R > 0 trains rank-R updates on the frozen weights of init_from's run (0: none)
    alpha: float | None = None  #: the updates are scaled by alpha / rank (default alpha = rank: scale 1)
    targets: list[str] = field(default_factory=lambda: ["attention"])  #: lora.targets: LORA_TARGETS names
    affine: bool = False  #: also a per-channel gain and shift on each adapted layer's output (Diffscaler)

    def validate(self) -> None:
        check_keys("lora.", self, [
            ("rank", self.rank >= 0, "a non-negative whole number (0 = no low-rank update)"),
            ("alpha", self.alpha is None or self.alpha > 0, "null (= rank) or positive"),
            ("targets", bool(self.targets) and all(t in LORA_TARGETS for t in self.targets),
             "a non-empty list of " + one_of(LORA_TARGETS.names())),
        ])

    @property
    def on(self) -> bool:
        """Whether the run adapts its base (a low-rank update, a per-channel affine, or both)."""
        return self.rank > 0 or self.affine

    @property
    def scale(self) -> float:
        return (self.alpha or self.rank) / max(1, self.rank)


class LoRALinear(nn.Module):
    """A linear layer's frozen ``weight`` and ``bias`` (kept under their own names, so the base's state dict
    still fits) plus trainable updates that start as the identity: a low-rank ``scale * lora_up(lora_down(x))``
    (``rank`` > 0; ``lora_up`` starts at zero) and, with ``affine``, Diffscaler's per-channel ``lora_gain`` (1)
    and ``lora_shift`` (0) on the output, which rescale what the base's subspaces already compute."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, affine: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.scale = base.in_features, base.out_features, scale
        self.weight, self.bias = base.weight, base.bias
        device = base.weight.device
        self.lora_down = nn.Linear(base.in_features, rank, bias=False, device=device) if rank else None
        self.lora_up = nn.Linear(rank, base.out_features, bias=False, device=device) if rank else None
        if rank:
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_up.weight)
        self.lora_gain = nn.Parameter(torch.ones(base.out_features, device=device)) if affine else None
        self.lora_shift = nn.Parameter(torch.zeros(base.out_features, device=device)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.lora_up is not None:
            out = out + self.scale * self.lora_up(self.lora_down(x))
        if self.lora_gain is not None:
            out = out * self.lora_gain + self.lora_shift
        return out


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
    """Freeze ``model`` and give the layers ``cfg.targets`` selects their trainable updates (rank ``cfg.rank``,
    and with ``cfg.affine`` a per-channel gain and shift); returns how many layers were adapted."""
    model.requires_grad_(False)
    found = list(targets(model, cfg.targets))
    if not found:
        raise ConfigError(f"config key lora.targets={cfg.targets} selects no linear layer of this model's blocks: "
                          f"choose among {one_of(LORA_TARGETS.names())}")
    for _, parent, attr, layer in found:
        setattr(parent, attr, LoRALinear(layer, cfg.rank, cfg.scale, cfg.affine))
    return len(found)


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key is an adapter's (what a LoRA run's checkpoint holds)."""
    return ".lora_" in key


def _layer_of(key: str) -> str:
    """``blocks.0.attn.qkv.lora_down.weight`` / ``blocks.0.attn.qkv.lora_gain`` -> ``blocks.0.attn.qkv``."""
    return key[:key.index(".lora_")]


def merge(model: nn.Module, adapter: dict[str, torch.Tensor], scale: float, strength: float, source: str) -> None:
    """Fold the updates in ``adapter`` (a LoRA run's tensors) into the weights of the plain ``model``, each
    layer's ``W x + b`` becoming ``g * ((W + s * up @ down) x + b) + h`` with ``s = scale * strength`` (``scale``:
    the run's ``alpha / rank``) and the gain and shift moved ``strength`` of the way from the identity (1, 0):
    ``strength`` 1 is the adapted model, 0 the base."""
    layers = dict(model.named_modules())
    for name in sorted({_layer_of(k) for k in adapter}):
        down, up = adapter.get(f"{name}.{DOWN}.weight"), adapter.get(f"{name}.{UP}.weight")
        gain, shift = adapter.get(f"{name}.{GAIN}"), adapter.get(f"{name}.{SHIFT}")
        layer = layers.get(name)
        out, inp = tuple(layer.weight.shape) if isinstance(layer, nn.Linear) else (-1, -1)
        fits = isinstance(layer, nn.Linear) and (down is None) == (up is None) and (gain is None) == (shift is None) \
            and (down is None or (down.dim() == up.dim() == 2 and up.shape[1] == down.shape[0]
                                  and (up.shape[0], down.shape[1]) == (out, inp))) \
            and (gain is None or tuple(gain.shape) == tuple(shift.shape) == (out,)) \
            and (gain is None or layer.bias is not None) \
            and len([k for k in adapter if _layer_of(k) == name]) == 2 * (down is not None) + 2 * (gain is not None)
        if not fits:
            raise CheckpointError(f"{source} holds a LoRA update for {name} that does not fit this model: it is an "
                                  "adapter of another model; apply it to the run it was trained on")
        with torch.no_grad():
            weight, bias = layer.weight.to(torch.float64), layer.bias.to(torch.float64) if layer.bias is not None \
                else None
            if down is not None:
                weight = weight + scale * strength * (up.to(weight) @ down.to(weight))
            if gain is not None:
                g = 1 + strength * (gain.to(weight) - 1)
                weight, bias = g[:, None] * weight, g * bias + strength * shift.to(weight)
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)


def base_info(ckpt: Path) -> dict[str, str]:
    """What a LoRA run records of its base checkpoint ``ckpt``: where it is and its EMA weights' hash."""
    ckpt = Path(ckpt).resolve()
    return {"base": str(ckpt), "sha256": file_sha256(ckpt / BASE_WEIGHTS)}


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
    if file_sha256(weights) != lora["sha256"]:
        raise CheckpointError(f"{what} is a LoRA adapter of {lora['base']}, whose weights changed since it was "
                              "trained (their SHA-256 differs): the adapter would compute something else on them; "
                              "use the base it was trained on")
    load_weights(model, weights)
