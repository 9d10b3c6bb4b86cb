"""The ``maskdit`` command line: thin wrappers that parse options and call the library.

    maskdit train  [--preset NAME] [CONFIG.yaml] [key=value ...] [--resume]
    maskdit sample RUN_DIR --num N --out FILE.png|FILE.npz [sampling options]
    maskdit eval   RUN_DIR [--num N | --samples FILE.npz] [--data D] [--metrics fid,kid,...] [sampling options]
    maskdit report RUN_DIR [--out FILE.html]
    maskdit info   RUN_DIR
    maskdit bench  --preset NAME --input CxHxW --batch B
    maskdit invert RUN_DIR --images X.npz --out noise.npz   (then: sample RUN_DIR --from-noise noise.npz ...)
    maskdit prune  RUN_DIR --keep-blocks K --out NEW_RUN    (then: train init_from=NEW_RUN distill.teacher=RUN_DIR ...)

Errors a user can fix print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maskdit.errors import CheckpointError, ConfigError, DataError, MaskditError
from maskdit.files import check_parents

# Only the standard library and maskdit.errors at import time: torch loads inside main(), so Ctrl-C or SIGTERM during
# start-up ends with one line instead of a traceback, and --help answers at once.


class UsageError(Exception):
    """A command line argparse cannot parse (printed as one line, exit status 2)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which handles it itself)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line instead of printing the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        unknown = "unrecognized arguments: "
        if message.startswith(unknown):  # argparse lists every word after the first unknown option; name only those
            options = [word for word in message[len(unknown):].split() if word.startswith("-")]
            message = f"unknown option(s) {', '.join(options)}" if options else message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def number(cast: type, ok: Any, wanted: str) -> Any:
    """An argparse ``type`` that parses ``cast(text)`` and refuses values failing ``ok`` (NaN always fails)."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "a non-negative integer")
non_negative_float = number(float, lambda v: 0 <= v < math.inf, "a non-negative number")
positive_float = number(float, lambda v: 0 < v < math.inf, "a positive number")
unit_float = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
ratio = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
#: The largest --guidance-scale: far past any useful guidance (DiT samples at 4), and short of the scales
#: whose arithmetic overflows float32 or turns every sample into NaN.
MAX_GUIDANCE_SCALE = 1000
guidance_scale_value = number(float, lambda v: 0 <= v <= MAX_GUIDANCE_SCALE,
                              f"a number in [0, {MAX_GUIDANCE_SCALE}] (1 = no guidance)")


def number_list(cast: type, ok: Any, wanted: str) -> Any:
    """An argparse ``type`` for comma-separated numbers, each ``cast`` and passing ``ok`` (``wanted`` names them)."""

    def parse(text: str) -> list:
        try:
            values = [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"must be comma-separated {wanted}, got {text!r}")
        return values

    return parse


def seed_value(text: str) -> int:
    """A seed: an integer in [0, MAX_SEED] (what a torch generator takes)."""
    from maskdit.training.step import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {text!r}")
    return value


class_list = number_list(int, lambda v: v >= 0, "class indices such as 0,3,7")
non_negative_ints = number_list(int, lambda v: v >= 0, "non-negative integers")
positive_ints = number_list(int, lambda v: v >= 1, "positive integers")
positive_floats = number_list(float, lambda v: 0 < v < math.inf, "positive numbers")


def interval(text: str) -> list[float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo, hi = 1.0, 0.0
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"must be LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {text!r}")
    return [lo, hi]


def grid_size(text: str) -> tuple[int, ...]:
    """``HxW`` (or ``L``, ``TxHxW``): positive integers."""
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 16x16") from None
    if not size or min(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 16x16")
    return size


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    from maskdit.diffusion.samplers import BATCH_SIZE, GUIDANCES, SAMPLERS

    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", choices=SAMPLERS.names(),
                   help="default: the run's sample.sampler (" + "; ".join(f"{n}: {d}" for n, d in SAMPLERS.describe())
                   + ")")
    g.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's sample.steps)")
    g.add_argument("--guidance-scale", type=guidance_scale_value, help="classifier-free guidance; 1 = off")
    g.add_argument("--guidance-interval", type=interval, metavar="LOW,HIGH", help="guide only for t in [LOW, HIGH]")
    g.add_argument("--guidance", choices=GUIDANCES.names(),
                   help="unconditional branch (default: the run's sample.guidance; "
                   + "; ".join(f"{n}: {d}" for n, d in GUIDANCES.describe()) + ")")
    g.add_argument("--guidance-channels", type=positive_int, metavar="N",
                   help="guide only the first N output channels, the rest from the conditional branch (DiT: 3)")
    g.add_argument("--guidance-power", type=positive_float, metavar="P",
                   help="MDT's power-cosine guidance schedule: scale 1 at t=1 rising to the full scale at t=0 "
                   "(MDT: 0.01; default: the run's sample.guidance_power, null = constant)")
    g.add_argument("--eta", type=unit_float, help="DDIM eta in [0, 1] (0 deterministic, 1 ancestral)")
    g.add_argument("--accel", metavar="NAME[:key=value,...][+NAME...]",
                   help="sampling accelerators (docs/inference.md): cache:every=3 (reuse the middle blocks' "
                   "residual), ras:ratio=0.5 (recompute half the tokens), int8 (calibrated int8 linear layers); "
                   "join with +, e.g. int8+ras:ratio=0.5")
    g.add_argument("--seed", type=seed_value, default=0, help="noise seed (default 0)")
    g.add_argument("--classes", type=class_list, help="comma-separated labels to cycle through (default: all)")
    g.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights (default ema)")
    g.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help=f"samples per network call, the last call padded (default {BATCH_SIZE}); sample i depends "
                   "only on --seed, i and this")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")


COMMAND_HELP = {
    "train": "train a model; prints its run directory",
    "sample": "write samples from a trained run",
    "eval": "score samples: FID/KID, domain FID, precision/recall, class recognition",
    "report": "write one self-contained HTML report of a run",
    "data": "export clips of an embedded video dataset",
    "info": "describe what a run or checkpoint holds",
    "bench": "forward+backward throughput of a model preset",
    "latents": "encode images with a VAE into a latent store to train on",
    "encoder": "train a small ViT by masked autoencoding, the target of representation alignment",
    "import": "turn a DiT, SiT or diffusers DiT checkpoint into a maskdit run",
    "export": "write a run's model as a diffusers DiTTransformer2DModel directory",
    "invert": "find the starting noise that samples into given images (DDIM / reverse-ODE inversion)",
    "prune": "keep K of a run's blocks (learned TinyFusion search or evenly spaced) as a new run to finetune",
}


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (each is its own parser, so options and key=value may intermix)."""
    from maskdit.data.video import VIDEO_DATASETS
    from maskdit.masks import TASKS
    from maskdit.training.recipes import RECIPES

    p = Parser(prog=f"maskdit {command}", description=COMMAND_HELP[command])
    p.add_argument("--verbose", action="store_true", help="also show the libraries' own log lines and warnings")
    if command == "train":
        p.description = "Train from a preset, a YAML file and key=value overrides (dotted keys)."
        p.add_argument("--preset", help="a named config (see maskdit/configs); default: digits")
        p.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value")
        p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    elif command == "sample":
        _add_sampling_options(p)
        p.add_argument("run_dir", help="run directory or checkpoint directory")
        p.add_argument("--num", type=positive_int, help="number of samples (default 100; with --context: all clips)")
        p.add_argument("--out", required=True,
                       help="FILE.png (a grid, one row per class) or FILE.npz; with --task also FILE.gif / FILE.mp4")
        p.add_argument("--size", type=grid_size, metavar="HxW",
                       help="sample at another size (models trained with model.pos=rope; multiples of the patch)")
        p.add_argument("--from-noise", metavar="NOISE.npz",
                       help="start from this noise (maskdit invert) instead of seeded noise; its labels, sampler, "
                       "steps and guidance are the defaults; with --task inpaint --mask: edit real images")
        _add_overwrite(p)
        t = p.add_argument_group("tasks (models trained with task.names)")
        t.add_argument("--task", choices=TASKS.names(), help="generate what this task leaves open in --context")
        t.add_argument("--context",
                       help="clips .npz (frames N x T x H x W x C uint8) or images .npz (images N x H x W x C)")
        t.add_argument("--given-frames", type=positive_int,
                       help="predict/backward/complete: frames given; animate: the given frame's index + 1")
        t.add_argument("--stride", type=positive_int, help="interpolate: every STRIDE-th frame is given")
        t.add_argument("--mask", help="image inpainting: PNG the size of the images, white = generate")
    elif command == "eval":
        _add_sampling_options(p)
        p.add_argument("run_dir", nargs="?",
                       help="run or checkpoint directory (may be left out with --samples and --data)")
        p.add_argument("--num", type=positive_int, default=500, help="samples to draw (default 500)")
        p.add_argument("--samples", help="score these samples (.npz: images, optional labels) instead of drawing")
        p.add_argument("--data", help="real images to compare with: digits, FILE.npz, a directory with images.npy "
                       "or an image folder (default: the run's dataset)")
        p.add_argument("--metrics", help="comma-separated subset of fid,kid,domain_fid,pr,class "
                       "(default: all that apply; fid,kid need the extra maskdit[fid])")
    elif command == "report":
        p.add_argument("run_dir", help="run directory")
        p.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
        _add_overwrite(p)
        p.add_argument("--per-class", type=positive_int, default=4, help="samples per class in each checkpoint's grid")
        p.add_argument("--seed", type=seed_value, default=0, help="noise seed of the sample grids (default 0)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    elif command == "data":
        p.add_argument("name", choices=list(VIDEO_DATASETS))
        p.add_argument("--split", choices=["train", "test"], default="test")
        p.add_argument("--num", type=positive_int, default=16)
        p.add_argument("--frames", type=positive_int, default=8)
        p.add_argument("--size", type=positive_int, default=16)
        p.add_argument("--seed", type=seed_value, default=0)
        p.add_argument("--out", required=True, help="clips.npz (frames N x T x H x W x C uint8), .gif or .mp4")
        _add_overwrite(p)
    elif command == "latents":
        p.add_argument("images", help="digits, FILE.npz, a directory with images.npy, or an image folder")
        p.add_argument("--vae", required=True, help="a local diffusers AutoencoderKL directory (save_pretrained)")
        p.add_argument("--out", required=True, help="the new latent store directory (must not exist)")
        p.add_argument("--resize", type=positive_int, help="image folders: centre-crop and resize to this size")
        p.add_argument("--batch", type=positive_int, default=64, help="images per VAE call")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    elif command == "encoder":
        p.add_argument("action", choices=["train"], help="train: fit a new encoder")
        p.add_argument("data", help="digits, FILE.npz, a directory with images.npy, or an image folder")
        p.add_argument("--out", required=True, help="the new encoder directory (must not exist)")
        p.add_argument("--steps", type=positive_int, default=2000)
        p.add_argument("--batch", type=positive_int, default=128)
        p.add_argument("--patch", type=positive_int, default=2, help="patch size (the model's, to align 1:1)")
        p.add_argument("--width", type=positive_int, default=128)
        p.add_argument("--depth", type=positive_int, default=4)
        p.add_argument("--heads", type=positive_int, default=4)
        p.add_argument("--mask-ratio", type=ratio, default=0.75, help="share of patches dropped (MAE: 0.75)")
        p.add_argument("--seed", type=seed_value, default=0)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    elif command == "import":
        from maskdit.interop.convert import FORMATS

        p.add_argument("source", help="a DiT/SiT .pt (or .safetensors) state dict, or a diffusers model directory")
        p.add_argument("--out", required=True, help="the new run directory (must not exist or be empty)")
        p.add_argument("--format", default="auto", choices=["auto", *FORMATS.names()],
                       help="auto: a directory is diffusers, a file DiT; " + "; ".join(
                           f"{n}: {d}" for n, d in FORMATS.describe()))
        p.add_argument("--num-heads", type=positive_int, help="attention heads (default: the DiT preset of the width)")
        p.add_argument("--vae", help="a local AutoencoderKL directory to decode 4-channel latents (SD's VAE)")
    elif command == "export":
        p.add_argument("run_dir")
        p.add_argument("--format", required=True, choices=["diffusers"], help="the target library's layout")
        p.add_argument("--out", required=True, help="the new model directory (must not exist)")
    elif command == "invert":
        from maskdit.diffusion.samplers import BATCH_SIZE, INVERSIONS

        p.add_argument("run_dir", help="run directory or checkpoint directory")
        p.add_argument("--images", required=True,
                       help="images .npz (images N x H x W x C uint8) or clips .npz (frames N x T x H x W x C)")
        p.add_argument("--out", required=True, help="NOISE.npz: the starting noise, labels and settings")
        p.add_argument("--sampler", choices=INVERSIONS.names(),
                       help="the deterministic sampler to invert (default heun for flow, ddim for ddpm)")
        p.add_argument("--steps", type=positive_int, default=50, help="inversion (and reconstruction) steps")
        p.add_argument("--guidance-scale", type=guidance_scale_value, default=1.0,
                       help="classifier-free guidance during inversion (1 = off, which inverts best)")
        p.add_argument("--classes", type=class_list, help="labels to cycle through (default: the file's 'labels')")
        p.add_argument("--weights", choices=["ema", "model"], default="ema")
        p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                       help=f"inputs per network call, the last call padded (default {BATCH_SIZE})")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        _add_overwrite(p)
    elif command == "prune":
        from maskdit.training.prune import PRUNERS, SEARCH_STEPS

        p.add_argument("run_dir", help="run directory or checkpoint directory")
        p.add_argument("--keep-blocks", type=positive_int, required=True, help="blocks to keep")
        p.add_argument("--out", required=True, help="the new run directory (must not exist or be empty)")
        p.add_argument("--method", choices=PRUNERS.names(), default="learned",
                       help="; ".join(f"{n}: {d}" for n, d in PRUNERS.describe()))
        p.add_argument("--search-steps", type=positive_int,
                       help=f"learned: training steps of the search (on the run's data; default {SEARCH_STEPS})")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    elif command == "info":
        p.add_argument("run_dir")
    elif command == "bench":
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
    return p


