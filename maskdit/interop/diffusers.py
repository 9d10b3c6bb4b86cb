"""Adapter for diffusers' ``DiTTransformer2DModel`` (``--format diffusers``, the default for a directory):
import of a ``save_pretrained`` directory and :func:`export_diffusers` back to one.

A directory holds ``config.json`` (the sizes: ``sample_size``, ``patch_size``, ``in_channels``,
``out_channels``, ``num_attention_heads``, ``attention_head_dim``, ``num_layers``, ``num_embeds_ada_norm``,
``norm_eps``; a key left out takes diffusers' default), ``diffusion_pytorch_model.safetensors`` and, when
maskdit wrote it, ``maskdit.json`` (:func:`read_note`). diffusers' name -> maskdit's (:func:`diffusers_names`):

* ``pos_embed.proj.weight`` (W, C, p, p) -> ``patch_embed.weight`` (W, p * p * C); ``pos_embed.proj.bias``
  -> ``patch_embed.bias``
* ``transformer_blocks.0.norm1.emb.timestep_embedder.linear_{1,2}.*`` -> ``t_embedder.mlp.{0,2}.*``;
  ``transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight`` -> ``y_embedder.table.weight``;
  the copies in blocks 1.. must equal block 0's (maskdit has one embedder; the export writes them back)
* ``transformer_blocks.N.attn1.to_{q,k,v}.*`` -> ``blocks.N.attn.qkv.*`` (concatenated in that order)
* ``transformer_blocks.N.attn1.to_out.0.*`` -> ``blocks.N.attn.proj.*``
* ``transformer_blocks.N.ff.net.{0.proj,2}.*`` -> ``blocks.N.mlp.{fc1,fc2}.*``
* ``transformer_blocks.N.norm1.linear.*`` -> ``blocks.N.adaLN_modulation.1.*``
* ``proj_out_1.*``, ``proj_out_2.*`` -> ``final_layer.adaLN_modulation.1.*``, ``final_layer.linear.*``

diffusers' time embedding shifts the sinusoid frequencies (``downscale_freq_shift=1``) and its pre-MLP
LayerNorm has eps ``norm_eps``: the model config keeps both (``time_freq_shift``, ``mlp_norm_eps``).
``maskdit.json`` gives back what an export of a maskdit run dropped: the run's time shift, objective,
sampling settings and dataset facts. :func:`diffusers_problems` names, by the run's config key, each
option diffusers' DiT cannot compute; an export refuses them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from maskdit.errors import CheckpointError, ConfigError
from maskdit.files import atomic_directory, write_json_atomic
from maskdit.interop.state_dict import (
    EXPORTS,
    FORMATS,
    block_problems,
    checked_shapes,
    count_modules,
    float_state,
    is_number,
    json_kind,
    read_diffusers_config,
    read_json_object,
    read_state_dict,
    refuse_keys,
    required_tensor,
)
from maskdit.model import DiT

#: DiTTransformer2DModel's config keys that shape the model, with diffusers' defaults (a key that config.json
#: leaves out means its default there, as for ``from_pretrained``); ``None``: the key may be null
DIFFUSERS_SIZES: dict[str, int | None] = {"sample_size": 32, "patch_size": 2, "in_channels": 4, "out_channels": None,
                                          "num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28,
                                          "num_embeds_ada_norm": 1000}
#: what maskdit's DiT block is in diffusers' terms; any other value cannot be expressed
DIFFUSERS_FIXED = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
                   "attention_bias": True}
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
MASKDIT_NOTE = "maskdit.json"  #: what an export adds so that re-importing it is exact


def diffusers_config(config_file: Path) -> dict[str, Any]:
    """The settings of a diffusers ``config.json`` that maskdit reads, type-checked (diffusers' defaults for
    missing keys); refuses what maskdit's DiT cannot express."""
    out = read_diffusers_config(config_file, ("DiTTransformer2DModel", "Transformer2DModel"), DIFFUSERS_SIZES,
                                DIFFUSERS_FIXED, ("out_channels", "num_embeds_ada_norm"))
    cfg = out.pop("raw")
    eps = cfg.get("norm_eps", 1e-5)
    if not is_number(eps) or eps <= 0:
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
    """A diffusers DiT directory; a maskdit export's ``maskdit.json`` restores the run's own settings."""
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
    blocks = count_modules(sd, "transformer_blocks.")
    if blocks != depth:
        raise CheckpointError(f"{config_file} says {_fact(cfg, 'num_layers')} but {weights_file} holds {blocks} "
                              "transformer blocks: set num_layers to the model's depth (or the weights belong to "
                              "another model)")
    proj = required_tensor(sd, "pos_embed.proj.weight", weights_file, 4, "a patch embedding (width, channels, p, p)")
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
    refuse_keys(set(names.values()) | _per_block_embedders(depth), set(sd), source, "diffusers DiT")
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
    state = checked_shapes(model, {k: state[k] for k in model.state_dict()}, source)
    settings = {"objective": {"name": "ddpm", "schedule": "linear", "num_steps": 1000, "step_offset": 0},
                "sample": {"sampler": "ddpm" if config["learn_sigma"] else "ddim", "steps": 250,
                           "guidance_scale": 4.0, "guidance_channels": 3}}
    for section in ("objective", "sample"):  # a maskdit export: the settings the run was trained and sampled with
        if section in note:
            settings[section] = note[section]
    if "dataset" in note:
        settings["dataset"] = note["dataset"]
    if (source / MASKDIT_NOTE).is_file():  # settings maskdit did not write itself: named if they do not load
        settings["origin"] = (source / MASKDIT_NOTE, f"write the export again, or remove {MASKDIT_NOTE} to import "
                              "the directory as a plain diffusers DiT")
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
    note = read_json_object(path, fix)
    out: dict[str, Any] = {}
    if "time_freq_shift" in note:
        shift = note["time_freq_shift"]
        if not is_number(shift) or not 0 <= shift <= 1:
            raise CheckpointError(f"{path}: time_freq_shift is {json.dumps(shift)}, not a number in [0, 1] (0: DiT's "
                                  f"time embedding, 1: diffusers'): {fix}")
        out["time_freq_shift"] = float(shift)
    for section in ("objective", "sample"):
        if section in note:
            if not isinstance(note[section], dict):
                raise CheckpointError(f"{path}: {section} is a JSON {json_kind(note[section])}, not an object of "
                                      f"{section} settings: {fix}")
            out[section] = note[section]
    if "dataset" in note:
        out["dataset"] = _note_dataset(note["dataset"], path, fix)
    return out


