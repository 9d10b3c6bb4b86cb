"""The bad-input corpus of the modalities beyond images and video (motion, voxels, audio): ``maskdit data NAME``,
their training keys and stores, the motion tasks (``inbetween``, ``parts``, ``--columns``) and ``--context`` files
that would otherwise give a silently wrong result. The harness and its five checks are in ``corpus.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    CTX_CLIPS,
    CTX_IMAGES,
    ITASK,
    SAMPLE,
    TINY,
    TRAIN,
    VTASK,
    C,
    Case,
    Runs,
    _setup,
    assert_distinct,
    check,
    npz,
)

MOTION = ["--preset", "motion", *TINY, "data.frames=16", "model.patch_size=[4,1]", "compile=false"]
MTRAIN = ["train", "--no-progress", *MOTION, "run_dir=new_run"]
MDATA = ["data", "motion", "--num", "2", "--frames", "16"]
MTASK = ["sample", "mrun", "--task", "inbetween", "--context", "ctx.npz", "--steps", "1", "--out", "out.npz"]


def motion_run(tmp: Path, runs: Runs) -> None:
    shutil.copytree(runs.trained(*MOTION[2:], preset="motion"), tmp / "mrun")


motion_run = _setup("run:motion", motion_run)
VOXELS = ["--preset", "voxels", *TINY, "data.size=8", "data.num=8", "model.patch_size=4", "compile=false",
          "task.names=[unconditional,inpaint]", "model.token_time=true"]


def voxel_run(tmp: Path, runs: Runs) -> None:
    shutil.copytree(runs.trained(*VOXELS[2:], preset="voxels"), tmp / "vrun")


voxel_run = _setup("run:voxels", voxel_run)


def _audio_store(root: Path) -> Path:
    """A small audio store of sine tones (deterministic, no synthesiser), two classes."""
    from maskdit.data.audio import write_store

    path = root / "tones.npz"
    if not path.exists():
        t = np.arange(800) / 8000
        waves = np.stack([0.5 * np.sin(2 * np.pi * (200 + 100 * i) * t) for i in range(8)])[:, None]
        write_store(path, waves, np.arange(8) % 2, ["low", "high"])
    return path


def audio_run(tmp: Path, runs: Runs) -> None:
    store = _audio_store(runs.trained.root)
    shutil.copytree(runs.trained(*TINY, "data.name=audio", f"data.path={store}", "model.patch_size=80",
                                 "task.names=[unconditional,inbetween]", "model.token_time=true"), tmp / "arun")


audio_run = _setup("run:audio", audio_run)
ATRAIN = ["train", "--no-progress", *TINY, "data.name=audio", "model.patch_size=80", "run_dir=new_run"]
ATASK = ["sample", "arun", "--task", "inbetween", "--context", "ctx.npz", "--steps", "1", "--out", "out.npz"]
F32 = np.float32
GOOD = np.zeros((2, 16, 14, 4), F32)
TONES = _setup("tones.npz", lambda tmp, runs: shutil.copy(_audio_store(runs.trained.root), tmp / "tones.npz"))
AETRAIN = ["autoencoder", "train", "tones.npz", "--out", "new_ae", "--steps", "1", "--no-progress"]
AEDATA = [*ATRAIN, "data.path=tones.npz", "data.autoencoder=ae"]


def _tiny_ae(tmp: Path, runs: Runs) -> None:
    import torch

    from maskdit.training.autoencoder import train_autoencoder

    train_autoencoder(torch.zeros(4, 1, 800), tmp / "ae", steps=1, batch_size=2, latent_channels=2, width=4,
                      n_fft=64, hop=16, progress=False)


AE = _setup("ae", _tiny_ae)


def ae_json(**changes: object) -> object:
    def edit(tmp: Path, runs: Runs) -> None:
        import json

        facts = json.loads((tmp / "ae" / "autoencoder.json").read_text())
        (tmp / "ae" / "autoencoder.json").write_text(json.dumps({**facts, **changes}))
    return _setup("ae.json:" + ",".join(f"{k}={v}" for k, v in changes.items()), edit)


def _other_weights(tmp: Path, runs: Runs) -> None:
    from safetensors.torch import save_file

    from maskdit.training.autoencoder import AudioVAE

    save_file(AudioVAE(2, 8, (2,), 64, 16).state_dict(), tmp / "ae" / "autoencoder.safetensors")


OTHER_WEIGHTS = _setup("ae:other-weights", _other_weights)
HOPPER = ["--preset", "hopper", *TINY, "data.num=1", "data.frames=8", "model.hidden_size=32", "model.mlp_ratio=2"]
HTRAIN = ["train", "--no-progress", *HOPPER, "run_dir=new_run"]
HSAMPLE = ["sample", "prun", "--num", "2", "--out", "out.npz"]


def policy_run(tmp: Path, runs: Runs) -> None:
    shutil.copytree(runs.trained(*HOPPER[2:], preset="hopper"), tmp / "prun")


policy_run = _setup("run:hopper", policy_run)


FOOT = ["--preset", "footsteps", *TINY, "data.frames=16", "compile=false"]
FTRAIN = ["train", "--no-progress", *FOOT, "run_dir=new_run"]
FSAMPLE = ["sample", "frun", "--num", "2", "--steps", "1", "--out", "out.npz"]
WINDOW = 16 * 200  # samples the footsteps run hears: 16 frames at 6000 Hz


def footsteps_run(tmp: Path, runs: Runs) -> None:
    shutil.copytree(runs.trained(*FOOT[2:], preset="footsteps"), tmp / "frun")


footsteps_run = _setup("run:footsteps", footsteps_run)


def wav_24bit(tmp: Path, runs: Runs) -> None:
    import wave

    with wave.open(str(tmp / "s.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(3)
        f.setframerate(6000)
        f.writeframes(bytes(3 * 600))


def ctx(array: np.ndarray, key: str = "motion") -> object:
    return npz("ctx.npz", **{key: array})


NAN = GOOD.copy()
NAN[0, 3, 2, 1] = np.nan

CASES: list[Case] = [
    # maskdit data motion
    C("data-motion-out-png", [*MDATA, "--out", "m.png"], "--out"),
    C("data-motion-frames-too-few", ["data", "motion", "--frames", "3", "--out", "m.npz"], "--frames 3"),
    C("data-motion-frames-too-many", ["data", "motion", "--frames", "5000", "--out", "m.npz"], "--frames 5000"),
    C("data-motion-split-unknown", [*MDATA, "--split", "val", "--out", "m.npz"], "--split"),
    C("data-motion-out-exists", [*MDATA, "--out", "m.npz"], "already exists", npz("m.npz", motion=GOOD)),
    # maskdit data voxels
    C("data-voxels-out-gif", ["data", "voxels", "--num", "2", "--size", "8", "--out", "v.gif"], "--out v.gif"),
    C("data-voxels-size-too-small", ["data", "voxels", "--num", "2", "--size", "4", "--out", "v.npz"], "--size 4"),
    C("data-voxels-size-too-large", ["data", "voxels", "--num", "2", "--size", "500", "--out", "v.npz"],
      "--size 500"),
    C("train-voxels-size-too-large", ["train", "--no-progress", "--preset", "voxels", *TINY, "data.size=96",
                                      "run_dir=new_run"], "data.size=96"),
    C("train-voxels-frame-task", ["train", "--no-progress", "--preset", "voxels", *TINY, "data.size=8",
                                  "data.num=8", "task.names=[predict]", "run_dir=new_run"], "axis 0 is time"),
    C("voxel-context-in-0-255", ["sample", "vrun", "--task", "inpaint", "--context", "v.npz", "--steps", "1",
                                 "--out", "out.npz"], "divide 0-255 grids by 255", voxel_run,
      npz("v.npz", voxels=np.full((2, 8, 8, 8, 1), 255.0, F32))),
    C("voxel-context-other-size", ["sample", "vrun", "--task", "inpaint", "--context", "v.npz", "--steps", "1",
                                   "--out", "out.npz"], "8 x 8 x 8 x 1", voxel_run,
      npz("v.npz", voxels=np.zeros((2, 16, 16, 16, 1), F32))),
    C("voxel-sample-out-gif", ["sample", "vrun", "--num", "2", "--out", "out.gif"], "--out out.gif", voxel_run),
    # audio: maskdit data spoken-digits, stores, audio runs
    C("data-spoken-digits-out-gif", ["data", "spoken-digits", "--num", "2", "--out", "a.gif"], "--out a.gif"),
    C("train-audio-without-a-store", ATRAIN, "data.path"),
    C("train-audio-store-missing", [*ATRAIN, "data.path=none.npz"], "does not exist"),
    C("train-audio-store-of-images", [*ATRAIN, "data.path=s.npz"], "holds no 'audio'",
      npz("s.npz", images=np.zeros((4, 8, 8), np.uint8))),
    C("train-audio-store-of-integers", [*ATRAIN, "data.path=s.npz"], "must be floats",
      npz("s.npz", audio=np.zeros((4, 800, 1), np.int16))),
    C("train-audio-store-16-bit-scale", [*ATRAIN, "data.path=s.npz"], "divide 16-bit samples",
      npz("s.npz", audio=np.full((4, 800, 1), 3000.0, F32))),
    C("train-audio-store-labels-short", [*ATRAIN, "data.path=s.npz"], "labels",
      npz("s.npz", audio=np.zeros((4, 800, 1), F32), labels=np.arange(3))),
    C("audio-context-other-length", ATASK, "800 x 1", audio_run, npz("ctx.npz", audio=np.zeros((2, 400, 1), F32))),
    C("audio-context-16-bit-scale", ATASK, "divide 16-bit samples", audio_run,
      npz("ctx.npz", audio=np.full((2, 800, 1), 2.0, F32))),
    C("audio-sample-out-ply", ["sample", "arun", "--num", "2", "--out", "out.ply"], "--out out.ply", audio_run),
    C("audio-eval-not-spoken-digits", ["eval", "arun", "--num", "2"], "scores runs trained on spoken digits",
      audio_run),
    # maskdit autoencoder train, data.autoencoder
    C("autoencoder-store-of-images", ["autoencoder", "train", "s.npz", "--out", "new_ae"], "holds no 'audio'",
      npz("s.npz", images=np.zeros((2, 8, 8, 1), np.uint8))),
    C("autoencoder-store-missing", AETRAIN, "does not exist"),
    C("autoencoder-out-exists", [*AETRAIN[:4], "ae", *AETRAIN[5:]], "already exists", TONES, AE),
    C("autoencoder-hop-beyond-the-window", [*AETRAIN, "--n-fft", "64", "--hop", "128"], "--hop 128", TONES),
    C("autoencoder-strides-not-numbers", [*AETRAIN, "--strides", "4,x"], "--strides", TONES),
    C("autoencoder-action-unknown", ["autoencoder", "fit", "tones.npz", "--out", "new_ae"], "fit", TONES),
    C("train-autoencoder-on-images", [*TRAIN, "data.autoencoder=ae"], "data.autoencoder", AE),
    C("train-audio-autoencoder-missing", [*AEDATA[:-1], "data.autoencoder=none"], "not an autoencoder directory",
      TONES),
    C("train-audio-autoencoder-wrong-kind", AEDATA, "does not describe", TONES, AE, ae_json(kind="maskdit-mae")),
    C("train-audio-autoencoder-stats-short", AEDATA, "latent_mean", TONES, AE, ae_json(latent_mean=[0.0])),
    C("train-audio-autoencoder-std-zero", AEDATA, "latent_std must be positive", TONES, AE,
      ae_json(latent_std=[0.0, 1.0])),
    C("train-audio-autoencoder-weights-of-another", AEDATA, "does not match", TONES, AE, OTHER_WEIGHTS),
    C("autoencoder-window-beyond-the-clip", [*AETRAIN, "--n-fft", "4096"], "--n-fft 4096", TONES),
    # action chunks: maskdit data hopper, policies, --observations
    C("data-hopper-out-gif", ["data", "hopper", "--num", "1", "--out", "a.gif"], "--out a.gif"),
    C("data-hopper-too-many-episodes", ["data", "hopper", "--num", "500", "--out", "a.npz"], "--num 500"),
    C("train-hopper-too-many-episodes", [*HTRAIN, "data.num=500"], "data.num=500"),
    C("train-hopper-chunk-longer-than-episodes", [*HTRAIN, "data.frames=2000", "model.patch_size=2"],
      "longer than every episode"),
    C("train-vector-condition-on-images", [*TRAIN, "model.condition=vector"], "needs data with a vector"),
    C("policy-sample-without-observations", HSAMPLE, "pass --observations", policy_run),
    C("policy-sample-with-classes", [*HSAMPLE, "--classes", "1"], "--classes", policy_run),
    C("policy-observations-of-another-size", [*HSAMPLE, "--observations", "o.npz"], "N x 15", policy_run,
      npz("o.npz", observations=np.zeros((2, 11), F32))),
    C("policy-observations-integers", [*HSAMPLE, "--observations", "o.npz"], "as floats", policy_run,
      npz("o.npz", observations=np.zeros((2, 15), np.int64))),
    C("policy-observations-nan", [*HSAMPLE, "--observations", "o.npz"], "NaN", policy_run,
      npz("o.npz", observations=np.full((2, 15), np.nan, F32))),
    C("policy-observations-missing", [*HSAMPLE, "--observations", "o.npz"], "does not exist", policy_run),
    C("observations-for-an-image-run", [*SAMPLE, "--observations", "o.npz"], "--observations applies to a policy",
      npz("o.npz", observations=np.zeros((2, 15), F32))),
    # audio-driven motion: maskdit data footsteps, model.condition=audio, --audio
    C("data-footsteps-out-png", ["data", "footsteps", "--num", "1", "--out", "a.png"], "their sounds as FILE.wav"),
    C("data-motion-out-wav", ["data", "motion", "--num", "1", "--out", "a.wav"], "--out a.wav"),
    C("train-audio-condition-on-plain-motion", [*MTRAIN, "model.conditional=true", "model.condition=audio"],
      "use data.name=footsteps"),
    C("train-audio-condition-on-images", [*TRAIN, "model.conditional=true", "model.condition=audio"],
      "needs data with a sound"),
    C("train-aligned-with-token-dropping", [*FTRAIN, "mask.ratio=0.5"], "model.text=aligned adds each frame's"),
    C("train-aligned-with-class-labels", [*TRAIN, "model.conditional=true", "model.text=aligned"],
      "injects a condition's tokens"),
    C("train-audio-condition-unconditional", [*FTRAIN, "model.conditional=false"], "conditions on a token sequence"),
    C("footsteps-sample-without-audio", FSAMPLE, "pass --audio", footsteps_run),
    C("footsteps-sample-with-classes", [*FSAMPLE, "--classes", "1"], "conditioned on audio", footsteps_run),
    C("footsteps-sample-with-prompt", [*FSAMPLE, "--prompt", "walk"], "conditioned on audio", footsteps_run),
    C("footsteps-audio-of-another-length", [*FSAMPLE, "--audio", "s.npz"], f"N x {WINDOW}", footsteps_run,
      npz("s.npz", sounds=np.zeros((2, 100), F32))),
    C("footsteps-audio-integers", [*FSAMPLE, "--audio", "s.npz"], "as floats", footsteps_run,
      npz("s.npz", sounds=np.zeros((2, WINDOW), np.int64))),
    C("footsteps-audio-without-sounds", [*FSAMPLE, "--audio", "s.npz"], "no 'sounds' array", footsteps_run,
      npz("s.npz", motion=np.zeros((2, 16, 14, 4), F32))),
    C("footsteps-audio-nan", [*FSAMPLE, "--audio", "s.npz"], "NaN", footsteps_run,
      npz("s.npz", sounds=np.full((2, WINDOW), np.nan, F32))),
    C("footsteps-audio-missing-wav", [*FSAMPLE, "--audio", "s.wav"], "does not exist", footsteps_run),
    C("footsteps-audio-damaged-wav", [*FSAMPLE, "--audio", "s.wav"], "cannot read --audio", footsteps_run,
      _setup("text:s.wav:damaged", lambda tmp, runs: (tmp / "s.wav").write_bytes(b"RIFF not a wave"))),
    C("footsteps-audio-24-bit-wav", [*FSAMPLE, "--audio", "s.wav"], "24-bit samples", footsteps_run,
      _setup("wav:24-bit", wav_24bit)),
    C("footsteps-audio-mp3", [*FSAMPLE, "--audio", "s.mp3"], "give a .wav file", footsteps_run),
    C("audio-for-an-image-run", [*SAMPLE, "--audio", "s.wav"], "--audio applies to audio-driven models"),
    # training on motion
    C("train-motion-flip", [*MTRAIN, "data.flip=true"], "data.flip"),
    C("train-motion-frames-too-few", [*MTRAIN, "data.frames=3"], "data.frames=3"),
    C("train-motion-frames-too-many", [*MTRAIN, "data.frames=4000"], "data.frames=4000"),
    C("train-motion-patch-off-the-frames", [*MTRAIN, "model.patch_size=[3,1]"], "model.patch_size"),
    C("train-motion-inbetween-without-a-middle",
      [*MTRAIN, "data.frames=8", "task.names=[inbetween]", "task.weights=null"], "inbetween"),
    C("train-parts-on-images", [*TRAIN, "task.names=[parts]"], "axis 0 is time"),
    C("train-inbetween-on-images", [*TRAIN, "task.names=[inbetween]"], "inpaint or outpaint"),
    # motion tasks at sampling
    C("motion-columns-beyond-the-joints", [*MTASK[:3], "parts", *MTASK[4:], "--columns", "14"], "--columns 14",
      motion_run, ctx(GOOD)),
    C("motion-columns-with-inbetween", [*MTASK, "--columns", "1"], "--columns does not apply", motion_run, ctx(GOOD)),
    C("motion-columns-not-numbers", [*MTASK[:3], "parts", *MTASK[4:], "--columns", "leg"], "--columns",
      motion_run, ctx(GOOD)),
    C("motion-columns-without-task", ["sample", "mrun", "--columns", "1", "--out", "out.npz"],
      "--columns applies with --task only", motion_run),
    C("motion-inbetween-given-frames-leave-no-middle", [*MTASK, "--given-frames", "2"], "--given-frames 2",
      motion_run, ctx(GOOD)),
    C("motion-context-out-png", [*MTASK[:-1], "out.png"], "--out out.png", motion_run, ctx(GOOD)),
    C("motion-sample-out-png", ["sample", "mrun", "--num", "2", "--out", "out.png"], "--out out.png", motion_run),
    C("motion-context-images-key", MTASK, "holds no 'motion'", motion_run, ctx(np.zeros((2, 16, 14, 4), F32),
                                                                                  "images")),
    C("motion-context-other-length", MTASK, "16 x 14 x 4", motion_run, ctx(np.zeros((2, 8, 14, 4), F32))),
    C("motion-context-channels-first", MTASK, "16 x 14 x 4", motion_run, ctx(np.zeros((2, 4, 16, 14), F32))),
    C("motion-context-integers", MTASK, "must be floats", motion_run, ctx(np.zeros((2, 16, 14, 4), np.int64))),
    C("motion-context-nan", MTASK, "NaN", motion_run, ctx(NAN)),
    C("motion-context-empty", MTASK, "N >= 1", motion_run, ctx(np.zeros((0, 16, 14, 4), F32))),
    C("motion-context-missing", MTASK, "does not exist", motion_run),
    C("motion-context-damaged", MTASK, "cannot read", motion_run,
      _setup("text:ctx.npz:damaged", lambda tmp, runs: (tmp / "ctx.npz").write_bytes(b"PK\x03\x04 not a zip"))),
    C("motion-eval-with-image-metrics", ["eval", "mrun", "--num", "2", "--metrics", "fid"], "leave out --samples",
      motion_run),
    C("motion-eval-against-images", ["eval", "mrun", "--num", "2", "--data", "digits"], "generates motion",
      motion_run),
    # the motion tasks on runs without a time axis or joints
    C("task-parts-on-an-image-run", [*ITASK[:3], "parts", *ITASK[4:]], "axis 0 is time", CTX_IMAGES),
    C("task-parts-on-a-video-run", [*VTASK[:3], "parts", *VTASK[4:]], "rank-2 token grid", CTX_CLIPS),
    C("task-inbetween-given-frames-on-video", [*VTASK[:3], "inbetween", *VTASK[4:], "--given-frames", "2"],
      "--given-frames 2", CTX_CLIPS),
    C("sample-columns-on-an-image-run", [*SAMPLE, "--columns", "1"], "--columns applies with --task only"),
]


def test_corpus_is_distinct():
    assert_distinct(CASES, 96)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)