def top_help() -> str:
    lines = ["usage: maskdit COMMAND [options]  (maskdit COMMAND --help for its options)", "",
             "Diffusion transformers with mask modeling.", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMAND_HELP.items()]
    return "\n".join(lines)


def check_out(path: str, overwrite: bool, option: str = "--out") -> None:
    """Refuse to replace an existing file unless ``--overwrite``; refuse directories and impossible paths."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{option} {path} is a directory: give a file name")
    if out.exists() and not overwrite:
        raise ConfigError(f"{option} {path} already exists: pass --overwrite to replace it, or choose another name")
    check_parents(out, option)


# -- commands ----------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from maskdit.checkpoint import is_run, latest_checkpoint
    from maskdit.config import load_config
    from maskdit.distributed import leave, world_from_env
    from maskdit.files import read_json
    from maskdit.training.trainer import StopOnSignal, Trainer

    files = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(files) > 1 or any(not f.endswith((".yaml", ".yml")) for f in files):
        raise ConfigError(f"expected at most one CONFIG.yaml and key=value overrides, got {' '.join(files)}")
    path = files[0] if files else None
    preset = args.preset or ("digits" if path is None else None)
    cfg = load_config(preset, path, overrides)
    if args.resume and is_run(Path(cfg.run_dir)):
        saved = read_json(Path(cfg.run_dir) / "config.json", keys=("config",))["config"]
        if not isinstance(saved, dict):
            raise ConfigError(f"{Path(cfg.run_dir) / 'config.json'} is damaged: its config is not a mapping")
        saved["run_dir"] = cfg.run_dir  # the directory asked for, never the one the run was saved from
        cfg = load_config(None, path, overrides, base=saved)
    world = world_from_env()
    say = print if world.main else (lambda *a, **k: None)  # under torchrun, rank 0 speaks for all
    say(f"run directory: {cfg.run_dir}", flush=True)
    trainer = None
    try:
        with StopOnSignal() as starting:  # a signal while the trainer is built is kept, never lost in a library
            trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
        if starting.signum is not None:
            raise Terminated if starting.signum == signal.SIGTERM else KeyboardInterrupt
        n_params = sum(p.numel() for p in trainer.model.parameters())
        processes = f" x {world.size} processes" if world.size > 1 else ""
        say(f"model: {n_params / 1e6:.2f}M parameters, {trainer.model.num_tokens} tokens, "
            f"dataset {trainer.dataset.name} ({len(trainer.dataset)} examples of "
            f"{'x'.join(map(str, trainer.dataset.shape))}), device {trainer.device}{processes}", flush=True)
        start, first_step = time.time(), trainer.step
        if first_step >= cfg.steps:
            say(f"{cfg.run_dir} is already at step {first_step} of {cfg.steps}: nothing to train "
                "(raise steps=N to continue)", flush=True)
            say(cfg.run_dir)
            return 0
        trainer.run()
        last_step = trainer.step
    finally:
        # DDP holds the process group: free it while the interpreter is whole, so the group's worker threads
        # are joined here and never torn down during interpreter exit (gloo aborts the process then)
        trainer = None
        gc.collect()
        leave()
    say(f"trained steps {first_step}-{last_step} in {time.time() - start:.0f}s", flush=True)
    say(f"wrote {latest_checkpoint(cfg.run_dir)} and {Path(cfg.run_dir) / 'metrics.jsonl'}")
    say(cfg.run_dir)
    return 0


def _sampling_kwargs(args: argparse.Namespace, run: Any, noise: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampling settings: each option given, else the ``--from-noise`` file's setting (``noise``, as
    :func:`_from_noise` checked it), else the run's ``sample.*``; refuses options that do not fit the model."""
    from maskdit.diffusion.samplers import GUIDANCES, SAMPLERS, default_sampler
    from maskdit.registry import one_of

    s, noise = run.config.sample, noise or {}
    fitting = SAMPLERS.names(objectives=run.objective.name)
    if args.sampler and args.sampler not in fitting:
        raise ConfigError(f"--sampler {args.sampler} does not fit this run's {run.objective.name} objective: "
                          f"use {one_of(fitting)}")
    model = run.model
    guidance = args.guidance or s.guidance
    from_file = args.guidance_scale is None and noise.get("guidance_scale") is not None
    scale = noise["guidance_scale"] if from_file else s.guidance_scale if args.guidance_scale is None \
        else args.guidance_scale
    # asked for, not the run's defaults: a guidance needing labels on an unconditional model would sample unguided
    if (args.guidance_scale is not None or from_file or args.guidance) and scale != 1 and not model.num_classes \
            and GUIDANCES.entry(guidance).facts["labels"]:
        source = ("--guidance-scale" if args.guidance_scale is not None
                  else f"the guidance_scale of --from-noise {args.from_noise}" if from_file
                  else f"--guidance {guidance} with the run's sample.guidance_scale")
        raise ConfigError(f"guidance scale {scale:g} ({source}): {guidance} guidance contrasts class labels and this "
                          "model is unconditional, so it would sample unguided: pass --guidance-scale 1"
                          + (", or use --guidance context with --task" if model.task_conditioning else ""))
    channels = args.guidance_channels or s.guidance_channels
    if channels is not None and channels > model.in_channels:
        where = "--guidance-channels" if args.guidance_channels else "the run's sample.guidance_channels"
        fits = "1" if model.in_channels == 1 else f"1-{model.in_channels}"
        raise ConfigError(f"{where} {channels}: this model predicts {model.in_channels} channel(s), so at most "
                          f"{model.in_channels} can be guided: pass --guidance-channels {fits} (or leave it out)")
    return {
        "sampler": args.sampler or noise.get("sampler") or s.sampler or default_sampler(run.objective),
        "steps": args.steps or noise.get("steps") or s.steps,
        "guidance_scale": scale,
        "guidance_interval": args.guidance_interval or s.guidance_interval,
        "guidance": guidance,
        "guidance_channels": channels,
        "guidance_power": args.guidance_power or s.guidance_power,
        "eta": s.eta if args.eta is None else args.eta,
        "seed": args.seed,
        **({} if not getattr(args, "accel", None) else {"accel": _checked_accel(args.accel)}),
    }


