"""Sampling accelerators against plain sampling, side by side in one process: wall-clock and quality.

    python benchmarks/inference.py runs/digits --num 400 --steps 10 --accels cache:every=2,cache:every=3

For each setting (plain first) the run's EMA model draws ``--num`` samples with Heun at ``--steps`` steps
and the run's guidance, for two noise seeds (their spread is the run-to-run noise of the quality figures);
the settings are timed in interleaved rounds, and the samples scored by domain FID and class accuracy
against the run's data. Speed-up is plain time / accelerated time from the same rounds. A setting that
calibrates (int8) does so once before the rounds; that one-off cost is printed apart.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--num", type=int, default=400)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--accels", default="cache:every=2,cache:every=3", help="settings, separated by ';' or ','")
    args = p.parse_args()
    from maskdit.checkpoint import load_run
    from maskdit.data import dataset_from_config
    from maskdit.evaluate.suite import score_samples
    from maskdit.samplers import generate

    run = load_run(args.run)
    dataset = dataset_from_config(run.config.data)
    labels = torch.arange(args.num) % run.model.num_classes if run.model.num_classes else None
    settings = [None] + [a for a in args.accels.replace(";", "|").replace(",cache", "|cache").split("|") if a]
    kw = dict(sampler="heun", steps=args.steps, guidance_scale=run.config.sample.guidance_scale)
    for setting in settings:
        if setting and "int8" in setting:  # calibrate now (cached on the model), outside the timed rounds
            start = time.perf_counter()
            generate(run.model, run.objective, 1, labels[:1] if labels is not None else None, accel=setting, **kw)
            print(f"{setting}: calibration {time.perf_counter() - start:.1f} s (once per model and settings)")
    seconds: dict[str | None, list[float]] = {s: [] for s in settings}
    scores: dict[str | None, list[dict]] = {s: [] for s in settings}
    for seed in (0, 1):
        for setting in settings:
            start = time.perf_counter()
            x = generate(run.model, run.objective, args.num, labels, seed=seed, accel=setting, **kw)
            seconds[setting].append(time.perf_counter() - start)
            scores[setting].append(score_samples(run.codec.decode(x), labels, dataset, ["domain_fid", "class"],
                                                 progress=False))
    base = sum(seconds[None])
    print(f"run {args.run} (step {run.step}), {args.num} samples, Heun {args.steps} steps, seeds 0 and 1, "
          f"{torch.get_num_threads()} threads\n")
    print("| sampling | seconds (2 seeds) | speed-up | domain FID (seed 0 / 1) | class accuracy |")
    print("|---|---|---|---|---|")
    for setting in settings:
        fid = " / ".join(f"{s['domain_fid']:.1f}" for s in scores[setting])
        acc = " / ".join(f"{s['class_accuracy']:.3f}" for s in scores[setting])
        print(f"| {setting or 'plain'} | {sum(seconds[setting]):.1f} | {base / sum(seconds[setting]):.2f}x | {fid} | "
              f"{acc} |")


if __name__ == "__main__":
    main()
