"""Training-only heads that fill the tokens a masked step dropped. Sampling never uses them.

* :class:`MAEDecoder` (MaskDiT): a learned mask token at every dropped position, its own positions and
  a few narrower adaLN blocks over all tokens; its output on dropped tokens gets an auxiliary
  reconstruction loss.
* :class:`SideInterpolater` (MDT): one full-width block that predicts features for the dropped tokens
  from the kept ones; kept tokens pass through unchanged (the masked shortcut), and the backbone's
  remaining blocks then run on the completed set.

:class:`DecoderHead` is the exception: MaskDiT's released models keep their narrow decoder at sampling
time, so it is part of the backbone (``DiT(decoder=...)``), not a training-only head.
"""

from __future__ import annotations

import torch
from torch import nn

from maskdit.errors import ConfigError
from maskdit.grid import sincos_pos_embed
from maskdit.masks import gather_tokens, scatter_tokens
from maskdit.model.blocks import (
    DEFAULT_BLOCK,
    BlockOptions,
    DiTBlock,
    FinalLayer,
    modulate,
    per_sample,
    zero_init_adaln,
)


def dropped_mask(keep_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``(B, N)`` float: 1 where a token was dropped, 0 where it was kept."""
    mask = torch.ones(keep_idx.shape[0], num_tokens, device=keep_idx.device)
    return mask.scatter(1, keep_idx.flatten(1), 0.0)


class MAEDecoder(nn.Module):
    """Light decoder: kept features -> all tokens' patch values."""

    def __init__(self, token_grid: tuple[int, ...], hidden_size: int, patch_dim: int, depth: int = 2,
                 width: int | None = None, num_heads: int = 4):
        super().__init__()
        width = width or max(32, hidden_size // 2)
        if width % num_heads or width % 2:
            raise ConfigError(f"mask.decoder_width {width} must be even and divisible by {num_heads} heads")
        if depth < 1:
            raise ConfigError(f"mask.decoder_depth must be at least 1, got {depth}")
        self.proj = nn.Linear(hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.register_buffer("pos_embed", sincos_pos_embed(width, token_grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, cond_dim=hidden_size) for _ in range(depth))
        self.final_layer = FinalLayer(width, patch_dim, cond_dim=hidden_size)
        nn.init.normal_(self.mask_token, std=0.02)
        for block in self.blocks:
            zero_init_adaln(block)
        zero_init_adaln(self.final_layer)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, kept: torch.Tensor, c: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        tokens = scatter_tokens(self.proj(kept), keep_idx, self.mask_token, self.pos_embed.shape[1])
        tokens = tokens + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.final_layer(tokens, c)


class SideInterpolater(nn.Module):
    """One block over all tokens that predicts the dropped tokens' features (MDT's side-interpolater)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, pos_on_kept: bool = False,
                 options: BlockOptions = DEFAULT_BLOCK):
        super().__init__()
        self.pos_on_kept = pos_on_kept  # MDT's long-skip layout adds its decoder table to every token here
        self.mask_token = nn.Parameter(torch.zeros(hidden_size))
        self.block = DiTBlock(hidden_size, num_heads, mlp_ratio, options=options)
        zero_init_adaln(self.block)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, kept: torch.Tensor, c: torch.Tensor, keep_idx: torch.Tensor, pos_embed: torch.Tensor
                ) -> torch.Tensor:
        n = pos_embed.shape[1]
        dropped = dropped_mask(keep_idx, n).unsqueeze(-1).to(kept.dtype)
        tokens = scatter_tokens(kept, keep_idx, self.mask_token, n) + (pos_embed if self.pos_on_kept
                                                                      else dropped * pos_embed)
        return torch.where(dropped.bool(), self.block(tokens, c), tokens)


class DecoderHead(nn.Module):
    """MaskDiT's released decoder, run at training and sampling: the backbone's tokens through an
    adaLN-modulated LayerNorm and a linear map to ``width``, then its own sin-cos positions and ``depth``
    blocks of that width conditioned on the backbone's ``c``. The model's final layer follows at ``width``.

    Given ``pos`` (the kept tokens' indices) the gaps are filled with ``mask_token`` (zeros in releases
    trained without the MAE loss), every token passes the blocks, and the kept tokens come back out.
    """

    def __init__(self, token_grid: tuple[int, ...], hidden_size: int, width: int = 512, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0, pos_layout: str = "xy"):
        super().__init__()
        if width % num_heads or width % 2 or depth < 1:
            raise ConfigError(f"decoder width {width} must be even and divisible by its {num_heads} heads, and its "
                              f"depth ({depth}) at least 1")
        self.width, self.depth, self.num_heads = width, depth, num_heads
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        table = sincos_pos_embed(width, token_grid, reverse_axes=pos_layout == "xy")
        self.register_buffer("pos_embed", table[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, cond_dim=hidden_size) for _ in range(depth))

    def zero_init(self) -> None:
        """MaskDiT's start: every decoder block the identity, the entry map zero."""
        for module in (*self.blocks, self):
            zero_init_adaln(module)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, c: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(per_sample(c)).chunk(2, dim=-1)
        x = self.linear(modulate(self.norm(tokens), shift, scale))
        n = self.pos_embed.shape[1]
        if pos is not None:
            x = scatter_tokens(x, pos, self.mask_token.to(x.dtype), n)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, c)
        return x if pos is None else gather_tokens(x, pos)
