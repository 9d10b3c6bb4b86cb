"""Text as token grids: character sequences for a masked-diffusion model over characters.

``data.name=text`` cuts a corpus into sequences of ``data.length`` characters: a 1-D grid ``(1, L)`` of ids per
sequence, one id per character of the corpus's alphabet (whitespace runs folded to one space). With
``data.words=N`` the units are words and punctuation marks instead: the ``N`` most frequent of the training split
get an id each, every other one the id of ``<unk>`` (:class:`WordCodec`). The corpus is
``data.path`` (a UTF-8 ``.txt`` file) or, by default, the text of Python's own help topics, which ships with every
Python as ``pydoc_data.topics`` (about 460,000 characters of English reference prose; nothing is downloaded). The
last tenth of the corpus is the test split. The codec (:class:`CharCodec`) decodes id grids back to strings.
"""

from __future__ import annotations

import re
from collections import Counter
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
    decodes_text = True

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


#: A word, or one punctuation mark (the units of ``data.words``).
WORD = re.compile(r"\w+|[^\w\s]")
UNKNOWN = "<unk>"


@CODECS.register("words", "word ids <-> strings over a corpus's most frequent words (data.name=text data.words=N)")
class WordCodec:
    """Word ids (model space: the ids as floats) <-> strings joined by spaces; ``words[i]`` is id ``i`` and the
    last id is ``<unk>``, every word outside the vocabulary."""

    name = "words"
    stores_pixels = False
    decodes_text = True

    def __init__(self, words: list[str]):
        if not words or len(set(words)) != len(words):
            raise DataError("a word codec needs a list of distinct words")
        self.words = list(words)
        self.vocab_size = len(self.words) + 1
        self.value_range = (0.0, float(self.vocab_size - 1))
        self._index = {w: i for i, w in enumerate(self.words)}

    def ids(self, units: list[str]) -> torch.Tensor:
        return torch.tensor([self._index.get(u, len(self.words)) for u in units], dtype=torch.long)

    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float().reshape(len(stored), 1, -1)

    def decode(self, x: torch.Tensor) -> list[str]:
        ids = x.round().clamp(0, self.vocab_size - 1).long().reshape(len(x), -1)
        table = [*self.words, UNKNOWN]
        return [" ".join(table[i] for i in row.tolist()) for row in ids]

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "words": self.words}


class TextDataset:
    """Sequences of ``length`` characters (or, with ``words``, words) from a corpus (non-overlapping, in order), as
    ids ``(N, 1, length)``; the alphabet or the word list comes from the whole corpus's training split."""

    def __init__(self, text: str, length: int, split: str, name: str, words: int = 0):
        text = fold(text)
        cut = int(len(text) * (1 - TEST_SHARE))
        self.name, self.num_classes, self.class_names, self.labels = name, 0, [], None
        if words:
            train_units = WORD.findall(text[:cut])
            units = train_units if split == "train" else WORD.findall(text[cut:])
            counts = Counter(train_units)
            self.codec: CharCodec | WordCodec = WordCodec([w for w, _ in counts.most_common(words)])
        else:
            units = list(text[:cut] if split == "train" else text[cut:])
            self.codec = CharCodec("".join(sorted(set(text))))
        kind = "words" if words else "characters"
        if len(units) < 2 * length:
            raise DataError(f"the text corpus {name} holds {len(units)} {kind} in its {split} split: too few for "
                            f"sequences of data.length={length}; give a longer text or a smaller data.length")
        count = len(units) // length
        ids = self.codec.ids(units[: count * length] if words else "".join(units[: count * length]))
        self.ids = ids.reshape(count, length)
        self.text = " ".join(units) if words else "".join(units)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, self.ids.shape[1])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.codec.encode(self.ids[idx]), None


def load_text(path: str | None, length: int, split: str = "train", words: int = 0) -> TextDataset:
    """``path`` (a UTF-8 text file) or the built-in corpus, cut into sequences of ``length`` characters (or of
    ``length`` words over the ``words`` most frequent)."""
    if path is None:
        return TextDataset(builtin_corpus(), length, split, "python-docs", words)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"text corpus {file} is not a file: point data.path at a UTF-8 .txt file (or leave it out "
                        "for the built-in corpus)")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read text corpus {file} as UTF-8: {e}") from None
    return TextDataset(text, length, split, file.stem, words)


@DATASETS.register("text", "character sequences of data.length from data.path (a .txt) or Python's help topics "
                   "(built in), for objective.name=masked", needs_path=False, rank=1)
def _text(cfg: Any, split: str) -> TextDataset:
    if cfg.length < 2:
        raise ConfigError(f"config key data.length must be at least 2 characters, got {cfg.length}")
    return load_text(cfg.path, cfg.length, split, cfg.words)
