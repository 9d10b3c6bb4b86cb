"""An image tokenizer trained in-project, so a masked-diffusion model can generate images as token grids.

No pretrained VQ tokenizer (MaskGIT's, VQGAN's) can be downloaded here, so ``maskdit tokenizer train IMAGES --out
DIR`` (:func:`maskdit.training.tokenizer.train_tokenizer`) fits a small convolutional autoencoder with **finite
scalar quantisation** (FSQ, Mentzer et al. 2023): the encoder maps each ``factor x factor`` cell of the image to
``len(levels)`` channels, each bounded and rounded to one of ``levels[i]`` values (a straight-through gradient), so
a cell's code is one of ``prod(levels)`` ids with no codebook to collapse. The decoder maps codes back to pixels.
It saves

    DIR/tokenizer.json          {"kind": "maskdit-fsq", constructor arguments, training facts, "sha256"}
    DIR/tokenizer.safetensors   the autoencoder's weights

``maskdit tokens IMAGES --tokenizer DIR --out STORE.npz`` writes every image's id grid (:func:`encode_store`);
``data.name=tokens data.path=STORE.npz`` trains on it and the run decodes its samples through the same tokenizer
(:class:`TokenizerCodec`), refused if the tokenizer's weights changed since the store was written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from maskdit.data.codec import CODECS, PIXELS
from maskdit.data.datasets import DATASETS, check_labels, read_npz
from maskdit.errors import CheckpointError, ConfigError, DataError
from maskdit.files import atomic_file, check_parents, file_sha256, read_json

TOKENIZER_KIND = "maskdit-fsq"
#: What a damaged tokenizer directory's error line tells the user to do.
RETRAIN = "train one again with maskdit tokenizer train IMAGES --out DIR"


class FSQ(nn.Module):
    """Finite scalar quantisation: channel ``i`` of ``z`` squashed to ``[0, L_i - 1]`` and rounded (straight-through);
    :meth:`index` packs a cell's levels into one id (mixed radix), :meth:`unpack` undoes it."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.levels = [int(v) for v in levels]
        self.register_buffer("span", torch.tensor([v - 1 for v in self.levels], dtype=torch.float32), persistent=False)
        radix = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        self.register_buffer("radix", torch.tensor(radix, dtype=torch.long), persistent=False)

    @property
    def size(self) -> int:
        return math.prod(self.levels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D, *S)`` -> the quantised levels as values in ``[-1, 1]`` (gradients pass straight through)."""
        span = self.span.reshape(1, -1, *[1] * (z.dim() - 2))
        y = torch.sigmoid(z) * span
        q = y + (torch.round(y) - y).detach()
        return q / span * 2 - 1

    def index(self, q: torch.Tensor) -> torch.Tensor:
        """Quantised values ``(B, D, *S)`` -> ids ``(B, *S)``."""
        span = self.span.reshape(1, -1, *[1] * (q.dim() - 2))
        levels = torch.round((q + 1) / 2 * span).long()
        return (levels * self.radix.reshape(span.shape)).sum(dim=1)

    def unpack(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, *S)`` -> quantised values ``(B, D, *S)``."""
        ids = ids.long().unsqueeze(1)
        shape = (1, -1, *[1] * (ids.dim() - 2))
        levels = (ids // self.radix.reshape(shape)) % torch.tensor(self.levels, device=ids.device).reshape(shape)
        return levels.float() / self.span.reshape(shape) * 2 - 1


class Tokenizer(nn.Module):
    """A convolutional FSQ autoencoder: images ``(B, C, H, W)`` in ``[-1, 1]`` <-> ids ``(B, H/f, W/f)``."""

    def __init__(self, in_channels: int, input_size: list[int], factor: int = 2, levels: list[int] | None = None,
                 width: int = 64):
        super().__init__()
        levels = list(levels or [5, 5, 5])
        if factor < 1 or factor & (factor - 1):
            raise ConfigError(f"--factor {factor} must be a power of 2 (1, 2, 4, 8 ...)")
        if any(s % factor for s in input_size):
            raise ConfigError(f"--factor {factor} must divide the image sides {'x'.join(map(str, input_size))}")
        if not levels or any(v < 2 for v in levels) or math.prod(levels) > 65536:
            raise ConfigError(f"--levels {','.join(map(str, levels))} must be levels of at least 2 per channel, "
                              "at most 65,536 ids in all (e.g. 5,5,5 or 8,5,5,5)")
        self.in_channels, self.input_size = int(in_channels), [int(s) for s in input_size]
        self.factor, self.width = int(factor), int(width)
        self.quantiser = FSQ(levels)
        down = int(math.log2(factor))
        encoder: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU()]
        for _ in range(down):
            encoder += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GELU()]
        encoder += [nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, len(levels), 1)]
        decoder: list[nn.Module] = [nn.Conv2d(len(levels), width, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        for _ in range(down):
            decoder += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.GELU()]
        decoder += [nn.Conv2d(width, in_channels, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    @property
    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "input_size": self.input_size, "factor": self.factor,
                "levels": self.quantiser.levels, "width": self.width}

    @property
    def vocab_size(self) -> int:
        return self.quantiser.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of images ``x`` through the quantised codes."""
        return self.decoder(self.quantiser(self.encoder(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantiser.index(self.quantiser(self.encoder(x)))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantiser.unpack(ids)).clamp(-1, 1)


def load_tokenizer(path: str | Path, source: str = "--tokenizer") -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer ``maskdit tokenizer train`` wrote to ``path`` and its facts; a damaged or hand-edited directory
    is refused naming what is wrong."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"{source} {path} is not a tokenizer directory (no tokenizer.json): {RETRAIN}")
    facts = read_json(path / "tokenizer.json", (), RETRAIN)
    config = facts.get("config")
    keys = {"in_channels", "input_size", "factor", "levels", "width"}
    if facts.get("kind") != TOKENIZER_KIND or not isinstance(config, dict) or set(config) != keys \
            or not isinstance(facts.get("sha256"), str):
        raise CheckpointError(f"{source} {path}/tokenizer.json does not describe a maskdit tokenizer (kind "
                              f"{TOKENIZER_KIND!r}, config with {', '.join(sorted(keys))}, sha256): {RETRAIN}")
    try:
        model = Tokenizer(**config)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source} {path}/tokenizer.json holds a config that cannot build ({e}): "
                              f"{RETRAIN}") from None
    weights = path / "tokenizer.safetensors"
    if not weights.is_file() or file_sha256(weights) != facts["sha256"]:
        raise CheckpointError(f"{source} {path}: tokenizer.safetensors is missing or is not the file tokenizer.json "
                              f"describes (its SHA-256 differs): {RETRAIN}")
    try:
        model.load_state_dict(load_file(weights))
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"{source} {path}: tokenizer.safetensors does not fit tokenizer.json "
                              f"({str(e).splitlines()[0][:120]}): {RETRAIN}") from None
    return model.eval(), facts


def encode_store(dataset: Any, tokenizer_dir: str | Path, out: str | Path, batch_size: int = 256,
                 progress: bool = True) -> dict[str, Any]:
    """Every image of ``dataset`` as its id grid, with its labels and the tokenizer's path and SHA-256, in the
    ``.npz`` ``out`` (written whole or not at all)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"--out {out} must name an .npz file (the token store)")
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new file for the token store")
    check_parents(out, "--out")
    model, facts = load_tokenizer(tokenizer_dir)
    images = dataset.images
    want = (model.in_channels, *model.input_size)
    if tuple(images.shape[1:]) != want:
        raise ConfigError(f"IMAGES are {'x'.join(map(str, images.shape[1:]))} (CxHxW) but the tokenizer "
                          f"{tokenizer_dir} was trained on {'x'.join(map(str, want))}: tokenize images of that shape")
    ids = []
    for first in tqdm(range(0, len(images), batch_size), desc="tokens", disable=not progress):
        ids.append(model.encode(PIXELS.encode(images[first:first + batch_size])).to(torch.int32))
    arrays = {"tokens": torch.cat(ids).numpy(), "vocab_size": np.array(model.vocab_size),
              "tokenizer": np.array(str(Path(tokenizer_dir).resolve())), "sha256": np.array(facts["sha256"])}
    if dataset.labels is not None:
        arrays["labels"] = dataset.labels.numpy()
    try:
        with atomic_file(out, "--out") as tmp:
            np.savez(tmp, **arrays)
    except OSError as e:
        raise DataError(f"cannot write the token store {out}: {e.strerror or e}; nothing was kept") from None
    return {"num": len(images), "grid": list(arrays["tokens"].shape[1:]), "vocab_size": model.vocab_size}


@CODECS.register("tokenizer", "token ids <-> uint8 pixels through an in-project FSQ tokenizer (maskdit tokenizer)")
class TokenizerCodec:
    """A token store's ids (model space: the ids as floats) <-> pixels through the tokenizer that made them."""

    name = "tokenizer"
    stores_pixels = False

    def __init__(self, tokenizer: str, sha256: str, vocab_size: int):
        self.tokenizer, self.sha256, self.vocab_size = str(tokenizer), str(sha256), int(vocab_size)
        self.value_range = (0.0, float(self.vocab_size - 1))
        self._model: Tokenizer | None = None

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float().unsqueeze(1) if stored.dim() == 3 else stored.float()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            model, facts = load_tokenizer(self.tokenizer, "the run's tokenizer")
            if facts["sha256"] != self.sha256:
                raise CheckpointError(f"the run's tokenizer {self.tokenizer} changed since its token store was "
                                      "written (its SHA-256 differs): decode with the tokenizer the run was trained on")
            self._model = model
        ids = x.round().clamp(0, self.vocab_size - 1)[:, 0]
        return PIXELS.decode(self._model.decode(ids))

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "tokenizer": self.tokenizer, "sha256": self.sha256, "vocab_size": self.vocab_size}


