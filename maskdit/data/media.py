"""Writing samples people can look at (PNG grids) and programs can read (``.npz``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.errors import ConfigError, DataError
from maskdit.files import atomic_file


def image_grid(images: torch.Tensor, labels: torch.Tensor | None = None, pad: int = 1,
               min_size: int = 32) -> np.ndarray:
    """``uint8 (N, C, H, W)`` -> one ``uint8 (rows*H', cols*W', C)`` picture.

    With labels, row ``i`` holds the samples of the ``i``-th class present (in label order); without,
    the grid is as square as possible. Small images are enlarged by an integer factor (nearest
    neighbour) to at least ``min_size`` pixels so an 8x8 digit is visible.
    """
    n, c, h, w = images.shape
    scale = max(1, -(-min_size // max(h, w)))
    imgs = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()
    if labels is not None:
        rows = [np.flatnonzero(labels.numpy() == k) for k in np.unique(labels.numpy())]
    else:
        cols = int(np.ceil(np.sqrt(n)))
        rows = [np.arange(i, min(i + cols, n)) for i in range(0, n, cols)]
    cols = max(len(r) for r in rows)
    hs, ws = h * scale + pad, w * scale + pad
    canvas = np.full((len(rows) * hs + pad, cols * ws + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, k in enumerate(row):
            canvas[pad + i * hs : pad + i * hs + h * scale, pad + j * ws : pad + j * ws + w * scale] = imgs[k]
    return canvas


def grid_png(images: torch.Tensor, labels: torch.Tensor | None = None) -> bytes:
    """A sample grid (:func:`image_grid`) as PNG bytes."""
    import io

    from PIL import Image

    grid = image_grid(images, labels)
    buf = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buf, format="PNG")
    return buf.getvalue()


def save_samples(path: str | Path, images: torch.Tensor, labels: torch.Tensor | None = None,
                 captions: list[str] | None = None) -> Path:
    """Write ``uint8 (N, C, H, W)`` samples: ``.png`` as a grid (a row per class, or per prompt), ``.npz`` as
    ``images`` uint8 ``N x H x W x C`` plus ``labels`` int64 and each sample's caption when given."""
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npz"):
        raise ConfigError(f"--out {path}: the file name must end in .png (a grid) or .npz (arrays)")
    with atomic_file(path, "--out") as tmp:
        if suffix == ".png":
            grid = image_grid(images, labels)
            Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(tmp, format="PNG")
        else:
            arrays = {"images": images.permute(0, 2, 3, 1).numpy().astype(np.uint8)}
            if captions is not None:
                arrays["captions"] = np.array(captions, dtype=str)
            _write_npz(tmp, arrays, labels)
    return path


def save_texts(path: str | Path, texts: list[str]) -> Path:
    """Write text samples to a ``.txt`` file, one per line."""
    path = Path(path)
    if path.suffix.lower() != ".txt":
        raise ConfigError(f"--out {path}: text samples are written as lines of a .txt file")
    with atomic_file(path, "--out") as tmp:
        tmp.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def _write_npz(tmp: Path, arrays: dict[str, np.ndarray], labels: torch.Tensor | None) -> None:
    if labels is not None:
        arrays = {**arrays, "labels": labels.numpy().astype(np.int64)}
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_noise(path: str | Path, noise: torch.Tensor, labels: torch.Tensor | None, settings: dict[str, Any]) -> Path:
    """Write inverted starting noise: ``noise`` float32 ``(N, C, *S)``, ``labels`` int64 when given, and the
    sampling ``settings`` it inverts (``sampler``, ``steps``, ``guidance_scale``) as 0-d arrays."""
    path = Path(path)
    with atomic_file(path, "--out") as tmp:
        _write_npz(tmp, {"noise": noise.float().numpy(), **{k: np.asarray(v) for k, v in settings.items()}}, labels)
    return path


#: The sampling settings :func:`save_noise` writes beside the noise (and :func:`load_noise` reads back).
NOISE_SETTINGS = ("sampler", "steps", "guidance_scale")


