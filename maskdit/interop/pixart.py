"""Adapter for diffusers' ``PixArtTransformer2DModel`` (``--format pixart``; ``auto`` picks it by the directory's
``config.json`` ``_class_name``): PixArt-alpha's layout, a caption-conditioned DiT with cross-attention and
adaLN-single, as a maskdit model with ``condition=hf``, ``text=cross``, ``adaln=single``.

A directory holds ``config.json`` (a key left out takes diffusers' default, as ``from_pretrained`` does) and
``diffusion_pytorch_model.safetensors``. diffusers' name -> maskdit's (:func:`pixart_plan`):

* ``pos_embed.proj.weight`` (W, C, p, p) -> ``patch_embed.weight`` (W, p * p * C), channel fastest;
  ``pos_embed.proj.bias`` -> ``patch_embed.bias``
* ``adaln_single.emb.timestep_embedder.linear_{1,2}.*`` -> ``t_embedder.mlp.{0,2}.*``;
  ``adaln_single.linear.*`` -> ``t_block.1.*`` (the shared adaLN-single map)
* ``caption_projection.linear_{1,2}.*`` -> ``y_embedder.proj.{0,2}.*`` (Linear, tanh-GELU, Linear)
* ``transformer_blocks.N.scale_shift_table`` -> ``blocks.N.adaLN_modulation.table``
* ``transformer_blocks.N.attn1.to_{q,k,v}.*`` -> ``blocks.N.attn.qkv.*`` (concatenated in that order);
  ``attn1.to_out.0.*`` -> ``blocks.N.attn.proj.*``
* ``transformer_blocks.N.attn2.to_q.*`` -> ``blocks.N.context.q.*``; ``attn2.to_{k,v}.*`` ->
  ``blocks.N.context.kv.*`` (concatenated); ``attn2.to_out.0.*`` -> ``blocks.N.context.proj.*``
* ``transformer_blocks.N.ff.net.{0.proj,2}.*`` -> ``blocks.N.mlp.{fc1,fc2}.*``
* ``scale_shift_table`` (2, W) -> ``final_layer.adaLN_modulation.table``; ``proj_out.*`` -> ``final_layer.linear.*``
  (diffusers' unpatchify orders a token's values (p, p, C) as maskdit's does)

The model reads caption *values* ``(B, 1 + L, E + 1)`` (:mod:`maskdit.conditions.hf`): rows ``1..L`` hold the T5
features diffusers takes as ``encoder_hidden_states`` (``E = caption_channels``) and in the last channel its
``encoder_attention_mask``; row 0's last channel is 1 for a caption (PixArt has no pooled vector). ``L`` is
:data:`PIXART_LENGTH`, enough for PixArt-alpha's 120 tokens and PixArt-Sigma's 300 (padding is masked, so a
shorter caption padded to it computes the same). maskdit's null caption (guidance's unconditional branch) is
learned in maskdit; PixArt has none, so the import makes it the caption of one all-zero feature token:
``null_token`` is the caption projection of zeros. ``model(x, k / 1000, values)`` then equals diffusers'
``forward(x, encoder_hidden_states, timestep=k, encoder_attention_mask=mask)``.

The position table is diffusers' 2-D sin-cos table at its ``interpolation_scale``: maskdit's fixed table where
the two are equal (scale 1), otherwise the exact table as ``model.pos=learned`` (PixArt-Sigma, scale 2).
Refused, each naming its config key: ``use_additional_conditions`` (PixArt-alpha 1024's resolution and
aspect-ratio embeddings), a ``norm_eps`` other than 1e-6, no ``caption_channels``, a ``cross_attention_dim``
other than the width, and any other block type, activation or attention than PixArt's.

The T5 encoder is not part of the transformer: when the directory sits in a diffusers pipeline whose
``text_encoder`` (beside it) has width ``caption_channels``, the run names that encoder (its tokenizer files must
be copied into it for ``--prompt``); otherwise it names none and reads encoded values only. The helpers below
:func:`import_pixart` are shared with :mod:`maskdit.interop.sd3`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from maskdit.conditions.hf import check_encoder_dir, fingerprint
from maskdit.errors import CheckpointError, ConfigError
from maskdit.grid import sincos_1d, sincos_pos_embed
from maskdit.interop.state_dict import (
    EXPORTS,
    FORMATS,
    block_problems,
    checked_shapes,
    conv_patch,
    count_modules,
    fact,
    fixed_embedding_problems,
    float_state,
    is_number,
    read_diffusers_config,
    read_state_dict,
    refuse_keys,
    refuse_problems,
    required_tensor,
    split_plan,
)
from maskdit.model import DiT

WEIGHTS = "diffusion_pytorch_model.safetensors"
#: PixArtTransformer2DModel's config keys that size the model, with diffusers' defaults (``None``: may be null)
PIXART_SIZES: dict[str, int | None] = {"sample_size": 128, "patch_size": 2, "in_channels": 4, "out_channels": 8,
                                       "num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28,
                                       "cross_attention_dim": 1152, "caption_channels": None}
#: what maskdit's PixArt is in diffusers' terms; any other value computes something else
PIXART_FIXED = {"norm_type": "ada_norm_single", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
                "attention_bias": True, "attention_type": "default"}
#: size keys diffusers lets be null (out_channels: as in_channels; the others: the layer is left out)
NULLABLE = {"out_channels", "cross_attention_dim", "caption_channels", "pos_embed_max_size"}
#: caption tokens the imported model reads (PixArt-alpha's pipeline pads to 120, PixArt-Sigma's to 300)
PIXART_LENGTH = 300


@FORMATS.register("pixart", "a diffusers PixArtTransformer2DModel directory (PixArt-alpha/Sigma: T5 captions, "
                  "cross-attention, adaLN-single)", diffusers_class="PixArtTransformer2DModel")
def import_pixart(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    """A PixArt transformer directory as a caption-conditioned maskdit model with PixArt's DDPM settings."""
    config_file, weights_file = diffusers_files(source, "PixArtTransformer2DModel")
    cfg = read_diffusers_config(config_file, ("PixArtTransformer2DModel",), PIXART_SIZES, PIXART_FIXED, NULLABLE)
    size, patch, channels = cfg["sample_size"], cfg["patch_size"], cfg["in_channels"]
    out = cfg["out_channels"] or channels
    heads, depth = cfg["num_attention_heads"], cfg["num_layers"]
    width = heads * cfg["attention_head_dim"]
    check_heads(num_heads, cfg, config_file)
    eps = cfg["raw"].get("norm_eps", 1e-6)
    if not is_number(eps) or abs(eps - 1e-6) > 1e-12:
        raise CheckpointError(f"{config_file}: norm_eps {json.dumps(eps)} is not PixArt's 1e-6, which maskdit's "
                              "blocks use before attention; maskdit cannot express another epsilon there")
    additional = cfg["raw"].get("use_additional_conditions")
    if additional is None:  # diffusers' default: on for the 1024 model (sample_size 128)
        additional = size == 128
    if additional is not False:
        raise CheckpointError(f"{config_file}: use_additional_conditions is {json.dumps(additional)}"
                              + (" (diffusers' default for sample_size 128)" if "use_additional_conditions"
                                 not in cfg["raw"] or cfg["raw"]["use_additional_conditions"] is None else "")
                              + ": PixArt-alpha 1024's resolution and aspect-ratio embeddings, which maskdit does "
                              "not express")
    scale = cfg["raw"].get("interpolation_scale")
    if scale is None:
        scale = max(size // 64, 1)
    if not is_number(scale) or scale <= 0:
        raise CheckpointError(f"{config_file}: interpolation_scale is {json.dumps(scale)}, not a positive number "
                              "or null")
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"{config_file}: {fact(cfg, 'out_channels')} for {fact(cfg, 'in_channels')}: maskdit "
                              "predicts C or 2C channels (learned sigma)")
    caption = cfg["caption_channels"]
    if caption is None:
        raise CheckpointError(f"{config_file}: caption_channels is null (no caption projection): maskdit's text "
                              "conditioner always projects the encoder's features; set caption_channels to the "
                              "encoder's width")
    if cfg["cross_attention_dim"] != width:
        raise CheckpointError(f"{config_file}: {fact(cfg, 'cross_attention_dim')} is not the width {width} "
                              f"({fact(cfg, 'num_attention_heads')} x {fact(cfg, 'attention_head_dim')}): "
                              "PixArt's projected captions have the model width, as maskdit's cross-attention reads "
                              "them")
    check_grid(cfg, config_file)
    sd = read_state_dict(weights_file)
    check_depth(sd, cfg, config_file, weights_file)
    check_patch_width(sd, cfg, weights_file, width)
    side = size // patch
    table = diffusers_sincos(width, side, scale)
    pos = "sincos" if torch.allclose(table, sincos_pos_embed(width, (side, side), reverse_axes=True),
                                     atol=1e-6) else "learned"
    encoder, encoder_print = pipeline_encoder(source, caption)
    options = {"encoder": encoder, "fingerprint": encoder_print, "width_in": caption, "length": PIXART_LENGTH,
               "prefix": "", "refiner": 0, "projection": "mlp", "pooled_in": 0}
    config = {"input_size": [size, size], "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0, "num_classes": 0,
              "learn_sigma": out == 2 * channels, "pos_layout": "xy", "pos": pos, "time_freq_shift": 0.0,
              "mlp_norm_eps": 1e-6, "condition": "hf", "condition_options": options, "text": "cross",
              "adaln": "single"}
    model = meta_model(config, config_file)
    plan = pixart_plan(depth)
    refuse_keys({k for parts in plan.values() for k in parts} | {"pos_embed.proj.weight"}, set(sd), source,
                "diffusers PixArt")
    state = gather(model, plan, sd, weights_file, sizes_hint(cfg))
    state["patch_embed.weight"] = patch_weight(sd, model, weights_file, sizes_hint(cfg))
    if pos == "learned":
        state["pos_embed"] = table[None]
    with torch.no_grad():  # the null caption: one all-zero feature token, through the caption projection
        hidden = F.gelu(state["y_embedder.proj.0.bias"].float(), approximate="tanh")
        state["y_embedder.null_token"] = F.linear(hidden, state["y_embedder.proj.2.weight"].float(),
                                                  state["y_embedder.proj.2.bias"].float())
    state["y_embedder.null_pooled"] = torch.zeros(width)  # unused: PixArt has no pooled vector
    state = checked_shapes(model, {k: state[k] for k in model.state_dict()}, source)
    sample = {"sampler": "ddpm", "steps": 100, "guidance_scale": 4.5, "guidance_channels": channels} \
        if config["learn_sigma"] else {"sampler": "ddim", "steps": 20, "guidance_scale": 4.5}
    settings = {"objective": {"name": "ddpm", "schedule": "linear", "num_steps": 1000, "step_offset": 0},
                "sample": sample, "model": run_model_settings(config, encoder)}
    return model.config, state, settings


