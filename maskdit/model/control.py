"""How a control map enters the backbone: the kinds of :data:`CONTROL_KINDS` (``control.kind``).

The map itself comes from :mod:`maskdit.conditions.control` (``control.signal``). Each kind is a module the DiT
holds as ``control``, registered after every base layer (``init_from`` carries Adam's moments by index). Its
:meth:`~ControlKind.attach` runs once per call, after the image tokens are embedded: it may change them
(``concat``), or hand the blocks what to add after each one (:attr:`Context.residuals`, ``controlnet``) or extra
keys and values to attend to (:attr:`Context.memory`, ``tokens`` and ``adapter``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskdit.conditions.control import ControlInput, parse_signal
from maskdit.errors import ConfigError, check_keys
from maskdit.grid import patchify
from maskdit.model.attention import Memory
from maskdit.model.blocks import Stream, zero_init_adaln
from maskdit.registry import Registry, one_of


class ControlKind(nn.Module):
    """How a control map enters the backbone (:data:`CONTROL_KINDS`). :meth:`attach` runs once per call, after the
    image tokens are embedded and before any block. ``scale`` (1; ``--control-scale`` at sampling) weights what
    the control adds; ``frozen_base``: only the kind's own parameters train (the base stays as ``init_from`` left
    it)."""

    frozen_base = False

    def __init__(self, model: nn.Module, channels: int):
        super().__init__()
        self.patch = tuple(model.patch_size)
        self.patch_dim = channels * math.prod(self.patch)
        self.scale = 1.0
        self.options: dict[str, Any] = {}  #: what rebuilds it (``DiT.config`` records them as ``control_options``)

    def patches(self, control: ControlInput, layer: nn.Linear) -> torch.Tensor:
        """The control map's patches ``(B, N, Cc * prod(patch))`` embedded by ``layer``."""
        return layer(patchify(control.map, self.patch).to(layer.weight.dtype))

    def attach(self, model: nn.Module, tokens: torch.Tensor, c: Any) -> tuple[torch.Tensor, Any]:
        """The image tokens ``(B, N, D)`` and the context the blocks then see."""
        raise NotImplementedError

    def start_from_base(self, model: nn.Module) -> None:
        """Called once the base's weights are loaded into ``model`` (a trained base being taught control)."""


#: name -> the :class:`ControlKind` that takes the control map into the backbone (``control.kind``); facts:
#: ``options`` (the ``control.*`` keys it is built with).
CONTROL_KINDS: Registry[type[ControlKind]] = Registry("control kind", key="control.kind")


@CONTROL_KINDS.register("concat", "extra zero-initialised input channels: the map's patches embedded and added to "
                        "the image tokens; every weight trains (Flux's Canny/Depth models)", options=())
