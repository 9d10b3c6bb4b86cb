"""Running a task at sampling time: a condition mask says which tokens of a context are given.

One model trained with ``task.names`` serves every task: :func:`given_for` builds the condition mask of a
named task (see :func:`maskdit.masks.task_mask`) or reads one from a PNG, and :func:`complete` generates
the rest while holding the given tokens to the context exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.data.datasets import check_labels, npz_reason
from maskdit.diffusion.samplers import generate
from maskdit.errors import ConfigError, DataError
from maskdit.grid import patchify
from maskdit.masks import task_mask


def load_context(path: str | Path, model: Any, flag: str = "--context") -> torch.Tensor:
    """A context ``.npz`` as uint8 ``(N, C, *S)``: ``frames`` ``N x T x H x W x C`` (video) or ``images``
    ``N x H x W x C`` (images), checked against the model's input shape (``flag``: the option named in errors)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{flag} {path} is a directory: give an .npz file")
    if not path.is_file():
        raise DataError(f"{flag} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            key = "frames" if "frames" in f.files else "images" if "images" in f.files else None
            if key is None:
                raise DataError(f"{flag} {path} holds neither 'frames' nor 'images' (found: {', '.join(f.files)})")
            array = f[key]
    except DataError:
        raise
    except Exception as e:  # zipfile / numpy raise several types for a damaged file
        raise DataError(f"cannot read {flag} {path} as .npz ({npz_reason(e)}): save it with numpy.savez") from e
    if len(array) == 0:
        raise DataError(f"{flag} {path} holds no clips: give at least one")
    if array.dtype != np.uint8 or array.ndim != len(model.input_size) + 2:
        raise DataError(
            f"{flag} {path}: '{key}' must be uint8 N x {' x '.join(['T', 'H', 'W'][-len(model.input_size):])} x C, "
            f"got {array.dtype} {array.shape}"
        )
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 1)))
    expected = (model.in_channels, *model.input_size)
    if tuple(x.shape[1:]) != expected:
        raise DataError(
            f"{flag} {path}: clips of shape {tuple(array.shape[1:])} do not fit this model, which takes "
            f"{tuple(expected[1:]) + (expected[0],)} (frames/pixels x channels)"
        )
    return x