def _checked_accel(spec: str) -> str:
    from maskdit.diffusion.accel import parse_accels

    parse_accels(spec)  # refuse a bad spec before any sampling starts
    return spec


def _labels(args: argparse.Namespace, run: Any, num: int) -> Any:
    import torch

    n_classes = run.model.num_classes
    if n_classes == 0:
        if args.classes:
            raise ConfigError("--classes: this model is unconditional and takes no class labels")
        return None
    classes = args.classes or list(range(n_classes))
    if max(classes) >= n_classes:
        raise ConfigError(f"--classes: class {max(classes)} is out of range: this model has classes 0-{n_classes - 1}")
    return torch.tensor(classes)[torch.arange(num) % len(classes)]


def _load(args: argparse.Namespace) -> Any:
    from maskdit.checkpoint import load_run
    from maskdit.training.trainer import pick_device

    return load_run(args.run_dir, ema=args.weights == "ema", device=pick_device(args.device))


def _from_noise(args: argparse.Namespace, run: Any) -> dict[str, Any]:
    """``--from-noise``: the starting noise, and its labels and settings as defaults of the options left out
    (:func:`_sampling_kwargs` takes them). A setting read from the file passes the checks of the option it
    stands for (``maskdit invert``'s ``--sampler``, ``--steps`` and ``--guidance-scale``), so a file cannot
    set what the command line would refuse."""
    from maskdit.data.media import load_noise
    from maskdit.diffusion.samplers import INVERSIONS, SAMPLERS
    from maskdit.registry import one_of

    if not getattr(args, "from_noise", None):
        return {}
    if getattr(args, "size", None) is not None:
        raise ConfigError("--size does not apply with --from-noise (the noise fixes the size)")
    found = load_noise(args.from_noise, (run.model.in_channels, *run.model.input_size), run.model.num_classes)
    fix = "write it again with maskdit invert on this run"
    for key, option, parse in (("steps", "--steps", positive_int),
                               ("guidance_scale", "--guidance-scale", guidance_scale_value)):
        value = found.get(key)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            found[key] = parse(str(value) if number else "")  # exactly the option's own check
            continue
        except argparse.ArgumentTypeError as e:
            wanted = str(e).partition(", got")[0].removeprefix("must be ")
        raise DataError(f"--from-noise {args.from_noise}: its {key} {value!r} is refused: like {option}, it must be "
                        f"{wanted}; {fix}")
    sampler = found.get("sampler")
    if sampler is not None:
        fitting = [n for n in INVERSIONS.names() if n in SAMPLERS.names(objectives=run.objective.name)]
        if sampler not in fitting:
            raise DataError(f"--from-noise {args.from_noise}: its sampler {sampler!r} is not one that inverts "
                            f"this run's {run.objective.name} objective ({one_of(fitting)}): the noise was "
                            f"inverted with another run; {fix}")
    return found


