"""A small self-supervised ViT for representation alignment, trained here by masked autoencoding.

REPA aligns a diffusion transformer's inner tokens with a frozen encoder's patch features. No pretrained
encoder (DINOv2, ...) can be downloaded here, so the project trains its own: ``maskdit encoder train DATA
--out DIR`` fits a ViT on the data's model-space images with MAE's objective (drop 75% of the patches,
encode the rest, reconstruct the dropped ones with a light decoder) and saves the encoder alone:

    DIR/encoder.json          {"kind": "maskdit-mae", constructor arguments, training facts}
    DIR/encoder.safetensors   the encoder's weights

:func:`maskdit.training.align.load_encoder` reads it back. Where a pretrained vision model is at hand as a local
Hugging Face directory (``save_pretrained``: a DINOv2, ViT, ... ``config.json`` and weights),
:class:`HFVisionEncoder` wraps it instead (``transformers``' ``AutoModel``, loaded offline).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from maskdit.checkpoint import save_trained
from maskdit.data.datasets import examples
from maskdit.errors import CheckpointError, ConfigError, DataError
from maskdit.files import check_parents, read_json
from maskdit.grid import as_patch_size, axis_widths, patchify, sincos_pos_embed, token_grid_shape
from maskdit.masks import gather_tokens, num_kept, random_keep_indices, scatter_tokens
from maskdit.model.decoders import dropped_mask
from maskdit.training.schedule import warmup_cosine

ENCODER_KIND = "maskdit-mae"
#: What a damaged encoder directory's error line tells the user to do.
RETRAIN = "train one again with maskdit encoder train DATA --out DIR"


class ViTEncoder(nn.Module):
    """Patches -> linear embedding + fixed sin-cos positions -> pre-norm transformer -> patch features.

    ``forward(x, keep_idx=None)`` returns ``(B, N, width)`` for every patch, or ``(B, K, width)`` for the
    kept ones; :attr:`grid` is the patch grid, so callers can place the features.
    """

    def __init__(self, input_size: list[int], in_channels: int, patch_size: int = 2, width: int = 128,
                 depth: int = 4, num_heads: int = 4):
        super().__init__()
        self.input_size, self.in_channels = [int(s) for s in input_size], int(in_channels)
        self.patch = as_patch_size(patch_size, len(self.input_size))
        self.grid = token_grid_shape(self.input_size, self.patch)
        self.width, self.depth, self.num_heads = width, depth, num_heads
        self.embed = nn.Linear(in_channels * math.prod(self.patch), width)
        self.register_buffer("pos", sincos_pos_embed(width, self.grid)[None], persistent=False)
        layer = nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    @property
    def config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "in_channels": self.in_channels, "patch_size": list(self.patch)[0],
                "width": self.width, "depth": self.depth, "num_heads": self.num_heads}

    def forward(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.embed(patchify(x, self.patch)) + self.pos
        if keep_idx is not None:
            tokens = gather_tokens(tokens, keep_idx)
        return self.norm(self.blocks(tokens))


class MaskedAutoencoder(nn.Module):
    """MAE around a :class:`ViTEncoder`: a one-block decoder fills mask tokens in and predicts the pixels
    (model-space values) of the dropped patches; the loss covers dropped patches only."""

    def __init__(self, encoder: ViTEncoder, decoder_width: int = 64):
        super().__init__()
        self.encoder = encoder
        self.to_decoder = nn.Linear(encoder.width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(decoder_width))
        self.register_buffer("pos", sincos_pos_embed(decoder_width, encoder.grid)[None], persistent=False)
        self.decoder = nn.TransformerEncoderLayer(decoder_width, 4, 4 * decoder_width, dropout=0.0,
                                                  activation="gelu", batch_first=True, norm_first=True)
        self.head = nn.Linear(decoder_width, encoder.embed.in_features)
        self.num_tokens = math.prod(encoder.grid)

    def loss(self, x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        target = patchify(x, self.encoder.patch)
        kept = self.to_decoder(self.encoder(x, keep_idx))
        full = scatter_tokens(kept, keep_idx, self.mask_token.expand(x.shape[0], self.num_tokens, -1),
                              self.num_tokens)
        pred = self.head(self.decoder(full + self.pos))
        dropped = dropped_mask(keep_idx, self.num_tokens).bool()
        return (pred - target).pow(2).mean(-1)[dropped].mean()


def train_encoder(dataset: Any, out: str | Path, steps: int = 2000, batch_size: int = 128, mask_ratio: float = 0.75,
                  patch_size: int = 2, width: int = 128, depth: int = 4, num_heads: int = 4, lr: float = 1e-3,
                  seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit a :class:`ViTEncoder` by masked autoencoding on ``dataset`` (model space) and save it to ``out``."""

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new directory for the encoder")
    check_parents(out, "--out")
    torch.manual_seed(seed)
    shape = list(dataset.shape)
    try:
        as_patch_size(patch_size, len(shape) - 1)
        token_grid_shape(shape[1:], as_patch_size(patch_size, len(shape) - 1))
    except ConfigError as e:
        raise ConfigError(f"--patch {patch_size} does not fit the data ({'x'.join(map(str, shape))}): {e}") from None
    try:
        axis_widths(width, len(shape) - 1)
    except ConfigError as e:
        raise ConfigError(f"--width {width} does not fit sin-cos positions: {e}") from None
    encoder = ViTEncoder(shape[1:], shape[0], patch_size, width, depth, num_heads)
    mae = MaskedAutoencoder(encoder)
    if not (0 <= mask_ratio < 1 and num_kept(mae.num_tokens, mask_ratio) < mae.num_tokens):
        raise ConfigError(f"--mask-ratio {mask_ratio} must drop at least one of the {mae.num_tokens} patches (it "
                          f"leaves nothing to reconstruct) and keep one: give a ratio in [{1 / mae.num_tokens:.3g}, "
                          "1), e.g. 0.75 as MAE")
    optimizer = torch.optim.AdamW(mae.parameters(), lr=lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    start, losses = time.time(), []
    for step in tqdm(range(steps), desc="encoder", disable=not progress):
        index = torch.randint(0, len(dataset), (batch_size,), generator=gen)
        x, _ = examples(dataset, index, False)
        keep = random_keep_indices(batch_size, mae.num_tokens, mask_ratio, gen)
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(lr, step, steps)
        loss = mae.loss(x, keep)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):  # before the step: weights and --out stay untouched
            raise DataError(f"encoder training stopped at step {step}: the masked reconstruction loss is "
                            f"{losses[-1]}; nothing was written: check that DATA holds finite values, or try "
                            "another --mask-ratio or --patch")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if not all(torch.isfinite(p).all() for p in encoder.parameters()):
        raise DataError(f"encoder training ended with non-finite weights after {steps} steps; nothing was written: "
                        "check that DATA holds finite values, or try another --mask-ratio or --patch")
    facts = {"kind": ENCODER_KIND, "config": encoder.config, "steps": steps, "batch_size": batch_size,
             "mask_ratio": mask_ratio, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
             "first_loss": losses[0], "seconds": time.time() - start, "data": getattr(dataset, "name", "")}
    save_trained(out, "encoder", encoder, facts, "encoder")
    return facts


