"""How a condition's token sequence (a caption's) enters the backbone: one of :data:`TEXT_MODES`.

* ``cross`` (PixArt-alpha): each block gains a cross-attention from its image tokens to the text, between its
  self-attention and its MLP, plugged into the block's ``context`` slot. The output projection starts at zero,
  so a fresh model is the plain DiT. The text stream stays as the conditioner made it.
* ``joint`` (MM-DiT, SD3; Flux): the first ``text_double`` blocks are double-stream: text and image tokens have
  their own adaLN, attention projections and MLP and attend jointly over ``[text; image]``; the remaining blocks
  are single-stream (one set of weights for both), as Flux's. Both streams change in every block.
* ``concat`` (in-context: Lumina-Image 2.0, DiT-Air): every block is single-stream: the text tokens (refined by
  the conditioner's own blocks) join the sequence and pass the same weights as the image tokens.
* ``aligned``: for a condition with one token per frame of the grid's axis 0 (sound under motion), each block adds
  to every token a projection of the condition tokens of the frames it spans, as audio-driven motion models feed
  frame-aligned audio features: where attention would have to learn which frame is which, the alignment is given.

Only image tokens are ever dropped or routed: masked recipes thin the image stream, and the text stream passes
every block whole. Text tokens carry their order from the conditioner (its own positions), so rotary positions
rotate image tokens only, and padding is masked out of every attention that reads text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from maskdit.errors import ConfigError
from maskdit.model.attention import Attention, attend, key_mask_bias
from maskdit.model.blocks import (
    MLPS,
    BlockOptions,
    Context,
    DiTBlock,
    modulate,
    modulation,
    per_sample,
)
from maskdit.registry import Registry

#: name -> ``install(model, double)``: puts the mode's layers into a freshly built DiT (``model.text``). Facts:
#: ``captions`` (whether it takes a token sequence of any length, such as a caption's).
TEXT_MODES: Registry[Callable[[nn.Module, int], None]] = Registry("text injection", key="model.text")


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens (queries) to the context's text (keys and values), padding masked.
    As PixArt-alpha's: the residual stream enters unnormalised, and ``proj`` starts at zero, so the layer adds
    nothing until it has learned to."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else None

    def zero_init(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, c: Context) -> torch.Tensor:
        if not isinstance(c, Context) or c.text is None:
            raise ConfigError("this model attends to text (model.text=cross): pass captions as its condition")
        b, n, d = x.shape
        h, hd = self.num_heads, d // self.num_heads
        q = self.q(x).reshape(b, n, h, hd).transpose(1, 2)
        k, v = self.kv(c.text).reshape(b, -1, 2, h, hd).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = attend(q, k, v, key_mask_bias(c.text_mask).to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TextStream(nn.Module):
    """The text stream's own weights in a double-stream block: adaLN, attention projections, norms and MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, options: BlockOptions):
        super().__init__()
        self.norm1 = options.make_norm(dim)
        self.attn = Attention(dim, num_heads, options.qk_norm)  # no rotary positions: text keeps its own order
        self.norm2 = options.make_norm(dim, options.mlp_norm_eps)
        self.mlp = MLPS[options.mlp](dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))


