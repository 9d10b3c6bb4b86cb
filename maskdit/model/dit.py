"""The diffusion transformer (DiT) backbone, for token grids of rank 1-3.

    grid (B, C, *S) --patchify+linear--> tokens (B, N, D) + sin-cos positions
      --first ``mixer_depth`` blocks on all tokens (the patch mixer of deferred masking)
      --keep_idx (optional)--> kept tokens (B, K, D)
      --remaining adaLN-Zero blocks conditioned on t and y--> final layer --> (B, K, C*prod(patch))
      --unpatchify (when nothing was dropped)--> prediction grid (B, C, *S)

The whole configuration is in the constructor; :attr:`DiT.config` returns it as a JSON-ready dict and
:meth:`DiT.from_config` rebuilds the model from it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from maskdit.conditions.base import CONDITIONERS, Conditioner
from maskdit.conditions.control import ControlInput, Controlled, check_fits, signal_channels
from maskdit.errors import ConfigError
from maskdit.grid import as_patch_size, patchify, region_indices, sincos_pos_embed, token_grid_shape, unpatchify
from maskdit.model.attention import ATTENTIONS, AxialRoPE, TokenLayout, attention_spec
from maskdit.model.blocks import (
    MLPS,
    NORMS,
    BlockOptions,
    Context,
    DiTBlock,
    FactorisedDiTBlock,
    FinalLayer,
    SharedModulation,
    SparseDenseFusion,
    TableModulation,
    TimestepEmbedder,
    zero_init_adaln,
)
from maskdit.model.control import CONTROL_KINDS
from maskdit.model.decoders import DecoderHead
from maskdit.model.discrete import TokenEmbedding
from maskdit.model.moe import MoESpec, noise_level
from maskdit.model.paths import PATHS, check_fusion_route, check_tread_route, path_of
from maskdit.model.precond import PRECONDS, EDMPrecond
from maskdit.model.text import TEXT_MODES
from maskdit.registry import Registry

#: Backbone sizes: (depth, hidden_size, num_heads). DiT's S/B/L/XL plus a CPU-sized ``tiny``.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (6, 128, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
#: Named presets: ``tiny`` (patch 2) and ``DiT-{S,B,L,XL}/{2,4,8}``.
PRESETS: Registry[dict[str, Any]] = Registry("model preset", key="model.preset")
PRESETS.add("tiny", {"depth": 6, "hidden_size": 128, "num_heads": 4, "patch_size": 2}, "6 blocks of width 128, patch 2")
for _size, (_depth, _hidden, _heads) in SIZES.items():
    if _size != "tiny":
        for _patch in (2, 4, 8):
            PRESETS.add(f"DiT-{_size}/{_patch}", {"depth": _depth, "hidden_size": _hidden, "num_heads": _heads,
                                                  "patch_size": _patch}, f"DiT's {_size} size with patch {_patch}")


#: How tokens know where they are (DiT's ``pos``).
POSITIONS: Registry[None] = Registry("position kind", key="model.pos")
POSITIONS.add("sincos", None, "a fixed sin-cos table added to the tokens (DiT)")
POSITIONS.add("learned", None, "the sin-cos table as a trained parameter (MDT)")
POSITIONS.add("rope", None, "axial rotary positions inside attention, by each token's grid index")
#: The sin-cos table's axis order (DiT's ``pos_layout``).
POS_LAYOUTS: Registry[bool] = Registry("position layout", key="model.pos_layout")
POS_LAYOUTS.add("xy", True, "the last axis first (DiT, diffusers: columns then rows)")
POS_LAYOUTS.add("axes", False, "axis order (rows then columns; frames first for video)")
#: How blocks get their shift, scale and gate from ``c`` (DiT's ``adaln``): name -> ``install(model)``.
MODULATIONS: Registry[Any] = Registry("modulation", key="model.adaln")


@MODULATIONS.register("zero", "adaLN-Zero: a SiLU + linear per block, zero-initialised (DiT)")
def _adaln_zero(model: nn.Module) -> None:
    """The blocks' own modulation MLPs, as built."""


@MODULATIONS.register("single", "adaLN-single: one shared SiLU + linear and a learned table per block (PixArt-alpha)")
def _adaln_single(model: nn.Module) -> None:
    if any(isinstance(block, FactorisedDiTBlock) for block in model.blocks):
        raise ConfigError("model.adaln=single modulates 6 chunks per block; factorised blocks take 9: use "
                          "model.adaln=zero with model.attention=factorised")
    if model.decoder is not None:
        raise ConfigError("model.adaln=single adds the time embedding to the final layer's table: it needs the final "
                          "layer at the model width (no model.decoder)")
    dim = model.hidden_size
    model.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
    for block in model.blocks:
        for owner in (block, getattr(block, "text", None)):
            if owner is not None:
                owner.adaLN_modulation = SharedModulation(model.t_block, 6, dim)
    model.final_layer.adaLN_modulation = TableModulation(2, dim)


