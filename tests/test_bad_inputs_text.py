"""The bad-input corpus of text conditioning: training on captions (the data, the text keys), prompts at sampling
and the GenEval-style eval; the harness and its five checks are in ``corpus.py``.

Each case fails with one line naming the key, option or file and its fix, exit status 2 and no file touched. The
text run a case samples is a tiny ``shapes-text`` run, trained once per session and copied into the case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from corpus import TINY, TRAIN, U8, C, Case, Runs, Setup, assert_distinct, check, npz, text

TEXT_TINY = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "warmup_steps=1",
             "sample.steps=2", "steps=2", "ckpt_every=2", "keep_checkpoints=1", "data.num=16", "model.patch_size=8",
             "precision=fp32"]
TTRAIN = ["train", "--no-progress", "--preset", "shapes-text", *TEXT_TINY, "run_dir=new_run"]
TSAMPLE = ["sample", "txt", "--num", "2", "--steps", "1", "--out", "out.png"]


def _remove(name: str) -> Setup:
    """Remove ``name`` from the case directory (what a user moving a file away does)."""
    def make(tmp: Path, runs: Runs) -> None:
        import shutil

        shutil.rmtree(tmp / name)

    make.desc = f"remove:{name}"  # type: ignore[attr-defined]
    return make


def text_run(dst: str = "txt") -> Setup:
    """The tiny shapes-text run (trained once per session) copied into the case directory."""
    def make(tmp: Path, runs: Runs) -> None:
        runs.trained(*TEXT_TINY, preset="shapes-text", into=tmp / dst)

    make.desc = f"text-run:{dst}"  # type: ignore[attr-defined]
    return make


def captioned(name: str, captions: np.ndarray, n: int = 8) -> Setup:
    return npz(name, images=np.zeros((n, 8, 8, 3), U8), captions=captions)


def side_files(name: str) -> Setup:
    """An image folder where one image of two has a .txt caption beside it."""
    def make(tmp: Path, runs: Runs) -> None:
        from PIL import Image

        root = tmp / name / "x"
        root.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8, 3), U8)).save(root / f"{i}.png")
        (root / "0.txt").write_text("a red circle")

    make.desc = f"side-files:{name}"  # type: ignore[attr-defined]
    return make


def encoder(name: str = "enc") -> Setup:
    """A tiny random T5 text encoder and its tokenizer, saved to the case directory."""
    def make(tmp: Path, runs: Runs) -> None:
        from test_text_hf import save_encoder

        save_encoder("t5", tmp / name)

    make.desc = f"encoder:{name}"  # type: ignore[attr-defined]
    return make


def store(name: str = "store", num: int = 8) -> Setup:
    """A caption store of ``num`` shapes captions encoded by the case's ``enc`` encoder."""
    def make(tmp: Path, runs: Runs) -> None:
        from maskdit.conditions.hf import write_store
        from maskdit.data.shapes import shapes_dataset

        captions = [str(c) for c in shapes_dataset(num, "train", seed=0)["captions"]]
        write_store(captions, tmp / "enc", tmp / name, 14, progress=False)

    make.desc = f"store:{name}:{num}"  # type: ignore[attr-defined]
    return make


def hf_run(dst: str = "hfrun") -> Setup:
    """A tiny run on the case's ``enc`` encoder, trained in the case directory."""
    def make(tmp: Path, runs: Runs) -> None:
        from maskdit.cli.app import main

        assert main([*TTRAIN[:-1], "model.condition=hf", f"model.text_encoder={tmp / 'enc'}", "model.text_length=14",
                     f"run_dir={tmp / dst}"]) == 0

    make.desc = f"hf-run:{dst}"  # type: ignore[attr-defined]
    return make


HF = ["model.condition=hf", "model.text_encoder=enc", "model.text_length=14"]

