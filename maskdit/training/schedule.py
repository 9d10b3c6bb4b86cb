"""The learning-rate schedule: linear warmup, then a registered decay, as a closed form of the step.

A closed form needs no schedule state, so a resumed run gets the same rates without any. torch's
LinearLR + CosineAnnealingLR compute each rate from the previous one (the rate of step k depends on the steps
before it; 920 of 1000 rates differ from this form in float64), so resuming would need their state in the
checkpoint; LambdaLR over this function would add only a counter to re-set to the step on every resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from maskdit.registry import Registry

#: name -> ``fn(lr, lr_min, progress) -> rate`` after warmup (``progress`` in [0, 1]: the share of the steps after
#: warmup that are done).
LR_SCHEDULES: Registry[Callable[[float, float, float], float]] = Registry("learning-rate schedule", key="lr_schedule")
LR_SCHEDULES.add("constant", lambda lr, lr_min, progress: lr, "lr after warmup")
LR_SCHEDULES.add("cosine", lambda lr, lr_min, progress:
                 lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress)),
                 "cosine decay from lr to lr_min at the last step")


def learning_rate(cfg: Any, step: int) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then the ``lr_schedule`` decay to ``lr_min`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return LR_SCHEDULES.get(cfg.lr_schedule)(cfg.lr, cfg.lr_min, progress)


def warmup_cosine(lr: float, step: int, steps: int, warmup: int = 100) -> float:
    """The schedule of the small side models trained outside a run (an alignment encoder, an image tokenizer, a
    character judge): a linear warmup over ``warmup`` steps times a cosine from ``lr`` to 0 over ``steps``."""
    return lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
