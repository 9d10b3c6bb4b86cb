"""Captions: a word tokenizer (Hugging Face ``tokenizers``) and a small transformer text encoder trained with the
backbone from scratch.

Captions become token ids ``(B, L)`` once, when the data loads (they batch, shard and resume like labels); the
encoder turns ids into features ``(B, L, D)`` at the model width, a padding mask and a pooled vector (the masked
mean, projected) that joins the time embedding. The vocabulary is every word of the training captions; it is
part of the model's configuration (``condition_options``), so a saved run reads prompts exactly as it was
trained to, and a word it never saw is refused rather than guessed.

The null caption (classifier-free guidance, caption dropout) is *learned*: one ``[NULL]`` token, whose embedding
trains on the dropped captions. An empty caption of padding only would leave nothing to attend to, zeros would
be indistinguishable from padding, and a fixed caption ("an image") carries content of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maskdit.conditions.base import CONDITIONERS, Condition, Conditioner
from maskdit.errors import ConfigError, DataError

#: Special tokens, in id order: padding (masked out), a word outside the vocabulary, the null caption.
PAD, UNK, NULL = "[PAD]", "[UNK]", "[NULL]"
SPECIALS = (PAD, UNK, NULL)
#: Longest caption (in tokens) a model may be built for.
MAX_LENGTH = 512


def word_tokenizer(vocab: list[str]) -> Any:
    """A ``tokenizers`` word-level tokenizer over ``vocab`` (lower-cased, split on whitespace and punctuation)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    ids = {word: i for i, word in enumerate([*SPECIALS, *vocab])}
    tokenizer = Tokenizer(models.WordLevel(ids, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def caption_words(captions: list[str]) -> list[list[str]]:
    """Each caption as the words the tokenizer sees."""
    tokenizer = word_tokenizer([])
    return [[w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(c))]
            for c in captions]


def captions_of(dataset: Any) -> list[str]:
    """The dataset's captions, refused when it has none."""
    captions = getattr(dataset, "captions", None)
    if captions is None:
        raise DataError(f"dataset {dataset.name} has no captions, and model.condition=text trains on captions: use "
                        "data.name=shapes, an .npz with a 'captions' array, or an image folder with a .txt file beside "
                        "each image")
    return list(captions)


class EncoderLayer(nn.TransformerEncoderLayer):
    """A pre-norm transformer encoder layer (torch's), GELU, no dropout."""

    def __init__(self, width: int, heads: int):
        super().__init__(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)


@CONDITIONERS.register("text", "captions through a small transformer text encoder trained from scratch, with a "
                       "word tokenizer over the training captions")
class TextConditioner(Conditioner):
    """Token ids ``(B, L)`` (``[PAD]`` = 0 after the caption) -> :class:`Condition` with tokens, mask and pooled."""

    gives_tokens = True
    reads = "text"

    def __init__(self, width: int, vocab: list[str], length: int, depth: int = 2, heads: int | None = None):
        super().__init__()
        if not 1 <= length <= MAX_LENGTH:
            raise ConfigError(f"model.text_length must be in [1, {MAX_LENGTH}], got {length}")
        if depth < 0:
            raise ConfigError(f"model.text_depth must be at least 0, got {depth}")
        heads = heads or max(1, width // 64)
        if width % heads:
            raise ConfigError(f"the text encoder's width {width} does not divide into {heads} heads")
        self.vocab, self.length = list(vocab), int(length)
        self.tokenizer = word_tokenizer(self.vocab)
        self.embed = nn.Embedding(len(SPECIALS) + len(self.vocab), width)
        self.pos = nn.Parameter(torch.zeros(self.length, width))
        self.layers = nn.ModuleList(EncoderLayer(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.pool = nn.Linear(width, width)

    @classmethod
    def build(cls, width: int, num_classes: int, **options: Any) -> TextConditioner:
        if "vocab" not in options or "length" not in options:
            raise ConfigError("model.condition=text is built from the data's captions (a vocabulary and a length): "
                              "train on captioned data")
        return cls(width, **options)

    @classmethod
    def data_options(cls, dataset: Any, settings: Any, saved: dict[str, Any] | None) -> dict[str, Any]:
        words = caption_words(captions_of(dataset))
        longest = max((len(w) for w in words), default=1)
        if saved and "vocab" in saved:  # the run this one starts from fixed what each id means
            unknown = sorted({w for ws in words for w in ws} - set(saved["vocab"]))
            if unknown:
                shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
                raise DataError(f"the captions use words the starting run's text encoder never learned ({shown}): "
                                "start from a run trained on these words, or train from scratch")
            length = int(saved["length"])
            if longest > length:
                raise DataError(f"a caption has {longest} words, more than the starting run's text length {length}: "
                                "shorten the captions or train from scratch")
            return {**saved}
        length = settings.text_length or longest
        if longest > length:
            raise DataError(f"a caption has {longest} words, more than model.text_length={length}: raise it to at "
                            f"least {longest}, or leave it null to fit the longest caption")
        vocab = sorted({w for ws in words for w in ws} | set(getattr(dataset, "words", None) or ()) - set(SPECIALS))
        return {"vocab": vocab, "length": int(length), "depth": int(settings.text_depth)}

    def initialize(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def tokenize(self, captions: list[str], source: str, strict: bool = True) -> torch.Tensor:
        """Captions -> ids ``(N, L)`` padded with ``[PAD]``. A caption longer than the model's length, and (with
        ``strict``) a word outside its vocabulary, is refused naming ``source``."""
        ids = torch.zeros(len(captions), self.length, dtype=torch.int64)
        unk = SPECIALS.index(UNK)
        for i, encoding in enumerate(self.tokenizer.encode_batch(list(captions), add_special_tokens=False)):
            if len(encoding.ids) > self.length:
                raise ConfigError(f"{source}: {captions[i][:80]!r} has {len(encoding.ids)} words; this model reads at "
                                  f"most {self.length}: shorten it")
            if not encoding.ids:
                raise ConfigError(f"{source}: caption {i} is empty: give every image a caption (the empty caption is "
                                  "the model's null text, drawn by caption dropout)")
            if strict and unk in encoding.ids:
                words = [captions[i][a:b] for (a, b), j in zip(encoding.offsets, encoding.ids) if j == unk]
                known = ", ".join(self.vocab[:40]) + (" ..." if len(self.vocab) > 40 else "")
                raise ConfigError(f"{source}: {', '.join(map(repr, words))} is not a word this model learned; "
                                  f"it knows: {known}")
            ids[i, :len(encoding.ids)] = torch.tensor(encoding.ids)
        return ids

    def value_spec(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (self.length,), torch.int64

    def values(self, dataset: Any) -> torch.Tensor:
        return self.tokenize(captions_of(dataset), f"dataset {dataset.name}")

    def parse(self, texts: list[str]) -> torch.Tensor:
        return self.tokenize(texts, "prompt")

    def forward(self, ids: torch.Tensor) -> Condition:
        if ids.dim() != 2 or ids.shape[1] != self.length or ids.dtype != torch.int64:
            raise ConfigError(f"a text condition is token ids (B, {self.length}) int64, got {tuple(ids.shape)} "
                              f"{ids.dtype}: tokenize captions with the model's conditioner")
        mask = ids != 0
        h = self.embed(ids) + self.pos.to(self.embed.weight.dtype)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)
        h = self.norm(h)
        weights = mask.unsqueeze(-1).to(h.dtype)
        pooled = self.pool((h * weights).sum(1) / weights.sum(1).clamp(min=1))
        return Condition(pooled, h, mask)

    def null(self, ids: torch.Tensor) -> torch.Tensor:
        null = torch.zeros_like(ids)
        null[:, 0] = SPECIALS.index(NULL)
        return null