def load_labels(path: str | Path, count: int, num_classes: int, flag: str = "--images") -> torch.Tensor | None:
    """The ``labels`` of the ``.npz`` at ``path`` (read by :func:`load_context`) as int64: ``count`` integers in
    ``0..num_classes-1``; None when the file has none. Anything else is refused, naming ``flag`` and
    ``--classes`` (which replaces the file's labels)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "labels" not in f.files:
                return None
            labels = f["labels"]
    except Exception as e:  # zipfile / numpy raise several types for a damaged (or pickled) array
        raise DataError(f"cannot read the 'labels' of {flag} {path} ({npz_reason(e)}): save them as integers "
                        "with numpy.savez, or pass --classes") from e
    check_labels(labels, count, f"{flag} {path}", num_classes, "fix the file or pass --classes")
    return torch.from_numpy(labels.astype(np.int64))


def mask_from_png(path: str | Path, model: Any) -> torch.Tensor:
    """A PNG the size of the model's image input: white (> 127) pixels are generated. A token is generated
    when any of its pixels is; the result is the token-grid given mask (True = given)."""
    from PIL import Image, UnidentifiedImageError

    if len(model.input_size) != 2:
        raise ConfigError("--mask takes a PNG for image models; video tasks use --task and --given-frames")
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L")) > 127
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read --mask {path}: {e}") from e
    if pixels.shape != tuple(model.input_size):
        raise DataError(f"--mask {path} is {pixels.shape[1]}x{pixels.shape[0]} but the model's images are "
                        f"{model.input_size[1]}x{model.input_size[0]}; draw the mask at that size")
    generated = patchify(torch.from_numpy(pixels)[None, None].float(), model.patch_size).amax(-1)[0] > 0
    return (~generated).reshape(model.token_grid)


def given_for(task: str, model: Any, options: dict[str, Any], generator: torch.Generator | None = None,
              timed: bool | None = None) -> torch.Tensor:
    """The token-grid given mask of ``task`` for ``model``; ``options`` and ``timed`` as in :func:`task_mask`."""
    return task_mask(task, model.token_grid, generator, timed, **options)


@torch.no_grad()
def complete(run: Any, context: torch.Tensor, given: torch.Tensor, labels: torch.Tensor | None = None,
             **sampling: Any) -> torch.Tensor:
    """Generate the tokens ``given`` leaves open for every clip of ``context`` (stored values ``(N, C, *S)``,
    uint8 pixels for pixel models); returns stored values equal to ``context`` on the given tokens.

    ``given`` is one mask for all clips, shaped like the token grid (``model.token_grid``), or one per clip,
    ``(N, num_tokens)`` in patchify's order. The token-grid shape is checked first, so a square grid
    whose side equals ``N`` is never mistaken for per-clip masks.
    """
    if not run.model.task_conditioning:
        raise ConfigError("this run was trained without tasks (task.names): it cannot condition on a context")
    n, model = len(context), run.model
    if tuple(given.shape) == tuple(model.token_grid):
        flat = given.reshape(1, -1).expand(n, -1)
    elif tuple(given.shape) == (n, model.num_tokens):
        flat = given
    else:
        raise ConfigError(f"a condition mask must be shaped like the token grid {tuple(model.token_grid)} or "
                          f"({n}, {model.num_tokens}) (one per clip), got {tuple(given.shape)}")
    out = generate(model, run.objective, n, labels, given=flat, context=run.codec.encode(context), **sampling)
    check_finite(out, sampling)
    return torch.where(stored_mask(pixel_mask(flat, model), context), context, run.codec.decode(out))


def check_finite(samples: torch.Tensor, settings: dict[str, Any]) -> None:
    """Refuse samples (model space, before decoding) holding NaN or infinity: decoded, they would be black
    images written with exit status 0. ``settings`` are the sampling settings, named in the message."""
    bad = int((~samples.isfinite()).flatten(1).any(dim=1).sum())
    if bad:
        shown = ", ".join(f"{k}={settings[k]}" for k in ("sampler", "steps", "guidance_scale", "accel")
                          if settings.get(k) is not None)
        raise DataError(f"sampling diverged: {bad} of {len(samples)} samples hold NaN or infinite values ({shown}); "
                        "nothing was written: lower --guidance-scale, drop --accel or check --from-noise")


def comparison_frames(truth: torch.Tensor, generated: torch.Tensor, given: torch.Tensor, model: Any) -> np.ndarray:
    """Context | ground truth | generated frames (uint8 ``N x T x H' x W' x C``) for :func:`save_video`,
    from uint8 clips ``(N, C, T, H, W)`` and the token-grid given mask; the context panel greys what was
    not given."""
    from maskdit.data.media import side_by_side

    def thwc(v: torch.Tensor) -> np.ndarray:
        return v.permute(0, 2, 3, 4, 1).numpy()

    pixels_given = pixel_mask(given.reshape(1, -1).expand(len(truth), -1), model)[:, 0].numpy()
    return side_by_side(thwc(truth), thwc(truth), thwc(generated), pixels_given)


def stored_mask(mask: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """A model-space mask ``(N, C, *S)`` over stored values of another shape (an autoencoder's latent frames over
    its waveform samples): each stored value takes the flag of the latent position it falls in."""
    if mask.shape[1:] == stored.shape[1:]:
        return mask
    import torch.nn.functional as F

    return F.interpolate(mask[:, :1].float(), size=stored.shape[2:], mode="nearest").bool().expand_as(stored)


def pixel_mask(given: torch.Tensor, model: Any) -> torch.Tensor:
    """Token flags ``(N, num_tokens)`` -> a bool pixel mask ``(N, C, *S)`` shaped like the model's input."""
    from maskdit.grid import unpatchify

    flags = given.unsqueeze(-1).expand(-1, -1, model.patch_dim).float()
    return unpatchify(flags, model.patch_size, model.input_size, model.in_channels).bool()