def preset(name: str) -> dict[str, Any]:
    """The architecture fields of a named preset (a copy)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


class DiT(nn.Module):
    """Diffusion transformer with adaLN-Zero blocks.

    Args:
        input_size: spatial size of the grid, e.g. ``(32, 32)`` or ``(T, H, W)``.
        in_channels: channels of the grid; the prediction has the same.
        patch_size: one int or one per axis.
        hidden_size, depth, num_heads, mlp_ratio: transformer width, number of blocks, heads, MLP ratio.
        num_classes: number of class labels; ``0`` makes an unconditional model (``y`` is ignored).
        condition: the :data:`~maskdit.conditions.base.CONDITIONERS` entry that turns ``y`` into the
            conditioning (``"label"``); ``None`` or a conditioner with nothing to condition on (no labels):
            unconditional. Held as ``y_embedder`` (DiT's name, so tensor names match its checkpoints).
        condition_options: what the conditioner is built with besides the width and ``num_classes`` (a text
            conditioner's vocabulary, length and encoder depth; :mod:`maskdit.conditions`).
        text: how the condition's token sequence enters the blocks, a :data:`~maskdit.model.text.TEXT_MODES`
            entry (``cross``, ``joint``, ``concat``); default ``cross`` for a conditioner that gives tokens,
            ``None`` (pooled vector only) otherwise.
        text_double: ``text=joint``: how many leading blocks are double-stream (default half the depth).
        adaln: how blocks get shift, scale and gate from ``c``: ``"zero"`` (DiT's per-block adaLN-Zero MLPs) or
            ``"single"`` (PixArt-alpha's adaLN-single: one shared linear map and a learned table per block; the
            final layer adds its table to ``c`` itself). :data:`MODULATIONS`.
        control: a control signal spec (:data:`~maskdit.conditions.control.CONTROL_SIGNALS`: ``"edges"``,
            ``"lowres:4"``...): ``y`` then packs the label (if any) with the control map, which enters as
            ``control_kind`` says (:data:`~maskdit.model.control.CONTROL_KINDS`: ``concat``, ``controlnet``,
            ``tokens``, ``adapter``), built with ``control_options`` (a branch's ``blocks``, condition tokens'
            ``rank``, an image prompt's ``encoder``). ``None``: no control.
        mixer_depth: how many leading blocks see every token before ``keep_idx`` drops some ("deferred
            masking"); they form the patch mixer. 0 drops right after the patch embedding.
        attention: an :data:`~maskdit.model.attention.ATTENTIONS` entry: ``"full"`` (every block attends over all
            tokens), ``"factorised"`` (VDT: temporal attention across frames, then spatial attention within each
            frame; with dropping it needs the same positions kept in every frame, see
            :func:`maskdit.masks.tube_keep_indices`), or a kind whose cost grows linearly with the tokens:
            ``"linear"``, ``"window"``, ``"proxy"``, ``"tile"`` (:mod:`maskdit.model.attention`).
        full_blocks, full_every: in a factorised or linear-cost model, the blocks that attend over all tokens at
            once (full attention) instead: those listed, and every ``full_every``-th (1-based; 0 for none).
            A full-attention model ignores them (all its blocks are).
        window: ``window`` and ``proxy``: the radius of each token's neighbourhood in tokens, one value or one per
            axis.
        proxy_size: ``proxy``: the edge of the grid cell each proxy token summarises, in tokens (``None``: the
            window's diameter, one proxy per window).
        linear_conv: ``linear``: the kernel size of the depthwise convolution of the values (odd; 0: none).
        tile_global: ``tile``: how many leading frames every frame attends to as well.
        task_conditioning: learn a "given" embedding added to the tokens a condition mask marks as known
            (clean), so one model serves every task of :data:`maskdit.masks.TASKS` (VDT).
        token_time: condition each token on its own time: given tokens on ``t = 0`` (they are clean), the
            rest on the sample's ``t`` (diffusion-forcing style; :class:`~maskdit.model.blocks.Context`).
            Needs ``task_conditioning``; without a condition mask the model is unchanged.
        fusion: ``(START, END)`` makes a SPRINT model: blocks ``0..START-1`` are the dense shallow path,
            ``START..END-1`` the deep path (the only blocks that ``keep_idx`` thins), and a
            :class:`~maskdit.model.blocks.SparseDenseFusion` joins both before the dense blocks ``END..``.
            The output then always covers every token.
        route: ``(START, END)``, the TREAD route the model was trained with. It does not change the
            network (sampling runs every token through every block); it lets ``forward(route=...)`` and
            route-contrast guidance run the model routed as in training.
        learn_sigma: predict ``2 * in_channels`` channels: the objective's target, then the interpolation
            ``v`` in [-1, 1] between the DDPM posterior's smallest and largest log-variance (improved
            DDPM, DiT's 8-channel head).
        pos_layout: the order of the axes' blocks in the sin-cos position table: ``"xy"`` (the last axis
            first: DiT and diffusers, columns then rows) or ``"axes"`` (axis order: rows then columns;
            frames first for video). Default: ``"xy"`` for 2-D grids, ``"axes"`` otherwise; runs saved
            before the choice existed load as ``"axes"``.
        time_scale, time_offset: the time embedding embeds ``time_offset + time_scale * t`` (computed in
            float64, so ``t = k / 1000`` embeds DiT's integer step ``k`` exactly). SiT imports use
            ``1 - t``: offset 1, scale -1.
        time_freq_shift: the sinusoid frequencies are ``10000^(-i / (half - shift))``: 0 in DiT, 1 in
            diffusers' DiT (``downscale_freq_shift``).
        mlp_norm_eps: epsilon of the LayerNorm before each MLP (DiT 1e-6, diffusers' DiT 1e-5).
        norm: the blocks' pre-norms, ``"layernorm"`` (DiT) or ``"rmsnorm"``; qk_norm: RMS-normalise each
            head's queries and keys (learned scale); mlp: ``"gelu"`` (DiT) or ``"swiglu"`` (the same
            parameters); pos: ``"sincos"`` (a fixed table added to the tokens), ``"learned"`` (the same table
            as a trained parameter, MDT) or ``"rope"`` (axial rotary positions inside attention, by each
            token's own grid index; no table).
        rel_pos_bias: a learned bias per head and 2-D token offset in every attention (BEiT, MDT); 2-D grids
            and full attention only.
        moe: ``{"experts": E, "shared": S, "top_k": K, "every": N, "capacity": F, "balance": W}`` makes
            every N-th block's feed-forward a mixture of E routed and S shared experts
            (:mod:`maskdit.model.moe`); ``None`` (or 0 experts) keeps it dense.
        decoder: ``{"width": W, "depth": D, "num_heads": H}`` puts MaskDiT's released decoder
            (:class:`~maskdit.model.decoders.DecoderHead`) between the blocks and the final layer, which then
            works at width W; it runs at sampling too. Full attention, image-like grids; ``None``: none.
        long_skips: MDT's layout, with ``N = long_skips`` decoder blocks: of the other blocks, each of the first
            half feeds its output to its mirror in the second half (U-Net long skips, joined by a linear map
            of the concatenation); then a second learned position table is added and each of the last ``N``
            blocks joins the embedded input the same way. ``None``: a plain stack.
        vocab_size: a model over token ids ``0..V-1`` (masked diffusion): the grid ``(B, C, *S)`` holds ids (``-1``
            where masked) and enters through a :class:`~maskdit.model.discrete.TokenEmbedding`; the head predicts ``V``
            logits per cell, so the output is ``(B, C * V, *S)`` (channel ``c``'s logits first). ``None``: a model
            over real values.
        time_input: ``False`` makes the model time-agnostic: it ignores ``t`` (its time embedding sees 0), as a masked
            model may (the masked cells alone say how far the chain is).
        precond: ``"edm"`` wraps the network in EDM's preconditioning and presents it as a flow velocity
            (:class:`~maskdit.model.precond.EDMPrecond`, ``sigma_data``); the time embedding then embeds EDM's
            ``c_noise = ln(sigma) / 4`` (set ``time_scale=1``). For MaskDiT imports.
    """

    def __init__(
        self,
        input_size: Sequence[int] = (8, 8),
        in_channels: int = 1,
        patch_size: int | Sequence[int] = 2,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        mixer_depth: int = 0,
        attention: str = "full",
        full_blocks: Sequence[int] = (),
        full_every: int = 0,
        task_conditioning: bool = False,
        token_time: bool = False,
        fusion: Sequence[int] | None = None,
        route: Sequence[int] | None = None,
        learn_sigma: bool = False,
        pos_layout: str | None = None,
        time_scale: float = 1000.0,
        time_offset: float = 0.0,
        time_freq_shift: float = 0.0,
        mlp_norm_eps: float = 1e-6,
        norm: str = "layernorm",
        qk_norm: bool = False,
        mlp: str = "gelu",
        pos: str = "sincos",
        moe: dict[str, Any] | None = None,
        decoder: dict[str, Any] | None = None,
        rel_pos_bias: bool = False,
        long_skips: int | None = None,
        precond: str | None = None,
        sigma_data: float = 0.5,
        condition: str | None = "label",
        condition_options: dict[str, Any] | None = None,
        text: str | None = None,
        text_double: int | None = None,
        adaln: str = "zero",
        control: str | None = None,
        control_kind: str = "concat",
        control_options: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        time_input: bool = True,
        window: int | Sequence[int] = 4,
        proxy_size: int | None = None,
        linear_conv: int = 5,
        tile_global: int = 1,
    ):
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self._arguments = arguments
        self.input_size = tuple(int(s) for s in input_size)
        if not 1 <= len(self.input_size) <= 3:
            raise ConfigError(f"input_size {self.input_size} must have 1, 2 or 3 axes")
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if depth < 1:
            raise ConfigError(f"depth must be at least 1, got {depth}")
        if not 0 <= mixer_depth < depth:
            raise ConfigError(
                f"mixer_depth {mixer_depth} must be in [0, depth={depth}): "
                "the patch mixer cannot be as deep as the model"
            )
        self.in_channels = in_channels
        self.patch_size = as_patch_size(patch_size, len(self.input_size))
        self.token_grid = token_grid_shape(self.input_size, self.patch_size)
        self.num_tokens = math.prod(self.token_grid)
        self.patch_dim = in_channels * math.prod(self.patch_size)
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.mixer_depth = mixer_depth
        if attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        self.attention = attention
        every = {i for i in range(depth) if full_every and (i + 1) % int(full_every) == 0}
        full = sorted({int(i) for i in full_blocks} | every)
        if full and not 0 <= full[0] <= full[-1] < depth:
            raise ConfigError(f"full_blocks {full} must name blocks 0..{depth - 1}")
        self.full_blocks = tuple(full) if attention != "full" else ()  # in a full model every block is
        self.task_conditioning = task_conditioning
        if token_time and not task_conditioning:
            raise ConfigError("token_time conditions given tokens on time 0: it needs task_conditioning "
                              "(train with task.names)")
        self.token_time = bool(token_time)
        self.fusion_route = None if fusion is None else check_fusion_route(fusion, depth)
        if self.fusion_route is not None and mixer_depth:
            raise ConfigError("a SPRINT model's dense shallow blocks are its patch mixer: set mixer_depth=0")
        self.tread_route = None if route is None else check_tread_route(route, depth)
        self.learn_sigma = bool(learn_sigma)
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        if self.vocab_size is not None:
            if self.vocab_size < 2:
                raise ConfigError(f"a model over token ids needs a vocabulary of at least 2, got {vocab_size}")
            if learn_sigma or precond is not None or control is not None:
                raise ConfigError("a model over token ids (masked diffusion) takes no learn_sigma, precond or control")
        self.time_input = bool(time_input)
        #: the channels of the objective's prediction: one per data channel, or one logit per (channel, token id)
        self.target_channels = in_channels * (self.vocab_size or 1)
        self.out_channels = self.target_channels * (2 if learn_sigma else 1)
        self.pos_layout = pos_layout or ("xy" if len(self.input_size) == 2 else "axes")
        if self.pos_layout not in POS_LAYOUTS:
            raise ConfigError(f"pos_layout must be one of {', '.join(POS_LAYOUTS)}, got {pos_layout!r}")
        self.mlp_norm_eps = float(mlp_norm_eps)
        for key, value, allowed in (("norm", norm, NORMS), ("mlp", mlp, MLPS), ("pos", pos, POSITIONS)):
            if value not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        self.pos = pos
        rope = AxialRoPE(hidden_size // num_heads, self.token_grid) if pos == "rope" else None
        self.rope = rope  # registered once here (the blocks share it), so .to(device) moves its tables
        if rel_pos_bias and (attention != "full" or len(self.token_grid) != 2):
            raise ConfigError("rel_pos_bias is a 2-D bias for full attention: image grids with attention=full only")
        self.layout = TokenLayout(self.token_grid)  # the grid the blocks run on (another while sampling another size)
        self.block_options = BlockOptions(norm, bool(qk_norm), mlp, rope, self.mlp_norm_eps,
                                          rel_grid=tuple(self.token_grid) if rel_pos_bias else None,
                                          attention=attention_spec(attention, self.layout, window, proxy_size,
                                                                   linear_conv, tile_global))
        moe = dict(moe or {})
        self.moe_every = int(moe.pop("every", 1))
        self.moe = MoESpec(**moe) if moe.get("experts", 0) > 0 else None
        if self.moe_every < 1:
            raise ConfigError(f"moe every must be at least 1, got {self.moe_every}")

        self.patch_embed = nn.Linear(self.patch_dim, hidden_size) if self.vocab_size is None else \
            TokenEmbedding(self.vocab_size, self.patch_dim, hidden_size)
        table = sincos_pos_embed(hidden_size, self.token_grid, reverse_axes=self.pos_layout == "xy")
        if pos == "learned":  # starts as the sin-cos table, then trains
            self.pos_embed = nn.Parameter(table[None].clone())
        else:
            self.register_buffer("pos_embed", table[None] * (pos == "sincos"), persistent=False)
        self.given_embed = nn.Parameter(torch.zeros(hidden_size)) if task_conditioning else None
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale, time_offset=time_offset,
                                           freq_shift=time_freq_shift)
        self.y_embedder = None if condition is None else CONDITIONERS.get(condition).build(
            hidden_size, num_classes, **(condition_options or {}))
        self.blocks = nn.ModuleList(
            FactorisedDiTBlock(hidden_size, num_heads, mlp_ratio, self.token_grid, options=self.options_of(i))
            if attention == "factorised" and i not in self.full_blocks
            else DiTBlock(hidden_size, num_heads, mlp_ratio, options=self.options_of(i))
            for i in range(depth)
        )
        self.fusion = None if fusion is None else SparseDenseFusion(hidden_size)
        self.long_skips = None if long_skips is None else int(long_skips)
        self.skips, self.decoder_pos_embed = None, None
        if self.long_skips is not None:
            half = (depth - self.long_skips) // 2
            if self.long_skips < 0 or half < 1 or 2 * half + self.long_skips != depth:
                raise ConfigError(f"long_skips={long_skips} does not fit depth {depth}: depth must be 2 * half + "
                                  "long_skips with half >= 1 (MDT: 28 = 2 * 12 + 4)")
            if mixer_depth or self.fusion_route is not None or self.tread_route is not None or \
                    attention == "factorised":
                raise ConfigError("long skips (MDT's layout) run every block in one pass: no mixer_depth, SPRINT "
                                  "fusion, TREAD route or factorised attention")
            self.skip_half = half
            self.skips = nn.ModuleDict({str(i): nn.Linear(2 * hidden_size, hidden_size) for i in range(half, depth)})
            self.decoder_pos_embed = nn.Parameter(table[None].clone())
        self.decoder = None
        if decoder:
            if attention == "factorised" or self.fusion_route is not None or pos != "sincos":
                raise ConfigError("a decoder (MaskDiT's released layout) needs one attention per block (not "
                                  "factorised), sin-cos positions and no SPRINT fusion")
            self.decoder = DecoderHead(self.token_grid, hidden_size, mlp_ratio=mlp_ratio, pos_layout=self.pos_layout,
                                       **decoder)
        head_width = hidden_size if self.decoder is None else self.decoder.width
        self.final_layer = FinalLayer(head_width, self.out_channels * math.prod(self.patch_size),
                                      cond_dim=hidden_size, options=self.block_options)
        if precond is not None and precond not in PRECONDS:
            raise ConfigError(f"precond must be one of {', '.join(PRECONDS)}, got {precond!r}")
        if precond is not None and (learn_sigma or token_time):
            raise ConfigError("precond=edm presents the model as a flow velocity: no learn_sigma or token_time")
        self.precond = None if precond is None else EDMPrecond(sigma_data)
        tokens = self.y_embedder is not None and self.y_embedder.gives_tokens
        self.text = text or ("cross" if tokens else None)  # set exactly when the model reads a caption's tokens
        self.text_double = depth // 2 if text_double is None else int(text_double)
        if self.text is not None:
            if self.text not in TEXT_MODES:
                raise ConfigError(f"text must be one of {', '.join(TEXT_MODES)}, got {text!r}")
            if not tokens:
                raise ConfigError(f"model.text={self.text} injects a condition's tokens, and model.condition="
                                  f"{condition} gives none: use a text condition (model.condition=text)")
            TEXT_MODES[self.text](self, self.text_double)
        if adaln not in MODULATIONS:
            raise ConfigError(f"adaln must be one of {', '.join(MODULATIONS)}, got {adaln!r}")
        self.adaln = adaln
        MODULATIONS[adaln](self)
        for index, block in enumerate(self.blocks):
            block.index = index
        # registered last, so the base's parameters keep their order (init_from carries Adam's moments by index)
        self.control, self.control_signal, self.control_kind = None, control, control_kind
        if control is not None:
            check_fits(control, self.input_size)
            channels = signal_channels(control, in_channels)
            self.control_shape = (channels, *self.input_size)
            if control_kind != "concat" and (attention == "factorised" or self.long_skips is not None
                                             or rel_pos_bias):
                raise ConfigError(f"control.kind={control_kind} runs beside the base's blocks one by one: it needs "
                                  "one attention per block (not model.attention=factorised), no long skips (MDT's "
                                  "layout) and no rel_pos_bias; use control.kind=concat")
            if control_kind in ("tokens", "adapter") and self.text not in (None, "cross"):
                raise ConfigError(f"control.kind={control_kind} adds keys and values to each block's self-attention; "
                                  f"model.text={self.text} blocks attend jointly with the text: use model.text=cross "
                                  "or control.kind=concat|controlnet")
            self.control = CONTROL_KINDS.get(control_kind)(self, channels, **(control_options or {}))
        self.initialize_weights()

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-ready, so ``DiT.from_config(model.config)`` rebuilds this model. What
        the constructor resolves from the grid is stored resolved (``patch_size`` per axis, ``pos_layout``), so a
        later change of a default never changes what a saved model means."""
        resolved = {"input_size": list(self.input_size), "patch_size": list(self.patch_size),
                    "pos_layout": self.pos_layout, "text": self.text, "text_double": self.text_double}
        if self.control is not None:  # as the kind resolved them (an image encoder's fingerprint)
            resolved["control_options"] = _json_ready(self.control.options) or None
        return {**{k: _json_ready(v) for k, v in self._arguments.items()}, **resolved}

    def options_of(self, index: int) -> BlockOptions:
        """Block ``index``'s options: a mixture of experts in every ``moe_every``-th block (1-based), full attention
        in the ``full_blocks`` of a model with another kind."""
        moe = self.moe if self.moe is not None and (index + 1) % self.moe_every == 0 else None
        spec = self.block_options.attention
        if index in self.full_blocks:
            spec = dataclasses.replace(spec, kind="full")
        return dataclasses.replace(self.block_options, moe=moe, attention=spec)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DiT:
        """Rebuild a model from :attr:`config`; a config saved before ``pos_layout`` existed keeps the
        axis-order table it was trained with."""
        return cls(**{"pos_layout": "axes", **config})

    @property
    def conditioner(self) -> Conditioner | Controlled | None:
        """What ``y`` goes through (:mod:`maskdit.conditions`); ``None`` for an unconditional model. A controlled
        model's values pack its label with the control map (:class:`~maskdit.conditions.control.Controlled`)."""
        if self.control is not None:
            return Controlled(self.y_embedder, self.control_signal, self.control_shape)
        return self.y_embedder

    @property
    def null_label(self) -> int:
        """Label index of the "no class" embedding used for the unconditional branch of guidance."""
        return self.num_classes

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.y_embedder is not None:
            self.y_embedder.initialize()
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.adaln == "single":  # PixArt's start: the shared map small, the tables as drawn
            nn.init.normal_(self.t_block[1].weight, std=0.02)
        for block in [*self.blocks, self.final_layer]:  # every block starts as the identity
            zero_init_adaln(block)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        for module in self.modules():  # layers that start at zero: a decoder's entry, cross-attention's output
            if hasattr(module, "zero_init"):
                module.zero_init()

    def context(self, t: torch.Tensor, y: Any, given: torch.Tensor | None = None) -> Context:
        """What the blocks are conditioned on: ``c`` from time and the condition's pooled vector, the condition's
        tokens (text), and with ``token_time`` and a condition mask ``given`` the clean level of given tokens."""
        if not self.time_input:
            t = torch.zeros_like(t)
        c = self.t_embedder(t)
        cond, control = None, None
        if self.control is not None:
            if y is None:
                raise ConfigError("this model is controlled: pass its condition value, the label (if any) and the "
                                  "control map (maskdit sample --control FILE.npz)")
            y, control = self.conditioner.split(y)
        if self.y_embedder is not None:
            if y is None:
                raise ConfigError("this model is conditional: pass its condition y (class labels, token ids; the "
                                  "conditioner's null value for none)")
            cond = self.y_embedder(y)
            c = c + cond.pooled
        text, text_mask = (None, None) if cond is None or self.text is None else (cond.tokens, cond.mask)
        clean = None  # c at time 0: given tokens (token time) and condition tokens are clean
        if control is not None or (given is not None and self.token_time):
            clean = self.t_embedder(torch.zeros_like(t)) + (0 if cond is None else cond.pooled)
        if control is not None:
            control = ControlInput(control, clean)
        if given is None or not self.token_time:
            return Context(c, text=text, text_mask=text_mask, control=control)
        return Context(c, clean, given.bool(), text, text_mask, control)

    def condition(self, t: torch.Tensor, y: Any) -> torch.Tensor:
        """The per-sample conditioning vector ``c`` from time and the condition (labels, captions)."""
        return self.context(t, y).c

    def inputs(self, x: torch.Tensor, t: torch.Tensor, y: Any = None, given: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, Context]:
        """The embedded tokens ``(B, N, D)`` and the context the blocks see: :meth:`embed` and :meth:`context`, and a
        controlled model's control kind attached (:mod:`maskdit.model.control`)."""
        c = self.context(t, y, given)
        tokens = self.embed(x, given)
        return (tokens, c) if c.control is None else self.control.attach(self, tokens, c)

    def embed(self, x: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        """Grid ``(B, C, *S)`` -> tokens ``(B, N, D)`` with positions (and the "given" flag) added. A smaller grid is
        the leading corner of the training one and takes the corner's positions (:meth:`grid_of`)."""
        grid = self.grid_of(x)
        tokens = self.patch_embed(patchify(x, self.patch_size))
        if grid == self.token_grid:
            tokens = tokens + self.pos_embed
        elif self.fits(grid):
            tokens = tokens + self.pos_embed[:, region_indices(grid, self.token_grid).to(x.device)]
        if given is not None:
            if self.given_embed is None:
                raise ConfigError("this model was trained without task_conditioning: it cannot take a condition mask")
            tokens = tokens + given.unsqueeze(-1).to(tokens.dtype) * self.given_embed
        return tokens

    def fits(self, grid: Sequence[int]) -> bool:
        """Whether a token ``grid`` is the leading corner of the training one (smaller or equal along every axis),
        which any model but a factorised one runs: its tokens at their places, the rest absent (FiT's padded canvas
        with the padding left out)."""
        return len(grid) == len(self.token_grid) and all(g <= n for g, n in zip(grid, self.token_grid)) and \
            self.attention != "factorised"

    def grid_of(self, x: torch.Tensor) -> tuple[int, ...]:
        """The token grid of input ``x``, checked: the training size, a smaller one (:meth:`fits`), or with rotary
        positions any size."""
        shape = f"(B, {self.in_channels}, {', '.join(map(str, self.input_size))})"
        if x.dim() != 2 + len(self.input_size) or x.shape[1] != self.in_channels or \
                any(s % p for s, p in zip(x.shape[2:], self.patch_size)):
            raise ConfigError(f"model expects input {shape} (or another size in multiples of the patch "
                              f"{'x'.join(map(str, self.patch_size))}), got {tuple(x.shape)}")
        grid = token_grid_shape(x.shape[2:], self.patch_size)
        if grid != self.token_grid and not self.fits(grid) and not (self.pos == "rope" and
                                                                    self.attention != "factorised"):
            raise ConfigError(f"model expects input {shape} or a smaller one, got {tuple(x.shape)} (only a "
                              "model.pos=rope model without factorised attention takes larger sizes)")
        return grid

    def run_blocks(self, tokens: torch.Tensor, c: Context, start: int = 0, end: int | None = None,
                   pos: torch.Tensor | None = None) -> tuple[torch.Tensor, Context]:
        """Blocks ``start..end-1`` on whatever tokens are given; returns the tokens and the context after them
        (joint blocks carry the text stream along in it).

        ``pos`` ``(B, K)``: the token-grid index of each token (``None``: all ``N`` tokens in order). It
        travels with kept tokens so position-aware layers (rotary attention) see where each one sits.
        """
        for index in range(*slice(start, end).indices(len(self.blocks))):
            out = self.blocks[index](tokens, c, pos)
            tokens, c = out if isinstance(out, tuple) else (out, c)
            tokens = c.after_block(index, tokens, pos)
        return tokens, c

    def head(self, tokens: torch.Tensor, c: torch.Tensor | Context, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Token features -> patch values: the decoder (if any) and the final layer. ``pos`` ``(B, K)``: the
        grid indices of the tokens given (``None``: all ``N`` in order)."""
        if self.decoder is not None:
            tokens = self.decoder(tokens, c, pos)
        return self.final_layer(tokens, c)

    def compile_blocks(self) -> None:
        """``torch.compile`` every transformer block in place (weights and state-dict names unchanged)."""
        for block in self.blocks:
            block.compile()

    def checkpoint_blocks(self) -> None:
        """Activation checkpointing: every transformer block keeps only its inputs for backward and
        recomputes the rest (in place; weights, names and results unchanged)."""
        for block in self.blocks:
            block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)

    def features(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        keep_idx: torch.Tensor | None = None,
        end: int | None = None,
        given: torch.Tensor | None = None,
        path_drop: torch.Tensor | bool | None = None,
        route: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, Context]:
        """Token features after blocks ``0..end-1`` (all blocks by default) and the context after them.

        The tokens take one of :data:`~maskdit.model.paths.PATHS`: the patch mixer (the first ``mixer_depth``
        blocks) sees all tokens and the rest only ``keep_idx``; with ``route`` ``(START, END)`` the ``keep_idx``
        tokens are *routed* instead (TREAD) and every token comes out; a SPRINT or MDT-layout model runs its own.
        """
        tokens, c = self.inputs(x, t, y, given)
        grid = token_grid_shape(x.shape[2:], self.patch_size)
        if grid != self.token_grid:
            if self.fusion is not None or route is not None or given is not None or self.skips is not None or \
                    self.decoder is not None or self.control is not None:
                raise ConfigError(f"at a grid other than the training one {self.token_grid} the model runs its plain "
                                  "path: no SPRINT fusion, routing, condition mask, MDT layout, decoder or control")
            if self.fits(grid):  # a corner: its tokens at their places, the rest absent
                corner = region_indices(grid, self.token_grid).to(tokens.device).expand(len(tokens), -1)
                return PATHS.get("plain")(self, tokens, c, keep_idx, end=end, places=corner)
            if keep_idx is not None:
                raise ConfigError(f"a grid {grid} larger than the training one {self.token_grid} runs every token: "
                                  "no dropping")
            with self.rope.at(grid, self.layout.rope_scaling), self.layout.at(grid):  # rotary, at a larger size
                return self.run_blocks(tokens, c, 0, end)
        name, options = path_of(self, keep_idx, end, path_drop, route)
        return PATHS.get(name)(self, tokens, c, keep_idx, **options)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        keep_idx: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
        path_drop: torch.Tensor | bool | None = None,
        route: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Predict the objective's target for noisy grid ``x`` at time ``t`` (shape ``(B,)``).

        With ``keep_idx`` ``(B, K)`` (token indices, as from :func:`maskdit.masks.random_keep_indices`)
        only those tokens pass the blocks after the patch mixer and the result is the prediction *tokens*
        ``(B, K, C*prod(patch))`` in that order; without it the result is a grid like ``x``. ``given``
        ``(B, N)`` bool marks tokens that are known and clean (a task's condition mask). A SPRINT model
        (``fusion``) always returns the whole grid; ``path_drop`` (``True`` or ``(B,)`` bool) replaces its
        deep path by mask tokens (path-drop guidance's cheap unconditional branch). ``route`` ``(START,
        END)`` routes the ``keep_idx`` tokens through blocks ``START..END-1`` while the others skip them
        (TREAD) and returns the whole grid.
        """
        options = {"given": given, "path_drop": path_drop, "route": route}
        if self.precond is not None:
            return self.precond(self.network, x, t, self.patch_size, y=y, keep_idx=keep_idx, **options)
        return self.network(x, t, y, keep_idx, **options)

    def network(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                keep_idx: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """:meth:`forward` without the preconditioning (the network itself; the same for most models);
        ``options``: ``given``, ``path_drop``, ``route`` as there."""
        with noise_level(t):  # what noise-routed experts (MoDE) read
            tokens, c = self.features(x, t, y, keep_idx, **options)
        tokens_out = keep_idx is not None and self.fusion is None and options.get("route") is None
        out = self.head(tokens, c, keep_idx if tokens_out else None)
        if tokens_out:
            return out
        return unpatchify(out, self.patch_size, tuple(x.shape[2:]), self.out_channels)


def _json_ready(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON stores), so a config compares equal after a round trip."""
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def build_model(
    name: str, input_size: Sequence[int], in_channels: int, num_classes: int = 0, **overrides: Any
) -> DiT:
    """A DiT from a preset name, for a given input, with optional field overrides (``depth=4``...)."""
    fields = preset(name)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return DiT(input_size=input_size, in_channels=in_channels, num_classes=num_classes, **fields)


def parameter_count(weights: nn.Module | Any) -> int:
    """The parameters of a module, or of a ``.safetensors`` state dict (a path) counted from the file's header
    alone, so a large checkpoint is described without reading its tensors; an unreadable file is a
    ``CheckpointError``."""
    if isinstance(weights, nn.Module):
        return sum(p.numel() for p in weights.parameters())
    from safetensors import SafetensorError, safe_open

    from maskdit.errors import CheckpointError

    try:
        with safe_open(weights, framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {weights}: {e}; the file is damaged") from e


def fixed_position_parameters(config: dict[str, Any]) -> int:
    """The entries of the fixed sin-cos position table of a model with this ``config`` (:attr:`DiT.config`):
    a buffer here, but DiT's reference code counts it among the parameters, so imports report both figures."""
    return math.prod(config["input_size"]) // math.prod(config["patch_size"]) * config["hidden_size"]
