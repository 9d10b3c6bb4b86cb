"""Token masks. Two different things, kept apart:

* a **drop mask** says which tokens the transformer skips (training speed, never at sampling); it is
  carried as ``keep_idx`` ``(B, K)``, the indices of the tokens that are kept, the same ``K`` for every
  sample so the kept tokens stack into one dense tensor;
* a **given mask** says which tokens are known and held clean (the task, at training and sampling).
"""

from __future__ import annotations

import torch

from maskdit.errors import ConfigError


def num_kept(num_tokens: int, ratio: float) -> int:
    """Tokens kept when a share ``ratio`` in [0, 1) is dropped; at least one is always kept."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1), got {ratio}")
    return max(1, round(num_tokens * (1.0 - ratio)))


def random_keep_indices(
    batch: int,
    num_tokens: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per sample, a uniformly random subset of ``num_kept(num_tokens, ratio)`` token indices, sorted."""
    keep = num_kept(num_tokens, ratio)
    scores = torch.rand(batch, num_tokens, generator=generator)
    idx = scores.argsort(dim=1)[:, :keep].sort(dim=1).values
    return idx.to(device)


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens ``(B, N, D)`` at indices ``(B, K)`` -> ``(B, K, D)``."""
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
