"""Adapter for MDT v2 releases (sail-sg/MDT, ``--format mdt``): the state dict of ``MDTv2``.

MDT's name -> maskdit's (:func:`mdt_names`):

* ``en_inblocks.N.*``, ``en_outblocks.N.*``, ``de_blocks.N.*`` -> ``blocks.M.*``, in that order
  (``M = N``, ``half + N``, ``2 * half + N``; ``half`` en_inblocks, as many en_outblocks)
* ``en_outblocks.N.skip_linear.*``, ``de_blocks.N.skip_linear.*`` (the long skips' joins) -> ``skips.M.*``,
  ``M`` the block the join feeds
* ``<block>.attn.rel_pos_bias.relative_position_bias_table`` (offsets, heads) -> ``blocks.M.attn.rel_bias.table``
  (BEiT's layout, so it loads as it is; its columns give the number of heads);
  ``<block>.attn.rel_pos_bias.relative_position_index`` -> checked to be BEiT's index, not kept
* ``pos_embed``, ``decoder_pos_embed`` -> the same names (learned tables: ``model.pos=learned``)
* ``x_embedder.*``, ``y_embedder.*``, ``t_embedder.*``, ``final_layer.*`` -> as for DiT
  (:func:`maskdit.interop.state_dict.dit_name`)
* ``sideblocks.0.*`` and ``mask_token`` (the side-interpolater of MDT's masked pass; optional) ->
  ``interpolater.block.*`` and ``interpolater.mask_token``: the ``mdt`` recipe's training-only weights
  (the run's ``aux.safetensors``), with the bias table renamed as in the blocks

Sampling as DiT (250 steps: ancestral with the learned variance, DDIM without; guidance 4 on 3 channels)
with MDT's power-cosine guidance schedule (``sample.guidance_power=0.01``); the run's ``mask.recipe`` is
``mdt``, so finetuning trains the way MDT does.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from maskdit.errors import CheckpointError, ConfigError
from maskdit.interop.state_dict import (
    FORMATS,
    checked_shapes,
    count_modules,
    dit_name,
    patch_embedding,
    position_table,
    read_state_dict,
    refuse_keys,
    required_tensor,
)
from maskdit.model import DiT
from maskdit.model.attention import RelativePositionBias

MDT_BIAS = ("attn.rel_bias.table", "attn.rel_pos_bias.relative_position_bias_table")  #: (maskdit's, MDT's) name
MDT_BIAS_INDEX = "attn.rel_pos_bias.relative_position_index"  #: a buffer MDT saves; maskdit recomputes it


@FORMATS.register("mdt", "MDT v2 release (sail-sg/MDT: the state dict of MDTv2); learned positions, relative "
                  "position bias, long skips; DDPM with learned sigma")
def import_mdt(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    """An MDT v2 release: learned positions, relative position bias, long skips; its side block as aux weights."""
    sd = read_state_dict(source)
    if "en_inblocks.0.attn.qkv.weight" not in sd or "x_embedder.proj.weight" not in sd:
        raise CheckpointError(f"{source} has no en_inblocks.0.attn.qkv.weight: it is not an MDT v2 state dict "
                              "(--format names the layout)")
    half, outs, dec = (count_modules(sd, p) for p in ("en_inblocks.", "en_outblocks.", "de_blocks."))
    if outs != half:
        raise CheckpointError(f"{source}: {half} en_inblocks but {outs} en_outblocks; MDT pairs them one to one")
    proj = patch_embedding(sd, source)
    table = required_tensor(sd, "en_inblocks.0." + MDT_BIAS[1], source, 2,
                            "a relative position bias table (offsets, heads)")
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    heads = table.shape[1]  # the bias table has one column per head: no guessing
    if num_heads not in (None, heads):
        raise ConfigError(f"--num-heads {num_heads} contradicts {source}, whose attention bias has {heads} heads")
    if width % heads:
        raise CheckpointError(f"{source}: the attention bias has {heads} heads, which do not divide the width "
                              f"{width} (x_embedder.proj.weight): the checkpoint is damaged or mixes two models")
    if "pos_embed" not in sd:
        raise CheckpointError(f"{source}: no pos_embed: not an MDT v2 state dict")
    side = math.isqrt(position_table(sd, "pos_embed", width, source))
    final = sd.get("final_layer.linear.weight")
    out = 0 if final is None or final.dim() != 2 else final.shape[0] // (patch * patch)
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"{source}: the final layer predicts {out} channels per pixel for {channels} input "
                              f"channels: expected {channels} or {2 * channels} (learned sigma)")
    hidden = 4 * width
    if "en_inblocks.0.mlp.fc1.weight" in sd:
        hidden = required_tensor(sd, "en_inblocks.0.mlp.fc1.weight", source, 2,
                                 f"an MLP's first layer (hidden, {width})").shape[0]
    num_classes = 0
    if "y_embedder.embedding_table.weight" in sd:
        num_classes = required_tensor(sd, "y_embedder.embedding_table.weight", source, 2,
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
    refuse_keys(set(names.values()), {k for k in sd if k not in side_keys and not k.endswith(MDT_BIAS_INDEX)},
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
        if count_modules(sd, "sideblocks.") != 1 or "mask_token" not in sd:
            found = (f"{count_modules(sd, 'sideblocks.')} side block(s), "
                     f"{'a' if 'mask_token' in sd else 'no'} mask token")
            raise CheckpointError(f"{source}: MDT v2 has one side block and a mask token; found {found}")
        if sd["mask_token"].numel() != width:
            raise CheckpointError(f"{source}: mask_token has shape {tuple(sd['mask_token'].shape)}, not one token of "
                                  f"width {width}: the checkpoint is damaged or mixes two models")
        settings["aux"] = {"interpolater.mask_token": sd["mask_token"].reshape(width)}
        for key, value in sd.items():
            if key.startswith("sideblocks.0.") and not key.endswith(MDT_BIAS_INDEX):
                ours = key.replace("sideblocks.0.", "interpolater.block.", 1)
                settings["aux"][ours.replace(MDT_BIAS[1], MDT_BIAS[0])] = value
    return model.config, checked_shapes(model, state, source), settings


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
            names[ours] = dit_name(ours)
    return names