class ControlEmbed(ControlKind):
    """``concat``: the map's patches embedded by a zero-initialised linear map and added to the image tokens."""

    def __init__(self, model: nn.Module, channels: int):
        super().__init__(model, channels)
        self.proj = nn.Linear(self.patch_dim, model.hidden_size)

    def zero_init(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def attach(self, model: nn.Module, tokens: torch.Tensor, c: Any) -> tuple[torch.Tensor, Any]:
        return tokens + (self.scale * self.patches(c.control, self.proj)).to(tokens.dtype), c


@CONTROL_KINDS.register("controlnet", "a trainable copy of base blocks (control.blocks: the first N, or a list of "
                        "places, RelaCtrl) reads the image tokens plus the map's; zero-initialised projections add "
                        "its outputs after those base blocks, the base frozen (ControlNet, PixArt's)",
                        options=("blocks",))
class ControlBranch(ControlKind):
    """A ControlNet branch. ``blocks``: ``N`` copies the base's first ``N`` blocks (ControlNet); a list of block
    indices copies those (RelaCtrl's relevance-guided placement: fewer control layers, where control matters). The
    copies (weights copied from the base when it is loaded) run in order on the image tokens plus the map's
    zero-initialised embedding; after the copy of base block ``i``, a zero-initialised linear map of its output is
    added to the output of base block ``i`` (dropped and routed tokens take theirs by grid index). At start the
    branch adds exactly nothing. ``skip`` (a set of places; empty) leaves those residuals out: what removing one
    control layer costs is its relevance (``benchmarks/control_relevance.py``)."""

    frozen_base = True

    def __init__(self, model: nn.Module, channels: int, blocks: int | Sequence[int] = 2):
        super().__init__(model, channels)
        self.places = control_places(blocks, model.depth)
        self.options = {"blocks": blocks}
        shared = [m for m in (getattr(model, "t_block", None), model.rope) if m is not None]
        memo = {id(m): m for m in shared}  # shared layers stay shared, not copied
        self.embed = nn.Linear(self.patch_dim, model.hidden_size)
        self.blocks = nn.ModuleList(copy.deepcopy(model.blocks[i], memo={**memo}) for i in self.places)
        self.outs = nn.ModuleList(nn.Linear(model.hidden_size, model.hidden_size) for _ in self.places)
        self.skip: set[int] = set()

    def zero_init(self) -> None:
        for layer in (self.embed, *self.outs):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for block in self.blocks:
            zero_init_adaln(block)

    def start_from_base(self, model: nn.Module) -> None:
        with torch.no_grad():
            for copied, place in zip(self.blocks, self.places):
                for mine, base in zip(copied.parameters(), model.blocks[place].parameters()):
                    mine.copy_(base)

    def attach(self, model: nn.Module, tokens: torch.Tensor, c: Any) -> tuple[torch.Tensor, Any]:
        h = tokens + self.patches(c.control, self.embed).to(tokens.dtype)
        residuals: list[torch.Tensor | None] = [None] * (self.places[-1] + 1)
        for place, block, out in zip(self.places, self.blocks, self.outs):
            h = block(h, c)
            h = h[0] if isinstance(h, tuple) else h  # a joint block also returns the text it updated
            if place not in self.skip:
                residuals[place] = self.scale * out(h)
        return tokens, dataclasses.replace(c, residuals=tuple(residuals))


def control_places(blocks: int | Sequence[int], depth: int) -> tuple[int, ...]:
    """The base blocks a ControlNet branch copies: ``N`` -> the first ``N``; a list -> those, sorted."""
    if type(blocks) is int:
        if not 1 <= blocks <= depth:
            raise ConfigError(f"config key control.blocks={blocks}: the branch copies 1 to model.depth={depth} of the "
                              "base's first blocks")
        return tuple(range(blocks))
    listed = isinstance(blocks, (list, tuple))
    places = sorted(set(blocks)) if listed and all(type(i) is int for i in blocks) else []
    if not places or len(places) != len(blocks) or not 0 <= places[0] <= places[-1] < depth:
        raise ConfigError(f"config key control.blocks={list(blocks) if listed else blocks!r}: give a count 1 to "
                          f"{depth} or a list of distinct block indices 0 to {depth - 1}, e.g. [0, 2, 4]")
    return tuple(places)


class LowRank(nn.Module):
    """``up(down(x))`` of rank ``rank``, ``up`` zero-initialised: a LoRA update that starts at nothing."""

    def __init__(self, width: int, out: int, rank: int):
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, out, bias=False)

    def zero_init(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class MemoryKind(ControlKind):
    """A kind whose control reaches the blocks as extra keys and values (:attr:`Context.memory`) that depend on the
    map and label alone, not on the noisy image or the time. While :func:`condition_cache` is open (sampling opens
    it for each batch) they are computed once per map and label and reused by every step; ``caching = False``
    recomputes them at each call (for comparison). ``separate``: attended in a second attention (decoupled)
    rather than in the image tokens' own softmax."""

    frozen_base = True
    separate = False

    def __init__(self, model: nn.Module, channels: int):
        super().__init__(model, channels)
        self.caching = True
        self.cache: dict[tuple[int, ...], tuple[ControlInput, tuple[Any, ...]]] | None = None

    def memory(self, model: nn.Module, control: ControlInput) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Each block's keys and values ``((k, v), ...)``, each ``(B, heads, M, head_dim)``."""
        raise NotImplementedError

    def attach(self, model: nn.Module, tokens: torch.Tensor, c: Any) -> tuple[torch.Tensor, Any]:
        control = c.control
        key = tuple(control.map.shape)
        held = None if self.cache is None or not self.caching else self.cache.get(key)
        if held is not None and torch.equal(held[0].map, control.map) and torch.equal(held[0].clean, control.clean):
            memory = held[1]
        else:
            memory = self.memory(model, control)
            if self.cache is not None and self.caching:
                self.cache[key] = (control, memory)
        return tokens, dataclasses.replace(c, memory=tuple(Memory(k, v, self.scale, self.separate) for k, v in memory))


@CONTROL_KINDS.register("tokens", "condition tokens (EasyControl): the map's tokens pass the frozen base beside the "
                        "image tokens, attend only to themselves, with a LoRA of rank control.rank on their q/k/v; "
                        "their keys and values are computed once per sample and cached across sampling steps",
                        options=("rank",))
class ConditionTokens(MemoryKind):
    """EasyControl's condition tokens. The map's patches, embedded and placed at the image's positions, pass every
    base block conditioned on time 0 (they are clean); they attend only to themselves, so each block's keys and
    values of them depend on the map and label alone (cached while sampling). Image tokens attend to their own
    keys plus these (one softmax). Only the embedding and a LoRA on the condition tokens' q/k/v train; image tokens
    see the base's weights. ``scale`` multiplies the attention image tokens pay the condition (a logit offset of
    ``log(scale)``): 0 is the base model exactly."""

    def __init__(self, model: nn.Module, channels: int, rank: int = 16):
        super().__init__(model, channels)
        if not 1 <= rank <= model.hidden_size:
            raise ConfigError(f"config key control.rank={rank}: the condition tokens' LoRA rank must be 1 to the "
                              f"model width {model.hidden_size}")
        self.options = {"rank": rank}
        width = model.hidden_size
        self.embed = nn.Linear(self.patch_dim, width)
        self.lora = nn.ModuleList(LowRank(width, 3 * width, rank) for _ in range(model.depth))

    def start_from_base(self, model: nn.Module) -> None:
        if self.embed.weight.shape == model.patch_embed.weight.shape:  # the map reads like an image: start so
            with torch.no_grad():
                self.embed.weight.copy_(model.patch_embed.weight)
                self.embed.bias.copy_(model.patch_embed.bias)

    def memory(self, model: nn.Module, control: ControlInput) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        h = self.patches(control, self.embed) + model.pos_embed.to(self.embed.weight.dtype)
        out = []
        for block, lora in zip(model.blocks, self.lora):
            h, kv = block(h, Stream(control.clean, lora))
            out.append(kv)
        return tuple(out)


@CONTROL_KINDS.register("adapter", "image prompts (IP-Adapter): a frozen image encoder's tokens (control.encoder: "
                        "maskdit encoder train's or a local Hugging Face vision model) read by a decoupled "
                        "cross-attention in every block, zero-initialised; the base frozen", options=("encoder",))
class ImagePrompt(MemoryKind):
    """IP-Adapter's decoupled cross-attention. A frozen encoder (loaded from ``encoder``, a directory; kept out of
    the checkpoint and fingerprinted, so a run refuses an encoder that changed) turns the map, usually the prompt
    image itself (``control.signal=image``), into tokens; a trained projection and layer norm bring them to the
    model's width, and each block gets its own key and value projections of them. Each block's queries attend to
    these in a second attention whose output is added to self-attention's, times ``scale`` (``--control-scale``);
    the value projections start at zero, so a fresh adapter is exactly the base."""

    separate = True

    def __init__(self, model: nn.Module, channels: int, encoder: str | None = None,
                 encoder_sha256: str | None = None):
        super().__init__(model, channels)
        if not encoder:
            raise ConfigError("config key control.kind=adapter reads image prompts through a frozen encoder: set "
                              "control.encoder=DIR (maskdit encoder train DATA --out DIR, or a local Hugging Face "
                              "vision model)")
        from maskdit.training.align import load_encoder

        loaded = load_encoder(encoder, "control.encoder")
        digest = weights_digest(loaded)
        if encoder_sha256 is not None and encoder_sha256 != digest:
            raise ConfigError(f"control.encoder {encoder} is not the encoder this model was trained with (its weights "
                              "changed): restore that encoder, or train the adapter again")
        self.options = {"encoder": str(encoder), "encoder_sha256": digest}  # the fingerprint travels with the run
        self.encoder = [loaded]  # frozen and not a submodule: neither trained nor saved
        with torch.no_grad():
            features = loaded(torch.zeros(1, channels, *model.input_size)).shape[-1]
        width = model.hidden_size
        self.heads = model.num_heads
        self.proj = nn.Sequential(nn.Linear(features, width), nn.LayerNorm(width))
        self.kv = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(model.depth))

    def zero_init(self) -> None:
        width = self.proj[0].out_features
        for kv in self.kv:
            nn.init.zeros_(kv.weight[width:])
            nn.init.zeros_(kv.bias)

    def memory(self, model: nn.Module, control: ControlInput) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        encoder = self.encoder[0].to(control.map.device)
        with torch.no_grad():
            features = encoder(control.map.float())
        h = self.proj(features.to(self.proj[0].weight.dtype))
        b, m, d = h.shape
        return tuple(tuple(kv(h).reshape(b, m, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4))
                     for kv in self.kv)


