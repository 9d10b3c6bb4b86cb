"""The bad-input corpus of adapters: the ``lora.*`` keys, ``--lora`` at sampling and ``maskdit lora merge``, including
an adapter whose base changed or went away (which would otherwise sample something silently wrong); the harness
and its five checks are in ``corpus.py``.

A case's LoRA run is trained in the case directory on a copy of the shared tiny image run (``base``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpus import EVAL, SAMPLE, TINY, TRAIN, U8, VTRAIN, C, Case, Runs, Setup, assert_distinct, check, copy_run, npz

LTRAIN = [*TRAIN[:-1], "init_from=base", "lora.rank=2", "run_dir=new_run"]
LSAMPLE = ["sample", "base", "--num", "2", "--steps", "1", "--out", "out.png"]


def lora_run(damage: str = "") -> Setup:
    """A copy of the image run as ``base`` and a LoRA run ``lrun`` trained on it; then ``damage``: ``base-changed``
    (one base weight nudged), ``base-gone`` (the base removed), ``entry`` (the run's lora facts cut short) or
    ``foreign`` (the adapter's tensors renamed to layers the model lacks)."""
    def make(tmp: Path, runs: Runs) -> None:
        import shutil

        from safetensors.torch import load_file, save_file

        from maskdit.cli.app import main

        shutil.copytree(runs.img, tmp / "base")
        assert main(["train", "--no-progress", *TINY, f"init_from={tmp / 'base'}", "lora.rank=2",
                     f"run_dir={tmp / 'lrun'}"]) == 0
        (base,) = (tmp / "base" / "checkpoints").glob("step_*")
        (ckpt,) = (tmp / "lrun" / "checkpoints").glob("step_*")
        if damage == "base-changed":
            weights = load_file(base / "ema.safetensors")
            weights["final_layer.linear.bias"] += 1e-4
            save_file(weights, base / "ema.safetensors")
        elif damage == "base-gone":
            shutil.rmtree(tmp / "base")
        elif damage == "entry":
            for path in (ckpt / "config.json", tmp / "lrun" / "config.json"):
                info = json.loads(path.read_text())
                del info["lora"]["sha256"]
                path.write_text(json.dumps(info))
        elif damage == "foreign":
            for name in ("ema.safetensors", "model.safetensors"):
                weights = load_file(ckpt / name)
                save_file({k.replace("blocks.0", "blocks.7"): v for k, v in weights.items()}, ckpt / name)

    make.desc = f"lora-run:{damage}"  # type: ignore[attr-defined]
    return make


def control_run() -> Setup:
    """A tiny edge-controlled run ``crun`` trained in the case directory."""
    def make(tmp: Path, runs: Runs) -> None:
        from maskdit.cli.app import main

        assert main(["train", "--no-progress", *TINY, "control.signal=edges", f"run_dir={tmp / 'crun'}"]) == 0

    make.desc = "control-run"  # type: ignore[attr-defined]
    return make


CSAMPLE = ["sample", "crun", "--num", "2", "--steps", "1", "--out", "out.png"]
CONTROLS = np.zeros((3, 8, 8), U8)

CASES: list[Case] = [
    # ---- training: the lora keys ---------------------------------------------------------------------------------
    C("lora-without-base", [*TRAIN, "lora.rank=2"], "lora.rank=2 adapts a trained model: set init_from"),
    C("lora-rank-negative", [*TRAIN, "init_from={img}", "lora.rank=-1"], "lora.rank"),
    C("lora-alpha-zero", [*TRAIN, "init_from={img}", "lora.rank=2", "lora.alpha=0"], "lora.alpha"),
    C("lora-targets-unknown", [*TRAIN, "init_from={img}", "lora.rank=2", "lora.targets=[convs]"], "lora.targets"),
    C("lora-targets-empty", [*TRAIN, "init_from={img}", "lora.rank=2", "lora.targets=[]"], "lora.targets"),
    C("lora-targets-not-a-list", [*TRAIN, "init_from={img}", "lora.rank=2", "lora.targets=attention"],
      "lora.targets"),
    C("lora-base-missing", [*TRAIN, "init_from=nowhere", "lora.rank=2"], "nowhere"),
    C("lora-base-other-shape", [*LTRAIN, "model.hidden_size=64"], "does not match the model",
      copy_run("img", "base")),
    C("init-from-an-adapter", [*TRAIN, "init_from=lrun"], "is a LoRA adapter, not a whole model", lora_run()),
    C("lora-on-an-adapter", [*TRAIN, "init_from=lrun", "lora.rank=2"], "maskdit lora merge lrun", lora_run()),
    C("lora-resume-switched-off", ["train", "--no-progress", "--resume", *TINY, "lora.rank=0", "run_dir=lrun"],
      "was trained with LoRA: resume it as it was", lora_run()),
    # ---- sampling an adapter --------------------------------------------------------------------------------------
    C("lora-sample-base-changed", [*LSAMPLE[:1], "lrun", *LSAMPLE[2:]], "whose weights changed",
      lora_run("base-changed")),
    C("lora-sample-base-gone", [*LSAMPLE[:1], "lrun", *LSAMPLE[2:]], "which is gone", lora_run("base-gone")),
    C("lora-sample-entry-damaged", [*LSAMPLE[:1], "lrun", *LSAMPLE[2:]], "lora entry is damaged", lora_run("entry")),
    C("lora-sample-foreign-layers", [*LSAMPLE[:1], "lrun", *LSAMPLE[2:]], "does not fit this model",
      lora_run("foreign")),
    C("lora-flag-plain-run", [*LSAMPLE, "--lora", "{img}"], "is not a LoRA run", copy_run("img", "base")),
    C("lora-flag-missing", [*LSAMPLE, "--lora", "nowhere"], "--lora nowhere", copy_run("img", "base")),
    C("lora-flag-bad-scale", [*LSAMPLE, "--lora", "lrun:lots"], "RUN:SCALE", lora_run()),
    C("lora-flag-huge-scale", [*LSAMPLE, "--lora", "lrun:1e9"], "RUN:SCALE", lora_run()),
    C("lora-flag-other-base", ["sample", "{timg}", "--num", "2", "--steps", "1", "--out", "out.png", "--lora", "lrun"],
      "not those of", lora_run()),
    # ---- maskdit lora merge ----------------------------------------------------------------------------------------
    C("lora-merge-plain-run", ["lora", "merge", "{img}", "--out", "m"], "nothing to merge"),
    C("lora-merge-out-exists", ["lora", "merge", "lrun", "--out", "base"], "already exists", lora_run()),
    C("lora-merge-base-gone", ["lora", "merge", "lrun", "--out", "m"], "which is gone", lora_run("base-gone")),
    C("lora-merge-unknown-action", ["lora", "split", "lrun", "--out", "m"], "split", lora_run()),
    C("lora-merge-no-out", ["lora", "merge", "{img}"], "--out"),
    # ---- control signals -------------------------------------------------------------------------------------------
    C("control-signal-unknown", [*TRAIN, "control.signal=canny"], "control.signal='canny'"),
    C("control-lowres-no-factor", [*TRAIN, "control.signal=lowres"], "needs its factor"),
    C("control-lowres-not-dividing", [*TRAIN, "control.signal=lowres:3"], "must divide the image sides"),
    C("control-kind-unknown", [*TRAIN, "control.signal=edges", "control.kind=sideways"], "control.kind"),
    C("control-with-flip", [*TRAIN, "control.signal=edges", "data.flip=true"], "data.flip=true"),
    C("control-with-lora", [*TRAIN, "control.signal=edges", "init_from={img}", "lora.rank=2"],
      "control.signal with lora"),
    C("control-on-video", [*VTRAIN, "control.signal=edges"], "reads 2-D images"),
    C("control-sample-without-maps", CSAMPLE, "pass --control FILE.npz", control_run()),
    C("control-file-missing", [*CSAMPLE, "--control", "nowhere.npz"], "nowhere.npz", control_run()),
    C("control-file-wrong-size", [*CSAMPLE, "--control", "c.npz"], "but this model takes 1x8x8", control_run(),
      npz("c.npz", images=np.zeros((3, 16, 16), U8))),
    C("control-eval-file-wrong-size", ["eval", "crun", "--num", "4", "--steps", "1", "--metrics", "control",
                                       "--control", "c.npz"], "but this model takes 1x8x8", control_run(),
      npz("c.npz", images=np.zeros((3, 16, 16), U8))),
    C("control-labels-out-of-range", [*CSAMPLE, "--control", "c.npz"], "labels fall outside", control_run(),
      npz("c.npz", images=CONTROLS, labels=np.array([0, 1, 12]))),
    C("control-flag-on-plain-run", [*SAMPLE, "--control", "c.npz"], "trained without control.signal",
      npz("c.npz", images=CONTROLS)),
    C("control-scale-on-plain-run", [*SAMPLE, "--control-scale", "2"], "--control/--control-scale"),
    C("control-scale-negative", [*CSAMPLE, "--control-scale", "-1"], "--control-scale", control_run()),
    C("control-metric-on-plain-run", [*EVAL[:-1], "control"], "needs a model trained with control.signal"),
    # ---- control kinds and restoration chains --------------------------------------------------------------------
    C("controlnet-without-base", [*TRAIN, "control.signal=edges", "control.kind=controlnet"],
      "control.kind=controlnet trains control layers beside a frozen trained base"),
    C("controlnet-blocks-too-many", [*TRAIN, "control.signal=edges", "control.kind=controlnet", "init_from={img}",
                                     "control.blocks=9"], "control.blocks=9"),
    C("controlnet-blocks-repeated", [*TRAIN, "control.signal=edges", "control.kind=controlnet", "init_from={img}",
                                     "control.blocks=[1,1]"], "control.blocks=[1, 1]"),
    C("controlnet-blocks-not-a-number", [*TRAIN, "control.signal=edges", "control.kind=controlnet",
                                         "init_from={img}", "control.blocks=two"], "control.blocks"),
    C("control-tokens-rank-zero", [*TRAIN, "control.signal=edges", "control.kind=tokens", "init_from={img}",
                                   "control.rank=0"], "control.rank"),
    C("control-tokens-rank-wider-than-model", [*TRAIN, "control.signal=edges", "control.kind=tokens",
                                               "init_from={img}", "control.rank=4096"], "control.rank=4096"),
    C("control-tokens-rel-bias", [*TRAIN, "control.signal=edges", "control.kind=tokens", "init_from={img}",
                                  "model.rel_pos_bias=true"], "no rel_pos_bias"),
    C("controlnet-from-a-concat-run", [*TRAIN, "control.signal=edges", "control.kind=controlnet", "control.blocks=1",
                                       "init_from=crun"], "was trained with control.kind=concat", control_run()),
    C("source-control-without-map", [*TRAIN, "objective.source=control"], "objective.source=control starts"),
    C("source-control-with-edges", [*TRAIN, "objective.source=control", "control.signal=edges"],
      "a degraded copy of the image"),
    C("source-unknown", [*TRAIN, "objective.source=image"], "objective.source"),
    C("source-control-ddpm", [*TRAIN, "objective.source=control", "objective.name=ddpm",
                              "control.signal=lowres:2"], "noise unless objective.name=flow"),
    C("kappa-negative", [*TRAIN, "objective.kappa=-1"], "objective.kappa"),
    C("control-adapter-without-encoder", [*TRAIN, "control.signal=image", "control.kind=adapter", "init_from={img}"],
      "set control.encoder=DIR"),
    C("control-adapter-encoder-missing", [*TRAIN, "control.signal=image", "control.kind=adapter", "init_from={img}",
                                          "control.encoder=nowhere"], "control.encoder nowhere is not an encoder"),
    C("control-maps-wrong-shape", [*CSAMPLE, "--control", "maps.npz"], "'maps' must be floats (N, 1, 8, 8)",
      control_run(), npz("maps.npz", maps=np.zeros((2, 4, 4), np.float32))),
    C("control-maps-out-of-range", [*CSAMPLE, "--control", "maps.npz"], "finite and in [-1, 1]", control_run(),
      npz("maps.npz", maps=np.full((2, 8, 8), 3.0, np.float32))),
    C("control-maps-integers", [*CSAMPLE, "--control", "maps.npz"], "'maps' must be floats", control_run(),
      npz("maps.npz", maps=np.zeros((2, 8, 8), np.int64))),
]


def test_adapters_corpus_is_distinct():
    assert_distinct(CASES, 59)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_adapter_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)