def load_noise(path: str | Path, shape: tuple[int, ...], num_classes: int | None = None) -> dict[str, Any]:
    """Read a :func:`save_noise` file for a model whose inputs are ``shape`` ``(C, *S)`` (and ``num_classes``
    classes, when given): ``noise`` (a tensor), ``labels`` (a tensor or None) and the settings it was inverted
    with, as stored (one value each; the caller checks them as it checks the options they stand for).

    Refused: noise that is not float ``N x C x *S`` or holds NaN or infinity (it would sample black images),
    labels that are not ``N`` integers in the model's class range (or any labels for an unconditional model)
    and settings that are not single values."""
    from maskdit.data.datasets import check_labels, read_npz

    path = Path(path)
    fix = "write it again with maskdit invert on this run"
    arrays = read_npz(path, "--from-noise", "write one with maskdit invert")
    noise = arrays.get("noise")
    if noise is None or noise.dtype.kind != "f" or tuple(noise.shape[1:]) != tuple(shape) or len(noise) == 0:
        found = "no 'noise' array" if noise is None else f"'noise' {noise.dtype} {noise.shape}"
        raise DataError(f"--from-noise {path}: needs float 'noise' of shape N x {' x '.join(map(str, shape))} for "
                        f"this model, found {found}")
    finite = np.isfinite(noise)
    if not finite.all():
        bad = int((~finite).any(axis=tuple(range(1, noise.ndim))).sum())
        raise DataError(f"--from-noise {path}: 'noise' holds NaN or infinite values ({bad} of {len(noise)} "
                        f"starts), which sample nothing but black: {fix}")
    labels = arrays.get("labels")
    if labels is not None and num_classes == 0:
        raise DataError(f"--from-noise {path} holds class labels but this model is unconditional: the noise "
                        f"was inverted with another run; {fix}")
    if labels is not None:
        check_labels(labels, len(noise), f"--from-noise {path}", num_classes, f"{fix}, or pass --classes")
    settings = {}
    for key in NOISE_SETTINGS:
        if key in arrays:
            if arrays[key].ndim != 0:
                raise DataError(f"--from-noise {path}: '{key}' must be a single value, got an array of shape "
                                f"{arrays[key].shape}; {fix}")
            settings[key] = arrays[key].item()
    return {"noise": torch.from_numpy(noise.astype(np.float32)),
            "labels": None if labels is None else torch.from_numpy(labels.astype(np.int64)), **settings}


VIDEO_SUFFIXES = (".gif", ".mp4", ".npz")


