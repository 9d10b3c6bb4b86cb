"""Weights in and out: the DiT family's checkpoints become maskdit runs, maskdit models become diffusers ones.

    maskdit import DiT-XL-2-256x256.pt --out runs/dit-xl2 [--vae DIR]       # facebookresearch/DiT (EMA state dict)
    maskdit import SiT-XL-2-256.pt --format sit --out runs/sit-xl2          # SiT: same layout, flow objective
    maskdit import maskdit-ema.pt --format maskdit --out runs/maskdit      # MaskDiT: decoder + EDM precond
    maskdit import mdt_xl2_v2_ckpt.pt --format mdt --out runs/mdt           # MDT v2: skips, relative bias
    maskdit import DIFFUSERS_DIR --out runs/dit-xl2                         # a DiTTransformer2DModel directory
    maskdit export runs/dit-xl2 --format diffusers --out DIR

Every import infers the architecture from the tensors' shapes (depth, width, patch, channels, classes,
learned sigma, input size from the position table) and writes an ordinary run: step 0 with the weights
as both model and EMA, a config that samples the way the source does, ready for ``sample``, ``eval`` and
``train init_from=RUN``. The maskdit model reproduces each source's function:

* **DiT**: ``model(x, t, y)`` at ``t = k / 1000`` equals DiT's ``forward(x, k, y)`` (the time embedding
  forms ``1000 t`` in float64, the position table is DiT's, 8 output channels: eps then the variance
  interpolation). Sampling: 250-step ancestral DDPM with the learned variance, guidance 4 on 3 channels.
* **SiT**: SiT's ``t`` runs from noise (0) to data (1) and its velocity points to the data; maskdit's
  ``t`` runs the other way, so the import embeds ``1 - t`` and negates the output layer. The variance
  channels SiT's forward discards are dropped.
* **MaskDiT**: its EDM denoiser ``D(x; sigma, y)`` as a flow velocity (``model.precond=edm``, see
  :mod:`maskdit.model.precond`), its narrow decoder kept as part of the network (``model.decoder``), the
  one-hot label map as a table with a zero null row. Sampling: EDM's Heun, 40 steps.
* **MDT v2**: learned position tables, a relative position bias in every attention and long skips
  (``model.pos=learned``, ``rel_pos_bias``, ``long_skips``); its side-interpolater becomes the ``mdt``
  recipe's training-only weights. Sampling as DiT, with MDT's power-cosine guidance schedule.
* **diffusers** ``DiTTransformer2DModel``: its time embedding shifts the frequencies
  (``downscale_freq_shift=1``) and its pre-MLP LayerNorm has eps ``norm_eps``; both are kept in the model
  config. diffusers gives every block its own copy of the time and label embedders: they must be equal
  (as in every converted DiT checkpoint); the final layer uses block 0's, as diffusers does.

``export`` refuses, naming the run's config key, every model option diffusers' DiT cannot compute (SwiGLU,
RMSNorm, qk-norm, experts, rotary or learned positions, decoders, preconditioning, skips...), and writes
``maskdit.json`` beside the diffusers files: the time shift and the run's objective, sampling settings and
dataset facts, so that importing the directory again gives a run that samples the same. Every input is
checked where it is read (config keys and their types, tensor names, shapes, dtypes and finite values,
``maskdit.json``, ``--vae``), and an import or export writes into a temporary directory that becomes the
output only when complete.

Nothing is unpickled: ``.pt`` files are read with ``torch.load(weights_only=True)``, which loads tensors
and plain containers only.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from maskdit.checkpoint import checkpoint_files, find_run, save_checkpoint
from maskdit.errors import CheckpointError, ConfigError
from maskdit.files import atomic_directory, write_json_atomic
from maskdit.grid import sincos_pos_embed, token_grid_shape
from maskdit.model import PRESETS, DiT
from maskdit.model.blocks import RelativePositionBias
from maskdit.registry import Registry

#: source format name -> converter ``(path, num_heads) -> (model config, state dict, run settings)``; the
#: settings may carry ``"aux"``: the tensors of the training recipe (``settings["mask"]["recipe"]``) the
#: source was trained with, written as the run's training-only weights
FORMATS: Registry[Any] = Registry("import format", key="--format")
#: DiT's width -> heads (S, B, L, XL), for checkpoints that do not say
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
MASKDIT_NOTE = "maskdit.json"  #: what an export adds so that re-importing it is exact


# -- reading ---------------------------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt``/``.pth`` (a state dict, or one under ``ema``/``model``) or ``.safetensors`` file;
    every name a string, every value a floating-point tensor with finite values (integer tensors only for
    position indices, ``*_index``)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: pass a DiT/SiT .pt file or a diffusers directory")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data: Any = load_file(path)
        except (SafetensorError, ValueError) as e:  # a damaged header, a truncated body, an unknown dtype
            raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(e)}): it is damaged or "
                                  "truncated; copy it again, or write it again with save_pretrained") from None
        return _checked_values(data, path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a file torch.save wrote (nor .safetensors): pass a DiT/SiT checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused: the file holds more than tensors
        raise CheckpointError(f"{path} holds objects other than tensors, which maskdit never unpickles "
                              f"({_first_line(e)[:160]}): save the EMA state dict alone "
                              "(torch.save(ckpt['ema'], 'ema.pt'))") from None
    except Exception as e:  # noqa: BLE001 - zip and storage errors of a damaged file have no common type
        raise CheckpointError(f"cannot read {path} ({_first_line(e)[:160]}): the file is damaged or truncated; "
                              "copy or save it again") from None
    for key in ("ema", "model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict (names -> tensors): save the "
                              "model's state_dict() (the EMA's for DiT: torch.save(ckpt['ema'], 'ema.pt'))")
    for key, value in data.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path} has a key {key!r} ({type(key).__name__}) where a state dict has tensor "
                                  "names: save the model's state_dict()")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key} is a {type(value).__name__}, not a tensor: save the model's "
                                  "state_dict() alone (torch.save(ckpt['ema'], 'ema.pt'))")
    return _checked_values({k.removeprefix("module."): v for k, v in data.items()}, path)


def _first_line(e: BaseException) -> str:
    """The first line of an error's message, without terminal colour codes (torch's load errors carry some)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _checked_values(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Refuse weights that are not floating point (quantised, complex, boolean) or hold NaN or infinity."""
    for key, value in sd.items():
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{path}: {key} holds NaN or infinite values: the weights are damaged or "
                                      "come from a run that diverged; export them again from a healthy checkpoint")
        elif value.is_complex() or value.dtype == torch.bool or not key.endswith("_index"):
            raise CheckpointError(f"{path}: {key} is a {str(value.dtype).removeprefix('torch.')} tensor, not "
                                  "floating-point weights: maskdit imports float32/float16/bfloat16 checkpoints "
                                  "(dequantise it first)")
    return sd


def _tensor(sd: dict[str, torch.Tensor], key: str, source: Path, dims: int, what: str) -> torch.Tensor:
    """``sd[key]``, which the architecture is inferred from: it must exist and have ``dims`` axes, all non-empty."""
    if key not in sd:
        raise CheckpointError(f"{source} has no {key}: it is not a complete checkpoint of this layout (--format "
                              "names the layout)")
    value = sd[key]
    if value.dim() != dims or 0 in value.shape:
        raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, not {what}: the checkpoint is "
                              "damaged or of another layout (--format names the layout)")
    return value


def _position_table(sd: dict[str, torch.Tensor], key: str, width: int, source: Path,
                    tokens: int | None = None) -> int:
    """The number of tokens of a position table ``(1, tokens, width)``: a positive square (DiT's grids are
    square), ``tokens`` when given."""
    table = _tensor(sd, key, source, 3, f"(1, tokens, {width}): one row of width {width} per token")
    if table.shape[0] != 1 or table.shape[2] != width:
        raise CheckpointError(f"{source}: {key} has shape {tuple(table.shape)}, not (1, tokens, {width}): its width "
                              f"must be the model's ({width}, from the patch embedding): the checkpoint is damaged "
                              "or mixes two models")
    count = table.shape[1]
    side = math.isqrt(count)
    if side * side != count:
        raise CheckpointError(f"{source}: {key} has {count} tokens, not a square grid: DiT-family checkpoints "
                              "cover square images")
    if tokens is not None and count != tokens:
        raise CheckpointError(f"{source}: {key} has {count} tokens, the model's grid has {tokens}: the checkpoint "
                              "is damaged or mixes two models")
    return count


def _count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered modules ``PREFIX<i>.`` the state dict holds (blocks, decoder blocks...)."""
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _refuse_keys(expected: set[str], found: set[str], source: Path, kind: str) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise CheckpointError(f"{source} is missing {len(missing)} tensor(s) a {kind} checkpoint has, e.g. "
                              f"{missing[0]}: is it a {kind} checkpoint? (--format names the layout)")
    if extra:
        raise CheckpointError(f"{source} has {len(extra)} tensor(s) a {kind} checkpoint does not, e.g. {extra[0]}: "
                              f"is it a {kind} checkpoint? (--format names the layout)")


def _heads(width: int, num_heads: int | None, source: Path) -> int:
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise ConfigError(f"{source}: width {width} matches no DiT preset (S 384, B 768, L 1024, XL 1152), so the "
                          "number of attention heads is unknown: pass --num-heads H")
    if width % heads:
        raise ConfigError(f"--num-heads {heads} does not divide the width {width} of {source}")
    return heads


# -- DiT and SiT -----------------------------------------------------------------------------------------
def dit_layout(sd: dict[str, torch.Tensor], source: Path, num_heads: int | None, extra: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The maskdit model config and state dict of a DiT-layout state dict (facebookresearch/DiT models.py);
    ``extra`` adds model fields (a decoder, a preconditioning) whose tensors carry maskdit's own names."""
    if "x_embedder.proj.weight" not in sd:
        hint = "--format maskdit" if "model.x_embedder.proj.weight" in sd else "the directory for a diffusers model"
        raise CheckpointError(f"{source} has no x_embedder.proj.weight: it is not a DiT/SiT state dict (pass {hint})")
    proj = _tensor(sd, "x_embedder.proj.weight", source, 4, "a square 2-D patch embedding (width, channels, p, p)")
    if proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"{source}: x_embedder.proj.weight has shape {tuple(proj.shape)}, not a square 2-D "
                              "patch embedding (width, channels, p, p)")
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = _count(sd, "blocks.")
    if depth == 0 or "pos_embed" not in sd:
        raise CheckpointError(f"{source}: no transformer blocks or no pos_embed: not a DiT/SiT state dict")
    tokens = _position_table(sd, "pos_embed", width, source)
    side = math.isqrt(tokens)
    final = sd.get("final_layer.linear.weight")
    out = 0 if final is None or final.dim() != 2 else final.shape[0] // (patch * patch)
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"{source}: the final layer predicts {out} channels per pixel for {channels} input "
                              f"channels: expected {channels} or {2 * channels} (learned sigma)")
    num_classes = 0
    if "y_embedder.embedding_table.weight" in sd:  # DiT keeps one extra row: the null label
        num_classes = _tensor(sd, "y_embedder.embedding_table.weight", source, 2,
                              f"a label table (classes + 1, {width})").shape[0] - 1
    hidden = 4 * width
    if "blocks.0.mlp.fc1.weight" in sd:
        hidden = _tensor(sd, "blocks.0.mlp.fc1.weight", source, 2, f"an MLP's first layer (hidden, {width})").shape[0]
    config = {"input_size": [side * patch] * 2, "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": depth, "num_heads": _heads(width, num_heads, source),
              "mlp_ratio": hidden / width, "num_classes": num_classes, "learn_sigma": out == 2 * channels,
              "pos_layout": "xy", **(extra or {})}
    with torch.device("meta"):  # names and shapes only: the import builds the real model once, later
        model = DiT(**config)
    expected = {_dit_name(k) for k in model.state_dict()} | {"pos_embed"}
    _refuse_keys(expected, set(sd), source, "DiT")
    pos = sincos_pos_embed(width, model.token_grid, reverse_axes=True)
    if not torch.allclose(sd["pos_embed"][0].float(), pos, atol=1e-5):
        raise CheckpointError(f"{source}: pos_embed is not DiT's fixed 2-D sin-cos table for a {side}x{side} grid "
                              "(a learned or interpolated table cannot be imported)")
    state = {k: sd[_dit_name(k)] for k in model.state_dict()}
    state["patch_embed.weight"] = proj.permute(0, 2, 3, 1).reshape(width, -1)  # (p, p, C), channel fastest
    return model.config, _checked_shapes(model, state, source)


