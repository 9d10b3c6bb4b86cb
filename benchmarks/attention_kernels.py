"""Which attention kernel is faster on this CPU: torch's SDPA or the explicit product and softmax.

    python benchmarks/attention_kernels.py                 # the bouncing-digits preset's shapes and longer ones
    python benchmarks/attention_kernels.py --dtype fp32
    python benchmarks/attention_kernels.py --preset bouncing-digits   # a whole training step, per cut-off length

Times forward plus backward of one attention call under the training forward's autocast, eager and
compiled, for the shapes the factorised video preset runs (temporal: 256 sequences of 8 frames; spatial:
32 sequences of 64 tokens; full: 4 sequences of 512) and for longer sequences. ``maskdit.model.attention.attend``
takes the explicit path on a CPU in bf16 up to ``EXPLICIT_MAX_LEN`` tokens; this is the measurement behind
that length. With ``--preset``, times whole training steps of that preset instead (the real Trainer, as
``step_overhead.py`` does), one trainer per cut-off length (0 = SDPA everywhere). Best of ``--rounds``
interleaved rounds; prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdit.cli.args import Parser, guarded, non_negative_ints, positive_int
from maskdit.model.attention import explicit_attention as explicit

#: (name, (sequences, heads, length, head_dim))
SHAPES = [("temporal (bouncing-digits)", (256, 4, 8, 32)), ("spatial (bouncing-digits)", (32, 4, 64, 32)),
          ("full (bouncing-digits)", (4, 4, 512, 32)), ("1024 tokens", (4, 4, 1024, 32)),
          ("2048 tokens", (2, 6, 2048, 64))]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def time_call(fn, shape: tuple[int, ...], dtype: torch.dtype, steps: int) -> float:
    """Milliseconds of one forward + backward, inputs cast to ``dtype`` as a bf16 linear layer would."""
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))

    def one() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = fn(q.to(dtype), k.to(dtype), v.to(dtype))
        out.float().square().sum().backward()

    for _ in range(3):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps * 1e3


def step_costs(preset: str, lengths: list[int], steps: int, rounds: int, overrides: list[str]) -> None:
    """Milliseconds per training step of ``preset`` with ``attend``'s explicit path up to each length."""
    sys.path.insert(0, str(Path(__file__).parent))
    from step_overhead import parts

    from maskdit.config import load_config
    from maskdit.model import attention
    from maskdit.training.trainer import Trainer

    best = {n: float("inf") for n in lengths}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {n: Trainer(load_config(preset, overrides=[*overrides, f"run_dir={tmp}/{n}"]), progress=False)
                    for n in lengths}
        for round_ in range(rounds):
            for n in (lengths if round_ % 2 == 0 else lengths[::-1]):
                attention.EXPLICIT_MAX_LEN = n  # a compiled block recompiles once per value, then hits its cache
                for k in range(3):
                    parts(trainers[n], k)
                start = time.perf_counter()
                for k in range(steps):
                    parts(trainers[n], 3 + k)
                best[n] = min(best[n], (time.perf_counter() - start) / steps * 1e3)
    print(f"{preset} {' '.join(overrides)}: ms per training step, best of {rounds} rounds x {steps} steps\n")
    print("| explicit attention up to | ms / step | vs SDPA everywhere |\n|---|---|---|")
    for n in lengths:
        label = f"{n} tokens" if n else "never (SDPA everywhere)"
        print(f"| {label} | {best[n]:.1f} | {best[lengths[0]] / best[n]:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--rounds", type=positive_int, default=2)
    p.add_argument("--preset", help="time whole training steps of this preset instead")
    p.add_argument("--lengths", type=non_negative_ints, default="0,64,512",
                   help="--preset: cut-off lengths to compare (0 first)")
    p.add_argument("overrides", nargs="*", help="--preset: train overrides")
    args = p.parse_args(argv)
    if args.preset:
        step_costs(args.preset, args.lengths, args.steps, args.rounds, args.overrides)
        return
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    kernels = {"sdpa": sdpa, "explicit": explicit,
               "sdpa compiled": torch.compile(sdpa), "explicit compiled": torch.compile(explicit)}
    print(f"{args.dtype}, {torch.get_num_threads()} threads; ms per forward + backward, best of {args.rounds} rounds\n")
    print("| shape | (sequences, heads, length, head dim) | " + " | ".join(kernels)
          + " | explicit / sdpa (eager, compiled) |")
    print("|---|---|" + "---|" * (len(kernels) + 1))
    for name, shape in SHAPES:
        best = {k: float("inf") for k in kernels}
        for round_ in range(args.rounds):
            for k in (list(kernels) if round_ % 2 == 0 else list(kernels)[::-1]):
                best[k] = min(best[k], time_call(kernels[k], shape, dtype, args.steps))
        ratios = (f"{best['explicit'] / best['sdpa']:.2f}x, "
                  f"{best['explicit compiled'] / best['sdpa compiled']:.2f}x")
        print(f"| {name} | {shape} | " + " | ".join(f"{best[k]:.2f}" for k in kernels) + f" | {ratios} |", flush=True)


if __name__ == "__main__":
    sys.exit(guarded(main))
