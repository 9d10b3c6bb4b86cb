"""Adapter for facebookresearch/DiT (``--format dit``) and SiT (``--format sit``) ``.pt`` state dicts.

Both save DiT's ``models.py`` names (the EMA state dict); the layout is read by
:func:`maskdit.interop.state_dict.dit_layout`. DiT's name -> maskdit's:

* ``x_embedder.proj.weight`` (W, C, p, p) -> ``patch_embed.weight`` (W, p * p * C), channel fastest;
  ``x_embedder.proj.bias`` -> ``patch_embed.bias``
* ``y_embedder.embedding_table.weight`` -> ``y_embedder.table.weight`` (classes + 1 rows, the null label last)
* ``t_embedder.mlp.{0,2}.*``, ``blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}.*``,
  ``final_layer.{linear, adaLN_modulation.1}.*`` -> the same names
* ``pos_embed`` (1, tokens, W) -> checked to be DiT's fixed sin-cos table (its length gives the input size),
  not kept: maskdit computes it

DiT: the model embeds ``1000 t`` so that ``t = k / 1000`` is DiT's step ``k``; all 8 output channels (eps,
then the variance interpolation) are kept; sampling is 250-step ancestral DDPM with the learned variance,
guidance 4 on 3 channels. SiT's ``t`` runs from noise (0) to data (1) and its velocity points to the data:
the import embeds ``1 - t`` (``time_scale=-1``, ``time_offset=1``), negates ``final_layer.linear.*`` and
drops the variance rows SiT's forward discards.
"""

from __future__ import annotations

from pathlib import Path

from maskdit.interop.state_dict import FORMATS, dit_layout, read_state_dict


@FORMATS.register("dit", "facebookresearch/DiT .pt (the EMA state dict of models.py), DDPM with learned sigma")
def import_dit(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    """A DiT checkpoint as it is, with DiT's DDPM and sampling settings."""
    config, state = dit_layout(read_state_dict(source), source, num_heads)
    settings = {"objective": {"name": "ddpm", "schedule": "linear", "num_steps": 1000, "step_offset": 0},
                "sample": {"sampler": "ddpm", "steps": 250, "guidance_scale": 4.0, "guidance_channels": 3}}
    return config, state, settings


@FORMATS.register("sit", "SiT .pt (DiT's layout, linear interpolant, velocity towards the data)")
def import_sit(source: Path, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    """A SiT checkpoint turned to maskdit's time and velocity convention, with a flow objective."""
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