def _dit_name(name: str) -> str:
    """DiT's name of a maskdit tensor."""
    if name.startswith("patch_embed."):
        return "x_embedder.proj." + name.split(".", 1)[1]
    if name.startswith("y_embedder.table."):
        return "y_embedder.embedding_table." + name.rsplit(".", 1)[1]
    return name


def _checked_shapes(model: DiT, state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    for k, v in model.state_dict().items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: {k} has shape {tuple(state[k].shape)}, the inferred architecture needs "
                                  f"{tuple(v.shape)}: the checkpoint's tensors do not fit one DiT")
    return {k: v.detach().float().contiguous() for k, v in state.items()}


@FORMATS.register("dit", "facebookresearch/DiT .pt (the EMA state dict of models.py), DDPM with learned sigma")
def import_dit(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    config, state = dit_layout(read_state_dict(source), source, num_heads)
    settings = {"objective": {"name": "ddpm", "schedule": "linear", "num_steps": 1000, "step_offset": 0},
                "sample": {"sampler": "ddpm", "steps": 250, "guidance_scale": 4.0, "guidance_channels": 3}}
    return config, state, settings


@FORMATS.register("sit", "SiT .pt (DiT's layout, linear interpolant, velocity towards the data)")
def import_sit(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    config, state = dit_layout(read_state_dict(source), source, num_heads)
    rows = config["in_channels"] * config["patch_size"][0] ** 2
    if config["learn_sigma"]:  # SiT's forward drops these channels: keep what it uses
        width, patches = state["final_layer.linear.weight"].shape[1], config["patch_size"][0] ** 2
        weight = state["final_layer.linear.weight"].reshape(patches, 2 * config["in_channels"], width)
        bias = state["final_layer.linear.bias"].reshape(patches, 2 * config["in_channels"])
        state["final_layer.linear.weight"] = weight[:, :config["in_channels"]].reshape(rows, width)
        state["final_layer.linear.bias"] = bias[:, :config["in_channels"]].reshape(rows)
        config["learn_sigma"] = False
    # maskdit's flow: x_t = (1 - t) x0 + t eps, v = eps - x0; SiT's: s = 1 - t, velocity x0 - eps = -v
    state["final_layer.linear.weight"] = -state["final_layer.linear.weight"]
    state["final_layer.linear.bias"] = -state["final_layer.linear.bias"]
    config.update(time_scale=-1.0, time_offset=1.0)
    settings = {"objective": {"name": "flow", "time_sampling": "uniform"},
                "sample": {"sampler": "heun", "steps": 125, "guidance_scale": 4.0, "guidance_channels": 3}}
    return config, state, settings


# -- MaskDiT -------------------------------------------------------------------------------------------------
MASKDIT_DECODER_HEADS = 16  #: MaskDiT's decoder always has 16 heads (models/maskdit.py)
MASKDIT_UNSUPPORTED = ("cls_token", "feat_embedder.", "cls_token_embedder.", "enc_feat_embedder.")


@FORMATS.register("maskdit", "MaskDiT release (Anima-Lab/MaskDiT: the EMA state dict of EDMPrecond, with or without "
                  "its decoder); EDM preconditioning, EDM's Heun sampler")
def import_maskdit(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    sd = {k.removeprefix("model."): v for k, v in read_state_dict(source).items()}
    for key in sd:
        if key.startswith(MASKDIT_UNSUPPORTED):
            raise CheckpointError(f"{source} has {key}: MaskDiT models with a class token or external/encoder "
                                  "features (pad_cls_token, ext_feature_dim, self_cond) cannot be imported")
    table, proj = sd.get("y_embedder.embedding_table.weight"), sd.get("x_embedder.proj.weight")
    if proj is not None:
        proj = _tensor(sd, "x_embedder.proj.weight", source, 4, "a 2-D patch embedding (width, channels, p, p)")
    if table is not None:
        table = _tensor(sd, "y_embedder.embedding_table.weight", source, 2, "a label map (width, classes)")
    if table is not None and proj is not None and table.shape[0] != proj.shape[0]:
        raise CheckpointError(f"{source}: y_embedder.embedding_table.weight has shape {tuple(table.shape)}, not "
                              f"MaskDiT's one-hot label map (width {proj.shape[0]}, classes): is it a DiT checkpoint? "
                              "(--format dit)")
    if table is not None:  # a one-hot linear map (hidden, classes); the null label is the zero vector
        sd["y_embedder.embedding_table.weight"] = torch.cat([table.t(), table.new_zeros(1, table.shape[0])])
    extra: dict[str, Any] = {"precond": "edm", "sigma_data": 0.5, "time_scale": 1.0}
    decoder_pos = sd.pop("decoder_pos_embed", None)
    if "decoder_layer.linear.weight" in sd:
        entry = _tensor(sd, "decoder_layer.linear.weight", source, 2, "the decoder entry (decoder width, width)")
        width = entry.shape[0]
        depth = _count(sd, "decoder_blocks.")
        extra["decoder"] = {"width": width, "depth": depth, "num_heads": MASKDIT_DECODER_HEADS}
        for key in [k for k in sd if k.startswith(("decoder_layer.", "decoder_blocks."))]:
            ours = key.replace("decoder_layer.", "decoder.", 1).replace("decoder_blocks.", "decoder.blocks.", 1)
            sd[ours] = sd.pop(key)
        mask_token = sd.pop("mask_token", None)  # only trained with the MAE loss; MaskDiT fills zeros otherwise
        if mask_token is not None and mask_token.numel() != width:
            raise CheckpointError(f"{source}: mask_token has shape {tuple(mask_token.shape)}, not one token of the "
                                  f"decoder's width {width} (decoder_layer.linear.weight): the checkpoint is damaged")
        sd["decoder.mask_token"] = torch.zeros(width) if mask_token is None else mask_token.reshape(width)
    config, state = dit_layout(sd, source, num_heads, extra)
    if "decoder" in extra:
        grid = token_grid_shape(config["input_size"], config["patch_size"])
        pos = sincos_pos_embed(extra["decoder"]["width"], grid, reverse_axes=True)
        tables = {} if decoder_pos is None else {"decoder_pos_embed": decoder_pos}
        _position_table(tables, "decoder_pos_embed", extra["decoder"]["width"], source, math.prod(grid))
        if not torch.allclose(decoder_pos[0].float(), pos, atol=1e-5):
            raise CheckpointError(f"{source}: decoder_pos_embed is missing or not the fixed 2-D sin-cos table")
    # EDM trains on ln(sigma) ~ N(-1.2, 1.2^2); ln(sigma) = logit(t), so finetuning sees the same noise levels
    settings = {"objective": {"name": "flow", "time_sampling": "logit_normal", "logit_mean": -1.2, "logit_std": 1.2},
                "sample": {"sampler": "edm", "steps": 40, "guidance_scale": 1.5}}
    return config, state, settings


# -- MDT --------------------------------------------------------------------------------------------------
MDT_BIAS = ("attn.rel_bias.table", "attn.rel_pos_bias.relative_position_bias_table")  #: (maskdit's, MDT's) name
MDT_BIAS_INDEX = "attn.rel_pos_bias.relative_position_index"  #: a buffer MDT saves; maskdit recomputes it


@FORMATS.register("mdt", "MDT v2 release (sail-sg/MDT: the state dict of MDTv2); learned positions, relative "
                  "position bias, long skips; DDPM with learned sigma")
def import_mdt(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    sd = read_state_dict(source)
    if "en_inblocks.0.attn.qkv.weight" not in sd or "x_embedder.proj.weight" not in sd:
        raise CheckpointError(f"{source} has no en_inblocks.0.attn.qkv.weight: it is not an MDT v2 state dict "
                              "(--format names the layout)")
    half, outs, dec = (_count(sd, p) for p in ("en_inblocks.", "en_outblocks.", "de_blocks."))
    if outs != half:
        raise CheckpointError(f"{source}: {half} en_inblocks but {outs} en_outblocks; MDT pairs them one to one")
    proj = _tensor(sd, "x_embedder.proj.weight", source, 4, "a square 2-D patch embedding (width, channels, p, p)")
    if proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"{source}: x_embedder.proj.weight has shape {tuple(proj.shape)}, not a square 2-D "
                              "patch embedding (width, channels, p, p)")
    table = _tensor(sd, "en_inblocks.0." + MDT_BIAS[1], source, 2, "a relative position bias table (offsets, heads)")
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    heads = table.shape[1]  # the bias table has one column per head: no guessing
    if num_heads not in (None, heads):
        raise ConfigError(f"--num-heads {num_heads} contradicts {source}, whose attention bias has {heads} heads")
    if width % heads:
        raise CheckpointError(f"{source}: the attention bias has {heads} heads, which do not divide the width "
                              f"{width} (x_embedder.proj.weight): the checkpoint is damaged or mixes two models")
    if "pos_embed" not in sd:
        raise CheckpointError(f"{source}: no pos_embed: not an MDT v2 state dict")
    side = math.isqrt(_position_table(sd, "pos_embed", width, source))
    final = sd.get("final_layer.linear.weight")
    out = 0 if final is None or final.dim() != 2 else final.shape[0] // (patch * patch)
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"{source}: the final layer predicts {out} channels per pixel for {channels} input "
                              f"channels: expected {channels} or {2 * channels} (learned sigma)")
    hidden = 4 * width
    if "en_inblocks.0.mlp.fc1.weight" in sd:
        hidden = _tensor(sd, "en_inblocks.0.mlp.fc1.weight", source, 2, f"an MLP's first layer (hidden, {width})"
                         ).shape[0]
    num_classes = 0
    if "y_embedder.embedding_table.weight" in sd:
        num_classes = _tensor(sd, "y_embedder.embedding_table.weight", source, 2,
                              f"a label table (classes + 1, {width})").shape[0] - 1
    config = {"input_size": [side * patch] * 2, "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": 2 * half + dec, "num_heads": heads, "mlp_ratio": hidden / width,
              "num_classes": num_classes, "learn_sigma": out == 2 * channels, "pos_layout": "xy", "pos": "learned",
              "rel_pos_bias": True, "long_skips": dec}
    if config["num_classes"] < 1:
        raise CheckpointError(f"{source}: no label table: maskdit imports class-conditional MDT models")
    with torch.device("meta"):  # names and shapes only: the import builds the real model once, later
        model = DiT(**config)
    names = mdt_names(model)
    side_keys = {k for k in sd if k.startswith("sideblocks.") or k == "mask_token"}  # the masked pass's: optional
    _refuse_keys(set(names.values()), {k for k in sd if k not in side_keys and not k.endswith(MDT_BIAS_INDEX)},
                 source, "MDT v2")
    index = RelativePositionBias((side, side), heads).index  # the same in every block
    for key in (k for k in sd if k.endswith(MDT_BIAS_INDEX)):
        if sd[key].shape != index.shape or not torch.equal(sd[key].long(), index):
            raise CheckpointError(f"{source}: {key} is not BEiT's relative position index for a {side}x{side} grid")
    state = {ours: sd[theirs] for ours, theirs in names.items()}
    state["patch_embed.weight"] = proj.permute(0, 2, 3, 1).reshape(width, -1)
    settings = {"objective": {"name": "ddpm", "schedule": "linear", "num_steps": 1000, "step_offset": 0},
                "sample": {"sampler": "ddpm" if config["learn_sigma"] else "ddim", "steps": 250,
                           "guidance_scale": 4.0, "guidance_channels": 3, "guidance_power": 0.01},
                "mask": {"recipe": "mdt"}}
    if side_keys:  # MDT's side-interpolater: the mdt recipe's training-only weights (aux.safetensors)
        if _count(sd, "sideblocks.") != 1 or "mask_token" not in sd:
            found = f"{_count(sd, 'sideblocks.')} side block(s), {'a' if 'mask_token' in sd else 'no'} mask token"
            raise CheckpointError(f"{source}: MDT v2 has one side block and a mask token; found {found}")
        if sd["mask_token"].numel() != width:
            raise CheckpointError(f"{source}: mask_token has shape {tuple(sd['mask_token'].shape)}, not one token of "
                                  f"width {width}: the checkpoint is damaged or mixes two models")
        settings["aux"] = {"interpolater.mask_token": sd["mask_token"].reshape(width)}
        for key, value in sd.items():
            if key.startswith("sideblocks.0.") and not key.endswith(MDT_BIAS_INDEX):
                ours = key.replace("sideblocks.0.", "interpolater.block.", 1)
                settings["aux"][ours.replace(MDT_BIAS[1], MDT_BIAS[0])] = value
    return model.config, _checked_shapes(model, state, source), settings


def mdt_names(model: DiT) -> dict[str, str]:
    """maskdit tensor name -> MDT v2's: blocks in order are its en_inblocks, en_outblocks and de_blocks, and
    each skip join is the skip_linear of the block it feeds."""
    half = model.skip_half

    def block(i: int) -> str:
        return f"en_inblocks.{i}." if i < half else f"en_outblocks.{i - half}." if i < 2 * half \
            else f"de_blocks.{i - 2 * half}."
    names = {}
    for ours in model.state_dict():
        head, _, rest = ours.partition(".")
        if head == "blocks":
            i, _, tail = rest.partition(".")
            names[ours] = block(int(i)) + tail.replace(*MDT_BIAS)
        elif head == "skips":
            i, _, tail = rest.partition(".")
            names[ours] = block(int(i)) + "skip_linear." + tail
        else:
            names[ours] = _dit_name(ours)
    return names


# -- diffusers --------------------------------------------------------------------------------------------
#: DiTTransformer2DModel's config keys that shape the model, with diffusers' defaults (a key that config.json
#: leaves out means its default there, as for ``from_pretrained``); ``None``: the key may be null
DIFFUSERS_SIZES: dict[str, int | None] = {"sample_size": 32, "patch_size": 2, "in_channels": 4, "out_channels": None,
                                          "num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28,
                                          "num_embeds_ada_norm": 1000}
#: what maskdit's DiT block is in diffusers' terms; any other value cannot be expressed
DIFFUSERS_FIXED = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
                   "attention_bias": True}


def _read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; ``fix`` says what to do about a damaged one."""
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a JSON text file: {fix}") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {_json_kind(data)}, not an object of settings: {fix}")
    return data


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null", dict: "object"}.get(type(value), "number")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def diffusers_config(config_file: Path) -> dict[str, Any]:
    """The settings of a diffusers ``config.json`` that maskdit reads, type-checked (diffusers' defaults for
    missing keys); refuses what maskdit's DiT cannot express."""
    fix = "it is not a diffusers model config (save the model again with save_pretrained)"
    cfg = _read_json_object(config_file, fix)
    name = cfg.get("_class_name")
    if name not in (None, "DiTTransformer2DModel", "Transformer2DModel"):
        raise CheckpointError(f"{config_file.parent} holds a {name}, not a DiTTransformer2DModel")
    for key, want in DIFFUSERS_FIXED.items():
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{config_file}: {key}={cfg.get(key)!r} is not DiT's {want!r}; maskdit cannot "
                                  "express it")
    out: dict[str, Any] = {"missing": sorted(set(DIFFUSERS_SIZES) - set(cfg))}
    for key, default in DIFFUSERS_SIZES.items():
        value = cfg.get(key, default)
        if value is None and key in ("out_channels", "num_embeds_ada_norm"):
            out[key] = None
            continue
        if not _whole(value) or value < 1:
            raise CheckpointError(f"{config_file}: {key} is {json.dumps(value)}, not a positive whole number: set "
                                  f"{key} to the model's value (save_pretrained writes every key)")
        out[key] = value
    eps = cfg.get("norm_eps", 1e-5)
    if not _number(eps) or eps <= 0:
        raise CheckpointError(f"{config_file}: norm_eps is {json.dumps(eps)}, not a positive number: set norm_eps "
                              "to the model's LayerNorm epsilon (diffusers' default is 1e-5)")
    out["norm_eps"] = float(eps)
    size, patch = out["sample_size"], out["patch_size"]
    if max(size // 64, 1) != 1:
        raise CheckpointError(f"{config_file}: sample_size {size} makes diffusers scale its position table "
                              "(interpolation_scale > 1), which maskdit does not express")
    if size % patch:
        raise CheckpointError(f"{config_file}: patch_size {patch} does not divide sample_size {size}: set both to "
                              "the model's values")
    return out


@FORMATS.register("diffusers", "a diffusers DiTTransformer2DModel directory (config.json + safetensors)")
def import_diffusers(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    config_file, weights_file = source / "config.json", source / DIFFUSERS_WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{source} is not a diffusers model directory: expected config.json and "
                              f"{DIFFUSERS_WEIGHTS} (save_pretrained with safe_serialization; .bin is not read)")
    cfg = diffusers_config(config_file)
    size, patch, channels = cfg["sample_size"], cfg["patch_size"], cfg["in_channels"]
    out = cfg["out_channels"] or channels
    heads, head_dim, depth = cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["num_layers"]
    width, classes = heads * head_dim, cfg["num_embeds_ada_norm"] or 0
    if num_heads not in (None, heads):
        raise ConfigError(f"--num-heads {num_heads} contradicts {config_file}, which says "
                          f"{_fact(cfg, 'num_attention_heads')}")
    if out not in (channels, 2 * channels) or classes == 0:
        raise CheckpointError(f"{config_file}: out_channels {out} for {_fact(cfg, 'in_channels')}, {classes} classes "
                              "(num_embeds_ada_norm): maskdit imports class-conditional DiTs predicting C or 2C "
                              "channels")
    sd = read_state_dict(weights_file)
    blocks = _count(sd, "transformer_blocks.")
    if blocks != depth:
        raise CheckpointError(f"{config_file} says {_fact(cfg, 'num_layers')} but {weights_file} holds {blocks} "
                              "transformer blocks: set num_layers to the model's depth (or the weights belong to "
                              "another model)")
    proj = _tensor(sd, "pos_embed.proj.weight", weights_file, 4, "a patch embedding (width, channels, p, p)")
    if proj.shape[0] != width:  # before a model of that width is built
        raise CheckpointError(f"{weights_file}: pos_embed.proj.weight has shape {tuple(proj.shape)}, but config.json's "
                              f"{_fact(cfg, 'num_attention_heads')} x {_fact(cfg, 'attention_head_dim')} make the "
                              f"width {width}: set both to the model's values")
    note = read_note(source / MASKDIT_NOTE)
    config = {"input_size": [size, size], "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0,
              "num_classes": classes, "learn_sigma": out == 2 * channels, "pos_layout": "xy",
              "time_freq_shift": note.get("time_freq_shift", 1.0), "mlp_norm_eps": cfg["norm_eps"]}
    try:
        with torch.device("meta"):  # names and shapes only, as for DiT
            model = DiT(**config)
    except ConfigError as e:
        raise CheckpointError(f"{config_file} describes a model maskdit cannot build ({e}): set its sizes to the "
                              "model's values") from None
    names = diffusers_names(depth)
    _refuse_keys(set(names.values()) | _per_block_embedders(depth), set(sd), source, "diffusers DiT")
    _check_diffusers_shapes(model, names, sd, weights_file, cfg)
    class_names = note.get("dataset", {}).get("class_names", [])
    if len(class_names) not in (0, classes):
        raise CheckpointError(f"{source / MASKDIT_NOTE}: dataset.class_names has {len(class_names)} names for the "
                              f"model's {classes} classes: write the export again, or remove {MASKDIT_NOTE} to import "
                              "the directory as a plain diffusers DiT")
    for i in range(1, depth):  # every block's copy of the embedders must be block 0's
        for k in _embedder_keys(i):
            if not torch.equal(sd[k], sd[k.replace(f"transformer_blocks.{i}.", "transformer_blocks.0.", 1)]):
                raise CheckpointError(f"{source}: block {i}'s time/label embedder differs from block 0's ({k}); "
                                      "maskdit has one embedder, so this model cannot be expressed")
    state = {ours: sd[theirs] for ours, theirs in names.items() if ":" not in ours}
    for i in range(depth):
        for part in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                [sd[f"transformer_blocks.{i}.attn1.to_{n}.{part}"] for n in "qkv"])
    state["patch_embed.weight"] = sd["pos_embed.proj.weight"].permute(0, 2, 3, 1).reshape(width, -1)
    state = _checked_shapes(model, {k: state[k] for k in model.state_dict()}, source)
    settings = {"objective": {"name": "ddpm", "schedule": "linear", "num_steps": 1000, "step_offset": 0},
                "sample": {"sampler": "ddpm" if config["learn_sigma"] else "ddim", "steps": 250,
                           "guidance_scale": 4.0, "guidance_channels": 3}}
    for section in ("objective", "sample"):  # a maskdit export: the settings the run was trained and sampled with
        if section in note:
            settings[section] = note[section]
    if "dataset" in note:
        settings["dataset"] = note["dataset"]
    return model.config, state, settings