def pixart_plan(depth: int) -> dict[str, tuple[str, ...]]:
    """maskdit tensor name -> the diffusers PixArt tensors it is made of (concatenated along the first axis); the
    patch embedding, the position table and the null caption are computed apart."""
    plan: dict[str, tuple[str, ...]] = {"patch_embed.bias": ("pos_embed.proj.bias",),
                                        "final_layer.adaLN_modulation.table": ("scale_shift_table",)}
    for p in ("weight", "bias"):
        plan[f"t_embedder.mlp.0.{p}"] = (f"adaln_single.emb.timestep_embedder.linear_1.{p}",)
        plan[f"t_embedder.mlp.2.{p}"] = (f"adaln_single.emb.timestep_embedder.linear_2.{p}",)
        plan[f"t_block.1.{p}"] = (f"adaln_single.linear.{p}",)
        plan[f"y_embedder.proj.0.{p}"] = (f"caption_projection.linear_1.{p}",)
        plan[f"y_embedder.proj.2.{p}"] = (f"caption_projection.linear_2.{p}",)
        plan[f"final_layer.linear.{p}"] = (f"proj_out.{p}",)
    for i in range(depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        plan[f"{ours}adaLN_modulation.table"] = (f"{theirs}scale_shift_table",)
        for p in ("weight", "bias"):
            plan[f"{ours}attn.qkv.{p}"] = tuple(f"{theirs}attn1.to_{n}.{p}" for n in "qkv")
            plan[f"{ours}attn.proj.{p}"] = (f"{theirs}attn1.to_out.0.{p}",)
            plan[f"{ours}context.q.{p}"] = (f"{theirs}attn2.to_q.{p}",)
            plan[f"{ours}context.kv.{p}"] = (f"{theirs}attn2.to_k.{p}", f"{theirs}attn2.to_v.{p}")
            plan[f"{ours}context.proj.{p}"] = (f"{theirs}attn2.to_out.0.{p}",)
            plan[f"{ours}mlp.fc1.{p}"] = (f"{theirs}ff.net.0.proj.{p}",)
            plan[f"{ours}mlp.fc2.{p}"] = (f"{theirs}ff.net.2.{p}",)
    return plan


# -- shared with maskdit.interop.sd3 ----------------------------------------------------------------------
def diffusers_files(source: Path, class_name: str) -> tuple[Path, Path]:
    """``config.json`` and the safetensors weights of a ``save_pretrained`` directory, both required."""
    config_file, weights_file = source / "config.json", source / WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{source} is not a diffusers {class_name} directory: expected config.json and "
                              f"{WEIGHTS} (save_pretrained with safe_serialization; .bin is not read)")
    return config_file, weights_file


