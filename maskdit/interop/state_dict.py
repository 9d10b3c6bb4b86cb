"""What every adapter shares: the ``FORMATS`` registry, reading and checking a state dict, and the DiT layout.

Reading: :func:`read_state_dict` takes a ``.pt``/``.pth`` (the state dict itself or one under ``ema``,
``model`` or ``state_dict``; a leading ``module.`` is dropped) or a ``.safetensors`` file, without ever
unpickling (``torch.load(weights_only=True)``), and refuses names that are not strings, values that are not
tensors, and weights that are not finite floating point (integer tensors only as ``*_index`` buffers).

Checks, each raising one line that names the tensor and the fix: :func:`required_tensor` (present, with the
right number of non-empty axes), :func:`position_table` (``(1, tokens, width)``, a square grid),
:func:`refuse_keys` (the names a layout has, no more, no fewer), :func:`checked_shapes` (every tensor fits
the inferred model), :func:`dit_heads` (heads from DiT's presets or ``--num-heads``), and the JSON checks
the diffusers adapter and ``--vae`` share (:func:`read_json_object`, :func:`is_whole`, :func:`is_number`).

The DiT layout (:func:`dit_layout`), which the ``dit``, ``sit`` and ``maskdit`` adapters build on and whose
names ``mdt`` reuses outside its blocks: facebookresearch/DiT's names are maskdit's but for the patch
embedding (``x_embedder.proj.*`` -> ``patch_embed.*``, the convolution flattened to ``(width, p * p * C)``,
channel fastest) and the label table (``y_embedder.embedding_table.weight`` -> ``y_embedder.table.weight``);
``pos_embed`` must be DiT's fixed sin-cos table and is not kept (maskdit computes it).
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

from maskdit.errors import CheckpointError, ConfigError
from maskdit.grid import sincos_pos_embed
from maskdit.model import DiT
from maskdit.registry import Registry

#: source format name -> converter ``(path, num_heads) -> (model config, state dict, run settings)``; the
#: settings may carry ``"aux"``: the tensors of the training recipe (``settings["mask"]["recipe"]``) the
#: source was trained with, written as the run's training-only weights; ``"dataset"``: dataset facts
#: (``codec``, ``class_names``); ``"origin"``: ``(file, fix)``, a file beside the weights whose settings
#: the converter took, named with ``fix`` when those settings do not load. Each adapter module registers
#: its formats here when imported; ``maskdit.interop.convert`` imports them all.
FORMATS: Registry[Any] = Registry("import format", key="--format")
#: name -> ``export(model, out, run) -> (config written, one-line summary)``: ``maskdit export --format NAME``.
EXPORTS: Registry[Any] = Registry("export format", key="--format")
#: DiT's width -> heads (S, B, L, XL), for checkpoints that do not say
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}


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
            raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(e)}): it is damaged or "
                                  "truncated; copy it again, or write it again with save_pretrained") from None
        return checked_values(data, path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a file torch.save wrote (nor .safetensors): pass a DiT/SiT checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused: the file holds more than tensors
        raise CheckpointError(f"{path} holds objects other than tensors, which maskdit never unpickles "
                              f"({first_line(e)[:160]}): save the EMA state dict alone "
                              "(torch.save(ckpt['ema'], 'ema.pt'))") from None
    except Exception as e:  # noqa: BLE001 - zip and storage errors of a damaged file have no common type
        raise CheckpointError(f"cannot read {path} ({first_line(e)[:160]}): the file is damaged or truncated; "
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
    return checked_values({k.removeprefix("module."): v for k, v in data.items()}, path)


def first_line(e: BaseException) -> str:
    """The first line of an error's message, without terminal colour codes (torch's load errors carry some)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def checked_values(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
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


def required_tensor(sd: dict[str, torch.Tensor], key: str, source: Path, dims: int, what: str) -> torch.Tensor:
    """``sd[key]``, which the architecture is inferred from: it must exist and have ``dims`` axes, all non-empty."""
    if key not in sd:
        raise CheckpointError(f"{source} has no {key}: it is not a complete checkpoint of this layout (--format "
                              "names the layout)")
    value = sd[key]
    if value.dim() != dims or 0 in value.shape:
        raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, not {what}: the checkpoint is "
                              "damaged or of another layout (--format names the layout)")
    return value


