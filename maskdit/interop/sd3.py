"""Adapter for diffusers' ``SD3Transformer2DModel`` (``--format sd3``; ``auto`` picks it by the directory's
``config.json`` ``_class_name``): Stable Diffusion 3's MM-DiT as a maskdit model with ``condition=hf``,
``text=joint`` and every block double-stream (``text_double=num_layers``), adaLN-Zero, a flow objective.

A directory holds ``config.json`` (a key left out takes diffusers' default) and
``diffusion_pytorch_model.safetensors``. diffusers' name -> maskdit's (:func:`sd3_plan`):

* ``pos_embed.proj.weight`` (W, C, p, p) -> ``patch_embed.weight`` (W, p * p * C), channel fastest;
  ``pos_embed.proj.bias`` -> ``patch_embed.bias``
* ``pos_embed.pos_embed`` (1, M * M, W), the table of ``pos_embed_max_size`` M: its centre crop for the model's
  grid (what diffusers adds at ``sample_size``) -> ``pos_embed`` (``model.pos=learned``; maskdit's fixed table
  where the crop equals it)
* ``time_text_embed.timestep_embedder.linear_{1,2}.*`` -> ``t_embedder.mlp.{0,2}.*``;
  ``time_text_embed.text_embedder.linear_{1,2}.*`` -> ``y_embedder.pool.{0,2}.*`` (Linear, SiLU, Linear);
  ``context_embedder.*`` -> ``y_embedder.proj.0.*``
* image stream, ``transformer_blocks.N.``: ``norm1.linear.*`` -> ``blocks.N.adaLN_modulation.1.*``;
  ``attn.to_{q,k,v}.*`` -> ``blocks.N.attn.qkv.*`` (concatenated); ``attn.to_out.0.*`` -> ``blocks.N.attn.proj.*``;
  ``attn.norm_{q,k}.weight`` -> ``blocks.N.attn.{q,k}_norm.weight``; ``ff.net.{0.proj,2}.*`` ->
  ``blocks.N.mlp.{fc1,fc2}.*``
* text stream: ``norm1_context.linear.*`` -> ``blocks.N.text.adaLN_modulation.1.*``; ``attn.add_{q,k,v}_proj.*``
  -> ``blocks.N.text.attn.qkv.*``; ``attn.to_add_out.*`` -> ``blocks.N.text.attn.proj.*``;
  ``attn.norm_added_{q,k}.weight`` -> ``blocks.N.text.attn.{q,k}_norm.weight``; ``ff_context.net.*`` ->
  ``blocks.N.text.mlp.*``
* the last block is ``context_pre_only``: its ``norm1_context`` gives (scale, shift) only, which become the text
  modulation's shift and scale; the text weights it lacks (``to_add_out``, ``ff_context``, the gates) are zeros
  (its text output is discarded, as diffusers discards it)
* ``norm_out.linear.*`` (scale, shift) -> ``final_layer.adaLN_modulation.1.*`` (shift, scale: the halves swapped);
  ``proj_out.*`` -> ``final_layer.linear.*``

The model reads caption values ``(B, 1 + L, E + 1)`` (:mod:`maskdit.conditions.hf`): row 0 holds
``pooled_projections`` in its first ``pooled_projection_dim`` channels and 1 in the last, rows ``1..L`` the
``encoder_hidden_states`` (``E = joint_attention_dim``, ``L`` = :data:`SD3_LENGTH`, the pipeline's 77 CLIP and
256 T5 tokens) with 1 in the last channel (SD3 masks nothing). diffusers' timestep is ``1000 sigma`` and its
velocity ``noise - data`` at ``x = (1 - sigma) data + sigma noise``: maskdit's flow at ``t = sigma``, so
``model(x, sigma, values)`` equals ``forward(x, encoder_hidden_states, pooled_projections, 1000 sigma)``. maskdit's
null caption (learned in maskdit; SD3 has none) becomes one all-zero token with an all-zero pooled vector.

Refused, each naming its config key: ``dual_attention_layers`` (SD3.5 Medium's second attention), a ``qk_norm``
other than null or ``rms_norm``, ``out_channels`` other than ``in_channels``, a ``caption_projection_dim`` other
than the width, a ``pooled_projection_dim`` wider than ``joint_attention_dim`` (the pooled vector shares the
values' first row), a grid larger than ``pos_embed_max_size``. Not expressed, and said here: diffusers crops its
table for any input up to ``pos_embed_max_size`` patches, maskdit's model takes ``sample_size`` only; SD3's three
text encoders are no single maskdit encoder, so the run reads encoded values (a caption store) and takes no
``--prompt``; maskdit's samplers step a uniform time grid (diffusers' SD3 scheduler shifts it by 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from maskdit.errors import CheckpointError
from maskdit.grid import sincos_pos_embed
from maskdit.interop.pixart import (
    NULLABLE,
    check_depth,
    check_grid,
    check_heads,
    check_patch_width,
    diffusers_files,
    diffusers_sincos,
    gather,
    meta_model,
    patch_weight,
    run_model_settings,
    sizes_hint,
    write_diffusers,
)
from maskdit.interop.state_dict import (
    EXPORTS,
    FORMATS,
    block_problems,
    checked_shapes,
    conv_patch,
    fact,
    fixed_embedding_problems,
    float_state,
    read_diffusers_config,
    read_state_dict,
    refuse_keys,
    refuse_problems,
    split_plan,
)
from maskdit.model import DiT

#: SD3Transformer2DModel's config keys that size the model, with diffusers' defaults
SD3_SIZES: dict[str, int | None] = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 18,
                                    "attention_head_dim": 64, "num_attention_heads": 18, "joint_attention_dim": 4096,
                                    "caption_projection_dim": 1152, "pooled_projection_dim": 2048, "out_channels": 16,
                                    "pos_embed_max_size": 96}
#: caption tokens of SD3's pipeline: 77 CLIP tokens, then 256 T5 tokens (max_sequence_length)
SD3_LENGTH = 333


@FORMATS.register("sd3", "a diffusers SD3Transformer2DModel directory (Stable Diffusion 3 MM-DiT: joint attention, "
                  "flow matching)", diffusers_class="SD3Transformer2DModel")
def import_sd3(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    """An SD3 transformer directory as a caption-conditioned maskdit model with a flow objective."""
    config_file, weights_file = diffusers_files(source, "SD3Transformer2DModel")
    cfg = read_diffusers_config(config_file, ("SD3Transformer2DModel",), SD3_SIZES, {}, NULLABLE)
    raw = cfg["raw"]
    size, patch, channels = cfg["sample_size"], cfg["patch_size"], cfg["in_channels"]
    heads, depth = cfg["num_attention_heads"], cfg["num_layers"]
    width = heads * cfg["attention_head_dim"]
    check_heads(num_heads, cfg, config_file)
    dual = raw.get("dual_attention_layers", [])
    if dual not in ([], ()):
        raise CheckpointError(f"{config_file}: dual_attention_layers is {json.dumps(dual)}: SD3.5's second "
                              "self-attention in those blocks, which maskdit's joint blocks do not have")
    qk_norm = raw.get("qk_norm")
    if qk_norm not in (None, "rms_norm"):
        raise CheckpointError(f"{config_file}: qk_norm is {json.dumps(qk_norm)}: maskdit normalises queries and "
                              "keys with RMSNorm (rms_norm) or not at all (null)")
    if cfg["out_channels"] not in (None, channels):
        raise CheckpointError(f"{config_file}: {fact(cfg, 'out_channels')} for {fact(cfg, 'in_channels')}: "
                              "maskdit's flow model predicts as many channels as it reads")
    if cfg["caption_projection_dim"] != width:
        raise CheckpointError(f"{config_file}: {fact(cfg, 'caption_projection_dim')} is not the width {width} "
                              f"({fact(cfg, 'num_attention_heads')} x {fact(cfg, 'attention_head_dim')}): the text "
                              "stream of maskdit's joint blocks has the model width")
    if cfg["pooled_projection_dim"] > cfg["joint_attention_dim"]:
        raise CheckpointError(f"{config_file}: {fact(cfg, 'pooled_projection_dim')} is wider than "
                              f"{fact(cfg, 'joint_attention_dim')}: maskdit's caption values hold the pooled vector "
                              "in the row the tokens' width gives")
    check_grid(cfg, config_file)
    side, limit = size // patch, cfg["pos_embed_max_size"]
    if limit is not None and side > limit:
        raise CheckpointError(f"{config_file}: {fact(cfg, 'sample_size')} makes a grid of {side} patches a side, "
                              f"more than {fact(cfg, 'pos_embed_max_size')}: diffusers cannot run it either")
    sd = read_state_dict(weights_file)
    check_depth(sd, cfg, config_file, weights_file)
    check_patch_width(sd, cfg, weights_file, width)
    if limit is None:  # no stored table: diffusers computes one for the grid
        table = diffusers_sincos(width, side)
    else:
        stored = sd.get("pos_embed.pos_embed")
        if stored is None or tuple(stored.shape) != (1, limit * limit, width):
            raise CheckpointError(f"{weights_file}: pos_embed.pos_embed is "
                                  + ("missing" if stored is None else f"of shape {tuple(stored.shape)}")
                                  + f", not (1, {limit * limit}, {width}) as {fact(cfg, 'pos_embed_max_size')} "
                                  "and the width need: fix config.json or use the weights saved with it")
        top = (limit - side) // 2  # diffusers' centre crop (cropped_pos_embed)
        table = stored.reshape(limit, limit, width)[top:top + side, top:top + side].reshape(side * side, width)
    pos = "sincos" if torch.allclose(table.float(), sincos_pos_embed(width, (side, side), reverse_axes=True),
                                     atol=1e-6) else "learned"
    encoder = (f"NO-ENCODER (imported): SD3's CLIP-L, CLIP-G and T5 features ({SD3_LENGTH} tokens of width "
               f"{cfg['joint_attention_dim']}, pooled {cfg['pooled_projection_dim']}); no single encoder gives them")
    options = {"encoder": encoder, "fingerprint": "none", "width_in": cfg["joint_attention_dim"],
               "length": SD3_LENGTH, "prefix": "", "refiner": 0, "projection": "linear",
               "pooled_in": cfg["pooled_projection_dim"]}
    config = {"input_size": [size, size], "in_channels": channels, "patch_size": [patch, patch],
              "hidden_size": width, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0, "num_classes": 0,
              "learn_sigma": False, "pos_layout": "xy", "pos": pos, "time_freq_shift": 0.0, "mlp_norm_eps": 1e-6,
              "qk_norm": qk_norm == "rms_norm", "condition": "hf", "condition_options": options, "text": "joint",
              "text_double": depth, "adaln": "zero"}
    model = meta_model(config, config_file)
    plan = sd3_plan(depth, qk_norm == "rms_norm")
    last = f"transformer_blocks.{depth - 1}."
    pre_only = {f"{last}norm1_context.linear.{p}" for p in ("weight", "bias")}  # (scale, shift) only
    refuse_keys({k for parts in plan.values() for k in parts} | pre_only | {"pos_embed.proj.weight"}
                | (set() if limit is None else {"pos_embed.pos_embed"}), set(sd), source, "diffusers SD3")
    hint = sizes_hint(cfg)
    state = gather(model, plan, sd, weights_file, hint)
    state["patch_embed.weight"] = patch_weight(sd, model, weights_file, hint)
    if pos == "learned":
        state["pos_embed"] = table[None]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = f"blocks.{depth - 1}.text."
    for p, swap in (("weight", (2 * width, width)), ("bias", (2 * width,))):
        given = sd[f"{last}norm1_context.linear.{p}"]
        if tuple(given.shape) != swap:
            raise CheckpointError(f"{weights_file}: {last}norm1_context.linear.{p} has shape {tuple(given.shape)}, "
                                  f"but config.json ({hint}) needs {swap}: fix config.json or use the weights saved "
                                  "with it")
        scale, shift = given.float().chunk(2)
        modulation = torch.zeros(shapes[f"{ours}adaLN_modulation.1.{p}"])
        modulation[:width], modulation[width:2 * width] = shift, scale  # chunks: shift, scale, gate, ... (zero)
        state[f"{ours}adaLN_modulation.1.{p}"] = modulation
        scale, shift = state[f"final_layer.adaLN_modulation.1.{p}"].chunk(2)
        state[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale])
    for name in ("attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                 "mlp.fc2.bias"):
        state[ours + name] = torch.zeros(shapes[ours + name])  # the last block's text output is discarded
    with torch.no_grad():  # the null caption: one all-zero token, an all-zero pooled vector
        state["y_embedder.null_token"] = state["y_embedder.proj.0.bias"].float().clone()
        hidden = F.silu(state["y_embedder.pool.0.bias"].float())
        state["y_embedder.null_pooled"] = F.linear(hidden, state["y_embedder.pool.2.weight"].float(),
                                                   state["y_embedder.pool.2.bias"].float())
    state = checked_shapes(model, {k: state[k] for k in model.state_dict()}, source)
    settings = {"objective": {"name": "flow", "time_sampling": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0},
                "sample": {"sampler": "euler", "steps": 28, "guidance_scale": 7.0},
                "model": run_model_settings(config, encoder)}
    return model.config, state, settings


def sd3_plan(depth: int, qk_norm: bool) -> dict[str, tuple[str, ...]]:
    """maskdit tensor name -> the diffusers SD3 tensors it is made of (concatenated along the first axis); the patch
    embedding, the position table, the last block's text modulation and weights, and the null caption are made
    apart (the final layer's modulation is swapped after gathering)."""
    plan: dict[str, tuple[str, ...]] = {"patch_embed.bias": ("pos_embed.proj.bias",)}
    for p in ("weight", "bias"):
        plan[f"t_embedder.mlp.0.{p}"] = (f"time_text_embed.timestep_embedder.linear_1.{p}",)
        plan[f"t_embedder.mlp.2.{p}"] = (f"time_text_embed.timestep_embedder.linear_2.{p}",)
        plan[f"y_embedder.pool.0.{p}"] = (f"time_text_embed.text_embedder.linear_1.{p}",)
        plan[f"y_embedder.pool.2.{p}"] = (f"time_text_embed.text_embedder.linear_2.{p}",)
        plan[f"y_embedder.proj.0.{p}"] = (f"context_embedder.{p}",)
        plan[f"final_layer.adaLN_modulation.1.{p}"] = (f"norm_out.linear.{p}",)
        plan[f"final_layer.linear.{p}"] = (f"proj_out.{p}",)
    for i in range(depth):
        ours, theirs, full = f"blocks.{i}.", f"transformer_blocks.{i}.", i < depth - 1
        for p in ("weight", "bias"):
            plan[f"{ours}adaLN_modulation.1.{p}"] = (f"{theirs}norm1.linear.{p}",)
            plan[f"{ours}attn.qkv.{p}"] = tuple(f"{theirs}attn.to_{n}.{p}" for n in "qkv")
            plan[f"{ours}attn.proj.{p}"] = (f"{theirs}attn.to_out.0.{p}",)
            plan[f"{ours}mlp.fc1.{p}"] = (f"{theirs}ff.net.0.proj.{p}",)
            plan[f"{ours}mlp.fc2.{p}"] = (f"{theirs}ff.net.2.{p}",)
            plan[f"{ours}text.attn.qkv.{p}"] = tuple(f"{theirs}attn.add_{n}_proj.{p}" for n in "qkv")
            if full:  # the last block (context_pre_only) has none of these
                plan[f"{ours}text.adaLN_modulation.1.{p}"] = (f"{theirs}norm1_context.linear.{p}",)
                plan[f"{ours}text.attn.proj.{p}"] = (f"{theirs}attn.to_add_out.{p}",)
                plan[f"{ours}text.mlp.fc1.{p}"] = (f"{theirs}ff_context.net.0.proj.{p}",)
                plan[f"{ours}text.mlp.fc2.{p}"] = (f"{theirs}ff_context.net.2.{p}",)
        if qk_norm:
            for n in "qk":
                plan[f"{ours}attn.{n}_norm.weight"] = (f"{theirs}attn.norm_{n}.weight",)
                plan[f"{ours}text.attn.{n}_norm.weight"] = (f"{theirs}attn.norm_added_{n}.weight",)
    return plan


def sd3_problems(model: DiT) -> list[str]:
    """What of ``model`` diffusers' ``SD3Transformer2DModel`` cannot compute, each named by its config key."""
    problems = block_problems(model)
    options = model.config.get("condition_options") or {}
    if model.config.get("condition") != "hf" or options.get("projection") != "linear" \
            or not options.get("pooled_in") or options.get("refiner"):
        problems.append("model.condition (SD3 reads a frozen encoder's features through one linear map, with a "
                        "pooled vector and no refiner: model.condition=hf as an SD3 import has it)")
    if model.text != "joint" or model.text_double != model.depth:
        problems.append(f"model.text={model.text}, model.text_double={model.text_double} (SD3's blocks are all "
                        "double-stream joint blocks)")
    if model.adaln != "zero":
        problems.append(f"model.adaln={model.adaln} (SD3 has adaLN-Zero per block)")
    if model.learn_sigma:
        problems.append("model.learn_sigma=true (SD3 predicts the velocity only)")
    return problems + fixed_embedding_problems(model, "SD3")


@EXPORTS.register("sd3", "a diffusers SD3Transformer2DModel directory (a caption model of double-stream joint "
                  "blocks, as an SD3 import)")
def export_sd3(model: DiT, out: Path, run: Any = None) -> tuple[dict[str, Any], str]:
    """Write ``model`` as an SD3 transformer directory: the last block becomes ``context_pre_only`` (its text
    output is discarded in maskdit too, so nothing it computes is lost) and the position table is stored for the
    model's own grid (``pos_embed_max_size`` = the grid side)."""
    refuse_problems(sd3_problems(model), "diffusers SD3Transformer2DModel")
    state = float_state(model)
    depth, width = model.depth, model.hidden_size
    plan = sd3_plan(depth, model.block_options.qk_norm)
    for p in ("weight", "bias"):  # diffusers' final norm gives (scale, shift)
        shift, scale = state[f"final_layer.adaLN_modulation.1.{p}"].chunk(2)
        state[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([scale, shift])
    sd = split_plan(state, plan)
    last = f"transformer_blocks.{depth - 1}."
    for p in ("weight", "bias"):  # the last block's text norm: (scale, shift) of its 6-chunk modulation
        rows = state[f"blocks.{depth - 1}.text.adaLN_modulation.1.{p}"]
        sd[f"{last}norm1_context.linear.{p}"] = torch.cat([rows[width:2 * width], rows[:width]]).contiguous()
    sd["pos_embed.proj.weight"] = conv_patch(model, state["patch_embed.weight"])
    side = model.token_grid[0]
    table = state["pos_embed"] if model.pos == "learned" else sincos_pos_embed(width, (side, side),
                                                                                reverse_axes=True)[None]
    sd["pos_embed.pos_embed"] = table.reshape(1, side * side, width).float().contiguous()
    options = model.config["condition_options"]
    config = {"_class_name": "SD3Transformer2DModel", "sample_size": model.input_size[0],
              "patch_size": model.patch_size[0], "in_channels": model.in_channels,
              "out_channels": model.out_channels, "num_layers": depth, "attention_head_dim": width // model.num_heads,
              "num_attention_heads": model.num_heads, "joint_attention_dim": options["width_in"],
              "caption_projection_dim": width, "pooled_projection_dim": options["pooled_in"],
              "pos_embed_max_size": side, "qk_norm": "rms_norm" if model.block_options.qk_norm else None,
              "dual_attention_layers": []}
    write_diffusers(out, sd, config)
    return config, (f"SD3Transformer2DModel, {depth} layers, width {width}; load it with "
                    f"diffusers.SD3Transformer2DModel.from_pretrained('{out}')")
