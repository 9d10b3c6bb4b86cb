"""Diffusion policies on pybullet's Hopper: a dense model against noise-routed experts (MoDE), side by side.

    maskdit train --preset hopper run_dir=runs/hopper-dense
    maskdit train --preset hopper model.mlp_ratio=2 model.moe.experts=4 model.moe.top_k=1 \\
        model.moe.routing=noise run_dir=runs/hopper-mode
    python benchmarks/mode_actions.py runs/hopper-dense runs/hopper-mode

For each run: the imitation error (mean squared error of sampled action chunks against the expert's, on test
episodes), the return of closed-loop episodes against the expert's on the same start states, and the time to sample
one batch of chunks (batch 1, as a robot runs, and ``--batch``), the median of ``--repeats``. A noise-routed run is
timed with its per-step expert routes cached (what ``generate`` does) and without (the router and per-expert
dispatch on every call). Writes ``--out`` (JSON), beside it ``chunks-RUN.png`` (six test chunks: the expert's above,
the run's below) and prints a Markdown table.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from maskdit.cli.args import Parser, guarded, positive_int
from maskdit.data.actions import ActionView, chunks, demonstrations
from maskdit.errors import ConfigError
from maskdit.evaluate.actions import imitation_error, rollouts, sample_chunks
from maskdit.runs import load_run


def sampling_time(run, observations: torch.Tensor, repeats: int, cached: bool, **sampling) -> float:
    """Median seconds to sample one chunk per observation (after one warm-up call)."""
    patch = contextlib.nullcontext() if cached else mock.patch("maskdit.diffusion.samplers.cached_routes",
                                                                contextlib.nullcontext)
    times = []
    with patch, torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            sample_chunks(run, observations, seed=i, **sampling)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="action runs (the first is the reference of the speed ratios)")
    p.add_argument("--num", type=positive_int, default=1000, help="test chunks for the imitation error")
    p.add_argument("--episodes", type=positive_int, default=8, help="closed-loop episodes per run")
    p.add_argument("--execute", type=positive_int, default=8, help="actions carried out per sampled chunk")
    p.add_argument("--batch", type=positive_int, default=16, help="the larger timed batch")
    p.add_argument("--repeats", type=positive_int, default=20)
    p.add_argument("--steps", type=positive_int, help="sampler steps (default: each run's)")
    p.add_argument("--out", default="docs/modalities/actions/mode.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = {}
    for path in args.runs:
        run = load_run(path)
        if getattr(run.model.conditioner, "dim", None) is None or run.dataset["name"] != "hopper":
            raise ConfigError(f"{path} is not a hopper policy (data.name=hopper, model.condition=vector)")
        sampling = {"sampler": run.config.sample.sampler, "steps": args.steps or run.config.sample.steps}
        frames = run.model.input_size[0]
        obs = chunks(demonstrations("hopper", "test", 5), frames)[1]
        routed = any(getattr(m, "spec", None) is not None and m.spec.routing == "noise" for m in run.model.modules())
        row = {"parameters": sum(p.numel() for p in run.model.parameters()), "noise_routed": routed, **sampling}
        for batch in (1, args.batch):
            pick = obs[torch.linspace(0, len(obs) - 1, batch).long()]
            row[f"seconds_batch{batch}"] = sampling_time(run, pick, args.repeats, True, **sampling)
            if routed:
                row[f"seconds_batch{batch}_uncached"] = sampling_time(run, pick, args.repeats, False, **sampling)
        row.update({f"imitation_{k}": v for k, v in imitation_error(run, "hopper", frames, args.num,
                                                                    **sampling).items()})
        row.update(rollouts(run, "hopper", args.episodes, args.execute, **sampling))
        truth, starts = chunks(demonstrations("hopper", "test", 5), frames)
        pick = torch.linspace(0, len(starts) - 1, 6).long()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        ActionView().save(Path(args.out).parent / f"chunks-{Path(path).name}.png",
                          sample_chunks(run, starts[pick], **sampling), truth=truth[pick])
        rows[path] = row
        print(path, json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    first = rows[args.runs[0]]
    print(f"\nsampler {first['sampler']} {first['steps']} steps; {args.episodes} episodes, {args.execute} actions per "
          "chunk\n")
    print(f"| run | parameters | imitation MSE | return (expert) | batch 1 | batch {args.batch} | speed-up vs first "
          "(batch 1 / batch N) |")
    print("|---|---|---|---|---|---|---|")
    for path, row in rows.items():
        b1, bn = row["seconds_batch1"], row[f"seconds_batch{args.batch}"]
        extra = ""
        if row["noise_routed"]:
            extra = f" (uncached {row['seconds_batch1_uncached'] * 1000:.1f} / " \
                    f"{row[f'seconds_batch{args.batch}_uncached'] * 1000:.1f} ms)"
        print(f"| {path} | {row['parameters'] / 1e6:.2f}M | {row['imitation_mse']:.4f} | {row['return']:.0f} "
              f"({row['expert_return']:.0f}) | {b1 * 1000:.1f} ms | {bn * 1000:.1f} ms{extra} | "
              f"{first['seconds_batch1'] / b1:.2f}x / {first[f'seconds_batch{args.batch}'] / bn:.2f}x |")


if __name__ == "__main__":
    sys.exit(guarded(main))
