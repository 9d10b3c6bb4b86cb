"""The input layer of a model over token ids (masked diffusion, :mod:`maskdit.diffusion.masked`).

A discrete model's grid ``(B, C, *S)`` holds token ids ``0..V-1`` (as floats, exact) and the mask id ``-1``
in the cells still to be generated. Patchified, each token holds ``P = C * prod(patch)`` ids; its embedding is the
sum of one learned vector per (place in the patch, id) plus a bias: exactly a linear patch embedding of the
one-hot grid, without building the one-hot tensor (``V + 1`` channels per cell). The head predicts ``V``
logits per cell (the model's ``out_channels`` are ``C * V``), so ``forward`` returns logits ``(B, C * V, *S)``.
"""

from __future__ import annotations

import torch
from torch import nn

#: The id of a masked (absorbing-state) cell in model space.
MASK_ID = -1


class TokenEmbedding(nn.Module):
    """Token ids ``(B, N, P)`` (``MASK_ID`` for masked cells) -> ``(B, N, D)``: one table of ``V + 1`` rows
    (the last is the mask) per patch offset, summed over the patch, plus a bias."""

    def __init__(self, vocab_size: int, patch_cells: int, hidden_size: int):
        super().__init__()
        self.vocab_size, self.patch_cells = vocab_size, patch_cells
        self.weight = nn.Parameter(torch.empty(patch_cells * (vocab_size + 1), hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.round().long()
        ids = torch.where(ids < 0, self.vocab_size, ids.clamp(max=self.vocab_size))  # -1 (and stray values) -> mask
        offsets = torch.arange(self.patch_cells, device=ids.device) * (self.vocab_size + 1)
        return nn.functional.embedding(ids + offsets, self.weight).sum(dim=-2) + self.bias