def sizes_hint(cfg: dict[str, Any]) -> str:
    """Every size key of the config with its value, for shape messages."""
    return ", ".join(fact(cfg, k) for k in cfg if k not in ("raw", "missing"))


def check_heads(num_heads: int | None, cfg: dict[str, Any], config_file: Path) -> None:
    if num_heads not in (None, cfg["num_attention_heads"]):
        raise ConfigError(f"--num-heads {num_heads} contradicts {config_file}, which says "
                          f"{fact(cfg, 'num_attention_heads')}")


def check_grid(cfg: dict[str, Any], config_file: Path) -> None:
    if cfg["sample_size"] % cfg["patch_size"]:
        raise CheckpointError(f"{config_file}: {fact(cfg, 'patch_size')} does not divide {fact(cfg, 'sample_size')}: "
                              "set both to the model's values")


def check_depth(sd: dict[str, torch.Tensor], cfg: dict[str, Any], config_file: Path, weights_file: Path) -> None:
    blocks = count_modules(sd, "transformer_blocks.")
    if blocks != cfg["num_layers"]:
        raise CheckpointError(f"{config_file} says {fact(cfg, 'num_layers')} but {weights_file} holds {blocks} "
                              "transformer blocks: set num_layers to the model's depth (or the weights belong to "
                              "another model)")


