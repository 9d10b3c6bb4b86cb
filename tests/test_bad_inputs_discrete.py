"""The bad-input corpus of discrete masked diffusion: ``objective.name=masked``, ``data.levels``, the masked samplers
and their draws, and the likelihood metric, including pairings that would otherwise train or sample something
silently wrong (real-valued data under a masked objective, token ids under a flow); the harness and its five
checks are in ``corpus.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from corpus import (
    EVAL,
    IMAGES,
    LABELS,
    SAMPLE,
    TINY,
    TRAIN,
    U8,
    C,
    Case,
    Runs,
    Setup,
    assert_distinct,
    check,
    folder,
    npz,
    text,
)

MASKED = [*TRAIN, "objective.name=masked", "data.levels=17"]
MSAMPLE = ["sample", "mrun", "--num", "2", "--steps", "2", "--out", "out.png"]


def tokenizer(name: str = "tok") -> Setup:
    """A tiny FSQ tokenizer of the digits (2 steps) as ``name``."""
    def make(tmp: Path, runs: Runs) -> None:
        from maskdit.cli.app import main

        assert main(["tokenizer", "train", "digits", "--out", str(tmp / name), "--steps", "2", "--width", "8",
                     "--levels", "3,3", "--no-progress"]) == 0

    make.desc = f"tokenizer:{name}"  # type: ignore[attr-defined]
    return make


def text_run() -> Setup:
    """A tiny masked model of a short text as ``trun``."""
    def make(tmp: Path, runs: Runs) -> None:
        from maskdit.cli.app import main

        (tmp / "corpus.txt").write_text("abc abd " * 200, encoding="utf-8")
        assert main(["train", "--no-progress", *TINY, "objective.name=masked", "data.name=text", "model.patch_size=1",
                     f"data.path={tmp / 'corpus.txt'}", "data.length=8", "model.conditional=false",
                     f"run_dir={tmp / 'trun'}"]) == 0

    make.desc = "text-run"  # type: ignore[attr-defined]
    return make


def store(name: str, **arrays: np.ndarray) -> Setup:
    """A token store ``name`` with the given arrays over the defaults (8 grids of 4x4 ids, vocabulary 9)."""
    defaults = {"tokens": np.zeros((8, 4, 4), np.int32), "vocab_size": np.array(9), "tokenizer": np.array("tok"),
                "sha256": np.array("0" * 64)}
    return npz(name, **{**defaults, **arrays})


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
    # ---- the tokenizer and token stores ---------------------------------------------------------------------------
    C("tokenizer-out-exists", ["tokenizer", "train", "digits", "--out", "tok", "--steps", "1"], "already exists",
      folder("tok")),
    C("tokenizer-levels-one", ["tokenizer", "train", "digits", "--out", "tok", "--levels", "1,5"], "--levels"),
    C("tokenizer-levels-words", ["tokenizer", "train", "digits", "--out", "tok", "--levels", "many"], "--levels"),
    C("tokenizer-factor-three", ["tokenizer", "train", "digits", "--out", "tok", "--factor", "3"],
      "--factor 3 must be a power of 2"),
    C("tokenizer-factor-too-big", ["tokenizer", "train", "digits", "--out", "tok", "--factor", "16"],
      "--factor 16 must divide"),
    C("tokenizer-huge-vocabulary", ["tokenizer", "train", "digits", "--out", "tok", "--levels", "300,300"],
      "at most 65,536 ids"),
    C("tokens-tokenizer-missing", ["tokens", "digits", "--tokenizer", "nowhere", "--out", "s.npz"],
      "is not a tokenizer directory"),
    C("tokens-out-not-npz", ["tokens", "digits", "--tokenizer", "tok", "--out", "s.txt"], "must name an .npz",
      tokenizer()),
    C("tokens-out-exists", ["tokens", "digits", "--tokenizer", "tok", "--out", "s.npz"], "already exists",
      tokenizer(), npz("s.npz", images=IMAGES)),
    C("tokens-other-shape", ["tokens", "big.npz", "--tokenizer", "tok", "--out", "s.npz"], "was trained on 1x8x8",
      tokenizer(), npz("big.npz", images=np.zeros((4, 16, 16), U8))),
    C("tokens-weights-changed", ["tokens", "digits", "--tokenizer", "tok", "--out", "s.npz"], "SHA-256 differs",
      tokenizer(), text("tok/tokenizer.safetensors", b"not the weights")),
    C("store-not-a-store", [*MASKED[:-1], "data.name=tokens", "data.path=images.npz"], "is not a token store",
      npz("images.npz", images=IMAGES)),
    C("store-ids-out-of-range", [*MASKED[:-1], "data.name=tokens", "data.path=s.npz"], "token ids must lie in [0, 9)",
      store("s.npz", tokens=np.full((8, 4, 4), 12, np.int32))),
    C("store-float-ids", [*MASKED[:-1], "data.name=tokens", "data.path=s.npz"], "'tokens' must be integer id grids",
      store("s.npz", tokens=np.zeros((8, 4, 4), np.float32))),
    C("store-under-flow", [*TRAIN, "data.name=tokens", "data.path=s.npz"], "set objective.name=masked",
      store("s.npz")),
    C("store-with-levels", [*MASKED, "data.name=tokens", "data.path=s.npz"], "data.levels=17 quantises uint8 pixels",
      store("s.npz")),
    # ---- text ------------------------------------------------------------------------------------------------------
    C("text-length-one", [*MASKED[:-1], "data.name=text", "data.length=1"], "data.length"),
    C("text-file-missing", [*MASKED[:-1], "data.name=text", "data.path=nowhere.txt"], "nowhere.txt is not a file"),
    C("text-too-short", [*MASKED[:-1], "data.name=text", "data.path=short.txt"], "too few", text("short.txt", "hi")),
    C("text-not-utf8", [*MASKED[:-1], "data.name=text", "data.path=bad.txt"], "as UTF-8",
      text("bad.txt", b"\xff\xfe\x00bad" * 100)),
    C("text-under-flow", [*TRAIN, "data.name=text"], "set objective.name=masked"),
    C("text-sample-as-png", ["sample", "trun", "--num", "2", "--out", "s.png"], "must end in .txt", text_run()),
    C("text-eval-image-metric", ["eval", "trun", "--metrics", "class"], "--metrics nll", text_run()),
]


def test_discrete_corpus_is_distinct():
    assert_distinct(CASES, len(CASES))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_discrete_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)