def _draw(args: argparse.Namespace, run: Any, num: int, noise: dict[str, Any] | None = None) -> tuple[Any, Any, dict]:
    from maskdit.diffusion.samplers import generate
    from maskdit.diffusion.tasks import check_finite

    noise = noise or {}
    if args.guidance == "context":
        raise ConfigError("--guidance context contrasts given and open tokens: it needs --task and --context; "
                          "sample without a task with --guidance cfg")
    labels = noise["labels"] if noise.get("labels") is not None and not args.classes else _labels(args, run, num)
    kwargs = _sampling_kwargs(args, run, noise)
    size = getattr(args, "size", None)
    if size is not None and (run.model.pos != "rope" or len(size) != len(run.model.input_size)):
        raise ConfigError(f"--size {'x'.join(map(str, size))}: only a model trained with model.pos=rope samples at "
                          f"another size, with as many axes as its {'x'.join(map(str, run.model.input_size))}")
    x = generate(run.model, run.objective, num, labels, batch_size=args.batch_size, progress=True, size=size,
                 start=noise.get("noise"), **kwargs)
    check_finite(x, kwargs)
    return run.codec.decode(x), labels, kwargs


def cmd_data(args: argparse.Namespace) -> int:
    from maskdit.data.media import save_video
    from maskdit.data.video import load_video_dataset

    if not args.out.lower().endswith((".npz", ".gif", ".mp4")):
        raise ConfigError(f"--out {args.out}: the file name must end in .npz, .gif or .mp4")
    check_out(args.out, args.overwrite)
    data = load_video_dataset(args.name, args.split, args.num, args.seed, frames=args.frames, size=args.size)
    frames = data.frames.permute(0, 2, 3, 4, 1).numpy()  # N x T x H x W x C
    save_video(args.out, frames)
    shape = "x".join(map(str, frames.shape[1:]))
    print(f"wrote {len(frames)} {args.split} clips of {args.name} ({shape}) to {args.out}")
    return 0


