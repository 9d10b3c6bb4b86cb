"""The run config's ``model`` section: what a user sets, checked beside the registries it names, and turned into
:class:`~maskdit.model.dit.DiT`'s constructor arguments without listing them again.

A model option is a DiT constructor argument (documented in its docstring) plus a field here of the same name
(the key a user writes, with its comment) and its check in :meth:`ModelConfig.validate`. :func:`model_arguments`
passes every field whose name DiT takes, and :attr:`DiT.config` records the arguments, so nothing else lists them.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from maskdit.conditions.base import CONDITIONERS
from maskdit.conditions.text import MAX_LENGTH
from maskdit.errors import ConfigError, check_keys
from maskdit.model.attention import ATTENTIONS
from maskdit.model.blocks import MLPS, NORMS
from maskdit.model.dit import MODULATIONS, POS_LAYOUTS, POSITIONS, PRESETS, DiT
from maskdit.model.moe import ROUTINGS
from maskdit.model.precond import PRECONDS
from maskdit.model.text import TEXT_MODES
from maskdit.registry import one_of


@dataclass
class MoEConfig:
    experts: int = 0  #: routed experts per MoE feed-forward; 0 = dense blocks
    shared: int = 0  #: always-on shared experts (DiT-MoE)
    top_k: int = 2  #: experts each token is routed to
    every: int = 1  #: every N-th block (1 = all) gets the mixture
    capacity: float = 2.0  #: slots per expert, in multiples of an even share; assignments past it are not routed
    balance: float = 0.01  #: weight of the load-balance loss (token routing)
    routing: str = "token"  #: token (each token picks top_k experts) | expert (each expert picks its tokens)
    time_gate: bool = False  #: the router also sees the time/label conditioning (Switch-DiT, MoDE)


@dataclass
class DecoderConfig:
    width: int = 0  #: MaskDiT's released decoder between the blocks and the final layer (0 = none)
    depth: int = 8
    num_heads: int = 16


@dataclass
class ModelConfig:
    preset: str = "tiny"  #: a name from maskdit.model.dit.PRESETS; the fields below override it
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | list[int] | None = None
    mlp_ratio: float = 4.0
    mixer_depth: int = 0  #: leading blocks that see all tokens before dropping (deferred masking)
    attention: str = "full"  #: full | factorised (VDT; rank-3 grids) | linear | window | proxy | tile (linear cost)
    full_every: int = 0  #: factorised/linear-cost models: every N-th block attends over all tokens (0: none)
    full_blocks: list[int] = field(default_factory=list)  #: factorised/linear-cost models: more full-attention blocks
    window: int | list[int] = 4  #: window/proxy: neighbourhood radius in tokens (or one per axis)
    proxy_size: int | None = None  #: proxy: edge of the cell each proxy token summarises (null: 2 * window)
    linear_conv: int = 5  #: linear: kernel of the depthwise convolution of the values (odd; 0: none)
    tile_global: int = 1  #: tile: leading frames every frame attends to as well
    token_time: bool = False  #: task models: given tokens are conditioned on time 0, the rest on t (per-token time)
    conditional: bool = True  #: use the dataset's labels (False: unconditional model)
    condition: str = "label"  #: a maskdit.conditions CONDITIONERS entry: label | text (captions)
    class_dropout: float = 0.1  #: share of conditions (labels, captions) replaced by the null one (for guidance)
    text: str | None = None  #: how caption tokens enter the blocks: cross | joint | concat (null: cross for text)
    text_length: int | None = None  #: longest caption in tokens (null: the longest training caption)
    text_depth: int = 2  #: the text encoder's transformer layers
    text_double: int | None = None  #: text=joint: leading double-stream blocks (null: half the depth)
    adaln: str = "zero"  #: block modulation: zero (DiT's adaLN-Zero per block) | single (PixArt's shared adaLN-single)
    text_encoder: str | None = None  #: condition=hf: a local Hugging Face text encoder directory (T5, CLIP, an LLM)
    text_prefix: str = ""  #: condition=hf: an instruction put before every caption (LI-DiT's, for decoder LLMs)
    text_refiner: int = 0  #: condition=hf: bidirectional transformer layers on the encoder's tokens (LI-DiT: 2)
    learn_sigma: bool = False  #: ddpm: also predict the variance (DiT's 8-channel head; VLB loss term)
    pos_layout: str | None = None  #: sin-cos table order: xy (DiT, columns first) | axes; null: xy for images
    time_scale: float = 1000.0  #: the time embedding embeds time_offset + time_scale * t (SiT imports: 1 - t)
    time_offset: float = 0.0
    time_freq_shift: float = 0.0  #: sinusoid frequencies 10000^(-i / (128 - shift)): 0 DiT, 1 diffusers' DiT
    mlp_norm_eps: float = 1e-6  #: epsilon of the LayerNorm before each MLP (DiT 1e-6, diffusers' DiT 1e-5)
    norm: str = "layernorm"  #: the blocks' pre-norms: layernorm | rmsnorm
    qk_norm: bool = False  #: RMS-normalise queries and keys in every attention
    mlp: str = "gelu"  #: feed-forward: gelu | swiglu (same parameters)
    pos: str = "sincos"  #: positions: sincos (a fixed table) | rope (axial rotary, by each token's grid index)
    moe: MoEConfig = field(default_factory=MoEConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  #: used at sampling too (MaskDiT imports)
    rel_pos_bias: bool = False  #: a learned bias per head and 2-D token offset in attention (MDT)
    long_skips: int | None = None  #: MDT's layout: U-Net long skips, then this many blocks joining the input
    precond: str | None = None  #: edm: EDM's preconditioning presented as a flow velocity (MaskDiT imports)
    sigma_data: float = 0.5  #: precond=edm: the data's standard deviation

    def validate(self) -> None:
        """Check every ``model.*`` value on its own; rules that involve other sections live in maskdit.config."""
        moe, dec = self.moe, self.decoder
        check_keys("model.", self, [
            ("preset", self.preset in PRESETS, "one of " + one_of(list(PRESETS))),
            ("condition", self.condition in CONDITIONERS, "one of " + one_of(CONDITIONERS.names())),
            ("text", self.text is None or self.text in TEXT_MODES, "null or one of " + one_of(TEXT_MODES.names())),
            ("text_length", self.text_length is None or 1 <= self.text_length <= MAX_LENGTH,
             f"null or in [1, {MAX_LENGTH}]"),
            ("text_depth", self.text_depth >= 0, "non-negative"),
            ("text_double", self.text_double is None or self.text_double >= 0, "null or non-negative"),
            ("text_encoder", self.text_encoder is None or bool(self.text_encoder.strip()), "null or a directory"),
            ("text_refiner", self.text_refiner >= 0, "non-negative"),
            ("adaln", self.adaln in MODULATIONS, "one of " + one_of(MODULATIONS.names())),
            ("pos_layout", self.pos_layout is None or self.pos_layout in POS_LAYOUTS,
             "null or one of " + one_of(list(POS_LAYOUTS))),
            ("time_scale", self.time_scale != 0, "non-zero"),
            ("time_freq_shift", 0 <= self.time_freq_shift <= 1, "in [0, 1]"),
            ("mlp_norm_eps", self.mlp_norm_eps > 0, "positive"),
            ("norm", self.norm in NORMS, "one of " + one_of(list(NORMS))),
            ("mlp", self.mlp in MLPS, "one of " + one_of(list(MLPS))),
            ("pos", self.pos in POSITIONS, "one of " + one_of(list(POSITIONS))),
            ("moe.experts", moe.experts >= 0, "non-negative (0 = dense)"),
            ("moe.shared", moe.shared >= 0, "non-negative"),
            ("moe.top_k", moe.experts == 0 or 1 <= moe.top_k <= moe.experts,
             f"in [1, model.moe.experts={moe.experts}]"),
            ("moe.every", moe.every >= 1, "at least 1"),
            ("moe.capacity", moe.capacity > 0, "positive"),
            ("moe.balance", moe.balance >= 0, "non-negative"),
            ("moe.routing", moe.routing in ROUTINGS, "one of " + one_of(list(ROUTINGS))),
            ("decoder.width", dec.width >= 0 and dec.width % 2 == 0, "0 (none) or an even width"),
            ("decoder.depth", dec.depth >= 1, "at least 1"),
            ("decoder.num_heads", dec.num_heads >= 1 and dec.width % dec.num_heads == 0,
             f"at least 1 and a divisor of model.decoder.width={dec.width}"),
            ("precond", self.precond is None or self.precond in PRECONDS, "null or one of " + one_of(list(PRECONDS))),
            ("sigma_data", self.sigma_data > 0, "positive"),
            ("long_skips", self.long_skips is None or self.long_skips >= 0, "null or non-negative"),
        ])

    def validate_shape(self) -> None:
        """The size fields, checked after the cross-section rules that explain a bad value better."""
        sizes = _as_list(self.patch_size) if self.patch_size is not None else []
        check_keys("model.", self, [
            ("depth", self.depth is None or self.depth >= 1, "null or at least 1"),
            ("hidden_size", self.hidden_size is None or (self.hidden_size >= 2 and self.hidden_size % 2 == 0),
             "null or an even number of at least 2"),
            ("num_heads", self.num_heads is None or self.num_heads >= 1, "null or at least 1"),
            ("patch_size", self.patch_size is None or (min(sizes, default=0) >= 1 and 1 <= len(sizes) <= 3),
             "null, a positive int or a list of 1-3 positive ints"),
            ("class_dropout", 0 <= self.class_dropout < 1, "in [0, 1)"),
            ("mlp_ratio", self.mlp_ratio > 0, "positive"),
            ("mixer_depth", self.mixer_depth >= 0, "non-negative (and below the model depth)"),
            ("full_every", self.full_every >= 0, "0 (no full blocks) or a positive block period"),
            ("attention", self.attention in ATTENTIONS, "one of " + one_of(list(ATTENTIONS))),
            ("window", min(_as_list(self.window), default=-1) >= 0 and max(_as_list(self.window)) >= 1,
             "a radius of at least 1, or a list of non-negative radii (one per axis), one at least 1"),
            ("proxy_size", self.proxy_size is None or self.proxy_size >= 1, "null or at least 1"),
            ("linear_conv", self.linear_conv == 0 or (self.linear_conv > 0 and self.linear_conv % 2 == 1),
             "0 (no convolution) or an odd kernel size"),
            ("tile_global", self.tile_global >= 0, "non-negative"),
        ])

    def architecture(self) -> dict[str, Any]:
        """The preset's size fields with the overrides applied; refuses sizes that cannot build (heads that do
        not divide the width, a patch mixer as deep as the model, a mixture of experts no block gets)."""
        fields = dict(PRESETS[self.preset])
        for key in ("depth", "hidden_size", "num_heads", "patch_size"):
            if getattr(self, key) is not None:
                fields[key] = getattr(self, key)
        if fields["hidden_size"] % fields["num_heads"]:
            raise ConfigError(f"config key model.num_heads={fields['num_heads']} must divide model.hidden_size="
                              f"{fields['hidden_size']}")
        if self.mixer_depth >= fields["depth"]:
            raise ConfigError(f"config key model.mixer_depth must be below model.depth={fields['depth']}, "
                              f"got {self.mixer_depth}")
        return fields

    def check_experts(self, depth: int) -> None:
        """A mixture of experts that some block gets, and options that need routed experts only with them."""
        moe = self.moe
        if moe.experts > 0 and moe.every > depth:
            raise ConfigError(f"config key model.moe.every={moe.every} is larger than model.depth={depth}: "
                              "no block would get the mixture of experts (every N-th block does); use model.moe.every "
                              f"in [1, {depth}], or model.moe.experts=0 for a dense model")
        for key, value, on in (("shared", moe.shared, moe.shared > 0), ("time_gate", "true", moe.time_gate)):
            if on and moe.experts == 0:
                raise ConfigError(f"config key model.moe.{key}={value} needs routed experts, but model.moe.experts=0 "
                                  "builds dense blocks (no mixture at all): set model.moe.experts to at least 1, or "
                                  f"leave model.moe.{key} out")


def model_arguments(model: ModelConfig, **facts: Any) -> dict[str, Any]:
    """DiT's constructor arguments from the ``model`` section: every field whose name DiT takes, the preset's
    sizes, the nested sections as dicts (``None`` when off), then ``facts`` the data and the recipe decide
    (``input_size``, ``in_channels``, ``num_classes``, ``task_conditioning``, ``fusion``, ``route``)."""
    takes = inspect.signature(DiT).parameters
    args = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name in takes}
    args.update(model.architecture())
    args["moe"] = dataclasses.asdict(model.moe) if model.moe.experts > 0 else None
    args["decoder"] = dataclasses.asdict(model.decoder) if model.decoder.width > 0 else None
    unknown = set(facts) - set(takes)
    if unknown:
        raise TypeError(f"DiT takes no argument {', '.join(sorted(unknown))}")
    return {**args, **facts}


def _as_list(value: Any) -> list[int]:
    return [value] if isinstance(value, int) else list(value)
