"""Adapter for MaskDiT releases (Anima-Lab/MaskDiT, ``--format maskdit``): the EMA state dict of its
``EDMPrecond``, with or without the decoder.

Names are DiT's under a ``model.`` prefix, which is dropped; then MaskDiT's name -> maskdit's:

* ``y_embedder.embedding_table.weight`` (W, classes), a one-hot linear map -> ``y_embedder.table.weight``
  (classes + 1, W): transposed, with a zero row for the null label
* ``decoder_layer.*`` -> ``decoder.*``; ``decoder_blocks.N.*`` -> ``decoder.blocks.N.*`` (16 heads, always)
* ``mask_token`` (decoder width) -> ``decoder.mask_token``; zeros when the release has none (trained without
  the MAE loss)
* ``decoder_pos_embed`` -> checked to be the fixed sin-cos table at the decoder's width, not kept
* everything else -> as for DiT (:mod:`maskdit.interop.dit`)

The model config adds ``precond=edm`` (``sigma_data`` 0.5, ``time_scale`` 1: the network embeds
``ln(sigma) / 4``) and ``decoder``, so the model computes MaskDiT's denoiser as a flow velocity. Class
tokens and external or encoder features (``cls_token``, ``feat_embedder``...) are refused. Sampling: EDM's
Heun, 40 steps, guidance 1.5; finetuning draws ``logit(t) ~ N(-1.2, 1.2^2)``, EDM's noise levels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from maskdit.errors import CheckpointError
from maskdit.grid import sincos_pos_embed, token_grid_shape
from maskdit.interop.state_dict import (
    FORMATS,
    count_modules,
    dit_layout,
    position_table,
    read_state_dict,
    required_tensor,
)

MASKDIT_DECODER_HEADS = 16  #: MaskDiT's decoder always has 16 heads (models/maskdit.py)
MASKDIT_UNSUPPORTED = ("cls_token", "feat_embedder.", "cls_token_embedder.", "enc_feat_embedder.")


@FORMATS.register("maskdit", "MaskDiT release (Anima-Lab/MaskDiT: the EMA state dict of EDMPrecond, with or without "
                  "its decoder); EDM preconditioning, EDM's Heun sampler")
def import_maskdit(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    """A MaskDiT release as a flow model with EDM preconditioning and, when saved, MaskDiT's decoder."""
    sd = {k.removeprefix("model."): v for k, v in read_state_dict(source).items()}
    for key in sd:
        if key.startswith(MASKDIT_UNSUPPORTED):
            raise CheckpointError(f"{source} has {key}: MaskDiT models with a class token or external/encoder "
                                  "features (pad_cls_token, ext_feature_dim, self_cond) cannot be imported")
    table, proj = sd.get("y_embedder.embedding_table.weight"), sd.get("x_embedder.proj.weight")
    if proj is not None:
        proj = required_tensor(sd, "x_embedder.proj.weight", source, 4,
                               "a 2-D patch embedding (width, channels, p, p)")
    if table is not None:
        table = required_tensor(sd, "y_embedder.embedding_table.weight", source, 2, "a label map (width, classes)")
    if table is not None and proj is not None and table.shape[0] != proj.shape[0]:
        raise CheckpointError(f"{source}: y_embedder.embedding_table.weight has shape {tuple(table.shape)}, not "
                              f"MaskDiT's one-hot label map (width {proj.shape[0]}, classes): is it a DiT checkpoint? "
                              "(--format dit)")
    if table is not None:  # a one-hot linear map (hidden, classes); the null label is the zero vector
        sd["y_embedder.embedding_table.weight"] = torch.cat([table.t(), table.new_zeros(1, table.shape[0])])
    extra: dict[str, Any] = {"precond": "edm", "sigma_data": 0.5, "time_scale": 1.0}
    decoder_pos = sd.pop("decoder_pos_embed", None)
    if "decoder_layer.linear.weight" in sd:
        entry = required_tensor(sd, "decoder_layer.linear.weight", source, 2,
                                "the decoder entry (decoder width, width)")
        width = entry.shape[0]
        depth = count_modules(sd, "decoder_blocks.")
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
        position_table(tables, "decoder_pos_embed", extra["decoder"]["width"], source, math.prod(grid))
        if not torch.allclose(decoder_pos[0].float(), pos, atol=1e-5):
            raise CheckpointError(f"{source}: decoder_pos_embed is missing or not the fixed 2-D sin-cos table")
    # EDM trains on ln(sigma) ~ N(-1.2, 1.2^2); ln(sigma) = logit(t), so finetuning sees the same noise levels
    settings = {"objective": {"name": "flow", "time_sampling": "logit_normal", "logit_mean": -1.2, "logit_std": 1.2},
                "sample": {"sampler": "edm", "steps": 40, "guidance_scale": 1.5}}
    return config, state, settings
