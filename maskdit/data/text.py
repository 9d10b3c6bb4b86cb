"""Text as token grids: character sequences for a masked-diffusion model over characters.

``data.name=text`` cuts a corpus into sequences of ``data.length`` characters: a 1-D grid ``(1, L)`` of ids per
sequence, one id per character of the corpus's alphabet (whitespace runs folded to one space). The corpus is
``data.path`` (a UTF-8 ``.txt`` file) or, by default, the text of Python's own help topics, which ships with every
Python as ``pydoc_data.topics`` (about 460,000 characters of English reference prose; nothing is downloaded). The
last tenth of the corpus is the test split. The codec (:class:`CharCodec`) decodes id grids back to strings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from maskdit.data.codec import CODECS
from maskdit.data.datasets import DATASETS
from maskdit.errors import ConfigError, DataError

#: The share of the corpus held out as the test split (its end).
TEST_SHARE = 0.1


def builtin_corpus() -> str:
    """Python's help topics (``pydoc_data.topics``), in a fixed order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def fold(text: str) -> str:
    """Whitespace runs to one space, so the model spends nothing on indentation."""
    return re.sub(r"\s+", " ", text).strip()


@CODECS.register("chars", "character ids <-> strings over a corpus's alphabet (data.name=text)")
class CharCodec:
    """Character ids (model space: the ids as floats) <-> strings; ``alphabet[i]`` is id ``i``."""

    name = "chars"
    stores_pixels = False

    def __init__(self, alphabet: str):
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise DataError("a character codec needs an alphabet of distinct characters")
        self.alphabet = alphabet
        self.vocab_size = len(alphabet)
        self.value_range = (0.0, float(self.vocab_size - 1))
        self._index = {c: i for i, c in enumerate(alphabet)}

    def ids(self, text: str) -> torch.Tensor:
        """A string -> its ids (every character must be in the alphabet)."""
        missing = sorted({c for c in text if c not in self._index})
        if missing:
            raise DataError(f"text holds characters outside the model's alphabet: {''.join(missing)[:20]!r}")
        return torch.tensor([self._index[c] for c in text], dtype=torch.long)

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float().reshape(len(stored), 1, -1)

    def decode(self, x: torch.Tensor) -> list[str]:
        ids = x.round().clamp(0, self.vocab_size - 1).long().reshape(len(x), -1)
        return ["".join(self.alphabet[i] for i in row.tolist()) for row in ids]

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alphabet": self.alphabet}


class TextDataset:
    """Sequences of ``length`` characters from a corpus (non-overlapping, in order), as ids ``(N, 1, length)``."""

    def __init__(self, text: str, length: int, split: str, name: str):
        text = fold(text)
        if len(text) < 20 * length:
            raise DataError(f"the text corpus {name} holds {len(text)} characters: too few for sequences of "
                            f"data.length={length} (at least {20 * length}); give a longer text or a smaller length")
        self.name, self.num_classes, self.class_names, self.labels = name, 0, [], None
        self.codec = CharCodec("".join(sorted(set(text))))
        cut = int(len(text) * (1 - TEST_SHARE))
        part = text[:cut] if split == "train" else text[cut:]
        count = len(part) // length
        self.ids = self.codec.ids(part[: count * length]).reshape(count, length)
        self.text = part

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, self.ids.shape[1])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.codec.encode(self.ids[idx]), None


def load_text(path: str | None, length: int, split: str = "train") -> TextDataset:
    """``path`` (a UTF-8 text file) or the built-in corpus, cut into sequences of ``length`` characters."""
    if path is None:
        return TextDataset(builtin_corpus(), length, split, "python-docs")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"text corpus {file} is not a file: point data.path at a UTF-8 .txt file (or leave it out "
                        "for the built-in corpus)")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read text corpus {file} as UTF-8: {e}") from None
    return TextDataset(text, length, split, file.stem)


@DATASETS.register("text", "character sequences of data.length from data.path (a .txt) or Python's help topics "
                   "(built in), for objective.name=masked", needs_path=False, rank=1)
def _text(cfg: Any, split: str) -> TextDataset:
    if cfg.length < 2:
        raise ConfigError(f"config key data.length must be at least 2 characters, got {cfg.length}")
    return load_text(cfg.path, cfg.length, split)