def _count(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


#: encoder.json's ``config``: each constructor argument, its test and its words for the error line.
ENCODER_FIELDS: dict[str, tuple[Any, str]] = {
    "input_size": (lambda v: isinstance(v, list) and 1 <= len(v) <= 3 and all(_count(s) for s in v),
                   "a list of 1-3 positive ints"),
    "in_channels": (_count, "a positive int"),
    "patch_size": (_count, "a positive int"),
    "width": (lambda v: _count(v, 2) and v % 2 == 0, "a positive even int"),
    "depth": (_count, "a positive int"),
    "num_heads": (_count, "a positive int"),
}


def encoder_config(path: Path, source: str = "align.encoder") -> dict[str, Any]:
    """The constructor arguments that ``path/encoder.json`` (written by :func:`train_encoder`) holds, checked
    so that a damaged or hand-edited file is refused naming its key, never half built."""
    where = path / "encoder.json"
    fix = RETRAIN
    facts = read_json(where, (), fix)
    config = facts.get("config")
    if not isinstance(config, dict) or (facts.get("kind", ENCODER_KIND) != ENCODER_KIND):
        raise CheckpointError(f"{source} {where} does not describe a maskdit encoder (a JSON object with kind "
                              f"{ENCODER_KIND!r} and a config mapping): {fix}")
    unknown = sorted(set(config) - set(ENCODER_FIELDS))
    missing = [key for key in ENCODER_FIELDS if key not in config]
    if unknown or missing:
        what = f"lacks config.{', config.'.join(missing)}" if missing else f"has unknown key config.{unknown[0]}"
        raise CheckpointError(f"{source} {where} {what}: {fix}")
    for key, (ok, wanted) in ENCODER_FIELDS.items():
        if not ok(config[key]):
            shown = repr(config[key])
            raise CheckpointError(f"{source} {where} key config.{key} must be {wanted}, got "
                                  f"{shown if len(shown) <= 60 else shown[:60] + '...'}: {fix}")
    if config["width"] % config["num_heads"]:
        raise CheckpointError(f"{source} {where}: config.num_heads {config['num_heads']} does not divide "
                              f"config.width {config['width']}: {fix}")
    rank = len(config["input_size"])
    try:
        token_grid_shape(config["input_size"], as_patch_size(config["patch_size"], rank))
        axis_widths(config["width"], rank)
    except ConfigError as e:
        raise CheckpointError(f"{source} {where} holds a config that cannot build: {e}: {fix}") from None
    return config


def load_maskdit_encoder(path: Path, source: str = "align.encoder") -> ViTEncoder:
    """The encoder ``maskdit encoder train`` wrote to ``path``; ``source``: the config key that named it (errors)."""
    encoder = ViTEncoder(**encoder_config(path, source))
    from safetensors import safe_open

    from maskdit.checkpoint import load_weights

    weights, fix = path / "encoder.safetensors", RETRAIN
    try:
        with safe_open(weights, "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception:  # noqa: BLE001 - missing or damaged: load_weights names the problem
        shapes = None
    if shapes is not None:
        for key, value in encoder.state_dict().items():
            if key in shapes and shapes[key] != tuple(value.shape):
                raise CheckpointError(f"{source} {path}: encoder.safetensors holds {key} of {shapes[key]}, but "
                                      f"encoder.json describes {tuple(value.shape)}: the files are from different "
                                      f"encoders; {fix}")
    load_weights(encoder, weights)
    if not all(torch.isfinite(p).all() for p in encoder.parameters()):
        raise CheckpointError(f"{source} {path}: encoder.safetensors holds non-finite weights (NaN or inf): "
                              f"{fix}")
    return encoder


#: ImageNet's channel means and deviations: the normalisation of a model with no preprocessor_config.json.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class HFVisionEncoder(nn.Module):
    """A Hugging Face vision transformer from a local directory as an alignment encoder: model-space pixels
    ``(B, C, H, W)`` in [-1, 1] (1 or 3 channels) become the model's RGB input at its own image size,
    normalised as its preprocessor says (ImageNet's statistics by default), and the output is its last
    layer's patch tokens ``(B, N, F)`` (class and register tokens, which come first, are left out)."""

    def __init__(self, model: nn.Module, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD):
        super().__init__()
        cfg = model.config
        size = cfg.image_size if isinstance(cfg.image_size, (list, tuple)) else (cfg.image_size,) * 2
        patch = cfg.patch_size if isinstance(cfg.patch_size, (list, tuple)) else (cfg.patch_size,) * 2
        self.model, self.size = model, tuple(int(v) for v in size)
        self.grid = tuple(s // p for s, p in zip(self.size, patch))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"a Hugging Face vision encoder sees 1- or 3-channel images, got a batch of shape "
                              f"{tuple(x.shape)} (latent data needs an encoder of latents: maskdit encoder train)")
        rgb = ((x.float() + 1) / 2).expand(-1, 3, -1, -1)
        if tuple(rgb.shape[2:]) != self.size:
            rgb = nn.functional.interpolate(rgb, size=self.size, mode="bilinear", align_corners=False)
        hidden = self.model(pixel_values=(rgb - self.mean) / self.std).last_hidden_state
        return hidden[:, -math.prod(self.grid):]


def load_hf_encoder(path: Path, source: str = "align.encoder") -> HFVisionEncoder:
    """The vision model saved in ``path`` (``config.json`` + weights), loaded offline with ``AutoModel``."""
    try:
        from transformers import AutoModel
    except ImportError:
        raise ConfigError(f"{source} {path} is a Hugging Face model directory: install transformers "
                          "(pip install 'maskdit[align]')") from None
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source} {path}: transformers cannot load it ({reason})") from None
    if not hasattr(model.config, "image_size") or not hasattr(model.config, "patch_size"):
        raise ConfigError(f"{source} {path} holds a {model.config.model_type} model, not a vision transformer "
                          "with image_size and patch_size (DINOv2, ViT, ...)")
    stats: dict[str, Any] = {}
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            saved = json.loads(pre.read_text())
            stats = {"mean": saved["image_mean"], "std": saved["image_std"]}
        except (ValueError, KeyError, TypeError):
            stats = {}
    return HFVisionEncoder(model, **stats)