def weights_digest(module: nn.Module) -> str:
    """The SHA-256 of a module's tensors (names, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def condition_cache(model: nn.Module) -> Iterator[None]:
    """Keep condition tokens' or image prompts' keys and values (:class:`MemoryKind`) for as long as this is open:
    the weights must not change meanwhile (sampling opens it for each batch). Other models are unaffected."""
    kind = getattr(model, "control", None)
    if not isinstance(kind, MemoryKind):
        yield
        return
    kind.cache = {}
    try:
        yield
    finally:
        kind.cache = None


@dataclass
class ControlConfig:
    signal: str | None = None  #: a CONTROL_SIGNALS spec (edges, lowres:F, blur:S); null: no control
    kind: str = "concat"  #: a CONTROL_KINDS name: how the map enters the backbone
    blocks: int | list[int] = 2  #: kind=controlnet: copy the first N base blocks, or these (a list: RelaCtrl)
    rank: int = 16  #: kind=tokens: the rank of the condition tokens' q/k/v LoRA
    encoder: str | None = None  #: kind=adapter: the frozen image encoder's directory

    def validate(self) -> None:
        check_keys("control.", self, [
            ("kind", self.kind in CONTROL_KINDS, "one of " + one_of(CONTROL_KINDS.names())),
            ("rank", isinstance(self.rank, int) and self.rank >= 1, "a whole number of at least 1"),
        ])
        if self.signal is not None:
            parse_signal(self.signal)

    @property
    def options(self) -> dict[str, Any]:
        """What the kind is built with (its registered ``options``), for the model."""
        return {key: getattr(self, key) for key in CONTROL_KINDS.entry(self.kind).facts["options"]}