def _task_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """--given-frames / --stride as the options the task's builder takes (by option name, so a newly
    registered task with a ``k``, ``frame`` or ``stride`` option needs no change here), checked against the
    model's token-grid frames so a value out of range names its option."""
    from maskdit.masks import task_options

    takes = task_options(args.task)
    options: dict[str, Any] = {}
    frames = model.token_grid[0] if len(model.token_grid) == 3 else None
    if args.given_frames is not None:
        if "k" in takes:  # k frames given: at most all but one
            options["k"], top = args.given_frames, (frames or 0) - 1
        elif "frame" in takes:  # the given frame's index + 1
            options["frame"], top = args.given_frames - 1, frames or 0
        else:
            raise ConfigError(f"--given-frames does not apply to --task {args.task}")
        if frames is not None and args.given_frames > top:
            all_given = " leaves nothing to generate" if args.given_frames == frames and "k" in takes else ""
            raise ConfigError(f"--given-frames {args.given_frames}{all_given}: this model's clips have {frames} "
                              f"(token) frames, so --task {args.task} takes "
                              + (f"1-{top}" if top >= 1 else "no --given-frames"))
    if args.stride is not None:
        if "stride" not in takes:
            raise ConfigError(f"--stride does not apply to --task {args.task}")
        if frames is not None and not 2 <= args.stride <= frames:
            all_given = " leaves nothing to generate" if args.stride == 1 else ""
            raise ConfigError(f"--stride {args.stride}{all_given}: this model's clips have {frames} (token) frames, so "
                              f"--task {args.task} takes " + (f"2-{frames}" if frames >= 2 else "no --stride"))
        options["stride"] = args.stride
    return options