def position_table(sd: dict[str, torch.Tensor], key: str, width: int, source: Path,
                   tokens: int | None = None) -> int:
    """The number of tokens of a position table ``(1, tokens, width)``: a positive square (DiT's grids are
    square), ``tokens`` when given."""
    table = required_tensor(sd, key, source, 3, f"(1, tokens, {width}): one row of width {width} per token")
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


def count_modules(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered modules ``PREFIX<i>.`` the state dict holds (blocks, decoder blocks...)."""
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def refuse_keys(expected: set[str], found: set[str], source: Path, kind: str) -> None:
    """Refuse a state dict whose names are not exactly ``expected`` (``kind``: the layout, for the message)."""
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise CheckpointError(f"{source} is missing {len(missing)} tensor(s) a {kind} checkpoint has, e.g. "
                              f"{missing[0]}: is it a {kind} checkpoint? (--format names the layout)")
    if extra:
        raise CheckpointError(f"{source} has {len(extra)} tensor(s) a {kind} checkpoint does not, e.g. {extra[0]}: "
                              f"is it a {kind} checkpoint? (--format names the layout)")


def dit_heads(width: int, num_heads: int | None, source: Path) -> int:
    """``--num-heads``, else the heads of DiT's preset of that width; they must divide the width."""
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise ConfigError(f"{source}: width {width} matches no DiT preset (S 384, B 768, L 1024, XL 1152), so the "
                          "number of attention heads is unknown: pass --num-heads H")
    if width % heads:
        raise ConfigError(f"--num-heads {heads} does not divide the width {width} of {source}")
    return heads


# -- the DiT layout -------------------------------------------------------------------------------------
def patch_embedding(sd: dict[str, torch.Tensor], source: Path) -> torch.Tensor:
    """``x_embedder.proj.weight``, checked to be a square 2-D patch embedding ``(width, channels, p, p)``."""
    proj = required_tensor(sd, "x_embedder.proj.weight", source, 4,
                           "a square 2-D patch embedding (width, channels, p, p)")
    if proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"{source}: x_embedder.proj.weight has shape {tuple(proj.shape)}, not a square 2-D "
                              "patch embedding (width, channels, p, p)")
    return proj


def dit_layout(sd: dict[str, torch.Tensor], source: Path, num_heads: int | None, extra: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The maskdit model config and state dict of a DiT-layout state dict (facebookresearch/DiT models.py);
    ``extra`` adds model fields (a decoder, a preconditioning) whose tensors carry maskdit's own names."""
    if "x_embedder.proj.weight" not in sd:
        hint = "--format maskdit" if "model.x_embedder.proj.weight" in sd else "the directory for a diffusers model"
        raise CheckpointError(f"{source} has no x_embedder.proj.weight: it is not a DiT/SiT state dict (pass {hint})")
    proj = patch_embedding(sd, source)
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = count_modules(sd, "blocks.")
    if depth == 0 or "pos_embed" not in sd:
        raise CheckpointError(f"{source}: no transformer blocks or no pos_embed: not a DiT/SiT state dict")
    tokens = position_table(sd, "pos_embed", width, source)
    side = math.isqrt(tokens)
    final = sd.get("final_layer.linear.weight")
    out = 0 if final is None or final.dim() != 2 else final.shape[0] // (patch * patch)
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"{source}: the final layer predicts {out} channels per pixel for {channels} input "
                              f"channels: expected {channels} or {2 * channels} (learned sigma)")
    num_classes = 0
    if "y_embedder.embedding_table.weight" in sd:  # DiT keeps one extra row: the null label
        num_classes = required_tensor(sd, "y_embedder.embedding_table.weight", source, 2,
                                      f"a label table (classes + 1, {width})").shape[0] - 1
    hidden = 4 * width
    if "blocks.0.mlp.fc1.weight" in sd:
        hidden = required_tensor(sd, "blocks.0.mlp.fc1.weight", source, 2,
                                 f"an MLP's first layer (hidden, {width})").shape[0]
    config = {"input_size": [side * patch] * 2, "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": depth, "num_heads": dit_heads(width, num_heads, source),
              "mlp_ratio": hidden / width, "num_classes": num_classes, "learn_sigma": out == 2 * channels,
              "pos_layout": "xy", **(extra or {})}
    with torch.device("meta"):  # names and shapes only: the import builds the real model once, later
        model = DiT(**config)
    expected = {dit_name(k) for k in model.state_dict()} | {"pos_embed"}
    refuse_keys(expected, set(sd), source, "DiT")
    pos = sincos_pos_embed(width, model.token_grid, reverse_axes=True)
    if not torch.allclose(sd["pos_embed"][0].float(), pos, atol=1e-5):
        raise CheckpointError(f"{source}: pos_embed is not DiT's fixed 2-D sin-cos table for a {side}x{side} grid "
                              "(a learned or interpolated table cannot be imported)")
    state = {k: sd[dit_name(k)] for k in model.state_dict()}
    state["patch_embed.weight"] = proj.permute(0, 2, 3, 1).reshape(width, -1)  # (p, p, C), channel fastest
    return model.config, checked_shapes(model, state, source)