def _tile_clips(frames: np.ndarray, pad: int = 1) -> np.ndarray:
    """``(N, T, H, W, C)`` -> ``(T, H', W', C)``: the clips side by side in a near-square grid per frame."""
    n, t, h, w, c = frames.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    out = np.full((t, rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        y, x = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
        out[:, y : y + h, x : x + w] = frames[k]
    return out


def _for_ffmpeg(frames: np.ndarray, min_size: int = 64, block: int = 16) -> np.ndarray:
    """RGB frames enlarged by an integer factor to at least ``min_size`` and padded (black) to a multiple
    of ``block`` on both sides: H.264 with yuv420p needs even sizes and encoders prefer 16-pixel blocks."""
    t, h, w, c = frames.shape
    if c == 1:
        frames = np.repeat(frames, 3, axis=3)
    scale = max(1, -(-min_size // min(h, w)))
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    hh, ww = -(-h * scale // block) * block, -(-w * scale // block) * block
    out = np.zeros((t, hh, ww, 3), dtype=np.uint8)
    out[:, : h * scale, : w * scale] = frames
    return out


def save_video(path: str | Path, frames: np.ndarray | torch.Tensor, fps: float = 4) -> Path:
    """Write ``uint8`` frames ``(T, H, W, C)`` or clips ``(N, T, H, W, C)`` as ``.gif``, ``.mp4`` or ``.npz``.

    Several clips are tiled side by side in each frame of a GIF or MP4; ``.npz`` stores ``frames`` as
    ``uint8 (N, T, H, W, C)`` unchanged. MP4 goes through imageio-ffmpeg (its bundled ffmpeg, H.264,
    yuv420p); small frames are enlarged and padded so the encoder takes them. The file is written under a
    temporary name and renamed when complete, so a reader never sees half a video.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"--out {path}: a video file name must end in {', '.join(VIDEO_SUFFIXES)}")
    array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim not in (4, 5) or array.shape[-1] not in (1, 3):
        raise ConfigError(
            f"video frames must be uint8 (T, H, W, C) or (N, T, H, W, C) with C = 1 or 3, "
            f"got {array.dtype} {array.shape}"
        )
    clips = array if array.ndim == 5 else array[None]
    if clips.shape[1] < 1 or clips.shape[0] < 1:
        raise ConfigError(f"video has no frames: shape {array.shape}")
    if fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    with atomic_file(path, "--out") as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, frames=clips)
        elif suffix == ".gif":
            import imageio.v3 as iio

            video = _tile_clips(clips) if len(clips) > 1 else clips[0]
            video = video[..., 0] if video.shape[-1] == 1 else video
            iio.imwrite(tmp, video, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            import imageio.v2 as imageio

            video = _for_ffmpeg(_tile_clips(clips) if len(clips) > 1 else clips[0])
            with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=16, quality=8) as writer:
                for frame in video:
                    writer.append_data(frame)
    return path


def gif_bytes(clips: np.ndarray, fps: float = 4) -> bytes:
    """uint8 clips ``(N, T, H, W, 3)``, tiled side by side, as the bytes of a looping animated GIF."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", _tile_clips(clips), extension=".gif", duration=1000.0 / fps, loop=0)


def side_by_side(
    context: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    generated: np.ndarray | torch.Tensor,
    given: np.ndarray | torch.Tensor | None = None,
    gap: int = 2,
) -> np.ndarray:
    """Frames showing context | ground truth | generated next to each other, ``gap`` white pixels apart.

    All three are ``uint8 (T, H, W, C)`` (or ``(N, T, H, W, C)``). ``given`` marks what the model was
    shown: per frame ``(T,)`` / ``(N, T)`` or per pixel ``(T, H, W)`` / ``(N, T, H, W)``; in the
    context panel everything not given is greyed out so the viewer sees what was known. The result has
    the input's leading axes and width ``3 W + 2 gap``; pass it to :func:`save_video`.
    """
    arrays = [a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in (context, truth, generated)]
    if any(a.shape != arrays[0].shape or a.dtype != np.uint8 for a in arrays) or arrays[0].ndim not in (4, 5):
        raise ConfigError(
            "side_by_side needs context, truth and generated as uint8 arrays of one shape (T, H, W, C) or "
            f"(N, T, H, W, C); got {[(a.dtype, a.shape) for a in arrays]}"
        )
    context, truth, generated = arrays
    if given is not None:
        g = given.numpy() if isinstance(given, torch.Tensor) else np.asarray(given)
        g = g.astype(bool)
        if g.shape == context.shape[:-3]:
            g = g[..., None, None, None]
        elif g.shape == context.shape[:-1]:
            g = g[..., None]
        else:
            raise ConfigError(
                f"given must be per frame {context.shape[:-3]} or per pixel {context.shape[:-1]}, got {g.shape}"
            )
        grey = np.rint(0.3 * context.astype(np.float32) + 0.7 * 128.0).astype(np.uint8)
        context = np.where(g, context, grey)
    spacer = np.full((*context.shape[:-2], gap, context.shape[-1]), 255, dtype=np.uint8)
    return np.concatenate([context, spacer, truth, spacer, generated], axis=-2)


def clips_as_rows(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 clips ``(N, C, T, H, W)`` -> frames ``(N*T, C, H, W)`` and row labels, so that
    :func:`image_grid` / :func:`save_samples` lay out one clip per row, frames left to right."""
    n, c, t, h, w = clips.shape
    return clips.transpose(1, 2).reshape(n * t, c, h, w), torch.arange(n).repeat_interleave(t)
