"""``maskdit import`` (a DiT, SiT or diffusers DiT checkpoint -> a maskdit run) and ``maskdit export`` (a run's
model -> a diffusers DiTTransformer2DModel directory)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskdit.cli.args import positive_int
from maskdit.errors import ConfigError


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.interop.convert import FORMATS

    p.add_argument("source", help="a DiT/SiT .pt (or .safetensors) state dict, or a diffusers model directory")
    p.add_argument("--out", required=True, help="the new run directory (must not exist or be empty)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS.names()],
                   help="auto: a directory by its config's _class_name (diffusers' DiT, PixArt, SD3), a file "
                   "DiT; " + "; ".join(
                       f"{n}: {d}" for n, d in FORMATS.describe()))
    p.add_argument("--num-heads", type=positive_int, help="attention heads (default: the DiT preset of the width)")
    p.add_argument("--vae", help="a local AutoencoderKL directory to decode 4-channel latents (SD's VAE)")


def run_import(args: argparse.Namespace) -> int:
    from maskdit.evaluate.report import condition_summary
    from maskdit.files import read_json
    from maskdit.interop.convert import import_run
    from maskdit.model.dit import fixed_position_parameters, parameter_count

    ckpt = import_run(args.source, args.out, args.format, args.num_heads, args.vae)
    model = read_json(ckpt / "config.json", keys=("model",))["model"]
    params = parameter_count(ckpt / "ema.safetensors")
    counted = f"{(params + fixed_position_parameters(model)) / 1e6:.1f}M with the fixed position table, as DiT " \
        "counts" if model.get("pos", "sincos") == "sincos" else "its learned position tables included"
    decoder = model.get("decoder") or {}
    extras = [text for text, present in (
        ("learned sigma", model.get("learn_sigma")),
        (f"a decoder of {decoder.get('depth')} blocks at width {decoder.get('width')}", decoder),
        ("EDM preconditioning", model.get("precond")),
        (f"long skips with {model.get('long_skips')} decoder blocks", model.get("long_skips") is not None),
        ("relative position bias", model.get("rel_pos_bias"))) if present]
    print(f"imported {args.source}: {params / 1e6:.1f}M parameters ({counted}), depth {model['depth']}, width "
          f"{model['hidden_size']}, {model['num_heads']} heads, patch {model['patch_size'][0]}, input "
          f"{model['in_channels']}x{'x'.join(map(str, model['input_size']))}, {condition_summary(model)}"
          + "".join(f", {e}" for e in extras))
    print(f"wrote {ckpt}; sample with: maskdit sample {args.out} --out samples.png")
    print(args.out)
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.interop.state_dict import EXPORTS  # the package imports every adapter first

    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=EXPORTS.names(),
                   help="the target layout: " + "; ".join(f"{n}: {d}" for n, d in EXPORTS.describe()))
    p.add_argument("--out", required=True, help="the new model directory (must not exist)")


def run_export(args: argparse.Namespace) -> int:
    from maskdit.interop.state_dict import EXPORTS  # the package imports every adapter first
    from maskdit.runs import load_run

    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new directory for the exported model")
    loaded = load_run(args.run_dir)
    _, summary = EXPORTS.get(args.format)(loaded.model, out, loaded)
    print(f"wrote {out} ({summary})")
    if args.format == "diffusers" and loaded.model.t_embedder.freq_shift != 1.0:
        print("note: diffusers' DiT embeds time with downscale_freq_shift=1 and this model was trained with "
              f"{loaded.model.t_embedder.freq_shift:g}: diffusers computes a slightly different function "
              "(maskdit import of this directory restores the original exactly)", file=sys.stderr)
    return 0
