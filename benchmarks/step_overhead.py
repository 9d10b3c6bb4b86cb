"""Where the time of one training step goes: step inputs and data, forward + backward, optimizer, EMA.

    python benchmarks/step_overhead.py                      # the digits preset, ratios 0 / 0.5 / 0.75
    python benchmarks/step_overhead.py --preset digits model.patch_size=1   # any train overrides
    python benchmarks/step_overhead.py --preset bouncing-digits --arms "base:;token time:model.token_time=true"

Masking shortens only the forward and backward; everything else in a step is a fixed cost that caps the
speed-up. Each part is timed on the real Trainer (same model, data and optimizer as `maskdit train`),
interleaved over rounds, best round kept. Prints a Markdown table and a JSON list on its last line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

from maskdit.cli.args import Parser, guarded, positive_int
from maskdit.config import load_config
from maskdit.distributed import autocast
from maskdit.training.schedule import learning_rate
from maskdit.training.trainer import Trainer


def parts(trainer: Trainer, step: int) -> dict[str, float]:
    """Seconds of each part of training step ``step`` (the same work as ``Trainer.train_step``)."""
    out = {}
    t0 = time.perf_counter()
    inputs = trainer.inputs.draw(step)
    x0, y = trainer.dataset.batch(inputs.index)
    out["inputs+data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for group in trainer.optimizer.param_groups:
        group["lr"] = learning_rate(trainer.cfg, step)
    with autocast(trainer.cfg.precision, trainer.device):
        loss, _ = trainer.step_module((x0, y), inputs)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    out["forward+backward"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    params = [p for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, trainer.cfg.grad_clip)
    trainer.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
    trainer.optimizer.step()
    out["clip+optimizer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.update_ema(step)
    out["ema"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--ratios", default="0,0.5,0.75")
    p.add_argument("--arms", help="'NAME:OVERRIDES;...' (space-separated overrides) instead of --ratios")
    p.add_argument("--steps", type=positive_int, default=40, help="timed steps per ratio and round")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.arms:
        arms = {name: extra.split() for name, _, extra in (a.partition(":") for a in args.arms.split(";"))}
    else:
        arms = {r: [f"mask.ratio={r}"] for r in args.ratios.split(",")}
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(arms.items()):
            cfg = load_config(args.preset, overrides=[*args.overrides, *extra, f"run_dir={tmp}/arm{i}"])
            trainers[name] = Trainer(cfg, progress=False)
        best: dict[str, dict[str, float]] = {}
        for round_ in range(args.rounds):
            for r in list(arms) if round_ % 2 == 0 else list(arms)[::-1]:
                for k in range(3):  # warm-up
                    parts(trainers[r], k)
                sums: dict[str, float] = {}
                for k in range(args.steps):
                    for name, sec in parts(trainers[r], 3 + k).items():
                        sums[name] = sums.get(name, 0.0) + sec / args.steps
                sums["step"] = sum(sums.values())
                if r not in best or sums["step"] < best[r]["step"]:
                    best[r] = sums
    names = ["inputs+data", "forward+backward", "clip+optimizer", "ema", "step"]
    first = trainers[next(iter(arms))]
    params = sum(p.numel() for p in first.model.parameters()) / 1e6
    print(f"\n{args.preset} {' '.join(args.overrides)}: {first.model.num_tokens} tokens, {params:.2f}M parameters, "
          f"batch {first.cfg.batch_size}, {torch.get_num_threads()} threads; ms per step, "
          f"best of {args.rounds} rounds x {args.steps} steps\n")
    label = "arm" if args.arms else "mask ratio"
    print(f"| {label} | " + " | ".join(names) + " | fixed share | steps/s |")
    print("|---|" + "---|" * (len(names) + 2))
    rows = []
    for r in arms:
        b = best[r]
        fixed = (b["step"] - b["forward+backward"]) / b["step"]
        rows.append({**({"arm": r} if args.arms else {"ratio": float(r)}), **{k: b[k] * 1000 for k in names},
                     "fixed_share": fixed, "steps_per_s": 1 / b["step"]})
        print(f"| {r} | " + " | ".join(f"{b[k] * 1000:.1f}" for k in names) + f" | {fixed:.0%} | {1 / b['step']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(guarded(main))