def _note_dataset(data: Any, path: Path, fix: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: dataset is a JSON {json_kind(data)}, not an object: {fix}")
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
            if not isinstance(vae, str) or not is_number(scale) or scale <= 0 or channels not in (1, 3) \
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
    problems = block_problems(model)
    if len(model.input_size) == 2 and max(model.input_size[0] // 64, 1) != 1:
        problems.append(f"input {model.input_size[0]}x{model.input_size[1]} (diffusers rescales the position table "
                        "from 128 on)")
    if model.text is not None:
        problems.append(f"model.condition={model.config['condition']} (diffusers' DiT is class-conditional; a "
                        "caption model exports as pixart or sd3)")
    elif model.num_classes == 0:
        problems.append("model.conditional=false (diffusers' DiT is class-conditional only)")
    if model.block_options.qk_norm:
        problems.append("model.qk_norm=true (diffusers' DiT does not normalise queries and keys)")
    if model.pos != "sincos":
        problems.append(f"model.pos={model.pos} (diffusers' DiT adds a fixed sin-cos table)")
    if model.adaln != "zero":
        problems.append(f"model.adaln={model.adaln} (diffusers' DiT has adaLN-Zero per block)")
    return problems


def export_diffusers(model: DiT, out: Path, run: Any = None) -> dict[str, Any]:
    """Write ``model`` as a diffusers ``DiTTransformer2DModel`` directory; refuses what diffusers cannot
    express. ``run`` (a :class:`~maskdit.runs.LoadedRun`): its objective, sampling settings and dataset
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
    state = float_state(model)
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


@EXPORTS.register("diffusers", "a diffusers DiTTransformer2DModel directory (a class-conditional DiT)")
def _export_dit(model: DiT, out: Path, run: Any = None) -> tuple[dict[str, Any], str]:
    config = export_diffusers(model, out, run)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    return config, (f"DiTTransformer2DModel, {config['num_layers']} layers, width {width}; load it with "
                    f"diffusers.DiTTransformer2DModel.from_pretrained('{out}')")
