"""Weights in and out: the DiT family's checkpoints become maskdit runs, maskdit models become diffusers ones.

    maskdit import DiT-XL-2-256x256.pt --out runs/dit-xl2 [--vae DIR]       # facebookresearch/DiT (EMA state dict)
    maskdit import SiT-XL-2-256.pt --format sit --out runs/sit-xl2          # SiT: same layout, flow objective
    maskdit import maskdit-ema.pt --format maskdit --out runs/maskdit      # MaskDiT: decoder + EDM precond
    maskdit import mdt_xl2_v2_ckpt.pt --format mdt --out runs/mdt           # MDT v2: skips, relative bias
    maskdit import DIFFUSERS_DIR --out runs/dit-xl2                         # a DiTTransformer2DModel directory
    maskdit import PIXART_DIR --out runs/pixart                             # PixArtTransformer2DModel (auto)
    maskdit import SD3_DIR --out runs/sd3                                   # SD3Transformer2DModel (auto)
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

This module holds the entry points (:func:`detect_format`, :func:`import_run`, :func:`check_vae_dir`,
:func:`load_model`); each format is an adapter module beside it that registers itself in
:data:`maskdit.interop.state_dict.FORMATS` (:mod:`~maskdit.interop.dit` for DiT and SiT,
:mod:`~maskdit.interop.maskdit`, :mod:`~maskdit.interop.mdt`, :mod:`~maskdit.interop.diffusers` with the
export). Adding a format means adding one adapter module and one import line below.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from maskdit.checkpoint import checkpoint_files, find_run, save_checkpoint
from maskdit.errors import CheckpointError, ConfigError
from maskdit.files import atomic_directory, write_json_atomic
from maskdit.interop.state_dict import FORMATS, is_whole, read_json_object
from maskdit.model import PRESETS, DiT


def detect_format(source: Path) -> str:
    """``--format auto``: a directory is a diffusers model (the format registered with its config.json's
    ``_class_name`` as ``diffusers_class``, else ``diffusers``), a file a DiT-layout state dict."""
    if source.is_dir():
        try:
            name = json.loads((source / "config.json").read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):  # the adapter says what is wrong with the directory
            name = None
        found = FORMATS.names(diffusers_class=name) if isinstance(name, str) else ()
        return found[0] if found else "diffusers"
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
    origin = settings.pop("origin", None)  # (file, fix): settings read from a file maskdit did not write itself
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
                         **{k: config[k] for k in fields if config.get(k) is not None})
    base["data"].update(name="latents", path="NO-DATA (imported): pass data.path=STORE to train")
    base["run_dir"] = str(out)
    for section, values in settings.items():
        base[section].update(values)
    try:
        cfg = load_config(base=base)
    except ConfigError as e:
        if origin is None:
            raise
        raise CheckpointError(f"{origin[0]}: its settings do not load ({e}): {origin[1]}") from None
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
    cfg = read_json_object(path / "config.json", fix)
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConfigError(f"--vae {vae} holds a {cfg.get('_class_name')}, not an AutoencoderKL: {fix}")
    if not any((path / f"diffusion_pytorch_model.{ext}").is_file() for ext in ("safetensors", "bin")):
        raise ConfigError(f"--vae {vae} has no weights (diffusion_pytorch_model.safetensors): {fix}")
    channels = cfg.get("latent_channels", 4)
    if not is_whole(channels) or channels < 1:
        raise ConfigError(f"--vae {vae}: latent_channels in its config.json is {json.dumps(channels)}, not a positive "
                          f"whole number: {fix}")
    return channels


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DiT:
    """The backbone of a run or checkpoint directory with its EMA weights, in eval mode."""
    from maskdit.runs import load_run

    return load_run(path, ema=True, device=device).model