class JointBlock(DiTBlock):
    """A DiT block over ``[text; image]`` with joint attention (MM-DiT). ``double``: the text has its own weights
    (:class:`TextStream`, SD3's and Flux's double-stream blocks); otherwise it passes the image weights too
    (single-stream: Flux's later blocks, in-context conditioning). Returns ``(image tokens, context with the
    updated text)``; per-token modulation (token time) and the kept tokens' positions apply to the image tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, options: BlockOptions = BlockOptions(),
                 double: bool = True):
        super().__init__(dim, num_heads, mlp_ratio, options=options)
        self.text = TextStream(dim, num_heads, mlp_ratio, options) if double else None

    def forward(self, x: torch.Tensor, c: Context, pos: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Context]:
        if not isinstance(c, Context) or c.text is None:
            raise ConfigError("this model attends jointly to text (model.text=joint or concat): pass captions as "
                              "its condition")
        stream = self.text or self
        text, b, n, d = c.text, *x.shape
        length = text.shape[1]
        img_mod = modulation(self.adaLN_modulation, c, pos).chunk(6, -1)
        txt_mod = stream.adaLN_modulation(per_sample(c)).unsqueeze(1).chunk(6, -1)
        qi, ki, vi = self.attn.heads(modulate(self.norm1(x), img_mod[0], img_mod[1]), pos)
        qt, kt, vt = stream.attn.heads(modulate(stream.norm1(text), txt_mod[0], txt_mod[1]), rotate=False)
        keys = torch.cat([c.text_mask, torch.ones(b, n, dtype=torch.bool, device=x.device)], dim=1)
        out = attend(torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2),
                     key_mask_bias(keys).to(qi.dtype)).transpose(1, 2).reshape(b, length + n, d)
        x = x + img_mod[2] * self.attn.proj(out[:, length:])
        text = text + txt_mod[2] * stream.attn.proj(out[:, :length])
        x = x + img_mod[5] * self.mlp(modulate(self.norm2(x), img_mod[3], img_mod[4]), per_sample(c))
        text = text + txt_mod[5] * stream.mlp(modulate(stream.norm2(text), txt_mod[3], txt_mod[4]), per_sample(c))
        return x, c.with_text(text)


class AlignedInput(nn.Module):
    """What a block adds to each token from a frame-aligned condition ``(B, frames, D)``: the condition tokens of
    the ``patch`` frames the token spans along axis 0, concatenated and projected (from zero, so a fresh model is the
    plain DiT). Tokens are in row-major order, axis 0 outermost, so a row of the token grid is one span of frames."""

    def __init__(self, dim: int, grid: Sequence[int], patch: int):
        super().__init__()
        self.rows, self.columns, self.patch = int(grid[0]), math.prod(grid[1:]), int(patch)
        self.proj = nn.Linear(self.patch * dim, dim)

    def zero_init(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, c: Context) -> torch.Tensor:
        if not isinstance(c, Context) or c.text is None:
            raise ConfigError("this model adds a frame-aligned condition to its tokens (model.text=aligned): pass its "
                              "condition")
        b, n, d = x.shape
        frames = self.rows * self.patch
        if n != self.rows * self.columns:
            raise ConfigError(f"model.text=aligned adds each frame's condition to the tokens of its frames: it needs "
                              f"the whole training grid ({self.rows * self.columns} tokens), got {n} (no token "
                              "dropping, no other size)")
        if c.text.shape[1] != frames:
            raise ConfigError(f"model.text=aligned needs one condition token per frame of the grid's axis 0 "
                              f"({frames}), got {c.text.shape[1]}")
        return self.proj(c.text.reshape(b, self.rows, self.patch * d)).repeat_interleave(self.columns, dim=1)


def _check_plain_blocks(model: nn.Module, mode: str) -> None:
    if model.attention != "full" or model.block_options.rel_grid is not None:
        raise ConfigError(f"model.text={mode} builds joint attention over [text; image]: it needs "
                          "model.attention=full and no rel_pos_bias (use model.text=cross)")
    if model.long_skips is not None:
        raise ConfigError(f"model.text={mode} does not fit MDT's long-skip layout: use model.text=cross")


@TEXT_MODES.register("cross", "cross-attention to the text after each block's self-attention (PixArt-alpha)",
                     captions=True)
def install_cross(model: nn.Module, double: int) -> None:
    for block in model.blocks:
        block.context = CrossAttention(model.hidden_size, model.num_heads, model.block_options.qk_norm)


@TEXT_MODES.register("joint", "joint attention over [text; image]: text_double double-stream blocks with the "
                     "text's own weights (MM-DiT), then single-stream blocks (Flux)", captions=True)
def install_joint(model: nn.Module, double: int) -> None:
    _check_plain_blocks(model, "joint")
    if not 0 <= double <= model.depth:
        raise ConfigError(f"model.text_double={double} must be in [0, model.depth={model.depth}]")
    model.blocks = nn.ModuleList(
        JointBlock(model.hidden_size, model.num_heads, model.mlp_ratio, model.options_of(i), double=i < double)
        for i in range(model.depth))


@TEXT_MODES.register("concat", "in-context: the text tokens join the sequence and share every block's weights "
                     "(Lumina-Image 2.0, DiT-Air)", captions=True)
def install_concat(model: nn.Module, double: int) -> None:
    _check_plain_blocks(model, "concat")
    model.blocks = nn.ModuleList(
        JointBlock(model.hidden_size, model.num_heads, model.mlp_ratio, model.options_of(i), double=False)
        for i in range(model.depth))


@TEXT_MODES.register("aligned", "a condition with one token per frame of the grid's axis 0 (sound under motion): "
                     "each block adds to every token the condition tokens of its own frames", captions=False)
def install_aligned(model: nn.Module, double: int) -> None:
    if model.long_skips is not None:
        raise ConfigError("model.text=aligned does not fit MDT's long-skip layout: use model.text=cross")
    frames = model.token_grid[0] * model.patch_size[0]
    if getattr(model.y_embedder, "frames", None) != frames:
        raise ConfigError(f"model.text=aligned needs a condition with one token per frame of the grid's axis 0 "
                          f"({frames}), such as model.condition=audio on data.name=footsteps; a caption is no such "
                          "sequence: use model.text=cross")
    for block in model.blocks:
        block.context = AlignedInput(model.hidden_size, model.token_grid, model.patch_size[0])
