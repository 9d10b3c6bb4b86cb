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


def drop_tokens(
    batch: int,
    num_tokens: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """Kept-token indices for a step that drops ``ratio`` of the tokens, or ``None`` when that keeps all
    of them (so the model takes its unmasked path and no random numbers are drawn)."""
    if num_kept(num_tokens, ratio) == num_tokens:
        return None
    return random_keep_indices(batch, num_tokens, ratio, generator, device)


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


# ---------------------------------------------------------------------------------------------------
# Given masks (condition masks): which tokens of the token grid are known and held clean.
#
# A given mask is a bool tensor shaped like the token grid, ``(T', H', W')`` for video or ``(H', W')``
# for images: True = given (clean, known), False = to generate. Frame tasks count *token-grid* frames:
# with a temporal patch size of 1, token-grid axis 0 is the frame index; with a temporal patch of p,
# token frame t covers video frames p*t .. p*t+p-1. Flattening a mask in row-major order (``.reshape(-1)``)
# gives patchify's token order (see maskdit/grid.py).
# ---------------------------------------------------------------------------------------------------

#: Task names accepted by :func:`task_mask`.
TASKS = ("unconditional", "predict", "backward", "interpolate", "animate", "complete", "inpaint", "outpaint")
#: Tasks that give whole frames and so need a ``(T', H', W')`` token grid.
FRAME_TASKS = ("predict", "backward", "interpolate", "animate", "complete")


def _frames_mask(grid: tuple[int, ...], frames: torch.Tensor) -> torch.Tensor:
    """A mask giving every token of the token-grid frames flagged in ``frames`` (bool ``(T',)``)."""
    return frames[:, None, None].expand(grid).clone()


def _check_frame_count(task: str, name: str, value: int, low: int, high: int) -> int:
    value = int(value)
    if not low <= value <= high:
        raise ConfigError(f"task {task}: {name} must be in [{low}, {high}] for this grid, got {value}")
    return value


def _box(task: str, box: tuple[int, ...], grid: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices for a box ``(start0, stop0, start1, stop1, ...)`` over the last ``len(box)//2`` axes."""
    axes = len(box) // 2
    if len(box) % 2 or axes not in (2, 3) or axes > len(grid):
        raise ConfigError(
            f"task {task}: box must be (h0, h1, w0, w1) or, on a video grid, (t0, t1, h0, h1, w0, w1); got {box!r}"
        )
    sizes = grid[len(grid) - axes :]
    slices = []
    for i, size in enumerate(sizes):
        a, b = int(box[2 * i]), int(box[2 * i + 1])
        if not 0 <= a < b <= size:
            raise ConfigError(
                f"task {task}: box {tuple(box)} does not fit the token grid {grid}: "
                "need 0 <= start < stop <= size per axis"
            )
        slices.append(slice(a, b))
    return (slice(None),) * (len(grid) - axes) + tuple(slices)


def _random_span(size: int, share: float, generator: torch.Generator | None) -> slice:
    length = max(1, min(size, round(size * share)))
    start = int(torch.randint(0, size - length + 1, (), generator=generator))
    return slice(start, start + length)


def task_mask(
    name: str, token_grid: tuple[int, ...] | list[int], generator: torch.Generator | None = None, **options
) -> torch.Tensor:
    """The given mask of task ``name`` on ``token_grid``: bool, shaped like the grid, True = given.

    Tasks and their options (frames are token-grid frames, see above):

    * ``unconditional``: nothing given (any rank);
    * ``predict(k=T'//2)``: frames ``0..k-1`` given; ``backward(k=T'//2)``: the last ``k`` frames given;
    * ``interpolate(stride=2, include_last=True)``: frames ``0, s, 2s, ...`` given, plus the last frame so
      every generated frame lies between two given ones;
    * ``animate(frame=0)``: that one frame given;
    * ``complete(k=None)``: ``k`` random frames given (``k`` drawn from ``1..T'-1`` when ``None``);
    * ``inpaint(box=None, share=0.5, temporal=False)``: a box generated, the rest given. ``box`` is
      ``(h0, h1, w0, w1)`` (all frames) or ``(t0, t1, h0, h1, w0, w1)``; without it a random box covering
      about ``share`` of each spatial axis (and of time when ``temporal``);
    * ``outpaint(border=None)``: a border of ``border`` tokens (default a quarter of the shorter side)
      generated in every frame, the centre given.

    Random choices come from ``generator``. A mask that gives everything is refused.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    grid = tuple(int(s) for s in token_grid)
    if any(s < 1 for s in grid) or not grid:
        raise ConfigError(f"token grid {grid} must have positive sizes")
    rank = len(grid)
    if name in FRAME_TASKS and rank != 3:
        raise ConfigError(
            f"task {name} gives whole frames and needs a (T, H, W) token grid, got rank {rank} {grid}: "
            "on images use inpaint or outpaint"
        )
    if name in ("inpaint", "outpaint") and rank not in (2, 3):
        raise ConfigError(f"task {name} needs an (H, W) or (T, H, W) token grid, got {grid}")
    allowed = {
        "unconditional": set(), "predict": {"k"}, "backward": {"k"}, "interpolate": {"stride", "include_last"},
        "animate": {"frame"}, "complete": {"k"}, "inpaint": {"box", "share", "temporal"}, "outpaint": {"border"},
    }[name]
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(
            f"task {name} takes options {', '.join(sorted(allowed)) or 'none'}; got {', '.join(sorted(unknown))}"
        )

    if name == "unconditional":
        mask = torch.zeros(grid, dtype=torch.bool)
    elif name in FRAME_TASKS:
        t = grid[0]
        frames = torch.zeros(t, dtype=torch.bool)
        if name in ("predict", "backward"):
            k = _check_frame_count(name, "k", options.get("k", max(1, t // 2)), 1, t)
            frames[:k] = True
            if name == "backward":
                frames = frames.flip(0)
        elif name == "interpolate":
            stride = _check_frame_count(name, "stride", options.get("stride", 2), 1, max(1, t))
            frames[::stride] = True
            if options.get("include_last", True):
                frames[-1] = True
        elif name == "animate":
            frame = _check_frame_count(name, "frame", options.get("frame", 0), -t, t - 1)
            frames[frame] = True
        else:  # complete
            k = options.get("k")
            if k is None:
                if t < 2:
                    raise ConfigError(f"task complete needs at least 2 token-grid frames, got {t}")
                k = int(torch.randint(1, t, (), generator=generator))
            k = _check_frame_count(name, "k", k, 1, t)
            frames[torch.randperm(t, generator=generator)[:k]] = True
        mask = _frames_mask(grid, frames)
    elif name == "inpaint":
        box = options.get("box")
        if box is not None:
            region = _box(name, tuple(box), grid)
        else:
            share = float(options.get("share", 0.5))
            if not 0.0 < share <= 1.0:
                raise ConfigError(f"task inpaint: share must be in (0, 1], got {share}")
            spatial = tuple(_random_span(s, share, generator) for s in grid[-2:])
            if rank == 3:
                frames = _random_span(grid[0], share, generator) if options.get("temporal") else slice(None)
                region = (frames, *spatial)
            else:
                region = spatial
        mask = torch.ones(grid, dtype=torch.bool)
        mask[region] = False
    else:  # outpaint
        h, w = grid[-2:]
        border = options.get("border")
        border = max(1, min(h, w) // 4) if border is None else int(border)
        if border < 1:
            raise ConfigError(f"task outpaint: border must be at least 1 token, got {border}")
        mask = torch.zeros(grid, dtype=torch.bool)
        if 2 * border < h and 2 * border < w:
            mask[..., border : h - border, border : w - border] = True
        else:
            raise ConfigError(
                f"task outpaint: a border of {border} tokens leaves no centre on a {h}x{w} token grid: "
                "use a thinner border"
            )

    if bool(mask.all()):
        raise ConfigError(
            f"task {name} leaves nothing to generate: every token of the {grid} token grid is given by "
            f"options {options or 'defaults'}; give fewer frames or a larger region"
        )
    return mask


def mix_task_masks(
    batch: int,
    token_grid: tuple[int, ...] | list[int],
    weights: dict[str, float],
    generator: torch.Generator | None = None,
    options: dict[str, dict] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Per sample, a task drawn with probability proportional to ``weights`` and its given mask.

    Returns the masks flattened in patchify's token order, bool ``(batch, N)``, and the task names.
    ``options`` maps a task name to the options of :func:`task_mask` (for example
    ``{"predict": {"k": 4}}``). Tasks with weight 0 are never drawn.
    """
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    unknown = set(weights) - set(TASKS)
    if unknown:
        raise ConfigError(
            f"unknown task(s) {', '.join(sorted(unknown))} in task weights: choose from {', '.join(TASKS)}"
        )
    names = [n for n, w in weights.items() if w != 0]
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or not names:
        raise ConfigError(f"task weights must be finite, non-negative and not all zero, got {weights}")
    options = options or {}
    probs = torch.tensor([float(weights[n]) for n in names], dtype=torch.float64)
    picks = torch.multinomial(probs, batch, replacement=True, generator=generator)
    chosen = [names[i] for i in picks.tolist()]
    masks = torch.stack(
        [task_mask(n, token_grid, generator, **options.get(n, {})).reshape(-1) for n in chosen]
    )
    return masks, chosen
