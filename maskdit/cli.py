"""The ``maskdit`` command line: thin wrappers that parse options and call the library.

    maskdit train  [--preset NAME] [CONFIG.yaml] [key=value ...] [--resume]
    maskdit sample RUN_DIR --num N --out FILE.png|FILE.npz [sampling options]
    maskdit eval   RUN_DIR [--num N | --samples FILE.npz] [sampling options]
    maskdit info   RUN_DIR
    maskdit bench  --preset NAME --input CxHxW --batch B

Errors a user can fix print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from maskdit.errors import ConfigError, MaskditError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def class_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated class indices such as 0,3,7, got {text!r}")
    return values


def interval(text: str) -> list[float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo, hi = 1.0, 0.0
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"must be LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {text!r}")
    return [lo, hi]


def sampling_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", choices=["euler", "heun", "ddim", "ddpm"],
                   help="default: the run's sample.sampler (heun for flow, ddim for ddpm)")
    g.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's sample.steps)")
    g.add_argument("--guidance-scale", type=non_negative_float, help="classifier-free guidance; 1 = off")
    g.add_argument("--guidance-interval", type=interval, metavar="LOW,HIGH", help="guide only for t in [LOW, HIGH]")
    g.add_argument("--eta", type=non_negative_float, help="DDIM eta (0 deterministic, 1 ancestral)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.add_argument("--classes", type=class_list, help="comma-separated labels to cycle through (default: all)")
    g.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights (default ema)")
    g.add_argument("--batch-size", type=positive_int, default=256, help="samples per model batch")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskdit", description="Diffusion transformers with mask modeling.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; prints its run directory",
                       description="Train from a preset, a YAML file and key=value overrides (dotted keys).")
    p.add_argument("--preset", help="a named config (see maskdit/configs); default: digits")
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value")
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    sampling = sampling_options()
    p = sub.add_parser("sample", parents=[sampling], help="write samples from a trained run")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("--num", type=positive_int, default=100, help="number of samples (default 100)")
    p.add_argument("--out", required=True, help="FILE.png (a grid, one row per class) or FILE.npz")

    p = sub.add_parser("eval", parents=[sampling], help="score samples: class recognition rate")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("--num", type=positive_int, default=500, help="samples to draw (default 500)")
    p.add_argument("--samples", help="score these samples (.npz with images, labels) instead of drawing new ones")

    p = sub.add_parser("info", help="describe what a run or checkpoint holds")
    p.add_argument("run_dir")

    p = sub.add_parser("bench", help="forward+backward throughput of a model preset")
    p.add_argument("--preset", default="DiT-S/2", help="model preset, e.g. tiny, DiT-S/2, DiT-XL/2")
    p.add_argument("--input", default="4x32x32", help="CxHxW (or CxL, CxTxHxW) of one input")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps")
    p.add_argument("--warmup", type=positive_int, default=3)
    p.add_argument("--device", default="auto")
    return parser


# -- commands ----------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from maskdit.checkpoint import latest_checkpoint, read_json
    from maskdit.config import load_config
    from maskdit.train import Trainer

    files = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(files) > 1 or any(not f.endswith((".yaml", ".yml")) for f in files):
        raise ConfigError(f"expected at most one CONFIG.yaml and key=value overrides, got {' '.join(files)}")
    path = files[0] if files else None
    preset = args.preset or ("digits" if path is None else None)
    cfg = load_config(preset, path, overrides)
    if args.resume and (Path(cfg.run_dir) / "config.json").is_file():
        saved = read_json(Path(cfg.run_dir) / "config.json")["config"]
        cfg = load_config(None, path, overrides, base=saved)
    print(f"run directory: {cfg.run_dir}", flush=True)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, {trainer.model.num_tokens} tokens, "
          f"dataset {trainer.dataset.name} ({len(trainer.dataset)} images), device {trainer.device}", flush=True)
    start = time.time()
    try:
        trainer.run()
    except KeyboardInterrupt:
        return 130
    print(f"trained to step {trainer.step} in {time.time() - start:.0f}s", flush=True)
    print(f"wrote {latest_checkpoint(cfg.run_dir)} and {Path(cfg.run_dir) / 'metrics.jsonl'}")
    print(cfg.run_dir)
    return 0


def _sampling_kwargs(args: argparse.Namespace, run: Any) -> dict[str, Any]:
    s = run.config.sample
    return {
        "sampler": args.sampler or s.sampler,
        "steps": args.steps or s.steps,
        "guidance_scale": s.guidance_scale if args.guidance_scale is None else args.guidance_scale,
        "guidance_interval": args.guidance_interval or s.guidance_interval,
        "eta": s.eta if args.eta is None else args.eta,
        "seed": args.seed,
    }


def _labels(args: argparse.Namespace, run: Any, num: int) -> torch.Tensor | None:
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
    from maskdit.train import pick_device

    return load_run(args.run_dir, ema=args.weights == "ema", device=pick_device(args.device))


def _draw(args: argparse.Namespace, run: Any, num: int) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    from maskdit.data import to_uint8
    from maskdit.samplers import generate

    labels = _labels(args, run, num)
    kwargs = _sampling_kwargs(args, run)
    x = generate(run.model, run.objective, num, labels, batch_size=args.batch_size, progress=True, **kwargs)
    kwargs["sampler"] = kwargs["sampler"] or ("heun" if run.objective.name == "flow" else "ddim")
    return to_uint8(x), labels, kwargs


def cmd_sample(args: argparse.Namespace) -> int:
    from maskdit.media import save_samples

    if not args.out.lower().endswith((".png", ".npz")):
        raise ConfigError(f"--out {args.out}: the file name must end in .png (a grid) or .npz (arrays)")
    run = _load(args)
    start = time.time()
    images, labels, kwargs = _draw(args, run, args.num)
    path = save_samples(args.out, images, labels)
    print(f"wrote {len(images)} samples to {path} ({time.time() - start:.1f}s, step {run.step}, "
          + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from maskdit.data import load_dataset
    from maskdit.evaluate.classifier import load_classifier

    run = _load(args)
    data_cfg = run.config.data
    dataset = load_dataset(data_cfg.name, data_cfg.path)
    if args.samples:
        from maskdit.data import load_npz

        given = load_npz(args.samples)
        if given.labels is None:
            raise ConfigError(f"--samples {args.samples}: needs a 'labels' array to score class recognition")
        images, labels, kwargs = given.images, given.labels, {"samples": args.samples}
    else:
        images, labels, kwargs = _draw(args, run, args.num)
    result: dict[str, Any] = {"num": len(images), "step": run.step, **kwargs}
    if labels is not None:
        clf = load_classifier(dataset)
        pred = clf.predict(images.float() / 127.5 - 1)
        acc = (pred == labels).float().mean().item()
        per_class = {int(k): float((pred[labels == k] == k).float().mean()) for k in np.unique(labels.numpy())}
        print(f"class recognition: {acc:.1%} of {len(images)} samples classified as the requested class "
              f"(classifier held-out accuracy on real {dataset.name}: {clf.holdout_accuracy:.1%})")
        print("per class: " + ", ".join(f"{k}: {v:.0%}" for k, v in per_class.items()))
        result.update(class_accuracy=acc, classifier_holdout_accuracy=clf.holdout_accuracy)
    else:
        print("unconditional model: no class recognition rate")
    print(json.dumps(result))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from safetensors import safe_open

    from maskdit.checkpoint import list_checkpoints, read_json, resolve_checkpoint

    ckpt = resolve_checkpoint(args.run_dir)
    info = read_json(ckpt / "config.json")
    state = read_json(ckpt / "state.json")

    with safe_open(ckpt / "ema.safetensors", framework="pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    cfg, model, data = info["config"], info["model"], info["dataset"]
    print(f"checkpoint: {ckpt} (step {state['step']} of {cfg['steps']})")
    print(f"model: DiT depth {model['depth']}, width {model['hidden_size']}, {model['num_heads']} heads, "
          f"patch {model['patch_size']}, input {model['in_channels']}x{'x'.join(map(str, model['input_size']))}, "
          f"{model['num_classes']} classes, {params / 1e6:.2f}M parameters")
    print(f"objective: {cfg['objective']['name']}; sampler default: {cfg['sample']['sampler']} "
          f"{cfg['sample']['steps']} steps, guidance {cfg['sample']['guidance_scale']}")
    print(f"data: {data['name']} ({data['size']} images of {'x'.join(map(str, data['shape']))}), "
          f"position {state['data_position']}")
    print(f"files: " + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in sorted(ckpt.iterdir())))
    others = [p.name for p in list_checkpoints(ckpt.parent.parent)] if ckpt.parent.name == "checkpoints" else []
    if others:
        print(f"checkpoints in run: {', '.join(others)}")
    print(json.dumps({"checkpoint": str(ckpt), "step": state["step"], "params": params, "model": model}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from maskdit.bench import benchmark, parse_shape
    from maskdit.model import PRESETS
    from maskdit.train import pick_device

    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r} is not a model preset: choose one of {', '.join(PRESETS)}")
    shape = parse_shape(args.input)
    r = benchmark(args.preset, shape, args.batch, args.steps, args.warmup, str(pick_device(args.device)))
    print(f"{r['preset']} input {r['input']} batch {r['batch']} on {r['device']}: {r['params'] / 1e6:.1f}M params, "
          f"{r['tokens']} tokens")
    print(f"  {r['steps_per_s']:.2f} forward+backward steps/s, {r['gflop_per_step']:.1f} GFLOP/step, "
          f"activations {r['activation_mb']:.0f} MiB, peak memory {r['peak_mem_mb']:.0f} MiB"
          + (f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""))
    print(json.dumps(r))
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "info": cmd_info, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MaskditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