def check_patch_width(sd: dict[str, torch.Tensor], cfg: dict[str, Any], weights_file: Path, width: int) -> None:
    """The patch embedding's width is the config's, before a model of that width is built."""
    proj = required_tensor(sd, "pos_embed.proj.weight", weights_file, 4, "a patch embedding (width, channels, p, p)")
    if proj.shape[0] != width:
        raise CheckpointError(f"{weights_file}: pos_embed.proj.weight has shape {tuple(proj.shape)}, but config.json's "
                              f"{fact(cfg, 'num_attention_heads')} x {fact(cfg, 'attention_head_dim')} make the "
                              f"width {width}: set both to the model's values")


def meta_model(config: dict[str, Any], config_file: Path) -> DiT:
    """The maskdit model of ``config`` on the meta device (names and shapes only)."""
    try:
        with torch.device("meta"):
            return DiT(**config)
    except ConfigError as e:
        raise CheckpointError(f"{config_file} describes a model maskdit cannot build ({e}): set its sizes to the "
                              "model's values") from None


def gather(model: DiT, plan: dict[str, tuple[str, ...]], sd: dict[str, torch.Tensor], weights_file: Path,
           hint: str) -> dict[str, torch.Tensor]:
    """maskdit's tensors from ``plan`` (each the concatenation of its diffusers parts), every part checked to have
    its share of the maskdit tensor's shape; a mismatch names the diffusers tensor and the config's sizes."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {}
    for ours, theirs in plan.items():
        want = shapes[ours]
        part = (want[0] // len(theirs), *want[1:])
        for name in theirs:
            if tuple(sd[name].shape) != part:
                raise CheckpointError(f"{weights_file}: {name} has shape {tuple(sd[name].shape)}, but config.json "
                                      f"({hint}) needs {part}: the weights and config.json describe different "
                                      "models; fix config.json or use the weights saved with it")
        state[ours] = torch.cat([sd[n] for n in theirs]) if len(theirs) > 1 else sd[theirs[0]]
    return state


def patch_weight(sd: dict[str, torch.Tensor], model: DiT, weights_file: Path, hint: str) -> torch.Tensor:
    """``pos_embed.proj.weight`` (W, C, p, p) as maskdit's patch embedding (W, p * p * C), channel fastest."""
    proj = sd["pos_embed.proj.weight"]
    want = (model.hidden_size, model.in_channels, *model.patch_size)
    if tuple(proj.shape) != want:
        raise CheckpointError(f"{weights_file}: pos_embed.proj.weight has shape {tuple(proj.shape)}, but config.json "
                              f"({hint}) needs {want}: fix config.json or use the weights saved with it")
    return proj.permute(0, 2, 3, 1).reshape(model.hidden_size, -1)