def cmd_sample_task(args: argparse.Namespace, run: Any) -> int:
    import torch

    from maskdit.data.media import save_samples, save_video
    from maskdit.diffusion.tasks import comparison_frames, complete, given_for, load_context, mask_from_png

    if not args.context:
        raise ConfigError("--task needs --context FILE.npz with the clips (or images) to condition on")
    if args.size is not None:
        raise ConfigError(f"--size {'x'.join(map(str, args.size))} does not apply with --task: the --context inputs "
                          "fix the size; leave --size out")
    context = load_context(args.context, run.model)
    if args.num is not None and args.num > len(context):
        raise ConfigError(f"--num {args.num}: --context {args.context} holds {len(context)} inputs, one result each; "
                          f"give at most {len(context)} or leave --num out")
    if args.num is not None:
        context = context[: args.num]
    options = _task_options(args, run.model)
    noise = _from_noise(args, run)
    if noise and len(noise["noise"]) != len(context):
        raise ConfigError(f"--from-noise {args.from_noise} holds {len(noise['noise'])} starts for {len(context)} "
                          "--context inputs: invert the same inputs")
    if args.mask:
        if args.task not in ("inpaint", "outpaint"):
            raise ConfigError("--mask applies to --task inpaint or outpaint")
        grid = mask_from_png(args.mask, run.model)
    else:
        grid = given_for(args.task, run.model, options, torch.Generator().manual_seed(args.seed))
    if bool(grid.all()):
        raise ConfigError(f"--task {args.task}: the mask leaves nothing to generate")
    labels = _labels(args, run, len(context))
    if noise.get("labels") is not None and not args.classes:
        labels = noise["labels"]
    kwargs = _sampling_kwargs(args, run, noise)
    start = time.time()
    out = complete(run, context, grid, labels, batch_size=args.batch_size, progress=True,
                   **({"start": noise["noise"]} if noise else {}), **kwargs)
    video = out.dim() == 5
    if video and args.out.lower().endswith((".gif", ".mp4")):
        path = save_video(args.out, comparison_frames(context, out, grid, run.model))
    elif video and args.out.lower().endswith(".npz"):
        path = save_video(args.out, out.permute(0, 2, 3, 4, 1).numpy())
    elif not video and args.out.lower().endswith((".png", ".npz")):
        path = save_samples(args.out, out, labels)
    else:
        raise ConfigError(f"--out {args.out}: use .npz, .gif or .mp4 for clips and .png or .npz for images")
    given_share = grid.float().mean().item()
    print(f"wrote {len(out)} {args.task} results to {path} ({time.time() - start:.1f}s, {given_share:.0%} of tokens "
          f"given, step {run.step}, " + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from maskdit.data.media import clips_as_rows, save_samples, save_video

    if not args.out.lower().endswith((".png", ".npz", ".gif", ".mp4")):
        raise ConfigError(f"--out {args.out}: the file name must end in .png, .npz, .gif or .mp4")
    check_out(args.out, args.overwrite)
    if args.task or args.context or args.mask:
        if not args.task:
            raise ConfigError("--context/--mask need --task NAME")
        return cmd_sample_task(args, _load(args))
    for option in ("given_frames", "stride"):
        if getattr(args, option) is not None:
            raise ConfigError(f"--{option.replace('_', '-')} applies with --task only")
    run = _load(args)
    noise = _from_noise(args, run)
    if noise:
        if args.num is not None and args.num != len(noise["noise"]):
            raise ConfigError(f"--num {args.num}: --from-noise {args.from_noise} holds {len(noise['noise'])} starts; "
                              "leave --num out")
        args.num = len(noise["noise"])
    args.num = args.num or 100
    video = len(run.model.input_size) == 3
    allowed = (".png", ".npz", ".gif", ".mp4") if video else (".png", ".npz")
    if not args.out.lower().endswith(allowed):
        raise ConfigError(f"--out {args.out}: the file name must end in {', '.join(allowed)}")
    start = time.time()
    images, labels, kwargs = _draw(args, run, args.num, noise)
    if video and not args.out.lower().endswith(".png"):
        path = save_video(args.out, images.permute(0, 2, 3, 4, 1).numpy())
    elif video:
        path = save_samples(args.out, *clips_as_rows(images))
    else:
        path = save_samples(args.out, images, labels)
    print(f"wrote {len(images)} samples to {path} ({time.time() - start:.1f}s, step {run.step}, "
          + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")")
    return 0


def images_from_spec(spec: str, option: str = "--data", resize: int | None = None) -> Any:
    """An image dataset named on the command line: a dataset name that needs no path, an .npz file, a
    directory with images.npy, or an image folder (``resize``: centre-cropped to that size)."""
    from maskdit.data.datasets import DATASETS, load_dataset

    if spec in DATASETS and not DATASETS.entry(spec).facts["needs_path"]:
        return load_dataset(spec)
    path = Path(spec)
    if spec.lower().endswith(".npz"):
        return load_dataset("npz", spec)
    if path.is_dir():
        if (path / "images.npy").is_file():
            return load_dataset("npy", spec)
        return load_dataset("folder", spec, resize=resize)
    raise ConfigError(f"{option} {spec}: give digits, a .npz file, a directory with images.npy or an image folder")


def _eval_dataset(args: argparse.Namespace, run: Any) -> Any:
    """The real images to compare with: ``--data`` (see :func:`images_from_spec`) or the run's dataset."""
    from maskdit.data.datasets import dataset_from_config

    if args.data is None:
        return dataset_from_config(run.config.data)
    return images_from_spec(args.data)


def cmd_latents(args: argparse.Namespace) -> int:
    from maskdit.data.latents import encode_images
    from maskdit.training.trainer import pick_device

    dataset = images_from_spec(args.images, "IMAGES", args.resize)
    manifest = encode_images(dataset, args.vae, args.out, args.batch, pick_device(args.device),
                             progress=not args.no_progress)
    shape = "x".join(map(str, manifest["latent_shape"]))
    print(f"wrote {manifest['num']} latents of {shape} (and their mirrors), scaling factor "
          f"{manifest['scaling_factor']:g}, to {args.out}; train with data.name=latents data.path={args.out}")
    return 0


def cmd_encoder(args: argparse.Namespace) -> int:
    from maskdit.training.encoder import train_encoder

    if args.width % args.heads:
        raise ConfigError(f"--heads {args.heads} must divide --width {args.width}")
    dataset = images_from_spec(args.data, "DATA")
    facts = train_encoder(dataset, args.out, args.steps, args.batch, args.mask_ratio, args.patch, args.width,
                          args.depth, args.heads, seed=args.seed, progress=not args.no_progress)
    print(f"trained a {args.depth}-block ViT (width {args.width}, patch {args.patch}) for {args.steps} steps in "
          f"{facts['seconds']:.0f}s: masked reconstruction error {facts['first_loss']:.3f} -> "
          f"{facts['final_loss']:.3f}")
    print(f"wrote {args.out}; align with: maskdit train align.weight=0.5 align.encoder={args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from maskdit.files import read_json
    from maskdit.interop.convert import import_run

    ckpt = import_run(args.source, args.out, args.format, args.num_heads, args.vae)
    model = read_json(ckpt / "config.json", keys=("model",))["model"]
    params = sum(v.numel() for v in load_file(ckpt / "ema.safetensors").values())
    table = math.prod(model["input_size"]) // math.prod(model["patch_size"]) * model["hidden_size"]
    counted = f"{(params + table) / 1e6:.1f}M with the fixed position table, as DiT counts" \
        if model.get("pos", "sincos") == "sincos" else "its learned position tables included"
    decoder = model.get("decoder") or {}
    extras = [text for text, present in (
        ("learned sigma", model.get("learn_sigma")),
        (f"a decoder of {decoder.get('depth')} blocks at width {decoder.get('width')}", decoder),
        ("EDM preconditioning", model.get("precond")),
        (f"long skips with {model.get('long_skips')} decoder blocks", model.get("long_skips") is not None),
        ("relative position bias", model.get("rel_pos_bias"))) if present]
    print(f"imported {args.source}: {params / 1e6:.1f}M parameters ({counted}), depth {model['depth']}, width "
          f"{model['hidden_size']}, {model['num_heads']} heads, patch {model['patch_size'][0]}, input "
          f"{model['in_channels']}x{'x'.join(map(str, model['input_size']))}, {model['num_classes']} classes"
          + "".join(f", {e}" for e in extras))
    print(f"wrote {ckpt}; sample with: maskdit sample {args.out} --out samples.png")
    print(args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from maskdit.checkpoint import load_run
    from maskdit.interop.convert import export_diffusers

    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new directory for the exported model")
    run = load_run(args.run_dir)
    config = export_diffusers(run.model, out, run)
    print(f"wrote {out} (DiTTransformer2DModel, {config['num_layers']} layers, width "
          f"{config['num_attention_heads'] * config['attention_head_dim']}); load it with "
          f"diffusers.DiTTransformer2DModel.from_pretrained('{out}')")
    if run.model.t_embedder.freq_shift != 1.0:
        print("note: diffusers' DiT embeds time with downscale_freq_shift=1 and this model was trained with "
              f"{run.model.t_embedder.freq_shift:g}: diffusers computes a slightly different function "
              "(maskdit import of this directory restores the original exactly)", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from maskdit.data.datasets import load_npz
    from maskdit.evaluate.suite import check_shape, parse_metrics, resolve_metrics, score_samples
    from maskdit.training.trainer import pick_device

    if args.run_dir is None and not (args.samples and args.data):
        raise ConfigError("eval needs RUN_DIR, or --samples FILE.npz together with --data to compare against")
    requested = parse_metrics(args.metrics) if args.metrics is not None else None
    run = _load(args) if args.run_dir else None
    if run is not None and len(run.model.input_size) != 2:
        raise ConfigError(f"maskdit eval scores image models; {args.run_dir} generates "
                          f"{len(run.model.input_size)}-D grids: for video tasks use "
                          f"python benchmarks/video_tasks.py {args.run_dir}")
    dataset = _eval_dataset(args, run)
    start = time.time()
    if args.samples:
        given = load_npz(args.samples)
        check_shape(given.images, dataset, f"--samples {args.samples}")
        metrics = resolve_metrics(requested, dataset, has_labels=given.labels is not None)
        images, labels = given.images, given.labels
        kwargs: dict[str, Any] = {"sampler": None, "steps": None, "guidance_scale": None, "seed": None,
                                  "samples": args.samples}
        context = f"{len(images)} samples from {args.samples}"
    else:
        check_shape(torch.empty(0, run.model.in_channels, *run.model.input_size), dataset, f"model of {args.run_dir}")
        metrics = resolve_metrics(requested, dataset, has_labels=run.model.num_classes > 0)
        images, labels, kwargs = _draw(args, run, args.num)
        context = (f"{len(images)} samples, step {run.step}, sampler={kwargs['sampler']}, steps={kwargs['steps']}, "
                   f"guidance_scale={kwargs['guidance_scale']}, seed={kwargs['seed']}")
    sampling_s = time.time() - start
    device = next(run.model.parameters()).device if run else pick_device(args.device)
    scores = score_samples(images, labels, dataset, metrics, device=device)
    scores["time_s"] = {"sampling": round(sampling_s, 2) if not args.samples else 0.0, **scores["time_s"]}
    real = f"vs {scores['real_num']} real {dataset.name}"
    if "fid" in scores:
        print(f"FID (Inception, 2048-d) {real}: {scores['fid']:.3f}  [{context}]")
    if "kid" in scores:
        print(f"KID (Inception) {real}: {scores['kid']:.5f} +- {scores['kid_std']:.5f}  [{context}]")
    if "domain_fid" in scores:
        print(f"domain FID (classifier features, 128-d) {real}: {scores['domain_fid']:.3f}  [{context}]")
    if "precision" in scores:
        print(f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f} (k=3, {scores['pr_features']} "
              f"features) {real}  [{context}]")
    if "class_accuracy" in scores:
        print(f"class recognition: {scores['class_accuracy']:.1%} of {len(images)} samples classified as the "
              f"requested class (classifier held-out accuracy on real {dataset.name}: "
              f"{scores['classifier_holdout_accuracy']:.1%})  [{context}]")
        print("per class: " + ", ".join(f"{k}: {v:.0%}" for k, v in scores["per_class_accuracy"].items()))
    elif labels is None:
        print("no labels (unconditional model or unlabelled samples): no class recognition rate")
    if not metrics:
        print("no metric applies: the dataset has no labels and the Inception extra is missing", file=sys.stderr)
    result: dict[str, Any] = {"num": len(images), "step": run.step if run else None, **kwargs, "metrics": metrics,
                              **scores}
    print(json.dumps(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from maskdit.evaluate.report import write_report
    from maskdit.training.trainer import pick_device

    if args.out is not None and not args.out.lower().endswith((".html", ".htm")):
        raise ConfigError(f"--out {args.out}: the report is HTML; give a file name ending in .html")
    if args.out is not None:  # the default RUN_DIR/report.html is the project's own file
        check_out(args.out, args.overwrite)
    start = time.time()
    path = write_report(args.run_dir, args.out, per_class=args.per_class, seed=args.seed,
                        device=pick_device(args.device))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {time.time() - start:.1f}s); "
          "it is self-contained and opens offline")
    print(path)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError, safe_open

    from maskdit.checkpoint import list_checkpoints, resolve_checkpoint
    from maskdit.files import read_json

    ckpt = resolve_checkpoint(args.run_dir)
    info = read_json(ckpt / "config.json", keys=("config", "model", "dataset"))
    state = read_json(ckpt / "state.json", keys=("step", "data_position"))

    try:
        with safe_open(ckpt / "ema.safetensors", framework="pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {ckpt / 'ema.safetensors'}: {e}; the file is damaged") from e
    cfg, model, data = info["config"], info["model"], info["dataset"]
    print(f"checkpoint: {ckpt} (step {state['step']} of {cfg['steps']})")
    print(f"model: DiT depth {model['depth']}, width {model['hidden_size']}, {model['num_heads']} heads, "
          f"patch {model['patch_size']}, input {model['in_channels']}x{'x'.join(map(str, model['input_size']))}, "
          f"{model['num_classes']} classes, {params / 1e6:.2f}M parameters")
    from maskdit.diffusion.samplers import default_sampler

    sampler = cfg["sample"]["sampler"] or default_sampler(cfg["objective"]["name"])
    print(f"objective: {cfg['objective']['name']}; sampler default: {sampler} "
          f"{cfg['sample']['steps']} steps, guidance {cfg['sample']['guidance_scale']}")
    print(f"data: {data['name']} ({data['size']} examples of {'x'.join(map(str, data['shape']))}), "
          f"position {state['data_position']}")
    print("files: " + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in sorted(ckpt.iterdir())))
    others = [p.name for p in list_checkpoints(ckpt.parent.parent)] if ckpt.parent.name == "checkpoints" else []
    if others:
        print(f"checkpoints in run: {', '.join(others)}")
    print(json.dumps({"checkpoint": str(ckpt), "step": state["step"], "params": params, "model": model}))
    return 0


#: The model fields ``maskdit bench`` lets a user set over the preset.
BENCH_FIELDS = ("depth", "hidden_size", "num_heads", "mlp_ratio", "norm", "qk_norm", "mlp", "pos", "moe")


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


def cmd_bench(args: argparse.Namespace) -> int:
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


def cmd_invert(args: argparse.Namespace) -> int:
    from maskdit.data.media import save_noise
    from maskdit.diffusion.samplers import default_sampler, generate, invert
    from maskdit.diffusion.tasks import load_context, load_labels

    if not args.out.lower().endswith(".npz"):
        raise ConfigError(f"--out {args.out}: the noise file's name must end in .npz")
    check_out(args.out, args.overwrite)
    if Path(args.out).exists() and Path(args.images).exists() and os.path.samefile(args.out, args.images):
        raise ConfigError(f"--out {args.out} is the --images file: write the noise to another file")
    run = _load(args)
    images = load_context(args.images, run.model, flag="--images")
    labels = None
    if run.model.num_classes:
        if args.classes:
            labels = _labels(args, run, len(images))
        else:
            labels = load_labels(args.images, len(images), run.model.num_classes, flag="--images")
            if labels is None:
                raise ConfigError(f"--images {args.images} has no 'labels' ({len(images)} integers) for this "
                                  "class-conditional model: pass --classes")
    elif args.classes:
        raise ConfigError("--classes: this model is unconditional and takes no class labels")
    elif args.guidance_scale != 1:
        raise ConfigError(f"--guidance-scale {args.guidance_scale:g}: this model is unconditional, so guidance has no "
                          "class labels to contrast and the noise would not be what the file says: pass "
                          "--guidance-scale 1 (or leave it out)")
    sampler = args.sampler or default_sampler(run.objective)
    settings = {"sampler": sampler, "steps": args.steps, "guidance_scale": args.guidance_scale}
    start = time.time()
    x0 = run.codec.encode(images)
    noise = invert(run.model, run.objective, x0, labels, sampler, args.steps, args.guidance_scale,
                   batch_size=args.batch_size, progress=True)
    if not bool(noise.isfinite().all()):
        raise ConfigError(f"inverting gave NaN or infinite noise (--guidance-scale {args.guidance_scale:g}, --steps "
                          f"{args.steps}): invert with --guidance-scale 1, which inverts best")
    back = run.codec.decode(generate(run.model, run.objective, len(noise), labels, batch_size=args.batch_size,
                                     start=noise, **settings))
    path = save_noise(args.out, noise, labels, settings)  # only once all went well: a failure writes nothing
    mse = float((back.double() - images.double()).pow(2).mean())
    quality = "exact (identical pixels)" if mse == 0 else f"PSNR {10 * math.log10(255**2 / mse):.1f} dB"
    print(f"wrote the starting noise of {len(noise)} inputs to {path} ({time.time() - start:.1f}s, step {run.step}, "
          + ", ".join(f"{k}={v}" for k, v in settings.items()) + f"); sampling it back: {quality}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from maskdit.training.prune import SEARCH_STEPS, prune_run
    from maskdit.training.trainer import pick_device

    if args.search_steps is not None and args.method != "learned":
        raise ConfigError(f"--search-steps applies to --method learned; --method {args.method} does not search: "
                          "leave --search-steps out")
    start = time.time()
    r = prune_run(args.run_dir, args.out, args.keep_blocks, args.method, args.search_steps or SEARCH_STEPS,
                  device=pick_device(args.device), progress=True)
    print(f"kept blocks {r['kept']} ({args.method}, {time.time() - start:.1f}s); denoising loss on held-out batches: "
          f"full {r['loss_full']:.4f}, kept {r['loss_kept']:.4f}, evenly spaced {r['every_other']} "
          f"{r['loss_every_other']:.4f}")
    print(f"wrote {args.out}; recover with: maskdit train init_from={args.out} model.depth={args.keep_blocks} "
          f"distill.teacher={args.run_dir} run_dir=NEW_DIR steps=N (plus the options the run was trained with; "
          "the full run as teacher recovers best, docs/inference.md)")
    return 0


COMMANDS = {
    "train": cmd_train, "sample": cmd_sample, "data": cmd_data, "eval": cmd_eval, "report": cmd_report,
    "info": cmd_info, "bench": cmd_bench, "latents": cmd_latents, "encoder": cmd_encoder, "import": cmd_import,
    "export": cmd_export, "invert": cmd_invert, "prune": cmd_prune,
}


def _dispatch(argv: list[str]) -> int:
    if not argv:
        raise UsageError(f"maskdit: a command is required: one of {', '.join(COMMANDS)} (see maskdit --help)")
    if argv[0] in ("-h", "--help"):
        print(top_help())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"maskdit: unknown command {command!r}: choose one of {', '.join(COMMANDS)} "
                         "(see maskdit --help)")
    args = build_parser(command).parse_intermixed_args(rest)
    with library_logs(args.verbose):
        return COMMANDS[command](args)


@contextlib.contextmanager
def library_logs(verbose: bool) -> Iterator[None]:
    """Keep the libraries' own log lines and warnings (diffusers, transformers, torch: "accelerate is not
    installed", "defaulting to unsafe serialization", deprecations) off stderr unless ``verbose``: maskdit
    says what matters, as one line on failure and nothing extra on success."""
    if verbose:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (bad input, missing or damaged files, a full disk) print one
    line and return 2; signals return 128 + their number; a bug still shows its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return guarded(lambda: _dispatch(argv))


def guarded(run: Callable[[], int | None]) -> int:
    """Call ``run`` the way maskdit runs a command, and return its exit status: expected failures (a
    ``MaskditError``, a ``UsageError``, a file that cannot be used) print one line and give 2, signals give 128
    + their number, a bug still shows its traceback. The benchmark scripts end with ``sys.exit(guarded(main))``."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from maskdit.training.trainer import Interrupted

        try:
            return run() or 0
        except (MaskditError, UsageError) as e:
            return _fail(str(e))
        except Interrupted as e:
            return e.exit_code
        except BrokenPipeError:  # the reader went away (maskdit info RUN | head): nothing more to say
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (so the interpreter's final flush is quiet)
            return 141
        except OSError as e:
            if e.filename is None and not isinstance(e, (PermissionError, FileNotFoundError)):
                raise
            where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
            return _fail(f"cannot use {where}: {e.strerror or e}")
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> int:
    if not _quiet_rank():
        print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def _quiet_rank() -> bool:
    """Whether this process is rank 1 or above of a well-formed torchrun world: every rank fails alike on bad
    input, so rank 0 alone says so (a malformed RANK or WORLD_SIZE is itself the error, and every rank says it)."""
    try:
        rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return 0 < rank < size


if __name__ == "__main__":
    sys.exit(main())
