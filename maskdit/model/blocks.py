"""Transformer pieces of the DiT: conditioning embedders, adaLN-Zero blocks and the final layer.

Every block is conditioned on one vector ``c`` per sample (timestep embedding plus the condition's pooled vector)
through adaptive LayerNorm whose modulation starts at zero, so a fresh block is the identity and a
fresh model outputs zeros ("adaLN-Zero", Peebles & Xie, 2023).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maskdit.errors import ConfigError
from maskdit.masks import scatter_tokens
from maskdit.model.moe import MoEMlp, MoESpec
from maskdit.registry import Registry


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Affine modulation of token features ``(B, L, D)``: ``x * (1 + scale) + shift``, with one shift and
    scale per sample ``(B, D)`` or per token ``(B, L, D)``."""
    if shift.dim() == x.dim() - 1:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


class Memory(NamedTuple):
    """Keys and values ``(B, heads, M, head_dim)`` that attention reads besides its own tokens' (:class:`Context`),
    weighted by ``weight``: in the same softmax as its own (the weight multiplies the attention they get), or with
    ``separate`` in a second attention whose output is added times the weight (decoupled cross-attention)."""

    k: torch.Tensor
    v: torch.Tensor
    weight: float = 1.0
    separate: bool = False


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

    ``offset + scale * t`` is formed in float64 and then rounded to float32, so ``t = k / 1000`` given in
    float64 embeds the integer ``k`` exactly, as DiT's integer timesteps do. Frequencies are
    ``10000^(-i / (half - freq_shift))`` (diffusers' ``downscale_freq_shift``).
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
        half = self.frequency_size // 2
        exponent = -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(exponent / (half - self.freq_shift))
        value = (self.time_offset + self.time_scale * t.to(torch.float64)).float()
        angles = value[:, None] * freqs[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class AxialRoPE(nn.Module):
    """Rotary positions for a token grid of rank 1-3: each axis rotates its own share of every head's
    channel pairs by ``coordinate * frequency``, so attention scores depend only on coordinate differences.

    Tokens are named by their index in the grid (patchify's row-major order), which travels with kept
    tokens, so dropped, routed and factorised layouts all rotate by each token's own place. The pairs are
    ``(x[i], x[i + head_dim / 2])``; pairs left over after an even split across axes stay unrotated.
    """

    def __init__(self, head_dim: int, token_grid: tuple[int, ...], theta: float = 10000.0):
        super().__init__()
        self.pairs, self.rank = head_dim // 2, len(token_grid)
        self.per_axis = self.pairs // self.rank
        if self.per_axis < 1:
            raise ConfigError(f"head width {head_dim} is too small for rotary positions (model.pos=rope) over "
                              f"{self.rank} axes: each head needs at least {2 * self.rank} channels; use fewer "
                              "heads, a wider model or pos=sincos")
        self.theta = theta
        cos, sin = self.tables(tuple(token_grid))
        self.register_buffer("cos", cos, persistent=False)  # float64: cast to the input's dtype
        self.register_buffer("sin", sin, persistent=False)
        self._other: tuple[torch.Tensor, torch.Tensor] | None = None  # the tables of another grid, while active

    def tables(self, grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(prod(grid), head_dim / 2)`` of every token of ``grid``, in float64."""
        freqs = self.theta ** (-torch.arange(self.per_axis, dtype=torch.float64) / self.per_axis)
        coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid],
                                            indexing="ij"), dim=-1).reshape(-1, self.rank)
        angles = torch.zeros(coords.shape[0], self.pairs, dtype=torch.float64)
        for axis in range(self.rank):
            angles[:, axis * self.per_axis:(axis + 1) * self.per_axis] = coords[:, axis:axis + 1] * freqs
        return angles.cos(), angles.sin()

    @contextlib.contextmanager
    def at(self, grid: tuple[int, ...]) -> Iterator[None]:
        """Rotate by the places of another token grid meanwhile (sampling at another size)."""
        self._other = tuple(t.to(self.cos.device) for t in self.tables(grid))  # type: ignore[assignment]
        try:
            yield
        finally:
            self._other = None

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """Rotate ``x`` ``(B, H, L, head_dim)`` whose tokens are grid indices ``ids`` ``(B, L)`` (``None``:
        the whole grid in order)."""
        table_cos, table_sin = self._other or (self.cos, self.sin)
        cos, sin = (table_cos, table_sin) if ids is None else (table_cos[ids][:, None], table_sin[ids][:, None])
        cos, sin = cos.to(x.device, x.dtype), sin.to(x.device, x.dtype)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:2 * half]
        rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return rotated if x.shape[-1] == 2 * half else torch.cat([rotated, x[..., 2 * half:]], dim=-1)


class RelativePositionBias(nn.Module):
    """A learned bias per head for every 2-D offset between two tokens (BEiT, MDT), added to the attention
    logits. The table has ``(2H - 1)(2W - 1) + 3`` rows per head, as BEiT's and MDT's (3 for class tokens,
    unused here), so their tables load unchanged; row ``(dy + H - 1)(2W - 1) + dx + W - 1`` holds the
    offset ``(dy, dx)`` from key to query."""

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        h, w = grid
        self.table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1) + 3, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]
        self.register_buffer("index", (rel[0] + h - 1) * (2 * w - 1) + rel[1] + w - 1, persistent=False)
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, ids: torch.Tensor | None) -> torch.Tensor:
        """The bias ``(1 or B, heads, L, L)`` among tokens ``ids`` ``(B, L)`` (``None``: the whole grid)."""
        index = self.index[None] if ids is None else self.index[ids[:, :, None], ids[:, None, :]]
        return self.table[index].permute(0, 3, 1, 2)


#: Longest sequence that :func:`attend` computes as an explicit product and softmax on a CPU in bf16.
EXPLICIT_MAX_LEN = 512


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` as two matrix products, the softmax in fp32."""
    w = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        w = w + bias
    return torch.softmax(w.float(), dim=-1).to(v.dtype) @ v


def key_mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """An additive attention bias ``(B, 1, 1, L)`` from a key mask ``(B, L)`` (True: attend): 0 or a large
    negative number (not -inf, so a row is never all -inf)."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, -1e9)[:, None, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over ``(..., L, head_dim)``: ``scaled_dot_product_attention``, except on a CPU in
    bf16 for sequences up to ``EXPLICIT_MAX_LEN``, where torch's CPU flash kernel is 2-3x slower (forward plus
    backward) than :func:`explicit_attention` (factorised video attention runs thousands of such short
    sequences; ``benchmarks/attention_kernels.py``)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= EXPLICIT_MAX_LEN:
        return explicit_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))


class Attention(nn.Module):
    """Multi-head self-attention over the token axis (through :func:`attend`); optionally
    with RMS-normalised queries and keys (``qk_norm``), rotary positions (``rope``) and a learned relative
    position bias (``rel_grid``: the 2-D token grid it spans)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: AxialRoPE | None = None,
                 rel_grid: tuple[int, int] | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else None
        self.rope = [rope] if rope is not None else None  # a list: shared by every block, not a submodule
        self.rel_bias = None if rel_grid is None else RelativePositionBias(rel_grid, num_heads)

    def heads(self, x: torch.Tensor, pos: torch.Tensor | None = None, rotate: bool = True,
              delta: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``(B, heads, L, head_dim)`` of ``x`` ``(B, L, D)``, normalised and (when
        ``rotate`` and the model is rotary) rotated by ``pos``: the token-grid index of each token ``(B, L)``
        (``None``: the whole grid in order). Joint attention builds its sequence from these. ``delta`` (a
        condition LoRA) adds its output to the projection."""
        b, n, d = x.shape
        qkv = self.qkv(x) if delta is None else self.qkv(x) + delta(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and rotate:
            ids = None if pos is None else pos.reshape(b, -1)
            q, k = self.rope[0](q, ids), self.rope[0](k, ids)
        return q, k, v

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, memory: Memory | None = None
                ) -> torch.Tensor:
        """``pos``: the token-grid index of each of ``x``'s tokens ``(B, L)`` (``None`` = the whole grid in
        order); only rotary attention and the relative bias read it. ``memory``: more keys and values to attend
        to (:class:`Memory`)."""
        b, n, d = x.shape
        q, k, v = self.heads(x, pos)
        bias = None if self.rel_bias is None else self.rel_bias(None if pos is None else pos.reshape(b, -1))
        extra = 0.0
        if memory is not None and memory.separate:  # decoupled: a second attention, its output weighted
            extra = memory.weight * attend(q, memory.k.to(q.dtype), memory.v.to(q.dtype))
        elif memory is not None:  # one softmax over both; the weight multiplies the attention memory gets
            k, v = torch.cat([k, memory.k.to(k.dtype)], 2), torch.cat([v, memory.v.to(v.dtype)], 2)
            if memory.weight != 1.0:
                offset = math.log(memory.weight) if memory.weight > 0 else -1e9
                bias = torch.cat([torch.zeros(n), torch.full((memory.k.shape[2],), offset)]
                                 ).to(q.device, torch.float32).expand(1, 1, n, -1)
        out = attend(q, k, v, bias) + extra
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


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

    def make_norm(self, dim: int, eps: float = 1e-6) -> nn.Module:
        return NORMS[self.norm](dim, eps)

    def make_attention(self, dim: int, num_heads: int) -> Attention:
        return Attention(dim, num_heads, self.qk_norm, self.rope, self.rel_grid)

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
