"""Audio-driven motion: does a model trained on data.name=footsteps put its feet down where the sound says?

    python benchmarks/footsteps.py runs/footsteps --guidance 1,2,3 --out docs/modalities/footsteps

For 32-frame windows of the held-out DeepMimic clips (run, dance_b, getup_faceup) and of the training clips
(unmirrored, at their own speed), the model generates motion from the windows' footstep sounds alone (no frame
given). Its steps (an ankle coming down to the ground) are matched to the steps that made the sound, per foot,
within two frames: precision, recall and F1. Beside them, on the same windows: the model given the null sound (what
it does without hearing anything, scored against the same sounds), and the real motion scored against the sound
of a window of another clip (chance: steps that ignore the sound). Writes ``OUT/footsteps.json``, and for the held-out
windows ``OUT/footsteps.gif`` (the truth in grey behind the generated motion) with ``OUT/footsteps.wav``, the
sounds it was made from, in the same order.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from maskdit.cli.args import Parser, guarded, non_negative_int, positive_floats, positive_int
from maskdit.data.audio import write_wav
from maskdit.data.datasets import modality_name
from maskdit.data.footsteps import RATE, foot_steps, step_scores
from maskdit.data.motion import MotionView, motion_windows
from maskdit.diffusion.samplers import generate
from maskdit.errors import ConfigError
from maskdit.evaluate.motion import follow_steps, sound_values
from maskdit.runs import load_run


def other_clip(clips: list[str]) -> torch.Tensor:
    """For each window, a window of another clip: the one as far into the windows of the next clip (in order) as
    this one is into its own, so every sound is heard once or more under motion it was not made from."""
    names = list(dict.fromkeys(clips))
    where = {n: [i for i, c in enumerate(clips) if c == n] for n in names}
    pick = []
    for i, c in enumerate(clips):
        own, nxt = where[c], where[names[(names.index(c) + 1) % len(names)]]
        pick.append(nxt[own.index(i) * len(nxt) // len(own)])
    return torch.tensor(pick)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--guidance", type=positive_floats, default=[1.0, 2.0, 3.0], help="guidance scales, comma-separated")
    p.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
    p.add_argument("--out", default="docs/modalities/footsteps")
    args = p.parse_args(argv)
    run = load_run(args.run_dir)
    if modality_name(run.dataset["name"]) != "motion" or getattr(run.model.conditioner, "reads", None) != "audio":
        raise ConfigError(f"{args.run_dir} is not an audio-driven motion run: train one with --preset footsteps")
    frames = run.model.input_size[0]
    sets = {"held-out clips": motion_windows("test", frames, mirrored=False),
            "training clips": motion_windows("train", frames, mirrored=False, speeds=(1.0,))}
    sampling = {"sampler": run.config.sample.sampler, "steps": args.steps or run.config.sample.steps,
                "seed": args.seed, "batch_size": 128}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for where, (grids, clips) in sets.items():
        truth = foot_steps(grids)
        results[f"{where}/real motion, another clip's sound"] = step_scores(grids, truth[other_clip(clips)])
        values = sound_values(run.model, grids)
        null = run.model.conditioner.null(values)
        silent = run.codec.decode(generate(run.model, run.objective, len(grids), null, **sampling))
        results[f"{where}/model, null sound"] = step_scores(silent, truth)
        for scale in args.guidance:
            start = time.time()
            row = follow_steps(run, grids, scale, values, **sampling)
            samples = row.pop("samples")
            results[f"{where}/model, its sound, guidance {scale:g}"] = {**row, "seconds": time.time() - start}
            if where == "held-out clips" and scale == args.guidance[0]:
                pick = torch.linspace(0, len(grids) - 1, 8).round().long()
                MotionView().save(out / "footsteps.gif", samples[pick], truth=grids[pick])
                write_wav(out / "footsteps.wav", values[pick, :-1].numpy(), rate=RATE)
        for key in [k for k in results if k.startswith(where)]:
            print(key, json.dumps(results[key]), flush=True)
    (out / "footsteps.json").write_text(json.dumps(results, indent=2))
    shown = ", ".join(f"{len(g)} of {k}" for k, (g, _) in sets.items())
    print(f"\n{run.path}, step {run.step}, {sampling}; windows: {shown}\n")
    print("| windows | motion | steps in the sounds | steps made | precision | recall | F1 |")
    print("|---|---|---|---|---|---|---|")
    for key, row in results.items():
        where, what = key.split("/")
        print(f"| {where} | {what} | {row['steps']} | {row['generated_steps']} | {row['precision']:.2f} | "
              f"{row['recall']:.2f} | **{row['f1']:.2f}** |")


if __name__ == "__main__":
    sys.exit(guarded(main))