def dit_name(name: str) -> str:
    """DiT's name of a maskdit tensor."""
    if name.startswith("patch_embed."):
        return "x_embedder.proj." + name.split(".", 1)[1]
    if name.startswith("y_embedder.table."):
        return "y_embedder.embedding_table." + name.rsplit(".", 1)[1]
    return name


def checked_shapes(model: DiT, state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """``state`` as float32 contiguous tensors, once every tensor has the shape ``model`` needs."""
    for k, v in model.state_dict().items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: {k} has shape {tuple(state[k].shape)}, the inferred architecture needs "
                                  f"{tuple(v.shape)}: the checkpoint's tensors do not fit one DiT")
    return {k: v.detach().float().contiguous() for k, v in state.items()}


# -- JSON beside the weights ----------------------------------------------------------------------------
def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; ``fix`` says what to do about a damaged one."""
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a JSON text file: {fix}") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {json_kind(data)}, not an object of settings: {fix}")
    return data


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (for messages)."""
    return {list: "list", str: "string", bool: "boolean", type(None): "null", dict: "object"}.get(type(value), "number")


def is_whole(value: Any) -> bool:
    """An integer that is not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_diffusers_config(config_file: Path, classes: tuple[str, ...], sizes: dict[str, int | None],
                          fixed: dict[str, Any], nullable: set[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The size keys of a diffusers ``config.json`` of one of ``classes`` (diffusers' default for a key left out),
    each a positive whole number (or null for the keys in ``nullable``); ``fixed`` keys must hold maskdit's value.
    ``raw``: the whole config, ``missing``: the size keys left out (for messages)."""
    cfg = read_json_object(config_file, "it is not a diffusers model config (save the model again with "
                                        "save_pretrained)")
    name = cfg.get("_class_name")
    class_name = classes[0]
    if name not in (None, *classes):
        raise CheckpointError(f"{config_file.parent} holds a {name}, not a {class_name}: pass the --format of that "
                              "model (or auto)")
    for key, want in fixed.items():
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{config_file}: {key}={json.dumps(cfg.get(key))} is not {json.dumps(want)}, "
                                  f"what maskdit's {class_name} computes; maskdit cannot express it")
    out: dict[str, Any] = {"raw": cfg, "missing": sorted(set(sizes) - set(cfg))}
    for key, default in sizes.items():
        value = cfg.get(key, default)
        if value is None and key in nullable:
            out[key] = None
            continue
        if not is_whole(value) or value < 1:
            raise CheckpointError(f"{config_file}: {key} is {json.dumps(value)}, not a positive whole number: set "
                                  f"{key} to the model's value (save_pretrained writes every key)")
        out[key] = value
    return out