def diffusers_sincos(width: int, side: int, scale: float = 1.0, base: float | None = None) -> torch.Tensor:
    """diffusers' 2-D sin-cos table ``(side * side, width)`` (``get_2d_sincos_pos_embed``): a token at row ``r``,
    column ``c`` sits at ``(r, c) / (side / base) / scale`` (``base`` defaults to ``side``), positions formed in
    float32 as diffusers does; the first half of the channels encodes the column, the second the row."""
    pos = torch.arange(side, dtype=torch.float32) / (side / (base or side)) / scale
    rows, cols = torch.meshgrid(pos.double(), pos.double(), indexing="ij")
    return torch.cat([sincos_1d(width // 2, cols.reshape(-1)), sincos_1d(width // 2, rows.reshape(-1))], 1).float()


def pipeline_encoder(source: Path, width: int) -> tuple[str, str]:
    """The text encoder of the diffusers pipeline the directory sits in (``../text_encoder``) when its width is
    ``width``: its path and fingerprint; otherwise a placeholder that says the model reads encoded values only."""
    root = source.resolve().parent / "text_encoder"
    try:
        check_encoder_dir(root)
        cfg = json.loads((root / "config.json").read_text())
        found = cfg.get("d_model", cfg.get("hidden_size")) if isinstance(cfg, dict) else None
    except (ConfigError, OSError, ValueError):
        found = None
    if found == width:
        return str(root), fingerprint(root)
    return f"NO-ENCODER (imported): encoder features of width {width}; pass model.text_encoder=DIR", "none"


def run_model_settings(config: dict[str, Any], encoder: str) -> dict[str, Any]:
    """The run config's ``model`` keys an import of a caption-conditioned model sets beside the sizes."""
    return {"conditional": True, "condition": "hf", "text": config["text"], "adaln": config["adaln"],
            "text_double": config.get("text_double"), "qk_norm": bool(config.get("qk_norm", False)),
            "text_encoder": encoder, "text_length": config["condition_options"]["length"]}


def pixart_problems(model: DiT) -> list[str]:
    """What of ``model`` diffusers' ``PixArtTransformer2DModel`` cannot compute, each named by its config key."""
    problems = block_problems(model)
    options = model.config.get("condition_options") or {}
    if model.config.get("condition") != "hf" or options.get("projection") != "mlp" or options.get("pooled_in") \
            or options.get("refiner"):
        problems.append("model.condition (PixArt reads a frozen encoder's features through a two-layer projection, "
                        "with no pooled vector and no refiner: model.condition=hf as a PixArt import has it)")
    if model.text != "cross":
        problems.append(f"model.text={model.text} (PixArt cross-attends to the caption)")
    if model.adaln != "single":
        problems.append(f"model.adaln={model.adaln} (PixArt's blocks share adaLN-single)")
    if model.block_options.qk_norm:
        problems.append("model.qk_norm=true (PixArt does not normalise queries and keys)")
    if model.pos != "sincos":
        problems.append(f"model.pos={model.pos} (PixArt computes a fixed sin-cos table)")
    return problems + fixed_embedding_problems(model, "PixArt")


@EXPORTS.register("pixart", "a diffusers PixArtTransformer2DModel directory (a caption model with cross-attention "
                  "and adaLN-single, as a PixArt import)")
def export_pixart(model: DiT, out: Path, run: Any = None) -> tuple[dict[str, Any], str]:
    """Write ``model`` as a PixArt transformer directory. maskdit's learned null caption has no place there (the
    pipelines encode the empty prompt instead); every conditional prediction is the same function."""
    refuse_problems(pixart_problems(model), "diffusers PixArtTransformer2DModel")
    state = float_state(model)
    sd = split_plan(state, pixart_plan(model.depth))
    sd["pos_embed.proj.weight"] = conv_patch(model, state["patch_embed.weight"])
    width = model.hidden_size
    config = {"_class_name": "PixArtTransformer2DModel", **PIXART_FIXED, "sample_size": model.input_size[0],
              "patch_size": model.patch_size[0], "in_channels": model.in_channels,
              "out_channels": model.out_channels, "num_layers": model.depth, "num_attention_heads": model.num_heads,
              "attention_head_dim": width // model.num_heads, "cross_attention_dim": width,
              "caption_channels": model.conditioner.width_in, "norm_eps": 1e-6, "interpolation_scale": 1,
              "use_additional_conditions": False}
    write_diffusers(out, sd, config)
    return config, (f"PixArtTransformer2DModel, {model.depth} layers, width {width}, captions of width "
                    f"{model.conditioner.width_in}; load it with diffusers.PixArtTransformer2DModel.from_pretrained"
                    f"('{out}')")


def write_diffusers(out: Path, sd: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """A ``save_pretrained`` directory: the weights and ``config.json``, appearing whole or not at all."""
    from safetensors.torch import save_file

    from maskdit.files import atomic_directory, write_json_atomic

    with atomic_directory(out) as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp / WEIGHTS)
        write_json_atomic(tmp / "config.json", config)
