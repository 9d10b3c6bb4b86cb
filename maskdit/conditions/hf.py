"""A frozen Hugging Face text encoder from a local directory: T5 and CLIP text towers, and decoder LLMs as LI-DiT
uses them (last hidden states, an instruction prefix, a bidirectional token refiner).

The encoder runs outside the trained model, as a VAE does for latents: captions become features once, when the
data loads (or are read from a caption store, ``maskdit captions encode``), and prompts when sampling. A condition
value is one float tensor per caption, ``(1 + L, E + 1)``: row 0 holds the encoder's pooled vector, rows ``1..L``
its token features, and the last channel says which rows are real (row 0's flag is 0 for the null caption). The
trained conditioner maps them to the model width (PixArt's two-layer caption projection), refines them with
``refiner`` bidirectional transformer layers (LI-DiT: a decoder LLM's states are causal, so each token only saw
the ones before it) and pools.

The null caption is *learned*: one token and one pooled vector that caption dropout trains (PixArt's choice). A
frozen encoder's own encoding of the empty caption would carry whatever the encoder makes of nothing, and zeros
would pass the projection as a constant the model cannot tell from a real caption's padding.

A caption store is a directory: ``values.npy`` float16 ``(N, 1 + L, E + 1)`` (memory-mapped when training) and
``manifest.json``, written last, naming the encoder directory and its fingerprint, the length, the prefix and a
hash of the captions, so a store that does not match the run's encoder or data is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from maskdit.conditions.base import CONDITIONERS, Condition, Conditioner
from maskdit.conditions.text import EncoderLayer, captions_of
from maskdit.errors import ConfigError, DataError

MANIFEST = "manifest.json"
FORMAT = "maskdit-captions"
#: Model types whose directories may hold an encoder-decoder or its encoder alone (T5EncoderModel): the encoder loads.
ENCODER_DECODERS = {"t5", "mt5", "umt5", "bart", "mbart"}
#: Longest caption (in the encoder's tokens) when ``model.text_length`` is null.
DEFAULT_LENGTH = 64


def check_encoder_dir(path: str | Path, key: str = "model.text_encoder") -> Path:
    """A local Hugging Face model directory; a hub id or a missing directory gets one line saying where to put it."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise ConfigError(f"{key} {path} is not a local model directory (no config.json): maskdit never downloads; "
                          f"fetch it elsewhere (huggingface-cli download {path} --local-dir DIR, or save_pretrained) "
                          "and pass DIR")
    return root


def text_width(config: Any) -> int:
    """The width of a Hugging Face text model's hidden states, from its config (a whole CLIP config: its text
    tower's)."""
    config = getattr(config, "text_config", config)
    return int(getattr(config, "hidden_size", None) or config.d_model)


def fingerprint(path: str | Path) -> str:
    """A short hash of an encoder directory's config and its weight files' names and sizes: what tells a moved copy
    of the same encoder (accepted) from another encoder (refused)."""
    root = Path(path)
    digest = hashlib.sha256((root / "config.json").read_bytes())
    for file in sorted(root.iterdir()):
        if file.suffix in (".safetensors", ".bin") and file.is_file():
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


