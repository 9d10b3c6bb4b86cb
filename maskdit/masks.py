"""Token masks. Two different things, kept apart:

* a **drop mask** says which tokens the transformer skips (training speed, never at sampling); it is
  carried as ``keep_idx`` ``(B, K)``, the indices of the tokens that are kept, the same ``K`` for every
  sample so the kept tokens stack into one dense tensor;
* a **given mask** says which tokens are known and held clean (the task, at training and sampling).
"""

from __future__ import annotations

import math

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


#: Drop-ratio schedules over training steps (see :func:`mask_ratio`).
SCHEDULES = ("constant", "random", "linear_decay", "cosine_decay", "increasing")


def mask_ratio(
    schedule: str,
    ratio: float,
    step: int,
    total_steps: int,
    ratio_min: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """The drop ratio of training step ``step`` (0-based) of ``total_steps``.

    * ``constant``: ``ratio`` at every step;
    * ``random``: uniform in ``[ratio_min, ratio]``, drawn per step (MDT-style);
    * ``linear_decay`` / ``cosine_decay``: from ``ratio`` at step 0 to 0 at ``total_steps``;
    * ``increasing``: from ``ratio_min`` at step 0 linearly up to ``ratio`` (LMD's progressive masking).
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"mask.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    progress = min(1.0, step / max(1, total_steps))
    if schedule == "constant":
        return ratio
    if schedule == "random":
        u = torch.rand((), generator=generator).item()
        return ratio_min + (ratio - ratio_min) * u
    if schedule == "linear_decay":
        return ratio * (1.0 - progress)
    if schedule == "cosine_decay":
        return ratio * 0.5 * (1.0 + math.cos(math.pi * progress))
    return ratio_min + (ratio - ratio_min) * progress
