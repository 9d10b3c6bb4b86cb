"""How the attention kinds scale with the tokens: one attention layer, and whole training and sampling steps.

    python benchmarks/attention_scaling.py                        # layers at 1k/4k/16k tokens, then model steps
    python benchmarks/attention_scaling.py --part layers --tokens 1024,4096
    python benchmarks/attention_scaling.py --part steps --width 384 --heads 6   # DiT-S's width

``layers``: forward plus backward of one attention layer (projections included) of each kind on a square token grid
of ``--tokens`` tokens, against full attention through ``scaled_dot_product_attention`` (torch's fused kernel, what
``full`` runs) and through the explicit product and softmax (``explicit``; skipped where its score matrix would pass
``--explicit-gib``). ``video``: one layer on a 16x16x16 video grid (4,096 tokens): full, ``tile`` (each frame
and the first one) and a 3-D ``window``. ``steps``: a DiT of ``--depth`` blocks at ``--width`` on a 64x64 grid at
patch 1 (4,096 tokens): milliseconds of a training step (forward, backward, AdamW) and of a sampling step (one
forward without gradients), each kind beside full attention in the same process, best of ``--rounds`` interleaved
rounds; with ``--compile`` each kind also runs with its blocks compiled (``torch.compile``, as ``compile=true``
trains) beside its eager twin with the same weights (that the two compute the same is a test: tests/test_attention.py).
Prints Markdown tables.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from maskdit.cli.args import Parser, guarded, positive_int, positive_ints
from maskdit.model import DiT
from maskdit.model.attention import ATTENTIONS, Attention, TokenLayout, attention_spec, explicit_attention

KINDS = ("full", "linear", "window", "proxy")


class Explicit(Attention):
    """Full attention through the explicit product and softmax (the CPU path ``attend`` takes for short bf16)."""

    def mix(self, x, q, k, v, pos, extra):  # noqa: ANN001, ANN201
        return explicit_attention(q, k, v)


def best_ms(fn, rounds: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def layers(tokens: list[int], width: int, heads: int, batch: int, rounds: int, explicit_gib: float,
           window: int) -> None:
    print(f"\n### One attention layer, forward + backward, width {width}, {heads} heads, batch {batch} (ms)\n")
    names = ["sdpa (full)", "explicit", *KINDS[1:]]
    print("| tokens | " + " | ".join(names) + " | best kind vs sdpa |")
    print("|---" * (len(names) + 2) + "|")
    for n in tokens:
        side = math.isqrt(n)
        layout = TokenLayout((side, side))
        x = torch.randn(batch, side * side, width, requires_grad=True)
        row = {}
        for name in names:
            kind = {"sdpa (full)": "full", "explicit": "full"}.get(name, name)
            scores_gib = batch * heads * n * n * 4 * 3 / 2 ** 30  # logits, softmax and its gradient
            if name == "explicit" and scores_gib > explicit_gib:
                row[name] = None
                continue
            spec = attention_spec(kind, layout, window=window)
            module = (Explicit if name == "explicit" else ATTENTIONS[kind])(width, heads, spec=spec)

            def step() -> None:
                x.grad = None
                module(x).square().mean().backward()

            row[name] = best_ms(step, rounds)
        fastest = min(v for k, v in row.items() if k in KINDS[1:] and v is not None)
        cells = ["-" if row[k] is None else f"{row[k]:.1f}" for k in names]
        print(f"| {n} | " + " | ".join(cells) + f" | {row['sdpa (full)'] / fastest:.1f}x |", flush=True)


def video(frames: int, side: int, width: int, heads: int, batch: int, rounds: int, window: int) -> None:
    """One attention layer on a video grid (frames x side x side tokens): full, tile (1 global frame), window."""
    n = frames * side * side
    print(f"\n### One attention layer on a {frames}x{side}x{side} video grid ({n} tokens), forward + backward, width "
          f"{width}, {heads} heads, batch {batch} (ms)\n")
    print("| kind | ms | full's time over the kind's |\n|---|---|---|")
    layout = TokenLayout((frames, side, side))
    x = torch.randn(batch, n, width, requires_grad=True)
    times = {}
    for kind in ("full", "tile", "window"):
        module = ATTENTIONS[kind](width, heads, spec=attention_spec(kind, layout, window=window, global_frames=1))

        def step() -> None:
            x.grad = None
            module(x).square().mean().backward()

        times[kind] = best_ms(step, rounds)
        print(f"| {kind} | {times[kind]:.1f} | {times['full'] / times[kind]:.2f}x |", flush=True)


def steps(width: int, heads: int, depth: int, batch: int, rounds: int, window: int, compile: bool = False) -> None:
    print(f"\n### DiT steps at 4,096 tokens (64x64, patch 1), width {width}, {heads} heads, depth {depth}, "
          f"batch {batch} (ms; x: full's time over the kind's)\n")
    print("| kind | train step | x | sample step | x |")
    print("|---|---|---|---|---|")
    x = torch.randn(batch, 1, 64, 64)
    t, y = torch.rand(batch), torch.randint(0, 10, (batch,))
    names = [name for kind in KINDS for name in ((kind, f"{kind} compiled") if compile else (kind,))]
    models, optimizers = {}, {}
    for name in names:
        kind = name.split()[0]
        torch.manual_seed(0)
        models[name] = DiT((64, 64), 1, 1, width, depth, heads, num_classes=10, attention=kind, window=window)
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
        if name.endswith("compiled"):
            models[name].compile_blocks()
    train = {k: float("inf") for k in names}
    sample = {k: float("inf") for k in names}
    for round_ in range(rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            model, optimizer = models[name], optimizers[name]

            def train_step() -> None:
                optimizer.zero_grad(set_to_none=True)
                F.mse_loss(model(x, t, y), x).backward()
                optimizer.step()

            def sample_step() -> None:
                with torch.no_grad():
                    model(x, t, y)

            train[name] = min(train[name], best_ms(train_step, 1))
            sample[name] = min(sample[name], best_ms(sample_step, 1))
    for name in names:
        print(f"| {name} | {train[name]:.0f} | {train['full'] / train[name]:.2f}x | {sample[name]:.0f} | "
              f"{sample['full'] / sample[name]:.2f}x |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["layers", "video", "steps", "both"], default="both",
                        help="both: layers, the video layer and steps")
    parser.add_argument("--tokens", type=positive_ints, default="1024,4096,16384")
    parser.add_argument("--width", type=positive_int, default=128)
    parser.add_argument("--heads", type=positive_int, default=4)
    parser.add_argument("--depth", type=positive_int, default=6)
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--window", type=positive_int, default=4, help="window/proxy radius in tokens")
    parser.add_argument("--compile", action="store_true", help="steps: also each kind with compiled blocks")
    parser.add_argument("--explicit-gib", type=float, default=4.0, help="largest explicit score memory to try")
    args = parser.parse_args(argv)
    if any(math.isqrt(n) ** 2 != n for n in args.tokens):
        parser.error(f"--tokens {','.join(map(str, args.tokens))}: each must be a square number (a square grid of "
                     "tokens: 1024, 4096, 16384)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    if args.part in ("layers", "both"):
        layers(args.tokens, args.width, args.heads, args.batch, args.rounds, args.explicit_gib, args.window)
    if args.part in ("video", "both"):
        video(16, 16, args.width, args.heads, args.batch, args.rounds, args.window)
    if args.part in ("steps", "both"):
        steps(args.width, args.heads, args.depth, args.batch, args.rounds, args.window, args.compile)


if __name__ == "__main__":
    guarded(main)