def _check_diffusers_shapes(model: DiT, names: dict[str, str], sd: dict[str, torch.Tensor], weights_file: Path,
                            cfg: dict[str, Any]) -> None:
    """Every tensor of a diffusers DiT has the shape its config.json gives it; a mismatch names the keys."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    width = model.hidden_size
    expected: dict[str, tuple[int, ...]] = {}
    for ours, theirs in names.items():
        if ":" in ours:  # q, k, v: a third of maskdit's qkv each
            shape = shapes[ours.split(":")[0]]
            expected[theirs] = (shape[0] // 3, *shape[1:])
        else:
            expected[theirs] = shapes[ours]
    expected["pos_embed.proj.weight"] = (width, model.in_channels, *model.patch_size)
    for block in range(1, model.depth):
        for k in _embedder_keys(block):
            expected[k] = expected[k.replace(f"transformer_blocks.{block}.", "transformer_blocks.0.", 1)]
    for name, want in expected.items():
        if tuple(sd[name].shape) != want:
            keys = ("in_channels, patch_size" if name == "pos_embed.proj.weight" else
                    "out_channels, patch_size" if name.startswith("proj_out_2.") else
                    "num_embeds_ada_norm" if "class_embedder" in name else "num_attention_heads, attention_head_dim")
            facts = ", ".join(_fact(cfg, k) for k in keys.split(", "))
            raise CheckpointError(f"{weights_file}: {name} has shape {tuple(sd[name].shape)}, but config.json "
                                  f"({facts}) needs {want}: the weights and config.json describe different models; "
                                  "fix config.json or use the weights saved with it")


def _fact(cfg: dict[str, Any], key: str) -> str:
    """``KEY VALUE`` of a diffusers config, saying when the value is diffusers' default for a key left out."""
    return f"{key} {json.dumps(cfg[key])}" + (" (left out, so diffusers' default)" if key in cfg["missing"] else "")


