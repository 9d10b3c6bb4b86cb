"""Transformer pieces of the DiT: conditioning embedders, adaLN-Zero blocks and the final layer.

Every block is conditioned on one vector ``c`` per sample (timestep embedding plus the condition's pooled vector)
through adaptive LayerNorm whose modulation starts at zero, so a fresh block is the identity and a
fresh model outputs zeros ("adaLN-Zero", Peebles & Xie, 2023).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskdit.grid import sincos_time
from maskdit.masks import scatter_tokens
from maskdit.model.attention import ATTENTIONS, Attention, AttentionSpec, AxialRoPE, Memory, attend
from maskdit.model.moe import MoEMlp, MoESpec
from maskdit.registry import Registry


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Affine modulation of token features ``(B, L, D)``: ``x * (1 + scale) + shift``, with one shift and
    scale per sample ``(B, D)`` or per token ``(B, L, D)``."""
    if shift.dim() == x.dim() - 1:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


@dataclass(frozen=True)
class Stream:
    """A block's input for a separate stream of condition tokens (EasyControl): their conditioning ``c`` ``(B, D)``
    and the module ``delta`` added to their q/k/v projection; the block returns the tokens and their keys and
    values (:meth:`DiTBlock.condition_stream`)."""

    c: torch.Tensor
    delta: nn.Module