class TokenDataset:
    """A token store (:func:`encode_store`): id grids ``(N, 1, h, w)`` in model space, their labels, and the codec that
    decodes ids through the store's tokenizer."""

    def __init__(self, path: str | Path):
        path = Path(path)
        fix = "write it with maskdit tokens IMAGES --tokenizer DIR --out STORE.npz"
        arrays = read_npz(path, "token store", fix)
        missing = [k for k in ("tokens", "vocab_size", "tokenizer", "sha256") if k not in arrays]
        if missing:
            raise DataError(f"{path} is not a token store: it lacks {', '.join(missing)}; {fix}")
        tokens, vocab = arrays["tokens"], arrays["vocab_size"]
        if tokens.ndim != 3 or tokens.dtype.kind not in "iu" or vocab.ndim != 0 or vocab.dtype.kind not in "iu":
            raise DataError(f"{path}: 'tokens' must be integer id grids N x h x w and 'vocab_size' one integer, got "
                            f"{tokens.dtype} {tokens.shape} and {vocab.dtype} {vocab.shape}; {fix}")
        vocab = int(vocab)
        if len(tokens) == 0 or tokens.min() < 0 or tokens.max() >= vocab:
            raise DataError(f"{path}: token ids must lie in [0, {vocab}) (the store's vocabulary), found "
                            f"[{tokens.min() if len(tokens) else '-'}, {tokens.max() if len(tokens) else '-'}]; {fix}")
        self.name = path.stem
        self.ids = torch.from_numpy(tokens.astype(np.int64))
        labels = arrays.get("labels")
        self.num_classes = 0 if labels is None else check_labels(labels, len(tokens), str(path))
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))
        self.class_names = [str(i) for i in range(self.num_classes)]
        self.codec = TokenizerCodec(str(arrays["tokenizer"]), str(arrays["sha256"]), vocab)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, *self.ids.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.codec.encode(self.ids[idx]), (self.labels[idx] if self.labels is not None else None)


@DATASETS.register("tokens", "data.path=STORE.npz from maskdit tokens: image id grids of an in-project tokenizer, "
                   "for objective.name=masked", needs_path=True, rank=2)
def _tokens(cfg: Any, split: str) -> TokenDataset:
    return TokenDataset(cfg.path)
