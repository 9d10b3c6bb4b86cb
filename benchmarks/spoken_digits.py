"""Spoken digits of an audio run, judged by the separately trained digit classifier.

    python benchmarks/spoken_digits.py runs/spoken-digits --test test.npz --num 500 --guidance 1,2,3

Prints, in one table: the classifier's accuracy on its own held-out voices; on ``--test`` (a store of the test
voices, ``maskdit data spoken-digits --num N --out test.npz``); on those clips passed through the run's
autoencoder (what the latent path alone loses); for each guidance scale, the share of ``--num`` class-conditional
samples (digits in turn) recognised as the digit asked for; and, for a run trained with ``inbetween``, the share
of test clips recognised after their middle half is generated (against the same clips with the middle silenced).
Writes ``OUT/spoken.json`` and, at the first guidance scale, ``OUT/samples.wav`` and ``OUT/samples.png``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from maskdit.cli.args import Parser, guarded, non_negative_int, positive_floats, positive_int
from maskdit.data.audio import WORDS, AudioView, load_store
from maskdit.diffusion.samplers import generate
from maskdit.diffusion.tasks import complete, given_for, pixel_mask, stored_mask
from maskdit.errors import ConfigError
from maskdit.evaluate.audio import load_recogniser, scorable
from maskdit.runs import load_run


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--test", required=True, help="a store of test-voice spoken digits (maskdit data spoken-digits)")
    p.add_argument("--num", type=positive_int, default=500, help="samples per guidance scale (digits in turn)")
    p.add_argument("--guidance", type=positive_floats, default=[1.0, 2.0, 3.0], help="guidance scales, comma-separated")
    p.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's)")
    p.add_argument("--sampler", help="sampler (default: the run's)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default="docs/modalities/audio")
    args = p.parse_args(argv)
    run = load_run(args.run_dir)
    if run.dataset["name"] != "audio":
        raise ConfigError(f"{args.run_dir} was trained on {run.dataset['name']}, not audio: pass an audio run")
    test = load_store(args.test, flag="--test")
    why = scorable(test) or (None if run.model.num_classes == len(WORDS) else "the run is not class-conditional")
    if why:
        raise ConfigError(f"--test {args.test}: {why}")
    clf = load_recogniser()
    sampling = {"sampler": args.sampler or run.config.sample.sampler, "steps": args.steps or run.config.sample.steps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, float] = {"classifier on its held-out voices": clf.holdout_accuracy,
                              f"classifier on --test ({len(test)} clips)": clf.recognition(test.audio, test.labels)}
    if run.codec.name != "standard":
        rows["--test through the autoencoder"] = clf.recognition(run.codec.decode(run.codec.encode(test.audio)),
                                                                 test.labels)
    labels = torch.arange(args.num) % len(WORDS)
    timings = {}
    for i, scale in enumerate(args.guidance):
        start = time.time()
        x = generate(run.model, run.objective, args.num, labels, guidance_scale=scale, seed=args.seed,
                     batch_size=250, **sampling)
        waves = run.codec.decode(x)
        timings[scale] = time.time() - start
        rows[f"samples recognised, guidance {scale:g}"] = clf.recognition(waves, labels)
        if i == 0:
            pick = torch.cat([torch.nonzero(labels == d)[:2, 0] for d in range(len(WORDS))])
            AudioView().save(out / "samples.wav", waves[pick])
            AudioView().save(out / "samples.png", waves[pick])
        print(f"guidance {scale:g}: {rows[f'samples recognised, guidance {scale:g}']:.1f}% in {timings[scale]:.0f}s",
              flush=True)
    if "inbetween" in run.config.task.names:
        clips = test.audio[: args.num]
        given = given_for("inbetween", run.model, {}, timed=True)
        filled = complete(run, clips, given, test.labels[: len(clips)], guidance_scale=args.guidance[0],
                          seed=args.seed, batch_size=250, **sampling)
        keep = stored_mask(pixel_mask(given.reshape(1, -1).expand(len(clips), -1), run.model), clips)
        rows["middle half inpainted, recognised"] = clf.recognition(filled, test.labels[: len(clips)])
        rows["middle half silenced, recognised"] = clf.recognition(clips * keep, test.labels[: len(clips)])
    (out / "spoken.json").write_text(json.dumps({"run": str(run.path), "step": run.step, **sampling,
                                                 "seconds": timings, "rows": rows}, indent=2))
    print(f"\n{run.path}, step {run.step}, {sampling}, {args.num} samples per scale\n")
    print("| measure | recognised |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.1f}% |")


if __name__ == "__main__":
    sys.exit(guarded(main))