class FrozenTextEncoder:
    """A local Hugging Face text encoder and its tokenizer, frozen, producing condition values."""

    def __init__(self, path: str | Path, length: int, prefix: str = "", device: str | torch.device = "cpu"):
        try:
            from transformers import AutoConfig, AutoModel, AutoModelForTextEncoding, AutoTokenizer
        except ImportError as e:
            raise ConfigError("a Hugging Face text encoder needs transformers: pip install 'maskdit[text]'") from e
        from transformers.utils import logging as hf_logging

        root = check_encoder_dir(path)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Loading weights" bar: maskdit prints one line of its own
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
            config = AutoConfig.from_pretrained(root, local_files_only=True)
            # an encoder-decoder (T5): only its encoder, whose weights are all the directory needs to hold
            halves = getattr(config, "is_encoder_decoder", False) or config.model_type in ENCODER_DECODERS
            loader = AutoModelForTextEncoding if halves else AutoModel
            model = loader.from_pretrained(root, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"cannot load the text encoder in {root}: {str(e).splitlines()[0]}") from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        model = getattr(model, "text_model", model)  # a whole CLIP model: its text tower
        self.model = model.eval().requires_grad_(False).to(device)
        self.causal = bool(getattr(self.model.config, "is_decoder", False)) or any(
            a.endswith("CausalLM") or a.endswith("LMHeadModel") for a in getattr(self.model.config, "architectures",
                                                                                   None) or [])
        self.length, self.prefix, self.device = int(length), prefix, torch.device(device)
        self.width = text_width(self.model.config)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    @torch.no_grad()
    def encode(self, captions: list[str], source: str, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Captions -> values ``(N, 1 + L, E + 1)`` float16. A caption longer than ``L`` tokens (prefix included)
        is refused naming ``source``."""
        out = torch.zeros(len(captions), 1 + self.length, self.width + 1, dtype=torch.float16)
        starts = range(0, len(captions), batch_size)
        for start in tqdm(starts, desc="encoding captions", disable=not progress or len(starts) < 2):
            batch = [self.prefix + c for c in captions[start:start + batch_size]]
            enc = self.tokenizer(batch, truncation=False)
            lengths = [len(ids) for ids in enc["input_ids"]]
            if max(lengths) > self.length:
                i = lengths.index(max(lengths))
                raise ConfigError(f"{source}: {captions[start + i][:80]!r} is {lengths[i]} tokens of the text "
                                  f"encoder; this model reads at most {self.length}: shorten it")
            enc = self.tokenizer.pad(enc, padding="max_length", max_length=self.length, return_tensors="pt")
            mask = enc["attention_mask"].bool()
            hidden = self.model(input_ids=enc["input_ids"].to(self.device),
                                attention_mask=mask.to(self.device)).last_hidden_state.float().cpu()
            hidden = hidden * mask.unsqueeze(-1)
            if self.causal:  # the last real token has seen the whole caption
                pooled = hidden[torch.arange(len(batch)), mask.sum(1) - 1]
            else:
                pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            part = out[start:start + len(batch)]
            part[:, 0, :-1], part[:, 0, -1] = pooled.half(), 1.0
            part[:, 1:, :-1], part[:, 1:, -1] = hidden.half(), mask.half()
        return out


def captions_hash(captions: list[str]) -> str:
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]


def write_store(captions: list[str], encoder_dir: str | Path, out: str | Path, length: int, prefix: str = "",
                batch_size: int = 64, device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Encode ``captions`` into a new caption store ``out`` (never an existing path): ``values.npy`` then
    ``manifest.json``, in a hidden directory renamed once complete."""
    from maskdit.files import atomic_directory, write_json_atomic

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} exists: a caption store goes to a new directory (maskdit never overwrites)")
    encoder = FrozenTextEncoder(encoder_dir, length, prefix, device)
    values = encoder.encode(captions, "captions", batch_size, progress)
    manifest = {"format": FORMAT, "encoder": str(Path(encoder_dir).resolve()), "fingerprint": fingerprint(encoder_dir),
                "length": encoder.length, "prefix": prefix, "width": encoder.width, "count": len(captions),
                "captions": captions_hash(captions)}
    with atomic_directory(out, "--out") as tmp:
        np.save(tmp / "values.npy", values.numpy())
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def read_store(path: str | Path, options: dict[str, Any], captions: list[str]) -> torch.Tensor:
    """The values of a caption store, memory-mapped, checked against the run's encoder options and ``captions``."""
    from maskdit.data.datasets import read_npy
    from maskdit.files import read_json

    root = Path(path)
    again = "encode them again with maskdit captions encode CAPTIONS --encoder DIR --out NEW_STORE"
    if not (root / MANIFEST).is_file():
        raise DataError(f"data.captions {path} is not a complete caption store (no {MANIFEST}): {again}")
    manifest = read_json(root / MANIFEST, keys=("format", "fingerprint", "length", "prefix", "count", "captions"))
    for key, want, what in (("fingerprint", options["fingerprint"], "was encoded by another text encoder than "
                             "model.text_encoder"), ("length", options["length"], "holds captions of another length"),
                            ("prefix", options["prefix"], "was encoded with another instruction prefix"),
                            ("captions", captions_hash(captions), "holds other captions than the data's")):
        if manifest[key] != want:
            raise DataError(f"data.captions {path} {what} ({key} {manifest[key]!r}, the run needs {want!r}): {again}")
    values = read_npy(root / "values.npy", mmap_mode="c", fix=again)
    want = (len(captions), 1 + options["length"], options["width"] + 1)
    if values.shape != want or values.dtype != np.float16:
        raise DataError(f"data.captions {path}: values.npy is {values.dtype} {values.shape}, not the float16 {want} "
                        f"its manifest says: {again}")
    return torch.from_numpy(values)


#: How encoder tokens reach the model width: name -> ``make(width_in, width)``.
PROJECTIONS = {
    "mlp": lambda a, b: nn.Sequential(nn.Linear(a, b), nn.GELU(approximate="tanh"), nn.Linear(b, b)),  # PixArt
    "linear": lambda a, b: nn.Sequential(nn.Linear(a, b)),  # SD3's context embedder
}


@CONDITIONERS.register("hf", "captions through a frozen Hugging Face text encoder from a local directory (T5, CLIP, "
                       "decoder LLMs), a trained projection and refiner")