@dataclass(frozen=True)
class Context:
    """What the blocks see besides their tokens, as one immutable value (a block that changes it returns a new one).

    * ``c`` ``(B, D)``: the per-sample conditioning (time plus the condition's pooled vector) behind adaLN.
    * ``given_c``, ``given`` (token time): ``c`` of the same sample at time 0 (clean) for the tokens a condition
      mask ``given`` ``(B, N)`` marks as known. adaLN is affine in ``silu(c)``, so a block computes its
      modulation once per level and picks it per token: one more small matmul and a select per block.
    * ``text`` ``(B, L, D)`` and ``text_mask`` ``(B, L)`` (True where real): the condition's token sequence. Cross
      attention reads it; joint and in-context blocks (:mod:`maskdit.model.text`) carry it along as a second
      stream and return it updated. It is never dropped or routed: only image tokens are.
    * ``control``: a controlled model's map and clean conditioning (a
      :class:`~maskdit.conditions.control.ControlInput`), which the model's control kind
      (:mod:`maskdit.model.control`) reads once per call and turns into what follows:
    * ``residuals`` ``((B, N, D) or None, ...)``: added to the output of blocks ``0, 1, ...`` (a ControlNet branch's;
      ``None``: nothing for that block); tokens that were dropped or routed take theirs by grid index
      (:meth:`after_block`).
    * ``memory`` (a :class:`Memory` per block): extra keys and values the image tokens of that block attend to as
      well (condition tokens, image prompts).
    """

    c: torch.Tensor
    given_c: torch.Tensor | None = None
    given: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    control: Any = None
    residuals: tuple[torch.Tensor | None, ...] | None = None
    memory: tuple[Memory, ...] | None = None

    def modulation(self, layer: nn.Module, pos: torch.Tensor | None) -> torch.Tensor:
        """``layer`` applied per sample ``(B, 1, M)``, or per token ``(B, L, M)`` with token time; ``pos`` names
        the tokens (``None``: the whole grid)."""
        if self.given is None:
            return layer(self.c).unsqueeze(1)
        given = self.given if pos is None else self.given.gather(1, pos.reshape(len(pos), -1))
        return torch.where(given.unsqueeze(-1), layer(self.given_c).unsqueeze(1), layer(self.c).unsqueeze(1))

    def with_text(self, text: torch.Tensor) -> Context:
        """The same context with the text stream replaced (what a joint block returns)."""
        return dataclasses.replace(self, text=text)

    def after_block(self, index: int, tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """Block ``index``'s output ``tokens`` with its residual added (tokens ``pos`` of the grid; ``None``: all)."""
        residual = None if self.residuals is None or index >= len(self.residuals) else self.residuals[index]
        if residual is None:
            return tokens
        if pos is not None:
            residual = residual.gather(1, pos.reshape(len(pos), -1, 1).expand(-1, -1, residual.shape[-1]))
        return tokens + residual.to(tokens.dtype)

    def memory_of(self, index: int | None) -> Memory | None:
        """The extra keys and values block ``index`` attends to (``None``: none)."""
        return None if self.memory is None or index is None else self.memory[index]


def modulation(layer: nn.Module, c: torch.Tensor | Context, pos: torch.Tensor | None) -> torch.Tensor:
    """A block's adaLN output for conditioning ``c``: ``(B, 1, M)`` per sample, ``(B, L, M)`` per token."""
    return c.modulation(layer, pos) if isinstance(c, Context) else layer(c).unsqueeze(1)


def memory_of(c: torch.Tensor | Context, index: int | None) -> Memory | None:
    """What block ``index`` attends to besides its tokens (:attr:`Context.memory`); ``None`` for a plain ``c``."""
    return c.memory_of(index) if isinstance(c, Context) else None


def per_sample(c: torch.Tensor | Context) -> torch.Tensor:
    """The per-sample conditioning ``(B, D)`` (a :class:`Context`'s generated level), for layers that route
    or modulate per sample."""
    return c.c if isinstance(c, Context) else c


class TimestepEmbedder(nn.Module):
    """Continuous time ``t`` in [0, 1] -> sinusoidal features (cos, then sin) of ``offset + scale * t``
    -> two-layer MLP.

    The features are :func:`maskdit.grid.sincos_time`'s: ``t = k / 1000`` given in float64 embeds the integer
    ``k`` exactly, as DiT's integer timesteps do; ``freq_shift`` is diffusers' ``downscale_freq_shift``.
    """

    def __init__(self, hidden_size: int, frequency_size: int = 256, time_scale: float = 1000.0,
                 time_offset: float = 0.0, freq_shift: float = 0.0):
        super().__init__()
        self.frequency_size = frequency_size
        self.time_scale, self.time_offset, self.freq_shift = float(time_scale), float(time_offset), float(freq_shift)
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = sincos_time(t, self.frequency_size, self.time_scale, self.time_offset, self.freq_shift)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    """Two-layer feed-forward with tanh-GELU, as in ViT/DiT."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``c`` (the block's conditioning) is for feed-forwards that route by it (MoE); unused here."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Gated feed-forward ``fc2(silu(gate) * up)``; its hidden width is 2/3 of the GELU MLP's, so both
    have the same parameters and FLOPs."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        width = max(1, round(hidden * 2 / 3))
        self.fc1 = nn.Linear(dim, 2 * width)  # gate and up, one matmul
        self.fc2 = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


#: Pre-norms of a block (and of the final layer), without learned affine: adaLN supplies shift and scale.
NORMS: Registry[Callable[[int, float], nn.Module]] = Registry("norm", key="model.norm")
NORMS.add("layernorm", lambda dim, eps: nn.LayerNorm(dim, elementwise_affine=False, eps=eps), "LayerNorm (DiT)")
NORMS.add("rmsnorm", lambda dim, eps: nn.RMSNorm(dim, elementwise_affine=False, eps=eps), "RMSNorm")
#: Feed-forward layers ``cls(dim, hidden)``.
MLPS: Registry[type] = Registry("feed-forward", key="model.mlp")
MLPS.add("gelu", Mlp, "DiT's two-layer GELU MLP")
MLPS.add("swiglu", SwiGLU, "a gated SiLU MLP with the same parameter count")


@dataclass(frozen=True)
class BlockOptions:
    """How a transformer block is built: its norms, attention and feed-forward (DiT's by default)."""

    norm: str = "layernorm"
    qk_norm: bool = False
    mlp: str = "gelu"
    rope: AxialRoPE | None = field(default=None, compare=False)
    mlp_norm_eps: float = 1e-6
    moe: MoESpec | None = None  #: this block's feed-forward is a mixture of experts of ``mlp`` layers
    rel_grid: tuple[int, int] | None = None  #: a learned relative position bias over this 2-D token grid
    attention: AttentionSpec = AttentionSpec()  #: which attention the block builds (:data:`ATTENTIONS`)

    def make_norm(self, dim: int, eps: float = 1e-6) -> nn.Module:
        return NORMS[self.norm](dim, eps)

    def make_attention(self, dim: int, num_heads: int) -> Attention:
        return ATTENTIONS[self.attention.kind](dim, num_heads, self.qk_norm, self.rope, self.rel_grid, self.attention)

    def make_mlp(self, dim: int, mlp_ratio: float) -> nn.Module:
        hidden = int(dim * mlp_ratio)
        if self.moe is None:
            return MLPS[self.mlp](dim, hidden)
        return MoEMlp(dim, self.moe, lambda: MLPS[self.mlp](dim, hidden))


DEFAULT_BLOCK = BlockOptions()


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: shift, scale and gate for attention and MLP from ``c``.

    ``cond_dim`` is the width of ``c`` (default ``dim``; a narrower decoder takes the backbone's ``c``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None,
                 options: BlockOptions = DEFAULT_BLOCK):
        super().__init__()
        self.norm1 = options.make_norm(dim)
        self.attn = options.make_attention(dim, num_heads)
        self.norm2 = options.make_norm(dim, options.mlp_norm_eps)
        self.mlp = options.make_mlp(dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 6 * dim))
        self.context: nn.Module | None = None  #: a plug-in between attention and MLP (text cross-attention)
        self.index: int | None = None  #: its place in the model's stack (set by the model): what memory it reads

    def forward(self, x: torch.Tensor, c: torch.Tensor | Context | Stream, pos: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(c, Stream):  # through the module call, so wrappers (FSDP) see this pass too
            return self.condition_stream(x, c.c, c.delta)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation(self.adaLN_modulation, c, pos).chunk(6, -1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), pos, memory_of(c, self.index))
        if self.context is not None:
            x = x + self.context(x, c)
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m), per_sample(c))
        return x

    def condition_stream(self, x: torch.Tensor, c: torch.Tensor, delta: nn.Module
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block on condition tokens ``x`` ``(B, M, D)`` that attend only to themselves, conditioned on ``c``
        ``(B, D)``, with ``delta`` added to their q/k/v projection (EasyControl): the tokens after the block, and
        their keys and values (what the image tokens attend to)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).unsqueeze(1).chunk(6, -1)
        q, k, v = self.attn.heads(modulate(self.norm1(x), shift_a, scale_a), delta=delta)
        out = attend(q, k, v).transpose(1, 2).reshape(x.shape)
        x = x + gate_a * self.attn.proj(out)
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m), c)
        return x, (k, v)


