"""``maskdit bench``: forward+backward throughput, memory and FLOPs of a model preset."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from maskdit.cli.args import non_negative_int, positive_int, ratio
from maskdit.errors import ConfigError

#: The model fields ``maskdit bench`` lets a user set over the preset.
BENCH_FIELDS = ("depth", "hidden_size", "num_heads", "mlp_ratio", "norm", "qk_norm", "mlp", "pos", "moe")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.training.recipes import RECIPES

    p.add_argument("--preset", default="DiT-S/2", help="model preset, e.g. tiny, DiT-S/2, DiT-XL/2")
    p.add_argument("--input", default="4x32x32", help="CxHxW (or CxL, CxTxHxW) of one input")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps")
    p.add_argument("--warmup", type=positive_int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--mask-ratio", type=ratio, default=0.0, help="share of tokens dropped per step, in [0, 1)")
    p.add_argument("--recipe", choices=RECIPES.names(), default="drop",
                   help="; ".join(f"{n}: {d}" for n, d in RECIPES.describe()))
    p.add_argument("--mixer-depth", type=non_negative_int, default=0,
                   help="leading blocks on all tokens (deferred masking)")
    p.add_argument("--compile", action="store_true", help="torch.compile every block (timed after warm-up)")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute each block's activations in backward (less memory, more compute)")
    p.add_argument("overrides", nargs="*", metavar="model.KEY=VALUE",
                   help="block options over the preset: " + ", ".join(f"model.{k}" for k in BENCH_FIELDS)
                   + " (e.g. model.moe.experts=4 model.moe.top_k=1)")


def bench_fields(overrides: list[str], preset: str = "tiny") -> dict[str, Any]:
    """``model.KEY=VALUE`` overrides -> ``build_model`` fields (only those ``BENCH_FIELDS`` names), validated
    against the model ``preset`` (its depth bounds ``model.moe.every``, its width the heads)."""
    from maskdit.config import load_config

    given = set()
    for text in overrides:
        section, _, rest = text.partition("=")[0].partition(".")
        name = rest.partition(".")[0]
        if section != "model" or name not in BENCH_FIELDS:
            raise ConfigError(f"bench override {text!r}: only " + ", ".join(f"model.{k}" for k in BENCH_FIELDS)
                              + " may be set (e.g. model.mlp=swiglu)")
        given.add(name)
    m = load_config(overrides=[f"model.preset={preset}", *overrides]).model
    fields = {k: getattr(m, k) for k in given if k != "moe"}
    if "moe" in given and m.moe.experts > 0:
        fields["moe"] = dataclasses.asdict(m.moe)
    return fields


def run(args: argparse.Namespace) -> int:
    from maskdit.model import PRESETS
    from maskdit.training.bench import benchmark, parse_shape
    from maskdit.training.trainer import pick_device

    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r} is not a model preset: choose one of {', '.join(PRESETS)}")
    shape = parse_shape(args.input)
    fields = bench_fields(args.overrides, args.preset)
    r = benchmark(args.preset, shape, args.batch, args.steps, args.warmup, str(pick_device(args.device)),
                  mask_ratio=args.mask_ratio, recipe=args.recipe, mixer_depth=args.mixer_depth,
                  compile=args.compile, grad_checkpoint=args.grad_checkpoint, model_fields=fields)
    print(f"{r['preset']} input {r['input']} batch {r['batch']} on {r['device']}: {r['params'] / 1e6:.1f}M params"
          + (f" ({r['active_params'] / 1e6:.1f}M active)" if r["active_params"] != r["params"] else "")
          + f", {r['kept_tokens']} of {r['tokens']} tokens kept (recipe {r['recipe']}, mixer depth {r['mixer_depth']}"
          + (", compiled" if r["compiled"] else "") + (", activation checkpointing" if r["grad_checkpoint"] else "")
          + ")")
    print(f"  {r['steps_per_s']:.2f} forward+backward steps/s, {r['gflop_per_step']:.1f} GFLOP/step, "
          f"activations {r['activation_mb']:.0f} MiB, peak memory {r['peak_mem_mb']:.0f} MiB"
          + (f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""))
    print(json.dumps(r))
    return 0