class HFTextConditioner(Conditioner):
    """Values ``(B, 1 + L, E + 1)`` of a :class:`FrozenTextEncoder` -> tokens at the model width, mask, pooled."""

    gives_tokens = True
    reads = "text"

    def __init__(self, width: int, encoder: str, fingerprint: str, width_in: int, length: int, prefix: str = "",
                 refiner: int = 0, heads: int | None = None, projection: str = "mlp", pooled_in: int | None = None):
        super().__init__()
        self.encoder_dir, self.fingerprint, self.length, self.prefix = encoder, fingerprint, int(length), prefix
        self.width_in = int(width_in)
        self.pooled_in = self.width_in if pooled_in is None else int(pooled_in)
        if not 0 <= self.pooled_in <= self.width_in:
            raise ConfigError(f"the pooled vector's width {self.pooled_in} must be in [0, the token width "
                              f"{self.width_in}] (it shares the values' first row)")
        heads = heads or max(1, width // 64)
        if projection not in PROJECTIONS:
            raise ConfigError(f"caption projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.projection = projection
        self.proj = PROJECTIONS[projection](width_in, width)
        self.refiner = nn.ModuleList(EncoderLayer(width, heads) for _ in range(refiner))
        # the pooled vector joins the time embedding (SD3's pooled text projection); 0 wide: none (PixArt)
        self.pool = nn.Sequential(nn.Linear(self.pooled_in, width), nn.SiLU(), nn.Linear(width, width)) \
            if self.pooled_in else None
        self.null_token = nn.Parameter(torch.zeros(width))
        self.null_pooled = nn.Parameter(torch.zeros(width))
        self._frozen: list[FrozenTextEncoder] = []  # loaded when prompts need encoding; never in the state dict

    @classmethod
    def build(cls, width: int, num_classes: int, **options: Any) -> HFTextConditioner:
        if "encoder" not in options:
            raise ConfigError("model.condition=hf needs model.text_encoder=DIR (a local Hugging Face text encoder)")
        return cls(width, **options)

    @classmethod
    def data_options(cls, dataset: Any, settings: Any, saved: dict[str, Any] | None) -> dict[str, Any]:
        captions_of(dataset)
        if saved and "encoder" in saved:
            if settings.text_encoder and fingerprint(check_encoder_dir(settings.text_encoder)) != saved["fingerprint"]:
                raise ConfigError(f"model.text_encoder {settings.text_encoder} is not the text encoder the starting "
                                  f"run was trained with ({saved['encoder']}): use that one")
            return {**saved, **({"encoder": str(Path(settings.text_encoder).resolve())} if settings.text_encoder
                                else {})}
        if not settings.text_encoder:
            raise ConfigError("model.condition=hf needs model.text_encoder=DIR (a local Hugging Face text encoder)")
        root = check_encoder_dir(settings.text_encoder)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(root, local_files_only=True)
        return {"encoder": str(root.resolve()), "fingerprint": fingerprint(root), "width_in": text_width(config),
                "length": int(settings.text_length or DEFAULT_LENGTH), "prefix": settings.text_prefix or "",
                "refiner": int(settings.text_refiner)}

    def frozen(self) -> FrozenTextEncoder:
        """The frozen encoder, loaded once, refused when it is not the one this model was trained with."""
        if not self._frozen:
            root = Path(self.encoder_dir)
            if not (root / "config.json").is_file():
                raise ConfigError(f"this model's text encoder {root} is not there: put the same encoder's files back "
                                  "in that directory (maskdit never downloads)")
            if fingerprint(root) != self.fingerprint:
                raise ConfigError(f"the text encoder at {root} is not the one this model was trained with (its config "
                                  "or weights changed): restore that encoder")
            self._frozen.append(FrozenTextEncoder(root, self.length, self.prefix, self.null_token.device))
        return self._frozen[0]

    def value_spec(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (1 + self.length, self.width_in + 1), torch.float32

    def values(self, dataset: Any) -> torch.Tensor:
        captions = captions_of(dataset)
        store = getattr(dataset, "caption_store", None)
        if store:
            options = {"fingerprint": self.fingerprint, "length": self.length, "prefix": self.prefix,
                       "width": self.width_in}
            return read_store(store, options, captions)
        return self.frozen().encode(captions, f"dataset {dataset.name}", progress=True)

    def parse(self, texts: list[str]) -> torch.Tensor:
        return self.frozen().encode(texts, "prompt")

    def forward(self, value: torch.Tensor) -> Condition:
        if value.dim() != 3 or value.shape[1:] != (1 + self.length, self.width_in + 1):
            raise ConfigError(f"a text condition of this model is (B, {1 + self.length}, {self.width_in + 1}) encoder "
                              f"values, got {tuple(value.shape)}: encode captions with its text encoder")
        value = value.to(self.null_token.dtype)
        real = value[:, 0, -1] > 0.5
        mask = value[:, 1:, -1] > 0.5
        tokens = self.proj(value[:, 1:, :-1])
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        mask = torch.where(real[:, None], mask, null_mask)
        tokens = torch.where(real[:, None, None], tokens, self.null_token.expand_as(tokens))
        for layer in self.refiner:
            tokens = layer(tokens, src_key_padding_mask=~mask)
        if self.pool is None:
            pooled = torch.zeros_like(self.null_pooled).expand(len(value), -1)
        else:
            pooled = torch.where(real[:, None], self.pool(value[:, 0, :self.pooled_in]), self.null_pooled)
        return Condition(pooled, tokens, mask)

    def null(self, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(value)

    def initialize(self) -> None:
        nn.init.normal_(self.null_token, std=0.02)
        nn.init.normal_(self.null_pooled, std=0.02)