def zero_init_adaln(block: nn.Module) -> None:
    """adaLN-Zero: zero the last linear layer of the block's modulations (each stream's, in a joint block) so
    the block starts as the identity. Shared modulations (adaLN-single) keep their own start."""
    for name, module in block.named_modules():
        if name.rpartition(".")[2] == "adaLN_modulation" and isinstance(module, nn.Sequential):
            nn.init.zeros_(module[-1].weight)
            nn.init.zeros_(module[-1].bias)


class SharedModulation(nn.Module):
    """adaLN-single (PixArt-alpha): a block's modulation is one model-wide ``Linear(SiLU(c))`` plus the block's own
    learned ``table`` ``(chunks, D)``, instead of a per-block MLP (about a quarter of DiT-XL's parameters). The
    shared layer is held by the model and referenced here (not a submodule, so it is saved once)."""

    def __init__(self, shared: nn.Module, chunks: int, dim: int):
        super().__init__()
        self.shared = [shared]
        self.table = nn.Parameter(torch.randn(chunks, dim) / dim**0.5)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.shared[0](c) + self.table.flatten()


class TableModulation(nn.Module):
    """adaLN-single's final layer: ``table + c`` per chunk (``c`` is the time embedding itself, no SiLU, no matmul)."""

    def __init__(self, chunks: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(chunks, dim) / dim**0.5)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return (self.table[None] + c[:, None]).flatten(1)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from features to patch values (zero-initialised)."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int | None = None, options: BlockOptions = DEFAULT_BLOCK):
        super().__init__()
        self.norm = options.make_norm(dim)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor | Context) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(per_sample(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class FactorisedDiTBlock(nn.Module):
    """VDT's space-time factorised block with adaLN-Zero: temporal attention, spatial attention, MLP.

    Temporal attention mixes the tokens at one spatial position across frames, spatial attention the
    tokens within one frame; both cost far less than full attention over ``T*H*W`` tokens. Each of the
    three sub-layers has its own shift, scale and gate from ``c`` (9 vectors, zero-initialised by the
    model so a fresh block is the identity). Tokens must be frame-major, the same number per frame: the
    full grid ``(B, prod(token_grid), D)`` in patchify's row-major order, or the kept tokens of a grid drop
    shape (tube: every frame, fewer positions; frame: fewer frames, every position), whose index ``pos``
    ``(B, T_kept, S_kept)`` gives the layout. A grid of rank 1 or 2 counts as one frame (the temporal
    attention then sees a single token and only passes it through its projections).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, token_grid: tuple[int, ...] = (1, 1),
                 cond_dim: int | None = None, options: BlockOptions = DEFAULT_BLOCK):
        super().__init__()
        grid = tuple(int(s) for s in token_grid)
        self.token_grid = grid
        self.frames = grid[0] if len(grid) == 3 else 1
        self.norm_t = options.make_norm(dim)
        self.attn_t = options.make_attention(dim, num_heads)
        self.norm_s = options.make_norm(dim)
        self.attn_s = options.make_attention(dim, num_heads)
        self.norm_m = options.make_norm(dim, options.mlp_norm_eps)
        self.mlp = options.make_mlp(dim, mlp_ratio)
        self.rotary = options.rope is not None
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 9 * dim))
        self.context: nn.Module | None = None  #: a plug-in after the attentions, before the MLP (as DiTBlock's)

    def forward(self, x: torch.Tensor, c: torch.Tensor | Context, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        t, s = (pos.shape[1], pos.shape[2]) if pos is not None and pos.dim() == 3 else (self.frames, n // self.frames)
        if t * s != n or (pos is not None and pos.dim() == 2 and n != math.prod(self.token_grid)):
            raise ValueError(f"factorised attention needs a frames x positions grid of tokens: the full "
                             f"{math.prod(self.token_grid)}, or a kept grid index (B, T', S') from mask.shape=tube or "
                             f"frame; got {n} tokens" + ("" if pos is None else f" with index {tuple(pos.shape)}"))
        (shift_t, scale_t, gate_t, shift_s, scale_s, gate_s,
         shift_m, scale_m, gate_m) = modulation(self.adaLN_modulation, c, pos).chunk(9, dim=-1)
        ids_t = ids_s = None  # rotary attention: each sequence's tokens by their grid index
        if self.rotary:
            ids = (torch.arange(n, device=x.device).expand(b, n) if pos is None else pos).reshape(b, t, s)
            ids_t, ids_s = ids.transpose(1, 2).reshape(b * s, t), ids.reshape(b * t, s)
        # temporal: (B, T, S, D) -> (B*S, T, D), one sequence per spatial position
        h = modulate(self.norm_t(x), shift_t, scale_t)
        h = h.reshape(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)
        h = self.attn_t(h, ids_t).reshape(b, s, t, d).transpose(1, 2).reshape(b, n, d)
        x = x + gate_t * h
        # spatial: (B*T, S, D), one sequence per frame
        h = modulate(self.norm_s(x), shift_s, scale_s).reshape(b * t, s, d)
        x = x + gate_s * self.attn_s(h, ids_s).reshape(b, n, d)
        if self.context is not None:
            x = x + self.context(x, c)
        x = x + gate_m * self.mlp(modulate(self.norm_m(x), shift_m, scale_m), per_sample(c))
        return x


class SparseDenseFusion(nn.Module):
    """SPRINT's residual fusion: ``linear(concat(deep, shallow))`` over every token.

    ``deep`` holds the sparse path's output for the kept tokens; the places it skipped (and, for a
    path-dropped sample, all places) hold a fixed random mask token, so the fusion learns to lean on the
    dense shallow features wherever the deep path has nothing to say.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mask_token", torch.randn(dim) * 0.02)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor | None, keep_idx: torch.Tensor | None = None,
                path_drop: torch.Tensor | None = None) -> torch.Tensor:
        """``shallow`` ``(B, N, D)``; ``deep`` ``(B, K, D)`` at ``keep_idx`` (all ``N`` when ``None``), or
        ``None`` to drop the deep path of every sample; ``path_drop`` ``(B,)`` bool drops it per sample."""
        mask = self.mask_token.to(shallow.dtype).expand_as(shallow)
        if deep is None:
            full = mask
        elif keep_idx is None:
            full = deep
        else:
            full = scatter_tokens(deep, keep_idx, mask, shallow.shape[1])
        if path_drop is not None:
            full = torch.where(path_drop[:, None, None], mask, full)
        return self.linear(torch.cat([full, shallow], dim=-1))
