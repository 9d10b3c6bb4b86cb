"""Embedded synthetic video: digit sprites bouncing in a box and balls falling under gravity.

Both generators are pure numpy, need no download and are deterministic: the clips depend only on
``(seed, split)`` and the arguments, and the ``train`` and ``test`` splits draw from disjoint random
streams (bouncing digits also cut their sprites from disjoint halves of scikit-learn's digits, so the
test split shows handwriting never seen in training). Every loader returns a :class:`VideoDataset` with
frames ``uint8 (N, C, T, H, W)``: channels first like :class:`maskdit.data.datasets.ImageDataset`, the time axis
in front of the spatial ones so a ``(T, H, W)`` token grid has the frame index on axis 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from maskdit.data.codec import PIXELS, Codec
from maskdit.data.datasets import DATASETS
from maskdit.errors import ConfigError, DataError
from maskdit.registry import Registry

SPLITS: Registry[int] = Registry("split")
SPLITS.add("train", 0, "the training clips")
SPLITS.add("test", 1, "held-out clips from another seed stream")
#: Digits with index below this cut feed the train split, the rest the test split.
_DIGITS_TRAIN_CUT = 1500


@dataclass
class VideoDataset:
    """Clips ``uint8 (N, C, T, H, W)``, optional labels and the object tracks that made them.

    ``labels``: for bouncing digits with one digit per clip the digit class ``int64 (N,)`` (usable as a
    class condition, ``num_classes = 10``); with two digits ``(N, 2)`` and ``num_classes = 0``; ``None``
    for balls. ``positions``: float ``(N, objects, T, 2)`` centres ``(y, x)`` in pixels (pixel ``i``
    spans ``[i, i + 1)``), kept for tests and evaluation.
    """

    frames: torch.Tensor
    labels: torch.Tensor | None
    name: str
    num_classes: int = 0
    positions: torch.Tensor | None = None
    codec: Codec = PIXELS

    def __post_init__(self) -> None:
        if self.frames.ndim != 5 or self.frames.dtype != torch.uint8:
            raise DataError(
                f"video dataset {self.name}: frames must be uint8 (N, C, T, H, W), "
                f"got {self.frames.dtype} {tuple(self.frames.shape)}"
            )
        if len(self.frames) == 0:
            raise DataError(f"video dataset {self.name} holds no clips: ask for num >= 1")
        if self.labels is not None and len(self.labels) != len(self.frames):
            raise DataError(f"video dataset {self.name} has {len(self.labels)} labels for {len(self.frames)} clips")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, T, H, W)`` of one clip."""
        return tuple(self.frames.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clips at ``idx`` as floats in ``[-1, 1]`` ``(B, C, T, H, W)`` and their labels (or ``None``)."""
        x = self.codec.encode(self.frames[idx])
        return x, (self.labels[idx] if self.labels is not None else None)


def _rng(seed: int, split: str, kind: int) -> np.random.Generator:
    """The random stream of one (dataset kind, seed, split): different splits never share a stream."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], kind]))


def _check_common(num: int, frames: int, size: int) -> None:
    if num < 1:
        raise ConfigError(f"num must be at least 1 clip, got {num}")
    if frames < 2:
        raise ConfigError(f"frames must be at least 2 for a video, got {frames}")
    if size < 4:
        raise ConfigError(f"size must be at least 4 pixels, got {size}")


def _reflect(pos: np.ndarray, vel: np.ndarray, low: float, high: np.ndarray | float) -> None:
    """Elastic walls at ``low`` and ``high`` (in place): fold positions back in, flip velocities."""
    below = pos < low
    pos[below] = 2 * low - pos[below]
    vel[below] = -vel[below]
    high = np.broadcast_to(high, pos.shape)
    above = pos > high
    pos[above] = 2 * high[above] - pos[above]
    vel[above] = -vel[above]
    np.clip(pos, low, high, out=pos)  # a step longer than the box (tiny canvases) still ends inside


def bouncing_digits(
    num: int,
    frames: int = 12,
    size: int = 32,
    digits_per_clip: int = 1,
    split: str = "train",
    seed: int = 0,
    sprite_scale: int | None = None,
) -> VideoDataset:
    """Handwritten digits (scikit-learn's 8x8 set) moving at constant velocity, bouncing off the walls.

    Each sprite starts at a random place with a random velocity of ``size/32 .. 3 size/32`` pixels per
    frame per axis and reflects at the canvas edges, so it is always wholly visible. ``sprite_scale``
    (default 2 for canvases of 32 pixels or more, else 1) enlarges the sprites by nearest neighbour.
    Two digits on one clip are composed with a pixel-wise maximum.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    _check_common(num, frames, size)
    if digits_per_clip not in (1, 2):
        raise ConfigError(f"digits_per_clip must be 1 or 2, got {digits_per_clip}")
    scale = (2 if size >= 32 else 1) if sprite_scale is None else int(sprite_scale)
    if scale < 1:
        raise ConfigError(f"sprite_scale must be a positive integer, got {sprite_scale}")
    sprite = 8 * scale
    if sprite > size:
        raise ConfigError(
            f"a {sprite}x{sprite} digit sprite does not fit a {size}x{size} canvas: raise size or lower sprite_scale"
        )
    rng = _rng(seed, split, kind=1)

    d = sk_load_digits()
    pool = np.arange(_DIGITS_TRAIN_CUT) if split == "train" else np.arange(_DIGITS_TRAIN_CUT, len(d.images))
    sprites = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    sprites = sprites.repeat(scale, axis=1).repeat(scale, axis=2)

    room = float(size - sprite)  # top-left corner stays in [0, room]
    choice = rng.choice(pool, size=(num, digits_per_clip))
    pos = rng.uniform(0.0, room, size=(num, digits_per_clip, 2))
    speed = rng.uniform(size / 32, 3 * size / 32, size=(num, digits_per_clip, 2))
    vel = speed * rng.choice([-1.0, 1.0], size=(num, digits_per_clip, 2))

    video = np.zeros((num, 1, frames, size, size), dtype=np.uint8)
    track = np.zeros((num, digits_per_clip, frames, 2))
    for t in range(frames):
        if t:
            pos += vel
            _reflect(pos, vel, 0.0, room)
        corner = np.rint(pos).astype(np.int64)
        track[:, :, t] = corner + sprite / 2
        for i in range(num):
            for k in range(digits_per_clip):
                y, x = corner[i, k]
                window = video[i, 0, t, y : y + sprite, x : x + sprite]
                np.maximum(window, sprites[choice[i, k]], out=window)

    digits = d.target[choice].astype(np.int64)
    labels = torch.from_numpy(digits[:, 0] if digits_per_clip == 1 else digits)
    return VideoDataset(
        torch.from_numpy(video), labels, "bouncing-digits", 10 if digits_per_clip == 1 else 0,
        torch.from_numpy(track).float(),
    )


def _draw_disc(canvas: np.ndarray, cy: float, cx: float, radius: float, antialias: bool) -> None:
    """Draw a filled disc of intensity 255 into ``uint8 (H, W)`` (pixel-wise maximum)."""
    h, w = canvas.shape
    ys = np.arange(h)[:, None] + 0.5
    xs = np.arange(w)[None, :] + 0.5
    dist = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    cover = np.clip(radius + 0.5 - dist, 0.0, 1.0) if antialias else (dist <= radius).astype(np.float64)
    np.maximum(canvas, np.rint(255.0 * cover).astype(np.uint8), out=canvas)


def bouncing_balls(
    num: int,
    frames: int = 12,
    size: int = 32,
    balls: int = 1,
    split: str = "train",
    seed: int = 0,
    gravity: float | None = None,
    antialias: bool = True,
    at_rest: bool = False,
    velocity_seed: int | None = None,
) -> VideoDataset:
    """Filled discs under constant gravity bouncing elastically off the four walls.

    Per frame the vertical velocity grows by ``gravity`` (default ``size/64`` pixels per frame², pointing
    down, i.e. towards larger ``y``), then the ball moves and reflects off any wall it crossed. Radii are
    ``size/12 .. size/8``. Balls pass through each other (no ball-ball collisions). ``at_rest=True``
    starts every ball still, in the top quarter of the canvas (for checking that it falls).
    ``velocity_seed`` keeps the radii and first frames of ``seed`` but draws the starting velocities from
    a stream of their own: another future of the same first frame, exactly as likely as the real one (a
    perfect sample of animating from frame 0, the reference of ``benchmarks/video_tasks.py``).
    """
    _check_common(num, frames, size)
    if balls not in (1, 2):
        raise ConfigError(f"balls must be 1 or 2, got {balls}")
    g = size / 64 if gravity is None else float(gravity)
    if g < 0:
        raise ConfigError(f"gravity must be non-negative (down is +y), got {gravity}")
    if at_rest and velocity_seed is not None:
        raise ConfigError("velocity_seed draws starting velocities, at_rest=True has none: drop one of them")
    rng = _rng(seed, split, kind=2)

    radius = rng.uniform(size / 12, size / 8, size=(num, balls, 1))
    low, high = radius, size - radius  # centre bounds per ball, both axes
    if at_rest:
        pos = np.stack(
            [rng.uniform(low[..., 0], low[..., 0] + size / 4), rng.uniform(low[..., 0], high[..., 0])], axis=-1
        )
        vel = np.zeros((num, balls, 2))
    else:
        pos = rng.uniform(low, high, size=(num, balls, 2))
        launch = rng if velocity_seed is None else np.random.default_rng([int(velocity_seed), 2])
        vel = launch.uniform(-2 * size / 32, 2 * size / 32, size=(num, balls, 2))

    video = np.zeros((num, 1, frames, size, size), dtype=np.uint8)
    track = np.zeros((num, balls, frames, 2))
    for t in range(frames):
        if t:
            vel[..., 0] += g
            pos += vel
            # each ball has its own radius: reflect against its own bounds
            for axis in range(2):
                p, v = pos[..., axis], vel[..., axis]
                below = p < low[..., 0]
                p[below] = 2 * low[..., 0][below] - p[below]
                v[below] = -v[below]
                above = p > high[..., 0]
                p[above] = 2 * high[..., 0][above] - p[above]
                v[above] = -v[above]
                np.clip(p, low[..., 0], high[..., 0], out=p)
        track[:, :, t] = pos
        for i in range(num):
            for k in range(balls):
                _draw_disc(video[i, 0, t], pos[i, k, 0], pos[i, k, 1], float(radius[i, k, 0]), antialias)

    return VideoDataset(torch.from_numpy(video), None, "bouncing-balls", 0, torch.from_numpy(track).float())


#: Embedded video datasets by name (``maskdit data NAME``); each is also a :data:`DATASETS` entry.
VIDEO_DATASETS: Registry[Callable[..., VideoDataset]] = Registry("video dataset", key="maskdit data NAME")
VIDEO_DATASETS.add("bouncing-digits", bouncing_digits, "digit sprites bouncing in a box")
VIDEO_DATASETS.add("bouncing-balls", bouncing_balls, "balls falling under gravity")


def load_video_dataset(name: str, split: str = "train", num: int = 1000, seed: int = 0, **options) -> VideoDataset:
    """An embedded video dataset by name (see :data:`VIDEO_DATASETS`); ``options`` go to its generator."""
    if name not in VIDEO_DATASETS:
        raise ConfigError(f"unknown video dataset {name!r}: choose one of {', '.join(VIDEO_DATASETS)}")
    try:
        return VIDEO_DATASETS[name](num, split=split, seed=seed, **options)
    except TypeError as e:  # an option the generator does not take
        raise ConfigError(f"video dataset {name}: {e}") from e


def _register(name: str) -> None:
    def load(cfg: object, split: str) -> VideoDataset:
        return load_video_dataset(name, split, cfg.num, 0, frames=cfg.frames, size=cfg.size)

    summary = f"{VIDEO_DATASETS.entry(name).summary} (embedded video; data.num, data.frames, data.size)"
    DATASETS.add(name, load, summary, needs_path=False, rank=3)


for _name in VIDEO_DATASETS:
    _register(_name)