def read_note(path: Path) -> dict[str, Any]:
    """What a maskdit export adds to a diffusers directory (``maskdit.json``), checked: ``time_freq_shift`` (a
    number in [0, 1]) and, from newer exports, the run's ``objective`` and ``sample`` settings and its
    ``dataset`` facts (``codec``, ``class_names``). Empty when the file is absent (a diffusers model)."""
    if not path.exists():
        return {}
    fix = f"write the export again, or remove {path.name} to import the directory as a plain diffusers DiT"
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: {fix}")
    note = _read_json_object(path, fix)
    out: dict[str, Any] = {}
    if "time_freq_shift" in note:
        shift = note["time_freq_shift"]
        if not _number(shift) or not 0 <= shift <= 1:
            raise CheckpointError(f"{path}: time_freq_shift is {json.dumps(shift)}, not a number in [0, 1] (0: DiT's "
                                  f"time embedding, 1: diffusers'): {fix}")
        out["time_freq_shift"] = float(shift)
    for section in ("objective", "sample"):
        if section in note:
            if not isinstance(note[section], dict):
                raise CheckpointError(f"{path}: {section} is a JSON {_json_kind(note[section])}, not an object of "
                                      f"{section} settings: {fix}")
            out[section] = note[section]
    if "dataset" in note:
        out["dataset"] = _note_dataset(note["dataset"], path, fix)
    return out


