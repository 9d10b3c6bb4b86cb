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


CASES: list[Case] = [
    # ---- training: the text keys and what they need ------------------------------------------------------------
    C("text-on-uncaptioned-data", [*TRAIN, "model.condition=text"], "has no captions"),
    C("text-mode-without-text", [*TRAIN, "model.text=cross"], "model.text=cross"),
    C("text-mode-unknown", [*TTRAIN, "model.text=sideways"], "model.text"),
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
    C("geneval-on-label-model", ["eval", "{img}", "--num", "4", "--steps", "1", "--metrics", "geneval"],
      "needs a text model"),
]
assert all(TINY[0] in c.argv or "shapes-text" in c.argv or c.argv[0] != "train" for c in CASES)


def test_text_corpus_is_distinct():
    assert_distinct(CASES, 25)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_text_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)
