"""``maskdit train``: train from a preset, a YAML file and key=value overrides; prints the run directory."""

from __future__ import annotations

import argparse
import gc
import signal
import time
from pathlib import Path

from maskdit.cli.args import Terminated
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Train from a preset, a YAML file and key=value overrides (dotted keys)."
    p.add_argument("--preset", help="a named config (see maskdit/configs); default: digits")
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value")
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from maskdit.checkpoint import is_run, latest_checkpoint
    from maskdit.config import load_config
    from maskdit.distributed import leave, world_from_env
    from maskdit.files import read_json
    from maskdit.model.dit import parameter_count
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
        processes = f" x {world.size} processes" if world.size > 1 else ""
        lora = trainer.lora
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        adapter = ""
        if lora is not None:
            kinds = [f"rank {lora['rank']}"] * bool(lora["rank"]) + ["per-channel affine"] * bool(lora.get("affine"))
            adapter = (f" ({trainable / 1e6:.3f}M trainable: LoRA {' + '.join(kinds)} on {lora['layers']} layers, "
                       "the rest frozen)")
        elif trainer.model.control is not None and trainer.model.control.frozen_base:
            adapter = f" ({trainable / 1e6:.3f}M trainable: control.kind={cfg.control.kind}, the base frozen)"
        say(f"model: {parameter_count(trainer.model) / 1e6:.2f}M parameters{adapter}, {trainer.model.num_tokens} "
            "tokens, "
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