def fact(cfg: dict[str, Any], key: str) -> str:
    """``KEY VALUE`` of a diffusers config, saying when the value is diffusers' default for a key left out."""
    return f"{key} {json.dumps(cfg[key])}" + (" (left out, so diffusers' default)" if key in cfg["missing"] else "")


# -- exporting ---------------------------------------------------------------------------------------------
def block_problems(model: DiT) -> list[str]:
    """What of ``model`` no DiT-style diffusers transformer computes, whatever its conditioning, each named by the
    run's config key: square images and patches, full attention, DiT's GELU MLP and LayerNorms, no layers that
    only maskdit has. A format's own rules come on top."""
    problems = []
    if len(model.input_size) != 2 or model.input_size[0] != model.input_size[1]:
        problems.append(f"input {'x'.join(map(str, model.input_size))} (not a square image)")
    if len(set(model.patch_size)) != 1:
        problems.append(f"model.patch_size={list(model.patch_size)} (not square)")
    if model.attention != "full":
        problems.append(f"model.attention={model.attention}")
    if model.fusion is not None:
        problems.append("mask.recipe=sprint (its fusion layer)")
    if model.task_conditioning:
        problems.append("task.names (task conditioning)")
    if model.control is not None:
        problems.append(f"control.signal={model.control_signal} (a control map's embedding)")
    if model.mlp_ratio != 4.0:
        problems.append(f"model.mlp_ratio={model.mlp_ratio:g} (diffusers' blocks use 4)")
    if model.block_options.mlp != "gelu":
        problems.append(f"model.mlp={model.block_options.mlp} (diffusers' blocks have a GELU MLP)")
    if model.block_options.norm != "layernorm":
        problems.append(f"model.norm={model.block_options.norm} (diffusers' blocks use LayerNorm)")
    if any(model.options_of(i).moe is not None for i in range(model.depth)):
        problems.append(f"model.moe.experts={model.moe.experts} (a mixture of experts)")
    if model.pos_layout != "xy":
        problems.append(f"model.pos_layout={model.pos_layout} (diffusers' position table is xy)")
    if model.pos == "rope":
        problems.append("model.pos=rope (rotary positions)")
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


def fixed_embedding_problems(model: DiT, name: str) -> list[str]:
    """What a caption transformer with a fixed time embedding and MLP norm (PixArt's and SD3's: no frequency shift,
    eps 1e-6; ``name`` says which) cannot express of ``model``."""
    if model.t_embedder.freq_shift != 0.0 or model.mlp_norm_eps != 1e-6:
        return [f"model.time_freq_shift / model.mlp_norm_eps ({name}: 0 and 1e-6)"]
    return []


def float_state(model: DiT) -> dict[str, torch.Tensor]:
    """``model``'s tensors in float32 on the CPU: what an export converts."""
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def refuse_problems(problems: list[str], target: str) -> None:
    """One line naming every option of the model that ``target`` cannot compute, or nothing."""
    if problems:
        raise ConfigError(f"this model cannot be exported as a {target}: what it was trained with has no counterpart "
                          "there, so it would compute another function: " + "; ".join(problems)
                          + ": export a run trained without " + ("it" if len(problems) == 1 else "these options"))


def split_plan(state: dict[str, torch.Tensor], plan: dict[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """The inverse of an import plan: each maskdit tensor cut into the diffusers tensors it was made of (equal
    parts along the first axis)."""
    out = {}
    for ours, theirs in plan.items():
        for name, part in zip(theirs, state[ours].chunk(len(theirs))):
            out[name] = part.clone().contiguous()
    return out


def conv_patch(model: DiT, weight: torch.Tensor) -> torch.Tensor:
    """maskdit's patch embedding (W, p * p * C) as diffusers' patch convolution (W, C, p, p)."""
    p = model.patch_size[0]
    return weight.reshape(model.hidden_size, p, p, -1).permute(0, 3, 1, 2).contiguous()