def _note_dataset(data: Any, path: Path, fix: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: dataset is a JSON {_json_kind(data)}, not an object: {fix}")
    out: dict[str, Any] = {}
    names = data.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: dataset.class_names is not a list of names (one per class): {fix}")
    out["class_names"] = names
    if "codec" in data:
        codec = data["codec"]
        if not isinstance(codec, dict) or codec.get("name") not in ("uint8", "vae"):
            raise CheckpointError(f"{path}: dataset.codec is {json.dumps(codec)[:80]}, not a codec maskdit knows "
                                  f"(uint8 or vae): {fix}")
        if codec["name"] == "vae":
            vae, scale, channels = codec.get("vae", ""), codec.get("scaling_factor"), codec.get("channels", 3)
            if not isinstance(vae, str) or not _number(scale) or scale <= 0 or channels not in (1, 3) \
                    or isinstance(channels, bool) or set(codec) - {"name", "vae", "scaling_factor", "channels"}:
                raise CheckpointError(f"{path}: dataset.codec {json.dumps(codec)[:120]} is not a VAE codec (vae: a "
                                      f"directory, scaling_factor: a positive number, channels: 1 or 3): {fix}")
            codec = {"name": "vae", "vae": vae, "scaling_factor": float(scale), "channels": int(channels)}
        else:
            codec = {"name": "uint8"}
        out["codec"] = codec
    return out


def _embedder_keys(block: int) -> list[str]:
    base = f"transformer_blocks.{block}.norm1.emb."
    return [base + f"timestep_embedder.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")] + \
        [base + "class_embedder.embedding_table.weight"]


