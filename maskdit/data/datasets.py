"""Datasets: embedded scikit-learn digits, ``.npz`` files, memory-mapped ``.npy`` arrays, image folders
and embedded video (:mod:`maskdit.data.video`).

Every dataset follows :class:`Dataset`: it declares the model-space ``shape`` of one example and a
:class:`~maskdit.data.codec.Codec`, stores examples however it likes (in memory, memory-mapped from disk)
and returns model-space batches from :meth:`Dataset.batch`. :data:`DATASETS` is the table of loaders that
``data.name``, config validation and the docs read.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from maskdit.data.codec import PIXELS, Codec, LevelsCodec
from maskdit.errors import ConfigError, DataError, check_keys
from maskdit.grid import parse_size
from maskdit.registry import Registry, one_of

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: Labels must lie in [0, MAX_CLASSES): a larger label is almost surely a data error, and the class table
#: (and the model's label embedding) grows with it.
MAX_CLASSES = 100_000


class Dataset(Protocol):
    """What training, evaluation and the CLI need from a dataset."""

    name: str
    num_classes: int
    class_names: list[str]
    codec: Codec

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, *S)`` of one example in model space."""

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-space examples at ``idx`` (float, in ``codec.value_range``) and their labels (or ``None``)."""


@dataclass
class DataConfig:
    name: str = "digits"  #: a maskdit.data.datasets.DATASETS entry: digits | npz | npy | folder | bouncing-digits | ...
    path: str | None = None
    num: int = 2000  #: video datasets: training clips generated; shapes: training scenes
    frames: int = 8  #: video datasets: frames per clip
    size: int = 16  #: video datasets: canvas size in pixels
    resize: int | None = None  #: image folders: ADM centre crop and resize to RESIZE x RESIZE (None: as stored)
    flip: bool = False  #: random horizontal flips: every epoch shows each example as stored and mirrored
    workers: int = 0  #: DataLoader worker processes that prepare the next steps' batches (0: in the main process)
    captions: str | None = None  #: model.condition=hf: a caption store of the data's captions (maskdit captions encode)
    levels: int | None = None  #: quantise uint8 pixels to this many levels, as token ids (objective.name=masked)
    length: int = 64  #: text: characters (or words) per sequence
    words: int = 0  #: text: 0 for characters; N > 0 for words, the N most frequent each an id (the rest <unk>)
    sizes: list[str | int] = field(default_factory=list)  #: train at these sizes too ("6x8", 32...): one per step
    autoencoder: str | None = None  #: audio: train on the latents of this 1-D autoencoder (maskdit autoencoder train)

    def validate(self) -> None:
        """Check every ``data.*`` value on its own (what needs the loaded data is checked after loading)."""
        check_keys("data.", self, [
            ("name", self.name in DATASETS, "one of " + one_of(DATASETS.names())),
            ("num", self.num >= 1, "at least 1"),
            ("frames", self.frames >= 2, "at least 2"),
            ("size", self.size >= 4, "at least 4 (video canvas pixels)"),
            ("resize", self.resize is None or self.resize >= 1, "a positive image side in pixels"),
            ("workers", self.workers >= 0, "0 (load in the training process) or more worker processes"),
            ("levels", self.levels is None or 2 <= self.levels <= 256, "null or an integer in [2, 256]"),
            ("length", self.length >= 2, "at least 2 (characters per text sequence)"),
            ("words", 0 <= self.words <= 1_000_000, "0 (characters) or a vocabulary of at most 1,000,000 words"),
            ("sizes", all(parse_size(s) is not None for s in self.sizes),
             "a list of sizes in pixels such as [6x8, 8x8] (positive integers joined by x)"),
            ("autoencoder", self.autoencoder is None or (self.name == "audio" and bool(str(self.autoencoder).strip())),
             "null, or with data.name=audio a directory from maskdit autoencoder train"),
        ])

    def size_list(self) -> list[tuple[int, ...]]:
        """``sizes`` as tuples of pixels per axis."""
        return [parse_size(s) for s in self.sizes]  # type: ignore[misc]



#: name -> loader ``fn(cfg: DataConfig, split) -> Dataset``; facts: ``needs_path``, ``rank`` (spatial axes).
DATASETS: Registry = Registry("dataset", key="data.name")


def timed_data(name: str) -> bool | None:
    """Whether data set ``name``'s axis 0 is time (its ``timed`` fact; None: only a rank-3 grid's is), so frame
    tasks apply to it. An unknown name (an imported run's) is None."""
    return DATASETS.entry(name).facts.get("timed") if name in DATASETS else None


def modality_name(name: str) -> str | None:
    """The modality data set ``name`` names (its ``modality`` fact: motion, voxels, audio), or None for images,
    video, text and unknown (imported) sets."""
    return DATASETS.entry(name).facts.get("modality") if name in DATASETS else None


@dataclass
class ImageDataset:
    """Images ``uint8 (N, C, H, W)``, optional labels ``int64 (N,)`` and the number of classes, optional captions.

    ``labels`` holds what batches pair with each image: class labels, or a text model's token ids ``(N, L)``
    (:meth:`Conditioner.values <maskdit.conditions.base.Conditioner.values>` sets them from the captions)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)
    codec: Codec = PIXELS
    captions: list[str] | None = None
    words: list[str] | None = None  #: every word its captions can hold, when known (a generator's), beyond those seen

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DataError(f"dataset {self.name} holds no images: point data.path at a non-empty dataset")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(
                f"dataset {self.name} has {len(self.labels)} labels for {len(self.images)} images: "
                "give exactly one label per image"
            )
        if self.captions is not None and len(self.captions) != len(self.images):
            raise DataError(f"dataset {self.name} has {len(self.captions)} captions for {len(self.images)} images: "
                            "give exactly one caption per image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images at ``idx`` in model space and their labels (``None`` when unlabelled)."""
        x = self.codec.encode(self.images[idx])
        return x, (self.labels[idx] if self.labels is not None else None)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` 0-255 -> ``[-1, 1]`` (float32): the pixel codec's ``encode``."""
    return PIXELS.encode(x)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``uint8`` 0-255 (clipped, rounded): the pixel codec's ``decode``."""
    return PIXELS.decode(x)


CHANNELS = (1, 3, 4)  #: channel counts of images (gray, RGB, RGBA): how a 4-D array's layout is told apart
LAYOUTS: Registry[None] = Registry("image layout", key="--layout")
LAYOUTS.add("NHWC", None, "channels last")
LAYOUTS.add("NCHW", None, "channels first")


def channels_last(images: np.ndarray, source: str, layout: str | None = None, fix: str = "") -> np.ndarray:
    """A 4-D image array as ``N x H x W x C`` (a view). ``layout`` (``NHWC`` or ``NCHW``) says which it is;
    without it the array is channels-last when only its last axis can be channels (1, 3 or 4 of them),
    channels-first (``N x C x H x W``, transposed) when only axis 1 can, and when both can, the reading that
    gives square images wins; an array that is neither is read channels-last, as always. The rest is
    ambiguous and refused, naming ``source`` (``fix``: how to say which it is)."""
    if layout is not None:
        return images if layout == "NHWC" else images.transpose(0, 2, 3, 1)
    _, a, b, c = images.shape
    last, first = c in CHANNELS, a in CHANNELS
    if first and not last:
        return images.transpose(0, 2, 3, 1)
    if last and first:
        square_last, square_first = a == b, b == c
        if square_first and not square_last:
            return images.transpose(0, 2, 3, 1)
        if not (square_last and not square_first):
            raise DataError(f"{source}: images of shape {images.shape} could be N x H x W x C ({a}x{b} images of "
                            f"{c} channels) or N x C x H x W ({b}x{c} images of {a} channels): {fix}")
    return images


def check_images(images: np.ndarray, source: str) -> None:
    """Refuse an image array ``N x H x W x C`` with no images or no pixels, naming ``source``."""
    if len(images) == 0:
        raise DataError(f"{source} holds no images: give at least one")
    if min(images.shape[1:3]) < 1:
        raise DataError(f"{source}: images of shape {images.shape[1:3]} hold no pixels; give images of at least 1x1")
    if images.ndim == 4 and images.shape[3] < 1:
        raise DataError(f"{source}: images of shape {images.shape} have no channels; give N x H x W (gray) or "
                        "N x H x W x C with C >= 1")


def check_labels(labels: np.ndarray, count: int, source: str, num_classes: int | None = None,
                 fix: str = "number the classes 0..K-1") -> int:
    """Refuse labels that are not one non-negative integer per example below ``num_classes`` (a model's
    classes) or, when that is not given, :data:`MAX_CLASSES`; returns the number of classes (``max + 1``).
    The range is checked before any cast, so a huge unsigned label cannot wrap into range."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{source}: 'labels' must be {count} integers (one per image), got {labels.dtype} "
                        f"{labels.shape}; {fix}")
    if len(labels) != count:
        raise DataError(f"{source}: {len(labels)} labels for {count} images; give one label per image")
    if not len(labels):
        return 0
    low, high = int(labels.min()), int(labels.max())
    if num_classes is not None and (low < 0 or high >= num_classes):
        raise DataError(f"{source}: 'labels' must be in 0-{num_classes - 1} for this model, found "
                        f"{low if low < 0 else high}; {fix}")
    if low < 0:
        raise DataError(f"{source}: labels must be non-negative, found {low}")
    if high >= MAX_CLASSES:
        raise DataError(f"{source}: label {high} is beyond the maximum of {MAX_CLASSES} classes; {fix}")
    return high + 1


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' images ``(1797, 8, 8)`` (values 0-16) and labels, read from the file scikit-learn ships
    (``sklearn/datasets/data/digits.csv.gz``) without importing ``sklearn.datasets``, which takes about 2 s
    of every process start; scikit-learn's own loader when the file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_load_digits

        d = sk_load_digits()
        return d.images, d.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0-16 scaled to 0-255), 10 classes."""
    images, labels = digits_arrays()
    images = np.round(images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageDataset(
        torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), 10, "digits",
        [str(i) for i in range(10)],
    )


def read_npz(path: Path, what: str, fix: str, save: str = "save it with numpy.savez") -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (never unpickling); ``what`` names it in errors, ``fix`` says
    what to do when it is missing, ``save`` how to write a readable one."""
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory, not an .npz file: {fix}")
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist: {fix}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # zipfile / numpy raise several types for a damaged file
        raise DataError(f"cannot read {what} {path} as .npz ({npz_reason(e)}): {save}") from e


def load_npz(path: str | Path) -> ImageDataset:
    """``.npz`` with ``images`` uint8 ``N x H x W``, ``N x H x W x C`` or ``N x C x H x W`` (see
    :func:`channels_last`; an optional string ``layout``, ``NHWC`` or ``NCHW``, says which), optional
    integer ``labels`` and optional string ``captions``."""
    path = Path(path)
    arrays = read_npz(path, "dataset file", "check data.path")
    if "images" not in arrays:
        raise DataError(f"{path} has no 'images' array (found: {', '.join(arrays) or 'nothing'})")
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: 'images' must be uint8 N x H x W, N x H x W x C or N x C x H x W, got {images.dtype} "
            f"{images.shape}"
        )
    layout = arrays.get("layout")
    if layout is not None:
        layout = str(layout) if layout.ndim == 0 and layout.dtype.kind == "U" else None
        if layout not in LAYOUTS:
            raise DataError(f"{path}: 'layout' must be the string NHWC or NCHW, got {arrays['layout']!r}"[:300])
        if images.ndim == 3:
            raise DataError(f"{path}: 'layout' {layout} names the channel axis, but 'images' is N x H x W "
                            "(gray, no channel axis): leave 'layout' out")
    if images.ndim == 3:
        images = images[..., None]
    else:
        images = channels_last(images, str(path), layout,
                               "say which with a 'layout' array: numpy.savez(..., layout='NHWC') or layout='NCHW'")
    check_images(images, str(path))
    labels = arrays.get("labels")
    num_classes = 0 if labels is None else check_labels(labels, len(images), str(path))
    captions = arrays.get("captions")
    if captions is not None:
        check_captions(captions, len(images), str(path))
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        torch.from_numpy(labels.astype(np.int64)) if labels is not None else None,
        num_classes, path.stem, [str(i) for i in range(num_classes)],
        captions=None if captions is None else [str(c) for c in captions],
    )


def check_captions(captions: np.ndarray, count: int, source: str) -> None:
    """Refuse captions that are not one string per image."""
    if captions.ndim != 1 or captions.dtype.kind != "U":
        raise DataError(f"{source}: 'captions' must be {count} strings (one per image), got {captions.dtype} "
                        f"{captions.shape}; save them with numpy.savez(..., captions=numpy.array(list_of_str))")
    if len(captions) != count:
        raise DataError(f"{source}: {len(captions)} captions for {count} images; give one caption per image")


def centre_crop(image: Any, size: int) -> Any:
    """ADM's crop of a PIL image to ``size x size``: halve it with box filtering while its short side is at
    least twice ``size`` (cheap and alias-free), resize with bicubic filtering so the short side is ``size``,
    then cut the centre square."""
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(max(size, round(s * scale)) for s in image.size), resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_folder(path: str | Path, resize: int | None = None) -> ImageDataset:
    """An image folder with one subfolder per class. Without ``resize`` all images must share one size;
    with it each is centre-cropped and resized to ``resize x resize`` (:func:`centre_crop`). A ``.txt`` file
    beside an image (``cat.png`` -> ``cat.txt``) is its caption: every image has one, or none does."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if root.exists() and not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a folder: check data.path")
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: check data.path")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {root} has no class subfolders: put images in {root}/<class>/")
    files = [
        (f, label) for label, name in enumerate(classes)
        for f in sorted((root / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"image folder {root} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    pictures = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                picture = im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB")
                pictures.append(picture if resize is None else centre_crop(picture, resize))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"cannot read image {f}: {e}; remove or replace the file") from e
    first = pictures[0].size
    for (f, _), im in zip(files, pictures):
        if im.size != first:
            raise DataError(
                f"images in {root} have mixed sizes: {files[0][0]} is {first[0]}x{first[1]} but {f} is "
                f"{im.size[0]}x{im.size[1]}; resize them to one size"
            )
    color = any(im.mode == "RGB" for im in pictures)
    arrays = [np.asarray(im.convert("RGB") if color else im) for im in pictures]
    images = np.stack(arrays)
    images = images if color else images[..., None]
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), labels, len(classes),
        root.name, classes, captions=side_captions([f for f, _ in files], root),
    )


def side_captions(files: list[Path], root: Path) -> list[str] | None:
    """The caption in the ``.txt`` file beside each image, or ``None`` when no image has one; a folder where
    only some do is refused, naming the first image without."""
    sides = [f.with_suffix(".txt") for f in files]
    present = [s.is_file() for s in sides]
    if not any(present):
        return None
    if not all(present):
        missing = files[present.index(False)]
        raise DataError(f"image folder {root}: {missing} has no caption file {missing.with_suffix('.txt').name} while "
                        "other images have one: give every image a .txt caption, or none")
    captions = []
    for side in sides:
        try:
            captions.append(side.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read caption {side} as UTF-8 text: {e}") from e
    return captions


def npz_reason(e: Exception) -> str:
    """An exception's message without numpy's advice to unpickle files (never the fix here)."""
    text = str(e).split("\n")[0]
    if "pickle" in text:
        return "it holds Python objects (pickled data), which maskdit never loads"
    return text


def read_npy(path: Path, mmap_mode: str | None = None,
             fix: str = "save it again with numpy.save") -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (never unpickling; memory-mapped with ``mmap_mode``); a damaged
    file is refused naming it."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a damaged file
        raise DataError(f"cannot read {path} ({npz_reason(e) or type(e).__name__}): {fix}") from e


def load_npy(path: str | Path) -> ImageDataset:
    """A directory with ``images.npy`` (uint8 ``N x H x W [x C]``) and optional ``labels.npy``, memory-mapped:
    batches read only the examples they use, so the set need not fit in RAM."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"npy dataset {root} must be a directory holding images.npy (and labels.npy): "
                        "check data.path")
    if not (root / "images.npy").is_file():
        raise DataError(f"npy dataset {root} has no images.npy")
    if (root / "labels.npy").exists() and not (root / "labels.npy").is_file():
        raise DataError(f"npy dataset {root}: labels.npy is not a file: save the labels with numpy.save, or move "
                        "it away for an unlabelled dataset")
    images = read_npy(root / "images.npy", mmap_mode="c")
    labels = read_npy(root / "labels.npy") if (root / "labels.npy").is_file() else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{root}/images.npy must be uint8 N x H x W, N x H x W x C or N x C x H x W, got "
                        f"{images.dtype} {images.shape}")
    images = images[..., None] if images.ndim == 3 else channels_last(
        images, f"{root}/images.npy", fix="save it as N x H x W x C, or as an .npz with a 'layout' array "
        "(NHWC or NCHW) and data.name=npz")
    check_images(images, f"{root}/images.npy")
    num_classes = 0 if labels is None else check_labels(labels, len(images), f"{root}/labels.npy")
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # a view: pages are read when indexed
    return ImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)) if labels is not None else None,
                        num_classes, root.name, [str(i) for i in range(num_classes)])


@DATASETS.register("digits", "scikit-learn's 1,797 real 8x8 handwritten digits, 10 classes (embedded)",
                   needs_path=False, rank=2)
def _digits(cfg: Any, split: str) -> ImageDataset:
    return load_digits()


@DATASETS.register("npz", "data.path=FILE.npz: images uint8 N x H x W [x C], optional integer labels and string "
                   "captions",
                   needs_path=True, rank=2)
def _npz(cfg: Any, split: str) -> ImageDataset:
    return load_npz(cfg.path)


@DATASETS.register("npy", "data.path=DIR with images.npy (+ labels.npy), memory-mapped", needs_path=True, rank=2)
def _npy(cfg: Any, split: str) -> ImageDataset:
    return load_npy(cfg.path)


@DATASETS.register("folder", "data.path=DIR with one subfolder of images per class: all one size, or any sizes "
                   "with data.resize; a .txt beside each image is its caption", needs_path=True, rank=2, resizes=True)
def _folder(cfg: Any, split: str) -> ImageDataset:
    return load_folder(cfg.path, getattr(cfg, "resize", None))


def dataset_from_config(cfg: Any, split: str = "train") -> Dataset:
    """The dataset a :class:`maskdit.config.DataConfig` describes (a :data:`DATASETS` entry)."""
    entry = DATASETS.entry(cfg.name)
    if entry.facts["needs_path"] and not cfg.path:
        raise ConfigError(f"config key data.path is required when data.name={cfg.name}")
    dataset = entry.value(cfg, split)
    levels = getattr(cfg, "levels", None)
    if levels is not None:
        if not getattr(dataset.codec, "stores_pixels", False) or getattr(dataset.codec, "vocab_size", None):
            raise ConfigError(f"config key data.levels={levels} quantises uint8 pixels, but data.name={cfg.name} "
                              f"stores {dataset.codec.name} values: leave data.levels out")
        dataset.codec = LevelsCodec(levels)
    if getattr(cfg, "captions", None):
        dataset.caption_store = cfg.captions  # read by a frozen text encoder's conditioner instead of encoding
    return dataset


def load_dataset(name: str = "digits", path: str | None = None, split: str = "train", **options: Any) -> Dataset:
    """A dataset by ``data.name`` (and ``data.path``); ``options`` are other ``data.*`` fields."""
    return dataset_from_config(DataConfig(name=name, path=path, **options), split)


def images_from_spec(spec: str, option: str = "--data", resize: int | None = None) -> Dataset:
    """An image dataset named on the command line (``option`` names it in errors): a dataset name that needs no
    path, an .npz file, a directory with images.npy, or an image folder (``resize``: centre-cropped to that size)."""
    if spec in DATASETS and not DATASETS.entry(spec).facts["needs_path"]:
        return load_dataset(spec)
    path = Path(spec)
    if spec.lower().endswith(".npz"):
        return load_dataset("npz", spec)
    if path.is_dir():
        if (path / "images.npy").is_file():
            return load_dataset("npy", spec)
        return load_dataset("folder", spec, resize=resize)
    raise ConfigError(f"{option} {spec}: give digits, a .npz file, a directory with images.npy or an image folder")


def cycled_labels(classes: list[int], num: int) -> torch.Tensor:
    """``num`` class labels going round ``classes``: sample ``i`` gets ``classes[i % len(classes)]``, so a
    sample's label depends on its index alone, never on how many are drawn."""
    return torch.tensor(classes)[torch.arange(num) % len(classes)]


def examples(dataset: Any, index: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model-space examples and labels at ``index``; with ``flip`` an index ``i >= N`` is example ``i - N``
    mirrored along its last axis, so the data order (seeded per epoch) decides the flips."""
    n = len(dataset)
    if flip and getattr(dataset, "mirrors", False):  # it stores its examples' mirrors (VAE latents)
        return dataset.batch(index % n, mirrored=index >= n)
    x0, y = dataset.batch(index % n)
    if flip:
        x0 = torch.where((index >= n).reshape(-1, *[1] * (x0.dim() - 1)), x0.flip(-1), x0)
    return x0, y
