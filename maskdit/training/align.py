"""Representation alignment (REPA): the tokens after one inner block, through a small MLP projector, are
pulled towards a frozen encoder's patch features of the clean input (negative cosine similarity).

Plugged into the training step, never into the layers: a forward hook on block ``k`` reads its output
tokens and their grid indices (which travel with kept tokens), so under token dropping only kept tokens
align, and the loss reaches blocks ``1..k`` and the embeddings only. The term goes to the loss through
the auxiliary-loss channel as ``loss_align`` (weight ``lambda``).

The encoder is any ``nn.Module`` mapping a model-space batch ``(B, C, *S)`` to patch features ``(B, N_e,
F)`` with a ``grid`` attribute (its patch grid); :func:`load_encoder` reads one trained by ``maskdit
encoder train`` (:mod:`maskdit.training.encoder`) or a Hugging Face vision model saved in a local directory.
When the encoder's grid differs from the model's token grid (2-D), its feature map is resized to the
model's bilinearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskdit.errors import ConfigError, check_keys
from maskdit.model.aux import aux_active, report_aux_loss


def load_encoder(path: str | Path, source: str = "align.encoder") -> nn.Module:
    """A frozen encoder from a local directory: written by ``maskdit encoder train`` (``encoder.json``) or a
    Hugging Face vision model's ``save_pretrained`` (``config.json``; needs ``transformers``). ``source``: the config
    key that named it, for error lines."""
    from maskdit.training.encoder import load_hf_encoder, load_maskdit_encoder

    path = Path(path)
    if (path / "encoder.json").is_file():
        return load_maskdit_encoder(path, source).eval().requires_grad_(False)
    if (path / "config.json").is_file() and not (path / "checkpoints").exists():
        return load_hf_encoder(path, source).eval().requires_grad_(False)
    raise ConfigError(f"{source} {path} is not an encoder directory (no encoder.json, no Hugging Face "
                      "config.json): train one with maskdit encoder train DATA --out DIR, or save a vision "
                      "model there with save_pretrained")


def check_encoder_fits(encoder: nn.Module, model: nn.Module) -> None:
    """Refuse an encoder trained on other inputs than the model's (channels, size), before any probe."""
    data = f"{model.in_channels} x {' x '.join(map(str, model.input_size))}"
    channels, size = getattr(encoder, "in_channels", None), getattr(encoder, "input_size", None)
    if channels is not None and int(channels) != model.in_channels:
        raise ConfigError(f"align.encoder was trained on {channels}-channel inputs, but the data is {data} "
                          f"({model.in_channels} channels): train an encoder on this data (maskdit encoder train "
                          "DATA --out DIR, where DATA is what data.name/data.path name) and pass it as align.encoder")
    if size is not None and [int(s) for s in size] != [int(s) for s in model.input_size]:
        raise ConfigError(f"align.encoder was trained on inputs of {' x '.join(map(str, size))}, but the data is "
                          f"{data}: train an encoder on this data (maskdit encoder train DATA --out DIR) and pass it "
                          "as align.encoder")


class Alignment(nn.Module):
    """REPA's projector and loss around a frozen ``encoder``, hooked onto ``model.blocks[block - 1]``."""

    def __init__(self, model: nn.Module, encoder: nn.Module, block: int, weight: float, hidden: int | None = None):
        super().__init__()
        if not 1 <= block <= len(model.blocks):
            raise ConfigError(f"align.block must be in [1, {len(model.blocks)}], got {block}")
        check_encoder_fits(encoder, model)
        probe = torch.zeros(1, model.in_channels, *model.input_size)
        with torch.no_grad():
            features = encoder(probe).shape[-1]
        grid, model_grid = tuple(encoder.grid), tuple(model.token_grid)
        if grid != model_grid and (len(grid) != 2 or len(model_grid) != 2):
            raise ConfigError(f"the encoder's patch grid {grid} does not match the model's token grid {model_grid}")
        self.grid, self.model_grid, self.block, self.weight = grid, model_grid, block, float(weight)
        hidden = hidden or 4 * model.hidden_size
        self.projector = nn.Sequential(nn.Linear(model.hidden_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                       nn.SiLU(), nn.Linear(hidden, features))
        self._encoder = [encoder]  # frozen and not a submodule: not trained, not checkpointed with the run
        self._targets: torch.Tensor | None = None
        model.blocks[block - 1].register_forward_hook(self._hook)

    @torch.no_grad()
    def prepare(self, x0: torch.Tensor) -> None:
        """Encode the clean batch: the targets of this step, one feature vector per model token."""
        encoder = self._encoder[0].to(x0.device)
        features = encoder(x0.float())  # (B, N_e, F)
        if self.grid != self.model_grid:
            b, _, f = features.shape
            fmap = features.transpose(1, 2).reshape(b, f, *self.grid)
            features = F.interpolate(fmap, size=self.model_grid, mode="bilinear", align_corners=False)
            features = features.flatten(2).transpose(1, 2)
        self._targets = features

    def clear(self) -> None:
        self._targets = None

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._targets is None or not aux_active():
            return
        pos = args[2] if len(args) > 2 else None
        output = output[0] if isinstance(output, tuple) else output  # a joint block: (image tokens, context)
        targets = self._targets
        if pos is not None:
            ids = pos.reshape(pos.shape[0], -1)
            targets = targets.gather(1, ids.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
        similarity = F.cosine_similarity(self.projector(output).float(), targets.float(), dim=-1)
        report_aux_loss("loss_align", -self.weight * similarity.mean())


@dataclass
class AlignConfig:
    weight: float = 0.0  #: REPA's lambda; 0 = no representation alignment
    block: int = 2  #: align the tokens after this block (1-based)
    encoder: str | None = None  #: a directory from `maskdit encoder train` (the frozen target encoder)
    hidden: int | None = None  #: the projector MLP's width (default 4 x model width)

    def validate(self) -> None:
        """Check every ``align.*`` value (the block's fit to the model depth is a cross-section rule)."""
        check_keys("align.", self, [
            ("weight", self.weight >= 0, "non-negative (0 = off)"),
            ("block", self.block >= 1, "at least 1"),
            ("encoder", self.weight == 0 or bool(self.encoder),
             "a directory from maskdit encoder train when align.weight > 0"),
            ("hidden", self.hidden is None or self.hidden >= 1, "null or at least 1"),
        ])

    def check_depth(self, depth: int) -> None:
        """The aligned block exists in a model of ``depth`` blocks."""
        if self.weight > 0 and self.block > depth:
            raise ConfigError(f"config key align.block must be at most model.depth={depth}, got {self.block}")