def _per_block_embedders(depth: int) -> set[str]:
    return {k for i in range(1, depth) for k in _embedder_keys(i)}


def diffusers_names(depth: int) -> dict[str, str]:
    """maskdit tensor name -> diffusers DiTTransformer2DModel name (qkv: the three of ``to_q/k/v``)."""
    names = {"patch_embed.weight": "pos_embed.proj.weight", "patch_embed.bias": "pos_embed.proj.bias",
             "final_layer.adaLN_modulation.1.weight": "proj_out_1.weight",
             "final_layer.adaLN_modulation.1.bias": "proj_out_1.bias",
             "final_layer.linear.weight": "proj_out_2.weight", "final_layer.linear.bias": "proj_out_2.bias"}
    emb = "transformer_blocks.0.norm1.emb."
    for i, j in ((0, 1), (2, 2)):
        for p in ("weight", "bias"):
            names[f"t_embedder.mlp.{i}.{p}"] = f"{emb}timestep_embedder.linear_{j}.{p}"
    names["y_embedder.table.weight"] = f"{emb}class_embedder.embedding_table.weight"
    for b in range(depth):
        ours, theirs = f"blocks.{b}.", f"transformer_blocks.{b}."
        for p in ("weight", "bias"):
            names[f"{ours}adaLN_modulation.1.{p}"] = f"{theirs}norm1.linear.{p}"
            names[f"{ours}attn.proj.{p}"] = f"{theirs}attn1.to_out.0.{p}"
            names[f"{ours}mlp.fc1.{p}"] = f"{theirs}ff.net.0.proj.{p}"
            names[f"{ours}mlp.fc2.{p}"] = f"{theirs}ff.net.2.{p}"
            for n in "qkv":
                names[f"{ours}attn.qkv.{p}:{n}"] = f"{theirs}attn1.to_{n}.{p}"
    return names


