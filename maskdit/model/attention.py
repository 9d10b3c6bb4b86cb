"""How a block's tokens attend to each other: softmax attention over every token (DiT's, ``full``) and the kinds
whose cost grows linearly with the tokens, for long grids (:data:`ATTENTIONS`):

* ``linear`` (LiT, LinFusion): ReLU-kernel attention, ``phi(q) (phi(k)^T v) / (phi(q) sum phi(k))``, plus a
  depthwise convolution of the values over the grid for locality;
* ``window`` (CLEAR): each token attends to the tokens within a radius of it on the grid (an ellipse; a circle
  when every axis has the same radius);
* ``proxy`` (PT-DiT): window attention plus one proxy token per cell of the grid (the mean of the cell's tokens)
  that every token attends to as well, after the proxies attend to each other (global context);
* ``tile`` (Efficient-vDiT): video grids ``(T, H, W)``: each frame attends to itself and to the first frames,
  which attend to every frame (the tiles of the attention map that matter).

Every kind keeps full attention's projections (``qkv``, ``proj``, the q/k norms) under the same names, so a trained
full-attention model converts to any of them by loading its weights (LiT's weight inheritance); what a kind adds
starts neutral (the convolution and the proxies' own attention at zero). Tokens are named by their index in the
token grid (``pos``); the local kinds put the tokens they are given back on the grid, where dropped tokens are
absent keys, so dropping, routing and condition masks work unchanged. The grid is the model's
:class:`TokenLayout`, which a model at another size switches for the call.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maskdit.errors import ConfigError
from maskdit.registry import Registry


class Memory(NamedTuple):
    """Keys and values ``(B, heads, M, head_dim)`` that attention reads besides its own tokens'
    (:class:`~maskdit.model.blocks.Context`), weighted by ``weight``: in the same softmax as its own (the weight
    multiplies the attention they get), or with ``separate`` in a second attention whose output is added times the
    weight (decoupled cross-attention)."""

    k: torch.Tensor
    v: torch.Tensor
    weight: float = 1.0
    separate: bool = False


class Extra(NamedTuple):
    """Keys and values ``(B, heads, M, head_dim)`` joined to every query's own keys in one softmax, with an additive
    logit ``bias`` ``(1 or B, M)`` (``log weight`` of a memory, :data:`BLOCKED` for a key that is absent; ``None``:
    zero)."""

    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def of(cls, memory: Memory, like: torch.Tensor) -> Extra:
        bias = None
        if memory.weight != 1.0:
            offset = math.log(memory.weight) if memory.weight > 0 else BLOCKED
            bias = torch.full((1, memory.k.shape[2]), offset, device=like.device)
        return cls(memory.k.to(like.dtype), memory.v.to(like.dtype), bias)

    def append(self, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, groups: int, like: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """These keys appended to the keys and values ``(B * groups, H, L, d)`` of a sample cut into ``groups``
        attention batches (tiles, frames), with their bias after ``bias`` ``(1 or B * groups, 1, Lq, L)``."""
        def each(t: torch.Tensor) -> torch.Tensor:
            return t[:, None].expand(-1, groups, -1, -1, -1).reshape(-1, *t.shape[1:])
        joined = Extra(each(self.k), each(self.v), None if self.bias is None else self.bias.repeat_interleave(
            groups if len(self.bias) > 1 else 1, 0))
        return (torch.cat([k, joined.k], 2), torch.cat([v, joined.v], 2),
                joined.with_bias(bias, k.shape[2], like))

    def with_bias(self, own: torch.Tensor | None, length: int, like: torch.Tensor) -> torch.Tensor | None:
        """The bias over ``[own keys; these]``: ``own`` ``(..., Lq, length)`` (``None``: zero) then this one's,
        broadcast to each other; ``None`` when both are zero."""
        if self.bias is None and own is None:
            return None
        if own is None:
            own = torch.zeros(1, 1, 1, length, device=like.device)
        tail = self.bias if self.bias is not None else torch.zeros(1, self.k.shape[2], device=like.device)
        tail = tail.to(like.device, torch.float32).reshape(len(tail), *[1] * (own.dim() - 2), -1)
        shape = torch.broadcast_shapes(own.shape[:-1], tail.shape[:-1])
        return torch.cat([own.float().expand(*shape, -1), tail.expand(*shape, -1)], -1).to(like.dtype)


class TokenLayout:
    """The token grid a model's blocks run on, shared by its position-aware layers (rotary tables, the local attention
    kinds): the training grid, or another while :meth:`at` is active (a model sampled at another size), with how
    positions and attention adapt to it there (:meth:`sizing`): a :data:`ROPE_SCALINGS` entry and the
    attention-entropy scale."""

    def __init__(self, grid: Sequence[int]):
        self.train_grid = self.grid = tuple(int(s) for s in grid)
        self.rope_scaling, self.entropy = "none", False

    @contextlib.contextmanager
    def at(self, grid: Sequence[int]) -> Iterator[None]:
        before, self.grid = self.grid, tuple(int(s) for s in grid)
        try:
            yield
        finally:
            self.grid = before

    @contextlib.contextmanager
    def sizing(self, rope_scaling: str = "none", entropy: bool = False) -> Iterator[None]:
        """Meanwhile, at grids other than the training one, scale rotary positions by ``rope_scaling`` and, with
        ``entropy``, the attention logits by the entropy factor (:meth:`logit_scale`)."""
        if rope_scaling not in ROPE_SCALINGS:
            raise ConfigError(f"rope scaling must be one of {', '.join(ROPE_SCALINGS)}, got {rope_scaling!r}")
        before = self.rope_scaling, self.entropy
        self.rope_scaling, self.entropy = rope_scaling, bool(entropy)
        try:
            yield
        finally:
            self.rope_scaling, self.entropy = before

    def logit_scale(self, keys: int) -> float:
        """Jin et al.'s attention-entropy factor for a query that attends to ``keys`` keys: ``sqrt(log_n keys)`` with
        ``n`` the keys at the training grid (1 at the training grid, or with the scale off), so attention at another
        size keeps the entropy it had in training."""
        trained = math.prod(self.train_grid)
        if not self.entropy or self.grid == self.train_grid or keys <= 1 or trained <= 1:
            return 1.0
        return math.sqrt(math.log(keys) / math.log(trained))


@dataclass(frozen=True)
class AttentionSpec:
    """Which attention a block builds and its settings (DiT's ``attention``, ``window``, ``proxy_size``,
    ``linear_conv``, ``tile_global``)."""

    kind: str = "full"
    layout: TokenLayout | None = field(default=None, compare=False)
    window: tuple[int, ...] = (4,)  #: window/proxy: radius per axis in tokens (one value: every axis)
    proxy: int | None = None  #: proxy: the edge of each proxy's cell in tokens (``None``: the window's diameter)
    conv: int = 5  #: linear: the depthwise convolution's kernel size (0: none)
    global_frames: int = 1  #: tile: the leading frames every frame attends to


#: How rotary positions adapt to an axis ``s`` times longer than in training (FiT's VisionNTK / VisionYaRN: each
#: axis by its own ``s``): name -> ``fn(freqs, s, trained_length, theta) -> (freqs, gain)``, ``gain`` multiplying
#: cos and sin (so the logits by its square; YaRN's attention temperature).
ROPE_SCALINGS: Registry = Registry("rope scaling", key="--rope-scaling")


@ROPE_SCALINGS.register("none", "the training frequencies: positions past the training grid extrapolate")
def _extrapolate(freqs: torch.Tensor, s: float, length: int, theta: float) -> tuple[torch.Tensor, float]:
    return freqs, 1.0


@ROPE_SCALINGS.register("pi", "position interpolation: every frequency / s, so the grid spans the training range")
def _interpolate(freqs: torch.Tensor, s: float, length: int, theta: float) -> tuple[torch.Tensor, float]:
    return freqs / s, 1.0


@ROPE_SCALINGS.register("ntk", "NTK-aware: the base theta * s^(d / (d - 2)) (high frequencies kept, low ones "
                        "interpolated)")
def _ntk(freqs: torch.Tensor, s: float, length: int, theta: float) -> tuple[torch.Tensor, float]:
    d = 2 * len(freqs)
    if d <= 2:
        return freqs / s, 1.0
    base = theta * s ** (d / (d - 2))
    return base ** (-torch.arange(len(freqs), dtype=torch.float64) / len(freqs)), 1.0


@ROPE_SCALINGS.register("yarn", "YaRN: NTK-by-parts (frequencies with more than 32 turns over the training length "
                        "kept, under 1 interpolated, a ramp between) and logits sharpened by (0.1 ln s + 1)^2")
def _yarn(freqs: torch.Tensor, s: float, length: int, theta: float) -> tuple[torch.Tensor, float]:
    turns = length * freqs / (2 * math.pi)  # rotations each frequency makes over the training length
    keep = ((turns - 1.0) / (32.0 - 1.0)).clamp(0.0, 1.0)
    return (1 - keep) * freqs / s + keep * freqs, 0.1 * math.log(s) + 1.0


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
        self.theta, self.train_grid = theta, tuple(int(s) for s in token_grid)
        cos, sin = self.tables(self.train_grid)
        self.register_buffer("cos", cos, persistent=False)  # float64: cast to the input's dtype
        self.register_buffer("sin", sin, persistent=False)
        self._other: tuple[torch.Tensor, torch.Tensor] | None = None  # the tables of another grid, while active

    def tables(self, grid: tuple[int, ...], scaling: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(prod(grid), head_dim / 2)`` of every token of ``grid``, in float64; at a grid larger than
        the training one along an axis, that axis's frequencies follow ``scaling`` (:data:`ROPE_SCALINGS`)."""
        coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid],
                                            indexing="ij"), dim=-1).reshape(-1, self.rank)
        angles = torch.zeros(coords.shape[0], self.pairs, dtype=torch.float64)
        gain = 1.0
        for axis in range(self.rank):
            freqs = self.theta ** (-torch.arange(self.per_axis, dtype=torch.float64) / self.per_axis)
            stretch = max(grid[axis] / self.train_grid[axis], 1.0)
            if stretch > 1.0:
                freqs, axis_gain = ROPE_SCALINGS[scaling](freqs, stretch, self.train_grid[axis], self.theta)
                gain = max(gain, axis_gain)
            angles[:, axis * self.per_axis:(axis + 1) * self.per_axis] = coords[:, axis:axis + 1] * freqs
        return angles.cos() * gain, angles.sin() * gain

    @contextlib.contextmanager
    def at(self, grid: tuple[int, ...], scaling: str = "none") -> Iterator[None]:
        """Rotate by the places of another token grid meanwhile (sampling at another size), its frequencies scaled
        by ``scaling``."""
        self._other = tuple(t.to(self.cos.device) for t in self.tables(grid, scaling))  # type: ignore[assignment]
        try:
            yield
        finally:
            self._other = None

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """Rotate ``x`` ``(B, H, L, head_dim)`` whose tokens are grid indices ``ids`` ``(B, L)`` (``None``: the
        whole grid in order)."""
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
#: The logit of a key that must get no attention (finite, so a row is never all -inf).
BLOCKED = -1e9


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` as two matrix products, the softmax in fp32."""
    w = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        w = w + bias
    return torch.softmax(w.float(), dim=-1).to(v.dtype) @ v


def key_mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """An additive attention bias ``(B, 1, 1, L)`` from a key mask ``(B, L)`` (True: attend): 0 or
    :data:`BLOCKED`."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, BLOCKED)[:, None, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over ``(..., L, head_dim)``: ``scaled_dot_product_attention``, except on a CPU in
    bf16 for sequences up to ``EXPLICIT_MAX_LEN``, where torch's CPU flash kernel is 2-3x slower (forward plus
    backward) than :func:`explicit_attention` (factorised video attention runs thousands of such short
    sequences; ``benchmarks/attention_kernels.py``)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= EXPLICIT_MAX_LEN:
        return explicit_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))


class Attention(nn.Module):
    """Multi-head softmax attention over all tokens (through :func:`attend`); optionally with RMS-normalised
    queries and keys (``qk_norm``), rotary positions (``rope``) and a learned relative position bias (``rel_grid``:
    the 2-D token grid it spans). The base of every kind: a kind overrides :meth:`mix`, how queries meet keys."""

    rotate_heads = True  #: rotary positions are applied to q and k in :meth:`heads` (a kind may apply its own)

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: AxialRoPE | None = None,
                 rel_grid: tuple[int, int] | None = None, spec: AttentionSpec | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else None
        self.rope = [rope] if rope is not None else None  # a list: shared by every block, not a submodule
        self.rel_bias = None if rel_grid is None else RelativePositionBias(rel_grid, num_heads)
        self.layout = None if spec is None else spec.layout  # the grid (the local kinds; the entropy scale)

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
            q, k = self.rotate(q, pos), self.rotate(k, pos)
        return q, k, v

    def rotate(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``(B, heads, L, head_dim)`` rotated by its tokens' grid places (identity without rope)."""
        if self.rope is None:
            return x
        return self.rope[0](x, None if pos is None else pos.reshape(len(x), -1))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, memory: Memory | None = None
                ) -> torch.Tensor:
        """``pos``: the token-grid index of each of ``x``'s tokens ``(B, L)`` (``None`` = the whole grid in
        order); the position-aware parts read it. ``memory``: more keys and values to attend to (:class:`Memory`)."""
        b, n, d = x.shape
        q, k, v = self.heads(x, pos, rotate=self.rotate_heads)
        extra, separate = None, 0.0
        if memory is not None and memory.separate:  # decoupled: a second attention, its output weighted
            separate = memory.weight * attend(q, memory.k.to(q.dtype), memory.v.to(q.dtype))
        elif memory is not None:  # one softmax over both; the weight multiplies the attention memory gets
            extra = Extra.of(memory, q)
        out = self.mix(x, q, k, v, pos, extra) + separate
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None,
            extra: Extra | None) -> torch.Tensor:
        """Each query's output ``(B, heads, L, head_dim)`` from the heads of the block input ``x`` (``pos`` as in
        :meth:`forward`) and the keys ``extra`` adds to every query's; here softmax over all of them."""
        b, n = x.shape[:2]
        bias = None if self.rel_bias is None else self.rel_bias(None if pos is None else pos.reshape(b, -1))
        scale = 1.0 if self.layout is None else self.layout.logit_scale(k.shape[2])
        if scale != 1.0:
            q = q * scale
        if extra is not None:
            k, v = torch.cat([k, extra.k], 2), torch.cat([v, extra.v], 2)
            bias = extra.with_bias(bias, n, q)
        return attend(q, k, v, bias)


# -- the grid: tokens given by index, placed back where they belong ------------------------------------------------

def on_grid(x: torch.Tensor, pos: torch.Tensor | None, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Heads ``(B, H, L, d)`` of the tokens ``pos`` ``(B, L)`` placed on a grid of ``size`` tokens, token-major
    ``(B, size, H, d)`` (zeros elsewhere; a view when ``pos`` is ``None``), and which places hold a token ``(B, size)``
    (``None``: every place)."""
    x = x.transpose(1, 2)
    if pos is None:
        return x, None
    b, _, h, d = x.shape
    ids = pos.reshape(b, -1, 1, 1).expand(-1, -1, h, d)
    present = torch.zeros(b, size, dtype=torch.bool, device=x.device).scatter(1, pos.reshape(b, -1), True)
    return x.new_zeros(b, size, h, d).scatter(1, ids, x), present


def off_grid(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """The inverse of :func:`on_grid`: a grid ``(B, N, H, d)`` -> heads ``(B, H, L, d)`` of the tokens ``pos`` (all of
    them, a view, when ``None``)."""
    if pos is not None:
        b, _, h, d = x.shape
        x = x.gather(1, pos.reshape(b, -1, 1, 1).expand(-1, -1, h, d))
    return x.transpose(1, 2)


def axis_radius(radius: Sequence[int], rank: int) -> tuple[int, ...]:
    """One radius per axis from a spec's ``window`` (one value: every axis)."""
    values = tuple(int(r) for r in radius)
    if len(values) == 1:
        return values * rank
    if len(values) != rank:
        raise ConfigError(f"model.window has {len(values)} radii for a token grid of rank {rank}: give one value, or "
                          f"one per axis ({rank})")
    return values


class Tiling:
    """A token grid cut into tiles for local attention: the queries of each tile meet the keys of its region, the
    tile grown by half a tile on every side, with a bias that keeps, for each query, the keys inside its window (an
    ellipse of the per-axis radii) and on the grid. Along an axis the tile is the window's diameter ``2R`` (its
    region two tiles, so regions are concatenations of whole tiles and cost no gather), or the whole axis when the
    window spans it (radius 0: one place). Cost per query: ``prod(4R)`` keys instead of the grid's size."""

    def __init__(self, grid: tuple[int, ...], radius: tuple[int, ...], device: torch.device):
        self.grid, self.radius = grid, radius
        self.tile = tuple(1 if r == 0 else g if 2 * r >= g else 2 * r for r, g in zip(radius, grid))
        self.halo = tuple(t // 2 if t < g else 0 for t, g in zip(self.tile, grid))  # half a tile, or none
        self.count = tuple(-(-g // t) for g, t in zip(grid, self.tile))
        self.region = tuple(t + 2 * r for t, r in zip(self.tile, self.halo))
        q_off, k_off = (torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1)
                        .reshape(-1, len(grid)) for shape in (self.tile, self.region))
        delta = (k_off[None] - torch.tensor(self.halo) - q_off[:, None]).double()  # (Tq, Tk, rank)
        scale = torch.tensor([max(r, 1e-9) for r in radius], dtype=torch.float64)
        inside = ((delta / scale) ** 2).sum(-1) <= 1 + 1e-9
        inside &= ((delta == 0) | (torch.tensor(radius) > 0)).all(-1)  # radius 0: that axis's own place only
        on = torch.ones(1, math.prod(grid), device=device)  # the grid's places (not padding), as keys of each region
        self.window = torch.where(inside, 0.0, BLOCKED).to(device)  # (Tq, Tk)
        self.bias = self.window + self.keys_present(on)  # (tiles, 1, Tq, Tk)
        self._batched: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def batch_bias(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """The bias of ``batch`` samples that hold every token ``(batch * tiles, 1, Tq, Tk)`` (kept per size)."""
        key = (batch, dtype)
        if key not in self._batched:
            self._batched = {key: self.bias.to(dtype).repeat(batch, 1, 1, 1)}  # the latest size only
        return self._batched[key]

    def pad(self, x: torch.Tensor, halo: bool) -> torch.Tensor:
        """``(B, *grid, H, d)`` zero-padded to whole tiles (and half a tile before each halved axis when ``halo``)."""
        widths: list[int] = [0, 0, 0, 0]
        for g, t, n, r in reversed(list(zip(self.grid, self.tile, self.count, self.halo))):
            widths += [r if halo else 0, n * t - g + (r if halo else 0)]
        return F.pad(x, widths) if any(widths) else x

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """Queries ``(B, N, H, d)`` -> ``(B * tiles, H, Tq, d)``: one attention batch per tile."""
        b, _, h, d = x.shape
        rank = len(self.grid)
        x = self.pad(x.reshape(b, *self.grid, h, d), halo=False)
        x = x.reshape(b, *[s for n, t in zip(self.count, self.tile) for s in (n, t)], h, d)
        order = [0] + [1 + 2 * a for a in range(rank)] + [1 + 2 * rank] + [2 + 2 * a for a in range(rank)] + [
            2 + 2 * rank]
        return x.permute(order).reshape(b * math.prod(self.count), h, math.prod(self.tile), d)

    def untile(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """The inverse of :meth:`tiles`: ``(B * tiles, H, Tq, d)`` -> ``(B, N, H, d)``."""
        h, d, rank = x.shape[1], x.shape[-1], len(self.grid)
        x = x.reshape(batch, *self.count, h, *self.tile, d)
        order = [0] + [a for i in range(rank) for a in (1 + i, 2 + rank + i)] + [1 + rank, 2 + 2 * rank]
        x = x.permute(order).reshape(batch, *[n * t for n, t in zip(self.count, self.tile)], h, d)
        if tuple(x.shape[1:1 + rank]) != self.grid:
            x = x[(slice(None), *[slice(0, g) for g in self.grid])]
        return x.reshape(batch, -1, h, d)

    def regions(self, x: torch.Tensor) -> torch.Tensor:
        """Keys or values ``(B, N, H, d)`` -> each tile's region ``(B * tiles, H, Tk, d)``: on the grid padded by
        half a tile, region ``i`` of a halved axis is its tiles ``i`` and ``i + 1`` (:class:`Regions`)."""
        b, _, h, d = x.shape
        rank = len(self.grid)
        blocks = [n + (1 if r else 0) for n, r in zip(self.count, self.halo)]
        x = self.pad(x.reshape(b, *self.grid, h, d), halo=True)
        x = x.reshape(b, *[s for m, t in zip(blocks, self.tile) for s in (m, t)], h, d)
        order = [0] + [1 + 2 * a for a in range(rank)] + [1 + 2 * rank] + [2 + 2 * a for a in range(rank)] + [
            2 + 2 * rank]  # tiles first: (B, m0, m1, .., H, T0, T1, .., d)
        out = Regions.apply(x.permute(order), tuple(bool(r) for r in self.halo))
        return out.reshape(b * math.prod(self.count), h, math.prod(self.region), d)

    def keys_present(self, present: torch.Tensor) -> torch.Tensor:
        """A key bias ``(B * tiles, 1, 1, Tk)`` from which places hold a token ``(B, N)`` (float 0/1)."""
        mask = self.regions(present.reshape(len(present), -1, 1, 1).float())[..., 0]  # (B * tiles, 1, Tk)
        return torch.where(mask > 0.5, 0.0, BLOCKED).unsqueeze(-2)


class Regions(torch.autograd.Function):
    """Tile-major blocks ``(B, m0, .., H, T0, .., d)`` -> regions ``(B, n0, .., H, R0, .., d)`` where along each halved
    axis region ``i`` is blocks ``i`` and ``i + 1`` (``R = 2T``, ``n = m - 1``) and along the others block ``i``: one
    copy per half in the forward pass and one accumulation per half in the backward pass (an ``unfold`` of the same
    costs a slow generic backward)."""

    @staticmethod
    def forward(ctx, blocks: torch.Tensor, halved: tuple[bool, ...]) -> torch.Tensor:  # noqa: ANN001
        ctx.halved, ctx.shape = halved, blocks.shape
        out = blocks.new_empty(Regions.out_shape(blocks.shape, halved))
        for dst, src in Regions.halves(out, blocks, halved):
            dst.copy_(src)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        blocks = grad.new_zeros(ctx.shape)
        for dst, src in Regions.halves(grad, blocks, ctx.halved):
            src.add_(dst)
        return blocks, None

    @staticmethod
    def out_shape(shape: torch.Size, halved: tuple[bool, ...]) -> list[int]:
        rank = len(halved)
        tiles = [m - 1 if h else m for m, h in zip(shape[1:1 + rank], halved)]
        sizes = [2 * t if h else t for t, h in zip(shape[2 + rank:2 + 2 * rank], halved)]
        return [shape[0], *tiles, shape[1 + rank], *sizes, shape[-1]]

    @staticmethod
    def halves(regions: torch.Tensor, blocks: torch.Tensor, halved: tuple[bool, ...]
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pairs of views (a half of every region, the blocks it holds) covering the regions."""
        rank = len(halved)
        for offsets in itertools.product(*[(0, 1) if h else (0,) for h in halved]):
            dst, src = regions, blocks
            for axis, (h, o) in enumerate(zip(halved, offsets)):
                if h:
                    t = blocks.shape[2 + rank + axis]
                    dst = dst.narrow(2 + rank + axis, o * t, t)
                    src = src.narrow(1 + axis, o, blocks.shape[1 + axis] - 1)
            yield dst, src


@functools.lru_cache(maxsize=16)
def tiling(grid: tuple[int, ...], radius: tuple[int, ...], device: torch.device) -> Tiling:
    """The :class:`Tiling` of a grid, built once per grid, radius and device (every block shares it)."""
    return Tiling(grid, radius, device)


class WindowAttention(Attention):
    """CLEAR's local attention: each token attends to the tokens within ``spec.window`` of it on the grid
    (:class:`Tiling`), and to the memory keys as well."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: AxialRoPE | None = None,
                 rel_grid: tuple[int, int] | None = None, spec: AttentionSpec | None = None):
        super().__init__(dim, num_heads, qk_norm, rope, spec=spec)
        self.radius = tuple(spec.window)

    def mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None,
            extra: Extra | None) -> torch.Tensor:
        grid = self.layout.grid
        b, h, _, d = q.shape
        tiles = tiling(grid, axis_radius(self.radius, len(grid)), q.device)
        count = math.prod(tiles.count)
        (qg, present), (kg, _), (vg, _) = (on_grid(t, pos, math.prod(grid)) for t in (q, k, v))
        if present is None:
            bias = tiles.batch_bias(b, q.dtype)
        else:
            bias = tiles.bias.to(q.dtype) + tiles.keys_present(present).reshape(b, count, 1, 1, -1).to(q.dtype)
            bias = bias.reshape(b * count, 1, *bias.shape[-2:])
        qt, kt, vt = tiles.tiles(qg), tiles.regions(kg), tiles.regions(vg)
        if extra is not None:
            kt, vt, bias = extra.append(kt, vt, bias, count, q)
        return off_grid(tiles.untile(attend(qt, kt, vt, bias), b), pos)


class ProxyAttention(WindowAttention):
    """PT-DiT's proxy-token attention: window attention (its texture complement) plus its global information
    interaction: one proxy per ``spec.proxy``-sized cell of the grid (by default one per window: cells of the window's
    diameter), the mean of the block input over the cell's tokens; the proxies attend to each other (``proxies``,
    their own attention), pass the block's key and value projections, and every token attends to them in a second
    softmax whose output joins the window's, per head times ``gate``. The gate and the proxies' output start at zero,
    so a converted model starts as window attention."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: AxialRoPE | None = None,
                 rel_grid: tuple[int, int] | None = None, spec: AttentionSpec | None = None):
        super().__init__(dim, num_heads, qk_norm, rope, spec=spec)
        self.cell = int(spec.proxy) if spec.proxy is not None else 2 * max(spec.window)
        self.proxies = Attention(dim, num_heads, qk_norm)
        self.gate = nn.Parameter(torch.zeros(num_heads, 1, 1))

    def zero_init(self) -> None:
        """The proxies' own attention and the global branch start at zero (a converted model is window attention)."""
        nn.init.zeros_(self.proxies.proj.weight)
        nn.init.zeros_(self.proxies.proj.bias)
        nn.init.zeros_(self.gate)

    def pooled(self, x: torch.Tensor, pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The proxies ``(B, P, D)``: the mean of ``x``'s tokens in each cell, and which cells hold any ``(B, P)``."""
        grid = self.layout.grid
        b, _, dim = x.shape
        cells = tuple(-(-g // self.cell) for g in grid)

        def cell_sums(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, P, C), summed over each cell's places
            t = t.reshape(len(t), *grid, t.shape[-1])
            widths = [0, 0] + [w for g, c in reversed(list(zip(grid, cells))) for w in (0, c * self.cell - g)]
            t = F.pad(t, widths) if any(widths) else t
            t = t.reshape(len(t), *[s for c in cells for s in (c, self.cell)], t.shape[-1])
            return t.sum([2 + 2 * a for a in range(len(grid))]).reshape(len(t), -1, t.shape[-1])

        if pos is None:
            count = cell_sums(torch.ones(1, math.prod(grid), 1, dtype=x.dtype, device=x.device))
            return cell_sums(x) / count, (count[..., 0] > 0).expand(b, -1)
        ids = pos.reshape(b, -1, 1)
        full = x.new_zeros(b, math.prod(grid), dim).scatter(1, ids.expand(-1, -1, dim), x)
        count = cell_sums(x.new_zeros(b, math.prod(grid), 1).scatter(1, ids, 1.0))
        return cell_sums(full) / count.clamp_min(1.0), count[..., 0] > 0

    def mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None,
            extra: Extra | None) -> torch.Tensor:
        proxies, held = self.pooled(x, pos)
        absent = None if pos is None else key_mask_bias(held).to(q.dtype)  # (B, 1, 1, P): empty cells
        b, p, d = proxies.shape
        pq, pk, pv = self.proxies.heads(proxies)
        mixed = attend(pq, pk, pv, absent).transpose(1, 2).reshape(b, p, d)
        _, pk, pv = self.heads(proxies + self.proxies.proj(mixed), rotate=False)
        return super().mix(x, q, k, v, pos, extra) + self.gate.to(q.dtype) * attend(q, pk, pv, absent)


class LinearAttention(Attention):
    """LiT's linear attention: ``phi(q) (phi(k)^T v) / (phi(q) . sum phi(k))`` with ``phi = ReLU``, in fp32, so its
    cost grows with the tokens, not their square; rotary positions rotate ``phi(q)`` and ``phi(k)`` in the numerator
    only (RoFormer's linear form). A depthwise convolution of the values over the grid (``spec.conv``; FLatten
    Transformer's locality term, zero-initialised) is added to the output."""

    rotate_heads = False  # the rotation goes after the feature map

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: AxialRoPE | None = None,
                 rel_grid: tuple[int, int] | None = None, spec: AttentionSpec | None = None):
        super().__init__(dim, num_heads, qk_norm, rope, spec=spec)
        rank = len(spec.layout.grid)
        size = int(spec.conv)
        self.conv = None if size == 0 else (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1](
            dim, dim, size, padding=size // 2, groups=dim)

    def zero_init(self) -> None:
        """The convolution starts at zero: a converted model starts as pure linear attention."""
        if self.conv is not None:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None,
            extra: Extra | None) -> torch.Tensor:
        wide = torch.promote_types(q.dtype, torch.float32)  # bf16 sums over thousands of tokens lose too much
        fq, fk, values = F.relu(q).to(wide), F.relu(k).to(wide), v.to(wide)
        state = self.rotate(fk, pos).transpose(-2, -1) @ values  # (B, H, d, d)
        total = fk.sum(2, keepdim=True)  # (B, H, 1, d)
        if extra is not None:  # memory keys join both sums, each weighted by exp(its bias)
            mk = F.relu(extra.k).to(wide)
            if extra.bias is not None:
                mk = mk * extra.bias.to(wide).exp()[:, None, :, None]
            state = state + mk.transpose(-2, -1) @ extra.v.to(wide)
            total = total + mk.sum(2, keepdim=True)
        out = (self.rotate(fq, pos) @ state) / ((fq * total).sum(-1, keepdim=True) + 1e-6)
        out = out.to(q.dtype)
        if self.conv is not None:
            out = out + self.local(v, pos)
        return out

    def local(self, v: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """The depthwise convolution of the values over the grid (absent tokens as zeros) at each token."""
        grid = self.layout.grid
        b, h, _, d = v.shape
        on, _ = on_grid(v, pos, math.prod(grid))  # (B, N, H, d)
        image = on.reshape(b, -1, h * d).transpose(1, 2).reshape(b, h * d, *grid)
        return off_grid(self.conv(image).reshape(b, h * d, -1).transpose(1, 2).reshape(b, -1, h, d), pos)


class TileAttention(Attention):
    """Efficient-vDiT's tile-sparse attention for video grids ``(T, H, W)``, its ``k:(T-k)`` mask: the attention map
    is a ``T x T`` grid of frame-to-frame tiles, of which the diagonal and the rows and columns of the first
    ``k = spec.global_frames`` frames are kept. Each frame attends to itself and the global frames, the global frames
    to every frame, so the cost grows linearly with the frames."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: AxialRoPE | None = None,
                 rel_grid: tuple[int, int] | None = None, spec: AttentionSpec | None = None):
        super().__init__(dim, num_heads, qk_norm, rope, spec=spec)
        if len(spec.layout.grid) != 3:
            raise ConfigError(f"model.attention=tile attends between the frames of a video grid (frames, height, "
                              f"width); this model's token grid {spec.layout.grid} is not one: use "
                              "model.attention=window")
        self.first = int(spec.global_frames)

    def mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None,
            extra: Extra | None) -> torch.Tensor:
        frames, per = self.layout.grid[0], math.prod(self.layout.grid[1:])
        first = min(self.first, frames)
        b, h, _, d = q.shape
        (qg, present), (kg, _), (vg, _) = (on_grid(t, pos, frames * per) for t in (q, k, v))  # (B, N, H, d)
        absent = None if present is None else key_mask_bias(present).to(q.dtype)  # (B, 1, 1, N)
        # the global frames' queries: every key
        k_all, v_all = kg.transpose(1, 2), vg.transpose(1, 2)
        keys_all = absent if extra is None else extra.with_bias(absent, frames * per, q)
        if extra is not None:
            k_all, v_all = torch.cat([k_all, extra.k], 2), torch.cat([v_all, extra.v], 2)
        head = attend(qg[:, :first * per].transpose(1, 2), k_all, v_all, keys_all).transpose(1, 2)
        # the other frames' queries, one attention batch per frame: their own frame, then the global frames
        rest = frames - first
        if rest == 0:
            return off_grid(head, pos)

        def per_frame(t: torch.Tensor) -> torch.Tensor:  # (B, rest * per, H, d) -> (B * rest, H, per, d)
            return t.reshape(b, rest, per, h, d).transpose(2, 3).reshape(b * rest, h, per, d)

        def shared(t: torch.Tensor) -> torch.Tensor:  # the global frames, the same for every frame of a sample
            return t[:, None, :first * per].transpose(2, 3).expand(-1, rest, -1, -1, -1).reshape(
                b * rest, h, first * per, d)

        qf = per_frame(qg[:, first * per:])
        kf, vf = (torch.cat([per_frame(t[:, first * per:]), shared(t)], 2) for t in (kg, vg))
        bias = None
        if present is not None:
            keys = torch.cat([present[:, first * per:].reshape(b, rest, per),
                              present[:, None, :first * per].expand(-1, rest, -1)], -1)
            bias = torch.where(keys, 0.0, BLOCKED).reshape(b * rest, 1, 1, -1).to(q.dtype)
        if extra is not None:
            kf, vf, bias = extra.append(kf, vf, bias, rest, q)
        tail = attend(qf, kf, vf, bias).reshape(b, rest, h, per, d).transpose(2, 3).reshape(b, rest * per, h, d)
        return off_grid(torch.cat([head, tail], 1), pos)


#: How blocks attend (DiT's ``attention``): name -> the attention class of its blocks (``factorised`` builds
#: VDT's factorised blocks, whose temporal and spatial attentions are full).
ATTENTIONS: Registry[type] = Registry("attention", key="model.attention")
ATTENTIONS.add("full", Attention, "every block attends over all tokens")
ATTENTIONS.add("factorised", Attention, "VDT: temporal attention across frames, then spatial attention in each frame")
ATTENTIONS.add("linear", LinearAttention, "LiT: ReLU linear attention plus a depthwise convolution (model.linear_conv)")
ATTENTIONS.add("window", WindowAttention, "CLEAR: each token attends to the tokens within model.window of it")
ATTENTIONS.add("proxy", ProxyAttention, "PT-DiT: window attention plus one proxy token per model.proxy_size cell")
ATTENTIONS.add("tile", TileAttention, "Efficient-vDiT: each frame attends to itself and the first model.tile_global "
               "frames, which attend to all (video grids)")


def attention_spec(kind: str, layout: TokenLayout, window: int | Sequence[int] = 4, proxy: int | None = None,
                   conv: int = 5, global_frames: int = 1) -> AttentionSpec:
    """A checked :class:`AttentionSpec` (DiT's ``attention``, ``window``, ``proxy_size``, ``linear_conv`` and
    ``tile_global``; ``kind`` already one of :data:`ATTENTIONS`). Settings a kind does not read are kept as given."""
    radii = (int(window),) if isinstance(window, (int, float)) else tuple(int(r) for r in window)
    rank = len(layout.grid)
    if kind in ("window", "proxy"):
        axis_radius(radii, rank)
    if not radii or min(radii) < 0 or max(radii) < 1:
        raise ConfigError(f"model.window={list(radii)} must be non-negative radii, at least one of them positive")
    if proxy is not None and proxy < 1:
        raise ConfigError(f"model.proxy_size={proxy} must be at least 1 (tokens per proxy cell edge)")
    if conv < 0 or (conv and conv % 2 == 0):
        raise ConfigError(f"model.linear_conv={conv} must be 0 (no convolution) or an odd kernel size")
    if global_frames < 0:
        raise ConfigError(f"model.tile_global={global_frames} must be non-negative")
    return AttentionSpec(kind, layout, radii, None if proxy is None else int(proxy), int(conv), int(global_frames))


#: The layers every attention kind has, under the same names (what weight inheritance carries between kinds).
SHARED_LAYERS = ("qkv", "proj", "q_norm", "k_norm", "rel_bias")


def kind_layer(key: str) -> bool:
    """Whether a state-dict ``key`` belongs to a layer only some attention kinds have (a linear kind's convolution,
    the proxies' attention): what converting a model from one kind to another adds or leaves behind."""
    _, sep, rest = key.rpartition(".attn.")
    return bool(sep) and rest.split(".", 1)[0] not in SHARED_LAYERS
