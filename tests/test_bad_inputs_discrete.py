"""The bad-input corpus of discrete masked diffusion: ``objective.name=masked``, ``data.levels``, the masked samplers
and their draws, and the likelihood metric, including pairings that would otherwise train or sample something
silently wrong (real-valued data under a masked objective, token ids under a flow); the harness and its five
checks are in ``corpus.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import EVAL, IMAGES, LABELS, SAMPLE, TINY, TRAIN, C, Case, Runs, Setup, assert_distinct, check, npz

MASKED = [*TRAIN, "objective.name=masked", "data.levels=17"]
MSAMPLE = ["sample", "mrun", "--num", "2", "--steps", "2", "--out", "out.png"]


def masked_run() -> Setup:
    """A copy of the session's tiny masked run (17-level digits) as ``mrun``."""
    def make(tmp: Path, runs: Runs) -> None:
        runs.trained(*TINY, "objective.name=masked", "data.levels=17", into=tmp / "mrun")

    make.desc = "masked-run"  # type: ignore[attr-defined]
    return make


CASES: list[Case] = [
    # ---- training -------------------------------------------------------------------------------------------------
    C("masked-on-pixels", [*TRAIN, "objective.name=masked"], "quantise images with data.levels=K"),
    C("levels-under-flow", [*TRAIN, "data.levels=17"], "set objective.name=masked or leave data.levels out"),
    C("levels-one", [*MASKED[:-1], "data.levels=1"], "data.levels"),
    C("levels-too-many", [*MASKED[:-1], "data.levels=1000"], "data.levels"),
    C("levels-not-a-number", [*MASKED[:-1], "data.levels=many"], "data.levels"),
    C("masked-schedule-unknown", [*MASKED, "objective.schedule=sqrt"], "objective.schedule"),
    C("time-agnostic-flow", [*TRAIN, "objective.time_agnostic=true"], "objective.time_agnostic"),
    C("masked-with-mae", [*MASKED, "mask.recipe=mae", "mask.ratio=0.5"], "mask.recipe=mae"),
    C("masked-with-maskdit", [*MASKED, "mask.recipe=maskdit", "mask.ratio=0.5"], "mask.recipe=maskdit"),
    C("masked-with-control", [*MASKED, "control.signal=edges"], "control.signal does not apply"),
    C("masked-learn-sigma", [*MASKED, "model.learn_sigma=true"], "model.learn_sigma=true"),
    C("masked-sampler-for-flow", [*TRAIN, "sample.sampler=maskgit"], "maskgit"),
    C("flow-sampler-for-masked", [*MASKED, "sample.sampler=heun"], "heun"),
    C("temperature-for-flow", [*TRAIN, "sample.temperature=0.5"], "sample.temperature"),
    C("temperature-zero", [*MASKED, "sample.temperature=0"], "sample.temperature"),
    C("choice-temperature-negative", [*MASKED, "sample.choice_temperature=-1"], "sample.choice_temperature"),
    C("masked-resume-as-flow", ["train", "--no-progress", "--resume", *TINY, "objective.name=flow", "steps=3",
                                "run_dir=mrun"], "objective.name", masked_run()),
    # ---- sampling and scoring -------------------------------------------------------------------------------------
    C("sample-flow-with-maskgit", [*SAMPLE, "--sampler", "maskgit"], "--sampler maskgit"),
    C("sample-flow-with-temperature", [*SAMPLE, "--temperature", "0.5"], "temperature"),
    C("sample-temperature-zero", [*MSAMPLE, "--temperature", "0"], "--temperature"),
    C("sample-masked-with-heun", [*MSAMPLE, "--sampler", "heun"], "--sampler heun", masked_run()),
    C("sample-masked-with-accel", [*MSAMPLE, "--accel", "cache:every=2"], "no accelerator", masked_run()),
    C("invert-masked", ["invert", "mrun", "--images", "images.npz", "--out", "noise.npz"], "no deterministic inverse",
      masked_run(), npz("images.npz", images=IMAGES[:4, :, :, None], labels=LABELS[:4])),
    C("nll-of-a-flow-run", [*EVAL[:-1], "nll"], "needs a run trained with objective.name=masked"),
]


def test_discrete_corpus_is_distinct():
    assert_distinct(CASES, len(CASES))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_discrete_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)