CASES: list[Case] = [
    # ---- training: the text keys and what they need ------------------------------------------------------------
    C("text-on-uncaptioned-data", [*TRAIN, "model.condition=text"], "has no captions"),
    C("text-mode-without-text", [*TRAIN, "model.text=cross"], "model.text=cross"),
    C("text-mode-unknown", [*TTRAIN, "model.text=sideways"], "model.text"),
    C("text-mode-aligned-for-captions", [*TTRAIN, "model.text=aligned"], "a caption is no such sequence"),
    C("text-length-zero", [*TTRAIN, "model.text_length=0"], "model.text_length"),
    C("text-length-too-short", [*TTRAIN, "model.text_length=2"], "model.text_length=2"),
    C("text-depth-negative", [*TTRAIN, "model.text_depth=-1"], "model.text_depth"),
    C("text-double-negative", [*TTRAIN, "model.text=joint", "model.text_double=-1"], "model.text_double"),
    C("text-double-too-deep", [*TTRAIN, "model.text=joint", "model.text_double=5"], "text_double=5"),
    C("text-with-flip", [*TTRAIN, "data.flip=true"], "data.flip"),
    C("text-unconditional", [*TTRAIN, "model.conditional=false"], "model.conditional"),
    C("text-joint-factorised", [*TTRAIN, "model.text=joint", "model.attention=factorised"], "attention"),
    # ---- caption data --------------------------------------------------------------------------------------------
    C("captions-not-strings", [*TTRAIN, "data.name=npz", "data.path=c.npz"], "'captions' must be 8 strings",
      captioned("c.npz", np.arange(8))),
    C("captions-too-few", [*TTRAIN, "data.name=npz", "data.path=c.npz"], "3 captions for 8 images",
      captioned("c.npz", np.array(["a red circle"] * 3))),
    C("captions-empty-one", [*TTRAIN, "data.name=npz", "data.path=c.npz", "model.patch_size=2"], "caption 0 is empty",
      captioned("c.npz", np.array([""] + ["a red circle"] * 7))),
    C("captions-side-file-missing", [*TTRAIN, "data.name=folder", "data.path=f", "model.patch_size=2"],
      "has no caption file 1.txt", side_files("f")),
    C("init-from-new-words", [*TTRAIN, "data.name=npz", "data.path=c.npz", "model.patch_size=2", "init_from=txt"],
      "never learned (purple)", captioned("c.npz", np.array(["a purple circle"] * 8)), text_run()),
    # ---- sampling a text model ------------------------------------------------------------------------------------
    C("prompt-missing", TSAMPLE, "pass --prompt", text_run()),
    C("prompt-unknown-word", [*TSAMPLE, "--prompt", "a purple circle"], "'purple' is not a word", text_run()),
    C("prompt-too-long", [*TSAMPLE, "--prompt", "a red circle and a blue square and a green triangle"],
      "reads at most", text_run()),
    C("prompt-empty", [*TSAMPLE, "--prompt", " "], "--prompt ''", text_run()),
    C("prompts-file-missing", [*TSAMPLE, "--prompts", "p.txt"], "--prompts p.txt", text_run()),
    C("prompts-file-empty", [*TSAMPLE, "--prompts", "p.txt"], "holds no captions", text_run(), text("p.txt", "\n \n")),
    C("prompts-file-binary", [*TSAMPLE, "--prompts", "p.txt"], "UTF-8", text_run(), text("p.txt", b"\xff\xfe\x00a")),
    C("prompt-with-classes", [*TSAMPLE, "--prompt", "a red circle", "--classes", "1"], "--classes", text_run()),
    C("negative-prompt-empty", [*TSAMPLE, "--prompt", "a red circle", "--negative-prompt", ""], "--negative-prompt",
      text_run()),
    C("negative-prompt-unknown", [*TSAMPLE, "--prompt", "a red circle", "--negative-prompt", "a purple circle"],
      "'purple'", text_run()),
    C("prompt-on-label-model", ["sample", "{img}", "--num", "2", "--steps", "1", "--out", "out.png", "--prompt", "a"],
      "not conditioned on text"),
    # ---- a frozen Hugging Face encoder -----------------------------------------------------------------------------
    C("hf-without-encoder", [*TTRAIN, "model.condition=hf"], "model.text_encoder is required"),
    C("hf-hub-id", [*TTRAIN, "model.condition=hf", "model.text_encoder=google/t5-v1_1-small"],
      "maskdit never downloads"),
    C("hf-encoder-on-label-model", [*TRAIN, "model.text_encoder=enc"], "model.text_encoder"),
    C("captions-store-without-hf", [*TTRAIN, "data.captions=store"], "data.captions"),
    C("text-refiner-negative", [*TTRAIN, *HF, "model.text_refiner=-1"], "model.text_refiner"),
    C("adaln-unknown", [*TTRAIN, "model.adaln=double"], "model.adaln"),
    C("hf-store-other-captions", [*TTRAIN, *HF, "data.captions=store"], "holds other captions", encoder(),
      store(num=4)),
    C("hf-store-incomplete", [*TTRAIN, *HF, "data.captions=store"], "not a complete caption store", encoder(),
      text("store/values.npy", b"x")),
    C("hf-store-other-length", [*TTRAIN, "model.condition=hf", "model.text_encoder=enc", "model.text_length=16",
                                "data.captions=store"], "another length", encoder(), store(num=16)),
    C("hf-run-encoder-moved", ["sample", "hfrun", "--prompt", "a red circle", "--num", "2", "--steps", "1", "--out",
                               "o.png"], "is not there", encoder(), hf_run(), _remove("enc")),
    C("captions-encode-exists", ["captions", "encode", "shapes", "--num", "8", "--encoder", "enc", "--out", "store"],
      "exists", encoder(), text("store/keep.txt", "mine")),
    C("captions-encode-no-encoder", ["captions", "encode", "shapes", "--num", "8", "--encoder", "enc", "--out", "s"],
      "not a local model directory"),
    C("captions-encode-uncaptioned", ["captions", "encode", "digits", "--encoder", "enc", "--out", "s"],
      "has no captions", encoder()),
    C("captions-encode-num-on-file", ["captions", "encode", "c.npz", "--num", "4", "--encoder", "enc", "--out", "s"],
      "--num applies", captioned("c.npz", np.array(["a red circle"] * 8))),
    C("captions-encode-too-long", ["captions", "encode", "shapes", "--num", "12", "--encoder", "enc", "--out", "s",
                                   "--length", "3"], "reads at most 3", encoder()),
    C("export-pixart-label-run", ["export", "{img}", "--format", "pixart", "--out", "x"],
      "cannot be exported as a diffusers PixArtTransformer2DModel"),
    C("export-sd3-label-run", ["export", "{img}", "--format", "sd3", "--out", "x"],
      "cannot be exported as a diffusers SD3Transformer2DModel"),
    C("export-dit-text-run", ["export", "txt", "--format", "diffusers", "--out", "x"], "model.condition=text",
      text_run()),
    C("export-pixart-text-run", ["export", "txt", "--format", "pixart", "--out", "x"], "model.adaln=zero",
      text_run()),
    C("geneval-on-label-model", ["eval", "{img}", "--num", "4", "--steps", "1", "--metrics", "geneval"],
      "needs a text model"),
]
assert all(TINY[0] in c.argv or "shapes-text" in c.argv or c.argv[0] != "train" for c in CASES)


def test_text_corpus_is_distinct():
    assert_distinct(CASES, 41)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_text_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)
