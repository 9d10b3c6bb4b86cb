"""Token masks. Two different things, kept apart:

* a **drop mask** says which tokens the transformer skips (training speed, never at sampling); it is
  carried as ``keep_idx`` ``(B, K)``, the indices of the tokens that are kept, the same ``K`` for every
  sample so the kept tokens stack into one dense tensor. Video shapes that keep a grid (tube, frame)
  return it as ``(B, T_kept, S_kept)`` instead: frame-major indices whose shape tells factorised attention
  how to split the kept tokens into frames and positions (every consumer flattens it to ``(B, K)``);
* a **given mask** says which tokens are known and held clean (the task, at training and sampling).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from maskdit.errors import ConfigError, check_keys
from maskdit.registry import Registry, one_of


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


def tube_keep_indices(
    batch: int,
    token_grid: tuple[int, ...],
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """Tube dropping for video ``(T', H', W')`` token grids: per sample the same random spatial positions
    are kept in every frame, so the kept tokens form a ``T' x K`` grid (frame-major, positions sorted) that
    factorised attention can still split into temporal columns and per-frame sets; returned as that grid,
    ``(B, T', K)``. ``None`` when the ratio keeps every position."""
    frames, per_frame = token_grid[0], math.prod(token_grid[1:])
    if num_kept(per_frame, ratio) == per_frame:
        return None
    spatial = random_keep_indices(batch, per_frame, ratio, generator)  # (B, K) sorted
    offsets = torch.arange(frames).mul(per_frame)  # frame starts
    return offsets[None, :, None] + spatial[:, None, :]


def structured_keep_indices(
    batch: int,
    token_grid: tuple[int, ...],
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """SPRINT's structured drop: the token grid is cut into groups of 2 along every axis longer than 1
    (2x2 for images, 2x2x2 for video) and each group keeps the same number of tokens, chosen at random
    per group and sample, so the kept tokens cover the whole grid evenly. ``None`` when nothing is dropped."""
    axes = [2 if size > 1 else 1 for size in token_grid]
    if any(size % a for size, a in zip(token_grid, axes)):
        raise ConfigError(f"mask.shape=structured groups the token grid in 2s along each axis, but the grid is "
                          f"{'x'.join(map(str, token_grid))}: use an even token grid or mask.shape=random")
    group = math.prod(axes)
    keep = num_kept(group, ratio)
    if keep == group:
        return None
    counts = [size // a for size, a in zip(token_grid, axes)]
    # token index of (group g, member m): grid coordinates group_coord * 2 + member_coord per axis
    group_coords = torch.stack(torch.meshgrid(*[torch.arange(c) for c in counts], indexing="ij"), -1).reshape(-1, 1,
                                                                                                              len(axes))
    member_coords = torch.stack(torch.meshgrid(*[torch.arange(a) for a in axes], indexing="ij"), -1).reshape(1, -1,
                                                                                                             len(axes))
    coords = group_coords * torch.tensor(axes) + member_coords  # (G, group, rank)
    strides = torch.tensor([math.prod(token_grid[i + 1:]) for i in range(len(token_grid))])
    index = (coords * strides).sum(-1)  # (G, group)
    choice = torch.rand(batch, index.shape[0], group, generator=generator).argsort(dim=-1)[..., :keep]
    kept = index.unsqueeze(0).expand(batch, -1, -1).gather(2, choice)
    return kept.reshape(batch, -1).sort(dim=1).values


def frame_keep_indices(
    batch: int,
    token_grid: tuple[int, ...],
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """Frame dropping for video ``(T', H', W')`` grids: per sample a random ``1 - ratio`` share of whole
    token-grid frames is kept (every position of a kept frame), returned as the kept grid
    ``(B, F, H' * W')`` so factorised attention runs on ``F`` frames. ``None`` when every frame is kept."""
    frames, per_frame = token_grid[0], math.prod(token_grid[1:])
    if num_kept(frames, ratio) == frames:
        return None
    kept = random_keep_indices(batch, frames, ratio, generator)  # (B, F) sorted frame indices
    return kept[:, :, None] * per_frame + torch.arange(per_frame)


#: Shapes of drop masks: name -> ``fn(batch, token_grid, ratio, generator) -> keep_idx | None``; facts
#: ``ranks``: the token-grid ranks it works on; ``grid``: it keeps a frames x positions grid (returned as
#: ``(B, T', S')``), which is what factorised attention needs.
DROP_SHAPES: Registry = Registry("drop shape", key="mask.shape")
DROP_SHAPES.add("random", lambda b, grid, ratio, gen: drop_tokens(b, math.prod(grid), ratio, gen),
                "tokens anywhere, uniformly at random", ranks=(1, 2, 3), grid=False)
DROP_SHAPES.add("tube", tube_keep_indices, "video: the same positions dropped in every frame (factorised "
                "attention keeps whole temporal columns)", ranks=(3,), grid=True)
DROP_SHAPES.add("frame", frame_keep_indices, "video: whole frames dropped (factorised attention runs on the "
                "kept frames)", ranks=(3,), grid=True)
DROP_SHAPES.add("structured", structured_keep_indices, "SPRINT: the same share kept in every 2x2 (2x2x2) group, "
                "at random places", ranks=(1, 2, 3), grid=False)


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens ``(B, N, D)`` at indices ``(B, K)`` (or a kept grid ``(B, T', S')``) -> ``(B, K, D)``."""
    return tokens.gather(1, idx.flatten(1).unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def scatter_tokens(kept: torch.Tensor, keep_idx: torch.Tensor, fill: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The inverse of :func:`gather_tokens`: place ``kept`` ``(B, K, D)`` at ``keep_idx`` in a ``(B, N, D)``
    grid whose other places hold ``fill`` (anything that broadcasts to ``(B, N, D)``: a mask token ``(D,)``,
    mask tokens plus positions ``(1, N, D)``, or the tokens they left ``(B, N, D)``)."""
    b, _, d = kept.shape
    full = fill.to(kept.dtype).expand(b, num_tokens, d)
    return full.scatter(1, keep_idx.flatten(1).unsqueeze(-1).expand(-1, -1, d), kept)


#: Drop-ratio schedules over training steps: name -> ``fn(ratio, progress, ratio_min, generator)`` where
#: ``progress`` in [0, 1] is the share of the schedule done (see :func:`mask_ratio`).
SCHEDULES: Registry = Registry("schedule", key="mask.schedule")


@SCHEDULES.register("constant", "mask.ratio at every step")
def _constant(ratio: float, progress: float, ratio_min: float, generator: torch.Generator | None) -> float:
    return ratio


@SCHEDULES.register("random", "uniform in [mask.ratio_min, mask.ratio], drawn per step (MDT)")
def _random(ratio: float, progress: float, ratio_min: float, generator: torch.Generator | None) -> float:
    return ratio_min + (ratio - ratio_min) * torch.rand((), generator=generator).item()


@SCHEDULES.register("linear_decay", "from mask.ratio at step 0 linearly to 0")
def _linear_decay(ratio: float, progress: float, ratio_min: float, generator: torch.Generator | None) -> float:
    return ratio * (1.0 - progress)


@SCHEDULES.register("cosine_decay", "from mask.ratio at step 0 to 0 on a half cosine")
def _cosine_decay(ratio: float, progress: float, ratio_min: float, generator: torch.Generator | None) -> float:
    return ratio * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("increasing", "from mask.ratio_min linearly up to mask.ratio (LMD's progressive masking)")
def _increasing(ratio: float, progress: float, ratio_min: float, generator: torch.Generator | None) -> float:
    return ratio_min + (ratio - ratio_min) * progress


def mask_ratio(
    schedule: str,
    ratio: float,
    step: int,
    total_steps: int,
    ratio_min: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """The drop ratio of training step ``step`` (0-based) of ``total_steps`` under a :data:`SCHEDULES` entry."""
    progress = min(1.0, step / max(1, total_steps))
    return SCHEDULES.get(schedule)(ratio, progress, ratio_min, generator)


# ---------------------------------------------------------------------------------------------------
# Given masks (condition masks): which tokens of the token grid are known and held clean.
#
# A given mask is a bool tensor shaped like the token grid, ``(T', H', W')`` for video or ``(H', W')``
# for images: True = given (clean, known), False = to generate. Frame tasks count *token-grid* frames:
# with a temporal patch size of 1, token-grid axis 0 is the frame index; with a temporal patch of p,
# token frame t covers video frames p*t .. p*t+p-1. Flattening a mask in row-major order (``.reshape(-1)``)
# gives patchify's token order (see maskdit/grid.py).
# ---------------------------------------------------------------------------------------------------

#: name -> ``fn(grid, generator, **options) -> bool mask`` (True = given); facts: ``frames`` (works on whole
#: frames, so it needs a grid whose axis 0 is time: a video's ``(T', H', W')``, or a timed sequence such as
#: motion's ``(T', J')``) and ``ranks`` (the token-grid ranks it works on).
TASKS: Registry = Registry("task", key="task.names")


def _frames_mask(grid: tuple[int, ...], frames: torch.Tensor) -> torch.Tensor:
    """A mask giving every token of the token-grid frames flagged in ``frames`` (bool ``(T',)``)."""
    return frames.reshape(-1, *(1,) * (len(grid) - 1)).expand(grid).clone()


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


@TASKS.register("unconditional", "nothing given", frames=False, ranks=(1, 2, 3))
def _unconditional(grid: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.zeros(grid, dtype=torch.bool)


@TASKS.register("predict", "the first k frames given (default half)", frames=True, ranks=(1, 2, 3))
def _predict(grid: tuple[int, ...], generator: torch.Generator | None, k: int | None = None) -> torch.Tensor:
    frames = torch.zeros(grid[0], dtype=torch.bool)
    frames[: _check_frame_count("predict", "k", max(1, grid[0] // 2) if k is None else k, 1, grid[0])] = True
    return _frames_mask(grid, frames)


@TASKS.register("backward", "the last k frames given (default half)", frames=True, ranks=(1, 2, 3))
def _backward(grid: tuple[int, ...], generator: torch.Generator | None, k: int | None = None) -> torch.Tensor:
    return _predict(grid, generator, k).flip(0)


@TASKS.register("interpolate", "every stride-th frame and the last given", frames=True, ranks=(1, 2, 3))
def _interpolate(grid: tuple[int, ...], generator: torch.Generator | None, stride: int = 2,
                 include_last: bool = True) -> torch.Tensor:
    frames = torch.zeros(grid[0], dtype=torch.bool)
    frames[:: _check_frame_count("interpolate", "stride", stride, 1, grid[0])] = True
    if include_last:
        frames[-1] = True
    return _frames_mask(grid, frames)


@TASKS.register("animate", "one frame given", frames=True, ranks=(1, 2, 3))
def _animate(grid: tuple[int, ...], generator: torch.Generator | None, frame: int = 0) -> torch.Tensor:
    frames = torch.zeros(grid[0], dtype=torch.bool)
    frames[_check_frame_count("animate", "frame", frame, -grid[0], grid[0] - 1)] = True
    return _frames_mask(grid, frames)


@TASKS.register("complete", "k random frames given (k random when not set)", frames=True, ranks=(1, 2, 3))
def _complete(grid: tuple[int, ...], generator: torch.Generator | None, k: int | None = None) -> torch.Tensor:
    t = grid[0]
    if k is None:
        if t < 2:
            raise ConfigError(f"task complete needs at least 2 token-grid frames, got {t}")
        k = int(torch.randint(1, t, (), generator=generator))
    k = _check_frame_count("complete", "k", k, 1, t)
    frames = torch.zeros(t, dtype=torch.bool)
    frames[torch.randperm(t, generator=generator)[:k]] = True
    return _frames_mask(grid, frames)


@TASKS.register("inpaint", "a box generated, the rest given", frames=False, ranks=(2, 3))
def _inpaint(grid: tuple[int, ...], generator: torch.Generator | None, box: tuple[int, ...] | None = None,
             share: float = 0.5, temporal: bool = False) -> torch.Tensor:
    if box is not None:
        region = _box("inpaint", tuple(box), grid)
    else:
        if not 0.0 < float(share) <= 1.0:
            raise ConfigError(f"task inpaint: share must be in (0, 1], got {share}")
        spatial = tuple(_random_span(s, float(share), generator) for s in grid[-2:])
        if len(grid) == 3:
            region = (_random_span(grid[0], float(share), generator) if temporal else slice(None), *spatial)
        else:
            region = spatial
    mask = torch.ones(grid, dtype=torch.bool)
    mask[region] = False
    return mask


@TASKS.register("inbetween", "the first and last k frames given, the middle generated (default: a quarter each)",
                frames=True, ranks=(1, 2, 3))
def _inbetween(grid: tuple[int, ...], generator: torch.Generator | None, k: int | None = None) -> torch.Tensor:
    k = _check_frame_count("inbetween", "k", max(1, grid[0] // 4) if k is None else k, 1, (grid[0] - 1) // 2)
    frames = torch.zeros(grid[0], dtype=torch.bool)
    frames[:k] = frames[grid[0] - k :] = True
    return _frames_mask(grid, frames)


@TASKS.register("span", "one span of frames generated, the rest given (default: 70-100% of the frames at a random "
                "place, EzAudio's masked-span pretraining)", frames=True, ranks=(1, 2, 3))
def _span(grid: tuple[int, ...], generator: torch.Generator | None, share: float | None = None) -> torch.Tensor:
    if share is None:
        share = 0.7 + 0.3 * float(torch.rand((), generator=generator))
    if not 0.0 < float(share) <= 1.0:
        raise ConfigError(f"task span: share must be in (0, 1], got {share}")
    frames = torch.ones(grid[0], dtype=torch.bool)
    frames[_random_span(grid[0], float(share), generator)] = False
    return _frames_mask(grid, frames)


@TASKS.register("parts", "columns of axis 1 (motion: joints) generated in every frame, the rest given (default: "
                "a random span of a fifth to three fifths)", frames=True, ranks=(2,))
def _parts(grid: tuple[int, ...], generator: torch.Generator | None,
           columns: tuple[int, ...] | None = None) -> torch.Tensor:
    mask = torch.ones(grid, dtype=torch.bool)
    if columns is None:
        share = 0.2 + 0.4 * float(torch.rand((), generator=generator))
        mask[:, _random_span(grid[1], share, generator)] = False
        return mask
    bad = [c for c in columns if not 0 <= int(c) < grid[1]]
    if bad or not columns:
        raise ConfigError(f"task parts: columns must be token columns in [0, {grid[1] - 1}] for this grid, got "
                          f"{tuple(columns)}")
    mask[:, [int(c) for c in columns]] = False
    return mask


@TASKS.register("outpaint", "a border generated in every frame, the centre given", frames=False, ranks=(2, 3))
def _outpaint(grid: tuple[int, ...], generator: torch.Generator | None, border: int | None = None) -> torch.Tensor:
    h, w = grid[-2:]
    border = max(1, min(h, w) // 4) if border is None else int(border)
    if border < 1:
        raise ConfigError(f"task outpaint: border must be at least 1 token, got {border}")
    if not (2 * border < h and 2 * border < w):
        raise ConfigError(f"task outpaint: a border of {border} tokens leaves no centre on a {h}x{w} token grid: "
                          "use a thinner border")
    mask = torch.zeros(grid, dtype=torch.bool)
    mask[..., border : h - border, border : w - border] = True
    return mask


#: Tasks that give whole frames and so need a ``(T', H', W')`` token grid.
FRAME_TASKS = TASKS.names(frames=True)


def task_options(name: str) -> tuple[str, ...]:
    """The options task ``name`` takes (its builder's keyword arguments)."""
    params = list(inspect.signature(TASKS.get(name)).parameters)
    return tuple(params[2:])


def task_mask(
    name: str, token_grid: tuple[int, ...] | list[int], generator: torch.Generator | None = None,
    timed: bool | None = None, **options: Any
) -> torch.Tensor:
    """The given mask of task ``name`` (a :data:`TASKS` entry) on ``token_grid``: bool, shaped like the
    grid, True = given. Frames are token-grid frames (see above); ``timed`` says whether axis 0 is time
    (None: only a rank-3 grid's is); random choices come from ``generator``; a mask that gives everything is
    refused.
    """
    entry = TASKS.entry(name)
    grid = tuple(int(s) for s in token_grid)
    if any(s < 1 for s in grid) or not grid:
        raise ConfigError(f"token grid {grid} must have positive sizes")
    timed = len(grid) == 3 if timed is None else timed
    if len(grid) not in entry.facts["ranks"] or (entry.facts["frames"] and not timed):
        ranks = entry.facts["ranks"]
        need = "a token grid" if tuple(ranks) == (1, 2, 3) else f"a rank-{' or '.join(map(str, ranks))} token grid"
        if entry.facts["frames"]:
            hint = "" if timed else ": on images use inpaint or outpaint"
            raise ConfigError(f"task {name} needs {need} whose axis 0 is time (video, or a timed sequence such as "
                              f"data.name=motion), got rank {len(grid)} {grid}{hint}")
        raise ConfigError(f"task {name} needs {need}, got rank {len(grid)} {grid}")
    unknown = set(options) - set(task_options(name))
    if unknown:
        raise ConfigError(f"task {name} takes options {', '.join(task_options(name)) or 'none'}; "
                          f"got {', '.join(sorted(unknown))}")
    mask = entry.value(grid, generator, **options)
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
    timed: bool | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Per sample, a task drawn with probability proportional to ``weights`` and its given mask.

    Returns the masks flattened in patchify's token order, bool ``(batch, N)``, and the task names.
    ``options`` maps a task name to the options of :func:`task_mask` (for example
    ``{"predict": {"k": 4}}``); ``timed`` as in :func:`task_mask`. Tasks with weight 0 are never drawn.
    """
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    unknown = [n for n in weights if n not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(sorted(unknown))} in task weights: choose from "
                          f"{one_of(TASKS.names())}")
    names = [n for n, w in weights.items() if w != 0]
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or not names:
        raise ConfigError(f"task weights must be finite, non-negative and not all zero, got {weights}")
    options = options or {}
    probs = torch.tensor([float(weights[n]) for n in names], dtype=torch.float64)
    picks = torch.multinomial(probs, batch, replacement=True, generator=generator)
    chosen = [names[i] for i in picks.tolist()]
    masks = torch.stack(
        [task_mask(n, token_grid, generator, timed, **options.get(n, {})).reshape(-1) for n in chosen]
    )
    return masks, chosen


@dataclass
class TaskConfig:
    names: list[str] = field(default_factory=list)  #: tasks mixed in training (maskdit.masks.TASKS); [] = none
    weights: list[float] | None = None  #: one per name (default: equal)

    def validate(self) -> None:
        """Check ``task.names`` against :data:`TASKS` and the weights against the names."""
        check_keys("task.", self, [
            ("names", all(n in TASKS for n in self.names), f"a list from {one_of(TASKS.names())}"),
            ("weights", self.weights is None or (len(self.weights) == len(self.names)
                                                 and min(self.weights, default=0) >= 0 and sum(self.weights) > 0),
             "null or one non-negative weight per task name, not all zero"),
        ])