def diffusers_problems(model: DiT) -> list[str]:
    """What of ``model`` diffusers' ``DiTTransformer2DModel`` cannot compute, each named by the run's config key
    (empty: the export computes the same function, but for the time embedding's frequency shift)."""
    problems = []
    if len(model.input_size) != 2 or model.input_size[0] != model.input_size[1]:
        size = "x".join(map(str, model.input_size))
        problems.append(f"input {size} (not a square image, which diffusers' DiT takes)")
    elif max(model.input_size[0] // 64, 1) != 1:
        problems.append(f"input {model.input_size[0]}x{model.input_size[1]} (diffusers rescales the position table "
                        "from 128 on)")
    if len(set(model.patch_size)) != 1:
        problems.append(f"model.patch_size={list(model.patch_size)} (not square)")
    if model.attention != "full":
        problems.append(f"model.attention={model.attention}")
    if model.fusion is not None:
        problems.append("mask.recipe=sprint (its fusion layer)")
    if model.task_conditioning:
        problems.append("task.names (task conditioning)")
    if model.num_classes == 0:
        problems.append("model.conditional=false (diffusers' DiT is class-conditional only)")
    if model.mlp_ratio != 4.0:
        problems.append(f"model.mlp_ratio={model.mlp_ratio:g} (diffusers' DiT blocks use 4)")
    if model.block_options.mlp != "gelu":
        problems.append(f"model.mlp={model.block_options.mlp} (diffusers' DiT has a GELU MLP)")
    if model.block_options.norm != "layernorm":
        problems.append(f"model.norm={model.block_options.norm} (diffusers' DiT uses LayerNorm)")
    if model.block_options.qk_norm:
        problems.append("model.qk_norm=true (diffusers' DiT does not normalise queries and keys)")
    if any(model.options_of(i).moe is not None for i in range(model.depth)):
        problems.append(f"model.moe.experts={model.moe.experts} (a mixture of experts)")
    if model.pos_layout != "xy":
        problems.append(f"model.pos_layout={model.pos_layout} (diffusers' position table is xy)")
    if model.pos != "sincos":
        problems.append(f"model.pos={model.pos} (diffusers' DiT adds a fixed sin-cos table)")
    if (model.t_embedder.time_scale, model.t_embedder.time_offset) != (1000.0, 0.0):
        problems.append(f"model.time_scale={model.t_embedder.time_scale:g} and model.time_offset="
                        f"{model.t_embedder.time_offset:g} (diffusers embeds 1000 t)")
    if model.decoder is not None:
        problems.append(f"model.decoder.width={model.decoder.width} (MaskDiT's decoder)")
    if model.precond is not None:
        problems.append("model.precond=edm (EDM preconditioning)")
    if model.skips is not None:
        problems.append(f"model.long_skips={model.long_skips} (MDT's long skips)")
    if model.block_options.rel_grid:
        problems.append("model.rel_pos_bias=true (a relative position bias)")
    return problems


def export_diffusers(model: DiT, out: Path, run: Any = None) -> dict[str, Any]:
    """Write ``model`` as a diffusers ``DiTTransformer2DModel`` directory; refuses what diffusers cannot
    express. ``run`` (a :class:`~maskdit.checkpoint.LoadedRun`): its objective, sampling settings and dataset
    facts go into ``maskdit.json`` too, so that importing the directory again gives a run that samples the
    same. Returns the diffusers config written; nothing is written when it fails."""
    problems = diffusers_problems(model)
    if problems:
        raise ConfigError("this model cannot be exported to diffusers: what it was trained with has no diffusers DiT "
                          "counterpart, so DiTTransformer2DModel would compute another function: "
                          + "; ".join(problems) + ": export a run trained without " + ("it" if len(problems) == 1
                                                                                       else "these options"))
    depth = model.depth
    names = diffusers_names(depth)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    sd: dict[str, torch.Tensor] = {}
    for ours, theirs in names.items():
        if ":" in ours:
            name, part = ours.split(":")
            q, k, v = state[name].chunk(3)
            sd[theirs] = {"q": q, "k": k, "v": v}[part].clone()
        else:
            sd[theirs] = state[ours].clone()
    width, patch = model.hidden_size, model.patch_size[0]
    sd["pos_embed.proj.weight"] = state["patch_embed.weight"].reshape(width, patch, patch, -1).permute(0, 3, 1, 2) \
        .contiguous()
    for i in range(1, depth):
        for k in _embedder_keys(i):
            sd[k] = sd[k.replace(f"transformer_blocks.{i}.", "transformer_blocks.0.", 1)].clone()
    config = {"_class_name": "DiTTransformer2DModel", "num_attention_heads": model.num_heads,
              "attention_head_dim": width // model.num_heads, "in_channels": model.in_channels,
              "out_channels": model.out_channels, "num_layers": depth, "dropout": 0.0, "norm_num_groups": 32,
              "attention_bias": True, "sample_size": model.input_size[0], "patch_size": patch,
              "activation_fn": "gelu-approximate", "num_embeds_ada_norm": model.num_classes,
              "upcast_attention": False, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False,
              "norm_eps": model.mlp_norm_eps}
    from safetensors.torch import save_file

    note: dict[str, Any] = {"time_freq_shift": model.t_embedder.freq_shift,
                            "note": "diffusers' DiT embeds time with downscale_freq_shift=1; maskdit import reads "
                                    "this file to restore the original shift and the run's settings"}
    if run is not None:
        run_config = run.config.to_dict()
        note.update(objective=run_config["objective"], sample=run_config["sample"],
                    dataset={k: run.dataset[k] for k in ("codec", "class_names") if k in run.dataset})
    with atomic_directory(out) as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp / DIFFUSERS_WEIGHTS)
        write_json_atomic(tmp / "config.json", config)
        write_json_atomic(tmp / MASKDIT_NOTE, note)
    return config


