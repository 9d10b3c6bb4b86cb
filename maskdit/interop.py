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

Nothing is unpickled: ``.pt`` files are read with ``torch.load(weights_only=True)``, which loads tensors
and plain containers only.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import torch

from maskdit.checkpoint import checkpoint_files, find_run, save_checkpoint, write_json_atomic
from maskdit.errors import CheckpointError, ConfigError
from maskdit.grid import sincos_pos_embed, token_grid_shape
from maskdit.model import DiT, PRESETS
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
    """Tensors of a ``.pt``/``.pth`` (a state dict, or one under ``ema``/``model``) or ``.safetensors`` file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: pass a DiT/SiT .pt file or a diffusers directory")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path}: {e}") from e
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a file torch.save wrote (nor .safetensors): pass a DiT/SiT checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and friends: the file holds more than tensors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} holds objects other than tensors, which maskdit never unpickles "
                              f"({first[:160]}): save the EMA state dict alone (torch.save(ckpt['ema'], 'ema.pt'))"
                              ) from None
    for key in ("ema", "model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


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
    proj = sd["x_embedder.proj.weight"]
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"{source}: x_embedder.proj.weight has shape {tuple(proj.shape)}, not a square 2-D "
                              "patch embedding (width, channels, p, p)")
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = _count(sd, "blocks.")
    if depth == 0 or "pos_embed" not in sd:
        raise CheckpointError(f"{source}: no transformer blocks or no pos_embed: not a DiT/SiT state dict")
    tokens = sd["pos_embed"].shape[-2]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"{source}: pos_embed has {tokens} tokens, not a square grid")
    out = sd["final_layer.linear.weight"].shape[0] // (patch * patch) if "final_layer.linear.weight" in sd else 0
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"{source}: the final layer predicts {out} channels per pixel for {channels} input "
                              f"channels: expected {channels} or {2 * channels} (learned sigma)")
    table = sd.get("y_embedder.embedding_table.weight")
    num_classes = 0 if table is None else table.shape[0] - 1  # DiT keeps one extra row: the null label
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else 4 * width
    config = {"input_size": [side * patch] * 2, "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": depth, "num_heads": _heads(width, num_heads, source),
              "mlp_ratio": hidden / width, "num_classes": num_classes, "learn_sigma": out == 2 * channels,
              "pos_layout": "xy", **(extra or {})}
    with torch.device("meta"):  # names and shapes only: the import builds the real model once, later
        model = DiT(**config)
    expected = {_dit_name(k) for k in model.state_dict()} | {"pos_embed"}
    _refuse_keys(expected, set(sd), source, "DiT")
    pos = sincos_pos_embed(width, model.token_grid, reverse_axes=True)
    if not torch.allclose(sd["pos_embed"].reshape(pos.shape).float(), pos, atol=1e-5):
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
    if table is not None and proj is not None and table.shape[0] != proj.shape[0]:
        raise CheckpointError(f"{source}: y_embedder.embedding_table.weight has shape {tuple(table.shape)}, not "
                              f"MaskDiT's one-hot label map (width {proj.shape[0]}, classes): is it a DiT checkpoint? "
                              "(--format dit)")
    if table is not None:  # a one-hot linear map (hidden, classes); the null label is the zero vector
        sd["y_embedder.embedding_table.weight"] = torch.cat([table.t(), table.new_zeros(1, table.shape[0])])
    extra: dict[str, Any] = {"precond": "edm", "sigma_data": 0.5, "time_scale": 1.0}
    decoder_pos = sd.pop("decoder_pos_embed", None)
    if "decoder_layer.linear.weight" in sd:
        width = sd["decoder_layer.linear.weight"].shape[0]
        depth = _count(sd, "decoder_blocks.")
        extra["decoder"] = {"width": width, "depth": depth, "num_heads": MASKDIT_DECODER_HEADS}
        for key in [k for k in sd if k.startswith(("decoder_layer.", "decoder_blocks."))]:
            ours = key.replace("decoder_layer.", "decoder.", 1).replace("decoder_blocks.", "decoder.blocks.", 1)
            sd[ours] = sd.pop(key)
        mask_token = sd.pop("mask_token", None)  # only trained with the MAE loss; MaskDiT fills zeros otherwise
        sd["decoder.mask_token"] = torch.zeros(width) if mask_token is None else mask_token.reshape(width)
    config, state = dit_layout(sd, source, num_heads, extra)
    if "decoder" in extra:
        grid = token_grid_shape(config["input_size"], config["patch_size"])
        pos = sincos_pos_embed(extra["decoder"]["width"], grid, reverse_axes=True)
        if decoder_pos is None or not torch.allclose(decoder_pos.reshape(pos.shape).float(), pos, atol=1e-5):
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
    proj, table = sd["x_embedder.proj.weight"], sd.get("en_inblocks.0.attn.rel_pos_bias.relative_position_bias_table")
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3] or table is None:
        raise CheckpointError(f"{source}: x_embedder.proj.weight {tuple(proj.shape)} or the relative position bias "
                              "table is not MDT v2's")
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    heads = table.shape[1]  # the bias table has one column per head: no guessing
    if num_heads not in (None, heads):
        raise ConfigError(f"--num-heads {num_heads} contradicts {source}, whose attention bias has {heads} heads")
    side = math.isqrt(sd["pos_embed"].shape[-2]) if "pos_embed" in sd else 0
    if side == 0 or side * side != sd["pos_embed"].shape[-2]:
        raise CheckpointError(f"{source}: no pos_embed, or one that is not a square grid")
    out = sd["final_layer.linear.weight"].shape[0] // (patch * patch) if "final_layer.linear.weight" in sd else 0
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"{source}: the final layer predicts {out} channels per pixel for {channels} input "
                              f"channels: expected {channels} or {2 * channels} (learned sigma)")
    hidden = sd["en_inblocks.0.mlp.fc1.weight"].shape[0] if "en_inblocks.0.mlp.fc1.weight" in sd else 4 * width
    config = {"input_size": [side * patch] * 2, "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": 2 * half + dec, "num_heads": heads, "mlp_ratio": hidden / width,
              "num_classes": sd["y_embedder.embedding_table.weight"].shape[0] - 1
              if "y_embedder.embedding_table.weight" in sd else 0,
              "learn_sigma": out == 2 * channels, "pos_layout": "xy", "pos": "learned", "rel_pos_bias": True,
              "long_skips": dec}
    if config["num_classes"] < 1:
        raise CheckpointError(f"{source}: no label table: maskdit imports class-conditional MDT models")
    with torch.device("meta"):  # names and shapes only: the import builds the real model once, later
        model = DiT(**config)
    names = mdt_names(model)
    side_keys = {k for k in sd if k.startswith("sideblocks.") or k == "mask_token"}  # the masked pass's: optional
    _refuse_keys(set(names.values()), {k for k in sd if k not in side_keys and not k.endswith(MDT_BIAS_INDEX)},
                 source, "MDT v2")
    index = RelativePositionBias((side, side), heads).index  # the same in every block
    for key in (k for k in sd if k.endswith(MDT_BIAS_INDEX) and k not in side_keys):
        if not torch.equal(sd[key].long(), index):
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
@FORMATS.register("diffusers", "a diffusers DiTTransformer2DModel directory (config.json + safetensors)")
def import_diffusers(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    config_file, weights_file = source / "config.json", source / DIFFUSERS_WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{source} is not a diffusers model directory: expected config.json and "
                              f"{DIFFUSERS_WEIGHTS} (save_pretrained with safe_serialization; .bin is not read)")
    try:
        cfg = json.loads(config_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    if cfg.get("_class_name") not in (None, "DiTTransformer2DModel", "Transformer2DModel"):
        raise CheckpointError(f"{source} holds a {cfg.get('_class_name')}, not a DiTTransformer2DModel")
    fixed = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
             "attention_bias": True}
    for key, want in fixed.items():
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{source}: {key}={cfg.get(key)!r} is not DiT's {want!r}; maskdit cannot express it")
    size, patch, channels = int(cfg.get("sample_size", 32)), int(cfg.get("patch_size", 2)), int(cfg["in_channels"])
    if max(size // 64, 1) != 1:
        raise CheckpointError(f"{source}: sample_size {size} makes diffusers scale its position table "
                              "(interpolation_scale > 1), which maskdit does not express")
    out = int(cfg.get("out_channels") or channels)
    heads, head_dim = int(cfg.get("num_attention_heads", 16)), int(cfg.get("attention_head_dim", 72))
    width, depth = heads * head_dim, int(cfg.get("num_layers", 28))
    from safetensors.torch import load_file

    sd = load_file(weights_file)
    note = json.loads((source / MASKDIT_NOTE).read_text()) if (source / MASKDIT_NOTE).is_file() else {}
    config = {"input_size": [size, size], "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0,
              "num_classes": int(cfg.get("num_embeds_ada_norm") or 0), "learn_sigma": out == 2 * channels,
              "pos_layout": "xy", "time_freq_shift": float(note.get("time_freq_shift", 1.0)),
              "mlp_norm_eps": float(cfg.get("norm_eps", 1e-5))}
    if out not in (channels, 2 * channels) or config["num_classes"] == 0:
        raise CheckpointError(f"{source}: out_channels {out} for {channels} in, {config['num_classes']} classes: "
                              "maskdit imports class-conditional DiTs predicting C or 2C channels")
    with torch.device("meta"):  # names and shapes only, as for DiT
        model = DiT(**config)
    names = diffusers_names(depth)
    _refuse_keys(set(names.values()) | _per_block_embedders(depth), set(sd), source, "diffusers DiT")
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
    return model.config, state, settings


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


def export_diffusers(model: DiT, out: Path) -> dict[str, Any]:
    """Write ``model`` as a diffusers ``DiTTransformer2DModel`` directory; refuses what diffusers cannot
    express. Returns the diffusers config written."""
    problems = []
    if len(model.input_size) != 2 or model.input_size[0] != model.input_size[1]:
        problems.append(f"input {model.input_size} is not a square image")
    if len(set(model.patch_size)) != 1:
        problems.append(f"patch {model.patch_size} is not square")
    if model.attention != "full" or model.fusion is not None or model.task_conditioning:
        problems.append("factorised attention, a SPRINT fusion or task conditioning has no diffusers counterpart")
    if model.num_classes == 0:
        problems.append("diffusers' DiT is class-conditional only")
    if model.mlp_ratio != 4.0:
        problems.append(f"MLP ratio {model.mlp_ratio} (diffusers' DiT blocks use 4)")
    if model.pos_layout != "xy":
        problems.append("the position table is in axis order (a run from before pos_layout): diffusers uses xy")
    if (model.t_embedder.time_scale, model.t_embedder.time_offset) != (1000.0, 0.0):
        problems.append("the time embedding embeds 1 - t (a SiT import): diffusers embeds 1000 t")
    if max(model.input_size[0] // 64, 1) != 1:
        problems.append(f"sample size {model.input_size[0]} makes diffusers rescale its position table")
    if model.decoder is not None or model.precond is not None:
        problems.append("MaskDiT's decoder and EDM preconditioning have no diffusers DiT counterpart")
    if model.skips is not None or model.block_options.rel_grid or model.pos != "sincos":
        problems.append("MDT's long skips, relative position bias and learned or rotary positions have no diffusers "
                        "DiT counterpart")
    if problems:
        raise ConfigError("this model cannot be exported to diffusers: " + "; ".join(problems))
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

    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, out / DIFFUSERS_WEIGHTS)
    write_json_atomic(out / "config.json", config)
    write_json_atomic(out / MASKDIT_NOTE, {"time_freq_shift": model.t_embedder.freq_shift,
                                           "note": "diffusers' DiT embeds time with downscale_freq_shift=1; "
                                                   "maskdit import reads this file to restore the original shift"})
    return config


# -- runs -------------------------------------------------------------------------------------------------
def detect_format(source: Path) -> str:
    if source.is_dir():
        return "diffusers"
    return "dit"


def import_run(source: str | Path, out: str | Path, fmt: str = "auto", num_heads: int | None = None,
               vae: str | None = None) -> Path:
    """Convert ``source`` and write it as a new maskdit run at ``out``; returns the checkpoint written."""
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
    config, state, settings = FORMATS.get(fmt)(source, num_heads)
    aux_state = settings.pop("aux", None)
    model = DiT.from_config(config)
    model.load_state_dict(state)
    aux = None
    if aux_state is not None:  # training-only weights of the recipe the source was trained with
        from maskdit.recipes import build_recipe

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
    cfg = load_config(base=base)
    codec = {"name": "vae", "vae": str(vae) if vae else "", "scaling_factor": 0.18215, "channels": 3} \
        if config["in_channels"] == 4 else {"name": "uint8"}
    info = {"config": cfg.to_dict(), "model": model.config,
            "dataset": {"name": "imported", "shape": [config["in_channels"], *config["input_size"]], "size": 0,
                        "num_classes": config["num_classes"], "class_names": [], "codec": codec},
            "imported": {"source": str(source), "format": fmt}}
    optimizer = torch.optim.AdamW(model.parameters())
    files, meta = checkpoint_files(model, model, optimizer, aux)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", info)
    return save_checkpoint(out, 0, files, {"optimizer": meta, "data_position": {}, "wall_time": 0.0}, info)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DiT:
    """The backbone of a run or checkpoint directory with its EMA weights, in eval mode."""
    from maskdit.checkpoint import load_run

    return load_run(path, ema=True, device=device).model