# -- runs -------------------------------------------------------------------------------------------------
def detect_format(source: Path) -> str:
    if source.is_dir():
        return "diffusers"
    return "dit"


def import_run(source: str | Path, out: str | Path, fmt: str = "auto", num_heads: int | None = None,
               vae: str | None = None) -> Path:
    """Convert ``source`` and write it as a new maskdit run at ``out``; returns the checkpoint written. Nothing
    is written unless the whole import succeeds."""
    from maskdit.config import Config, load_config

    source, out = Path(source), Path(out)
    if not source.exists():
        raise CheckpointError(f"{source} does not exist: pass a DiT/SiT .pt file or a diffusers model directory")
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not an import format: choose auto or one of "
                          f"{', '.join(FORMATS.names())}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} already exists: choose a new directory for the imported run")
    find_run(out, resume=False)
    latent_channels = None if vae is None else check_vae_dir(vae)
    config, state, settings = FORMATS.get(fmt)(source, num_heads)
    if latent_channels is not None and latent_channels != config["in_channels"]:
        raise ConfigError(f"--vae {vae} encodes {latent_channels} latent channels (latent_channels in its config.json) "
                          f"but {source} models {config['in_channels']} channels: pass the VAE the model was trained "
                          "with, or leave --vae out")
    aux_state = settings.pop("aux", None)
    dataset = settings.pop("dataset", {})  # a maskdit export's facts (maskdit.json)
    model = DiT.from_config(config)
    model.load_state_dict(state)
    aux = None
    if aux_state is not None:  # training-only weights of the recipe the source was trained with
        from maskdit.training.recipes import build_recipe

        aux = build_recipe(settings["mask"]["recipe"], model)
        expected = aux.state_dict()
        bad = sorted(set(expected) ^ set(aux_state)) or [k for k in expected if expected[k].shape != aux_state[k].shape]
        if bad:
            raise CheckpointError(f"{source}: the training-only weights do not fit maskdit's "
                                  f"{settings['mask']['recipe']} recipe (first: {bad[0]})")
        aux.load_state_dict({k: v.float() for k, v in aux_state.items()})
    preset = next((name for name, f in PRESETS.items() if f["hidden_size"] == config["hidden_size"]
                   and f["depth"] == config["depth"] and [f["patch_size"]] * 2 == config["patch_size"]), "tiny")
    fields = ("learn_sigma", "pos_layout", "time_scale", "time_offset", "time_freq_shift", "mlp_norm_eps",
              "decoder", "precond", "sigma_data", "pos", "rel_pos_bias", "long_skips")
    base = Config().to_dict()
    base["model"].update(preset=preset, depth=config["depth"], hidden_size=config["hidden_size"],
                         num_heads=config["num_heads"], patch_size=config["patch_size"][0],
                         mlp_ratio=config["mlp_ratio"], conditional=config["num_classes"] > 0,
                         **{k: config[k] for k in fields if k in config})
    base["data"].update(name="latents", path="NO-DATA (imported): pass data.path=STORE to train")
    base["run_dir"] = str(out)
    for section, values in settings.items():
        base[section].update(values)
    try:
        cfg = load_config(base=base)
    except ConfigError as e:
        if fmt != "diffusers" or not (source / MASKDIT_NOTE).is_file():
            raise
        note = source / MASKDIT_NOTE  # the only settings that did not come from maskdit itself
        raise CheckpointError(f"{note}: its settings do not load ({e}): write the export again, or remove "
                              f"{MASKDIT_NOTE} to import the directory as a plain diffusers DiT") from None
    codec = dataset.get("codec") or ({"name": "vae", "vae": "", "scaling_factor": 0.18215, "channels": 3}
                                     if config["in_channels"] == 4 or vae else {"name": "uint8"})
    if vae:
        codec = {"scaling_factor": 0.18215, "channels": 3, **codec, "name": "vae", "vae": str(Path(vae).resolve())}
    info = {"config": cfg.to_dict(), "model": model.config,
            "dataset": {"name": "imported", "shape": [config["in_channels"], *config["input_size"]], "size": 0,
                        "num_classes": config["num_classes"], "class_names": dataset.get("class_names", []),
                        "codec": codec},
            "imported": {"source": str(source), "format": fmt}}
    optimizer = torch.optim.AdamW(model.parameters())
    files, meta = checkpoint_files(model, model, optimizer, aux)
    with atomic_directory(out) as tmp:
        write_json_atomic(tmp / "config.json", info)
        ckpt = save_checkpoint(tmp, 0, files, {"optimizer": meta, "data_position": {}, "wall_time": 0.0}, info)
    return out / ckpt.relative_to(tmp)


def check_vae_dir(vae: str) -> int:
    """Refuse a ``--vae`` that is not a local diffusers ``AutoencoderKL`` directory; returns its latent channels."""
    path = Path(vae)
    fix = "pass a local diffusers AutoencoderKL directory (save_pretrained's config.json and " \
          "diffusion_pytorch_model.safetensors; maskdit never downloads)"
    if not path.is_dir():
        raise ConfigError(f"--vae {vae} {'does not exist' if not path.exists() else 'is not a directory'}: {fix}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"--vae {vae} has no config.json, so it is not a diffusers VAE directory: {fix}")
    cfg = _read_json_object(path / "config.json", fix)
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConfigError(f"--vae {vae} holds a {cfg.get('_class_name')}, not an AutoencoderKL: {fix}")
    if not any((path / f"diffusion_pytorch_model.{ext}").is_file() for ext in ("safetensors", "bin")):
        raise ConfigError(f"--vae {vae} has no weights (diffusion_pytorch_model.safetensors): {fix}")
    channels = cfg.get("latent_channels", 4)
    if not _whole(channels) or channels < 1:
        raise ConfigError(f"--vae {vae}: latent_channels in its config.json is {json.dumps(channels)}, not a positive "
                          f"whole number: {fix}")
    return channels


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DiT:
    """The backbone of a run or checkpoint directory with its EMA weights, in eval mode."""
    from maskdit.checkpoint import load_run

    return load_run(path, ema=True, device=device).model
