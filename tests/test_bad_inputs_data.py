"""The bad-input corpus of the data stores (latent stores, npy directories, .npz layouts), the alignment
encoder (``maskdit encoder train`` and ``align.encoder``), config files and keys checked at validation (RoPE,
MoE) and the start of training (a run that stops before its first checkpoint leaves nothing behind); plus
must-succeed checks of the results that used to be silently wrong, and a full-disk fault test of
``maskdit latents``. The harness and its five checks are in ``corpus.py``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import (
    TINY,
    TRAIN,
    U8,
    VTRAIN,
    C,
    Case,
    Runs,
    assert_distinct,
    check,
    folder,
    npz,
    succeed,
    text,
)

from maskdit.cli.app import main

# -- setups -------------------------------------------------------------------------------------------
Damage = Callable[[Path], None]


def _named(desc: str, fn: Callable[[Path, Runs], None]) -> Callable[[Path, Runs], None]:
    fn.desc = desc  # type: ignore[attr-defined]
    return fn


def write_store(root: Path, n: int = 16, classes: int = 3, value: float | None = None) -> None:
    """A latent store as ``maskdit latents`` writes it (4 x 4 x 4 latents of 8 x 8 gray images), without a VAE:
    training reads only the arrays and the manifest."""
    root.mkdir(parents=True)
    gen = np.random.default_rng(0)
    mean = gen.standard_normal((n, 2, 4, 4, 4)) if value is None else np.full((n, 2, 4, 4, 4), value)
    np.save(root / "mean.npy", mean.astype(np.float16))
    np.save(root / "std.npy", np.ones((n, 2, 4, 4, 4), np.float16))
    if classes:
        np.save(root / "labels.npy", np.arange(n) % classes)
    manifest = {"format": "maskdit-latents", "version": 1, "vae": "vae", "scaling_factor": 0.18215,
                "latent_shape": [4, 4, 4], "image_shape": [1, 8, 8], "num": n, "num_classes": classes,
                "class_names": [str(i) for i in range(classes)], "source": "synthetic"}
    (root / "manifest.json").write_text(json.dumps(manifest))


def store(desc: str, *damage: Damage, name: str = "st", value: float | None = None) -> Callable:
    def make(tmp: Path, runs: Runs) -> None:
        write_store(tmp / name, value=value)
        for d in damage:
            d(tmp / name)
    return _named(f"store:{name}:{desc}", make)


def manifest_is(content: str | bytes) -> Damage:
    def damage(root: Path) -> None:
        data = content if isinstance(content, bytes) else content.encode()
        (root / "manifest.json").write_bytes(data)
    return damage


def manifest_set(**changes) -> Damage:
    """Set keys of the manifest; a value of ``...`` removes the key."""
    def damage(root: Path) -> None:
        manifest = json.loads((root / "manifest.json").read_text())
        for key, value in changes.items():
            if value is ...:
                manifest.pop(key)
            else:
                manifest[key] = value
        (root / "manifest.json").write_text(json.dumps(manifest))
    return damage


def put(name: str, array: np.ndarray) -> Damage:
    return lambda root: np.save(root / name, array)


def raw(name: str, content: bytes) -> Damage:
    return lambda root: (root / name).write_bytes(content)


def halve(name: str) -> Damage:
    def damage(root: Path) -> None:
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    return damage


def rm(name: str) -> Damage:
    return lambda root: (root / name).unlink()


def as_dir(name: str) -> Damage:
    def damage(root: Path) -> None:
        (root / name).unlink(missing_ok=True)
        (root / name).mkdir()
    return damage


def npy_dir(desc: str, images: np.ndarray, *damage: Damage, name: str = "nd") -> Callable:
    def make(tmp: Path, runs: Runs) -> None:
        (tmp / name).mkdir()
        np.save(tmp / name / "images.npy", images)
        for d in damage:
            d(tmp / name)
    return _named(f"npy:{name}:{images.dtype}{images.shape}:{desc}", make)


def encoder_dir(desc: str, channels: int = 1, size: tuple[int, ...] = (8, 8), edit: Callable | None = None,
                weights: Callable | None = None, name: str = "enc") -> Callable:
    """An encoder directory as ``maskdit encoder train`` writes it (a 1-block ViT of width 16), then damaged:
    ``edit`` changes encoder.json's facts, ``weights`` the state dict."""
    def make(tmp: Path, runs: Runs) -> None:
        from safetensors.torch import save_file

        from maskdit.training.encoder import ViTEncoder

        torch.manual_seed(0)
        enc = ViTEncoder(list(size), channels, 2, 16, 1, 2)
        state = {k: v.contiguous() for k, v in enc.state_dict().items()}
        if weights is not None:
            weights(state)
        (tmp / name).mkdir()
        save_file(state, tmp / name / "encoder.safetensors")
        facts = {"kind": "maskdit-mae", "config": enc.config, "steps": 1, "mask_ratio": 0.75}
        if edit is not None:
            edit(facts)
        (tmp / name / "encoder.json").write_text(json.dumps(facts))
    return _named(f"encoder:{name}:{desc}", make)


def width(value) -> Callable[[dict], None]:
    def edit(facts: dict) -> None:
        if value is ...:
            facts["config"].pop("width")
        else:
            facts["config"]["width"] = value
    return edit


def nan_weights(state: dict) -> None:
    state["embed.weight"] = torch.full_like(state["embed.weight"], float("nan"))


# -- argv ---------------------------------------------------------------------------------------------
LT = [*TRAIN, "data.name=latents", "data.path=st"]
NPY = [*TRAIN, "data.name=npy", "data.path=nd"]
ALIGN = [*TRAIN, "align.weight=0.5", "align.block=1", "align.encoder=enc"]
ENC = ["encoder", "train", "digits", "--out", "enc_out", "--steps", "2", "--batch", "8", "--width", "16", "--depth",
       "1", "--heads", "2", "--no-progress"]
NAN_STORE = store("all-nan", value=float("nan"))
GRAY = np.random.default_rng(2).integers(0, 255, (16, 8, 8), dtype=U8)

CASES: list[Case] = [
    # ---- latent stores: the manifest -------------------------------------------------------------
    C("latents-manifest-is-list", LT, re.compile(r"manifest\.json must hold a JSON object"),
      store("list", manifest_is("[1, 2]"))),
    C("latents-manifest-is-string", LT, "JSON object", store("string", manifest_is('"a store"'))),
    C("latents-manifest-without-vae", LT, re.compile(r"manifest\.json lacks vae"),
      store("no-vae", manifest_set(vae=...))),
    C("latents-manifest-without-num-classes", LT, "lacks num_classes",
      store("no-classes", manifest_set(num_classes=...))),
    C("latents-manifest-without-num", LT, "lacks num", store("no-num", manifest_set(num=...))),
    C("latents-manifest-num-is-string", LT, "key num ", store("num-str", manifest_set(num="16"))),
    C("latents-manifest-scaling-zero", LT, "scaling_factor", store("scale-0", manifest_set(scaling_factor=0))),
    C("latents-manifest-image-shape-2d", LT, "image_shape", store("image-2d", manifest_set(image_shape=[8, 8]))),
    C("latents-manifest-classes-negative", LT, "num_classes", store("classes-neg", manifest_set(num_classes=-2))),
    C("latents-manifest-latent-shape-other", LT, "latent_shape", store("lshape", manifest_set(latent_shape=[4, 8, 8]))),
    C("latents-manifest-not-utf8", LT, "manifest.json", store("latin1", manifest_is(b'{"num": "\xe9"}'))),
    C("latents-manifest-wrong-format", LT, "key format", store("format", manifest_set(format="other"))),
    # ---- latent stores: the labels ----------------------------------------------------------------
    C("latents-labels-shorter", LT, re.compile(r"labels\.npy: 10 labels for 16"),
      store("short", put("labels.npy", np.arange(10) % 3))),
    C("latents-labels-beyond-classes", LT, "num_classes 3", store("range", put("labels.npy", np.arange(16)))),
    C("latents-labels-negative", LT, "non-negative", store("neg", put("labels.npy", np.arange(16) % 3 - 1))),
    C("latents-labels-float", LT, re.compile(r"labels\.npy.*integer"),
      store("float", put("labels.npy", (np.arange(16) % 3).astype(np.float32)))),
    C("latents-labels-2d", LT, re.compile(r"labels\.npy.*must be 16 integers.*\(16, 2\)"),
      store("2d", put("labels.npy", np.zeros((16, 2), np.int64)))),
    C("latents-labels-missing", LT, "labels.npy is missing", store("no-labels", rm("labels.npy"))),
    C("latents-labels-without-classes", LT, "num_classes 0", store("labels-no-classes", manifest_set(num_classes=0))),
    C("latents-labels-is-directory", LT, "labels.npy", store("labels-dir", as_dir("labels.npy"))),
    C("latents-labels-truncated", LT, "labels.npy", store("labels-half", halve("labels.npy"))),
    # ---- latent stores: the latents ---------------------------------------------------------------
    C("latents-mean-truncated", LT, "mean.npy", store("mean-half", halve("mean.npy"))),
    C("latents-mean-integers", LT, re.compile(r"mean\.npy holds int32"),
      store("mean-int", put("mean.npy", np.zeros((16, 2, 4, 4, 4), np.int32)))),
    C("latents-mean-empty-latents", LT, "mean.npy",
      store("mean-empty", put("mean.npy", np.zeros((16, 2, 4, 0, 0), np.float16)), manifest_set(latent_shape=...))),
    C("latents-mean-garbage", LT, "mean.npy", store("mean-garbage", raw("mean.npy", b"\x93NUMPY\x01\x00garbage"))),
    C("latents-mean-missing", LT, "no mean.npy", store("mean-missing", rm("mean.npy"))),
    C("latents-out-under-file", ["latents", "digits", "--vae", "vae", "--out", "afile.txt/store"], "afile.txt",
      text("afile.txt", "keep me")),
    # ---- npy directories and .npz layouts ---------------------------------------------------------
    C("npy-images-truncated", NPY, "images.npy", npy_dir("half", GRAY, halve("images.npy"))),
    C("npy-labels-truncated", NPY, "labels.npy", npy_dir("labels-half", GRAY, put("labels.npy", np.arange(16) % 2),
                                                        halve("labels.npy"))),
    C("npy-labels-is-directory", NPY, "labels.npy", npy_dir("labels-dir", GRAY, as_dir("labels.npy"))),
    C("npy-images-ambiguous-layout", NPY, "could be N x H x W x C",
      npy_dir("ambiguous", np.zeros((16, 4, 8, 4), U8))),
    C("npy-images-no-channels", NPY, "no channels", npy_dir("zero-c", np.zeros((16, 8, 8, 0), U8))),
    C("npz-images-ambiguous-layout", [*TRAIN, "data.name=npz", "data.path=amb.npz"], "layout",
      npz("amb.npz", images=np.zeros((16, 4, 4, 4), U8))),
    C("npz-layout-bogus", [*TRAIN, "data.name=npz", "data.path=lay.npz"], "'layout' must be",
      npz("lay.npz", images=np.zeros((16, 8, 8, 1), U8), layout=np.array("CHWN"))),
    C("npz-layout-on-gray", [*TRAIN, "data.name=npz", "data.path=lay3.npz"], "'layout' NCHW",
      npz("lay3.npz", images=np.zeros((16, 8, 8), U8), layout=np.array("NCHW"))),
    C("npz-images-no-channels", [*TRAIN, "data.name=npz", "data.path=zc.npz"], "no channels",
      npz("zc.npz", images=np.zeros((16, 8, 8, 0), U8))),
    # ---- the alignment encoder (align.encoder) ----------------------------------------------------
    C("align-encoder-other-channels", ALIGN, "3-channel", encoder_dir("rgb", channels=3)),
    C("align-encoder-image-encoder-on-latents", [*ALIGN, "data.name=latents", "data.path=st"], "1-channel",
      encoder_dir("gray"), store("ok")),
    C("align-encoder-other-size", ALIGN, "16 x 16", encoder_dir("16x16", size=(16, 16))),
    C("align-encoder-width-zero", ALIGN, "config.width", encoder_dir("w0", edit=width(0))),
    C("align-encoder-width-negative", ALIGN, "config.width", encoder_dir("w-16", edit=width(-16))),
    C("align-encoder-width-string", ALIGN, "config.width", encoder_dir("w-str", edit=width("wide"))),
    C("align-encoder-width-missing", ALIGN, "lacks config.width", encoder_dir("w-missing", edit=width(...))),
    C("align-encoder-heads-not-dividing", ALIGN, "config.num_heads 3",
      encoder_dir("heads3", edit=lambda f: f["config"].update(num_heads=3))),
    C("align-encoder-json-is-list", ALIGN, "JSON object", encoder_dir("list", edit=lambda f: f.clear())),
    C("align-encoder-weights-of-other-width", ALIGN, "different encoders", encoder_dir("w32", edit=width(32))),
    C("align-encoder-nan-weights", ALIGN, "non-finite", encoder_dir("nan", weights=nan_weights)),
    # ---- maskdit encoder train ----------------------------------------------------------------------
    C("encoder-mask-ratio-zero", [*ENC, "--mask-ratio", "0"], "--mask-ratio"),
    C("encoder-mask-ratio-drops-nothing", [*ENC, "--mask-ratio", "0.01"], "--mask-ratio"),
    C("encoder-patch-not-dividing", [*ENC, "--patch", "3"], "--patch 3"),
    C("encoder-width-too-narrow", [*ENC, "--width", "2", "--heads", "1"], "--width 2"),
    # ---- config files and keys ----------------------------------------------------------------------
    C("train-yaml-not-utf8", [*TRAIN, "latin1.yaml"], re.compile(r"latin1\.yaml is not UTF-8"),
      text("latin1.yaml", b"steps: 2\n# caf\xe9\n")),
    C("train-yaml-utf16", [*TRAIN, "wide.yaml"], "wide.yaml", text("wide.yaml", "steps: 2\n".encode("utf-16"))),
    C("train-rope-heads-too-narrow", [*TRAIN, "model.pos=rope", "model.num_heads=16"], "model.pos=rope"),
    C("train-rope-video-heads-too-narrow", [*VTRAIN, "model.pos=rope", "model.num_heads=8"], "model.num_heads=8"),
    C("train-moe-every-beyond-depth", [*TRAIN, "model.moe.experts=2", "model.moe.every=2"], "model.moe.every=2"),
    C("train-moe-shared-without-experts", [*TRAIN, "model.moe.shared=2"], "model.moe.shared"),
    C("train-moe-time-gate-without-experts", [*TRAIN, "model.moe.time_gate=true"], "model.moe.time_gate"),
    # ---- a run that stops before its first checkpoint leaves nothing behind -------------------------------
    C("train-nan-latents-leave-nothing", [*LT, "nan_tolerance=1"], "nan_tolerance=1", NAN_STORE),
    C("train-nan-latents-nested-run-dir", [*LT, "nan_tolerance=1", "run_dir=a/b/run"], "no checkpoint was written",
      NAN_STORE),
    C("train-nan-latents-empty-run-dir", [*LT, "nan_tolerance=1", "run_dir=emptydir"], "nan_tolerance",
      NAN_STORE, folder("emptydir")),
]


def test_corpus_is_large_and_distinct():
    assert_distinct(CASES, 35)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)


def test_encoder_stops_on_a_non_finite_loss(runs, tmp_path, monkeypatch, capfd):
    """A loss that becomes NaN stops ``encoder train`` with one line, writing nothing (not a NaN encoder)."""
    from maskdit.training.encoder import MaskedAutoencoder

    real = MaskedAutoencoder.loss
    monkeypatch.setattr(MaskedAutoencoder, "loss", lambda self, x, keep: real(self, x, keep) * float("nan"))
    check(C("encoder-nan-loss", ENC, "loss is nan"), runs, tmp_path, monkeypatch, capfd)


# -- must succeed: what used to be silently wrong -------------------------------------------------------
def test_npz_channels_first_is_read_as_channels_last(runs, tmp_path, monkeypatch, capfd):
    from maskdit.data.datasets import load_npy, load_npz

    gen = np.random.default_rng(3)
    for channels in (1, 3):
        last = gen.integers(0, 255, (16, 8, 8, channels), dtype=U8)
        np.savez(tmp_path / f"last{channels}.npz", images=last)
        np.savez(tmp_path / f"first{channels}.npz", images=last.transpose(0, 3, 1, 2))
        want = load_npz(tmp_path / f"last{channels}.npz")
        got = load_npz(tmp_path / f"first{channels}.npz")
        assert got.shape == want.shape == (channels, 8, 8) and torch.equal(got.images, want.images)
        (tmp_path / f"npy{channels}").mkdir()
        np.save(tmp_path / f"npy{channels}" / "images.npy", last.transpose(0, 3, 1, 2))
        assert torch.equal(load_npy(tmp_path / f"npy{channels}").images, want.images)
    # both axes could be channels: square images decide, and a 'layout' array says it outright
    square = gen.integers(0, 255, (16, 4, 4, 3), dtype=U8)
    np.savez(tmp_path / "sq.npz", images=square.transpose(0, 3, 1, 2))  # 16 x 3 x 4 x 4
    assert torch.equal(load_npz(tmp_path / "sq.npz").images, torch.from_numpy(square.transpose(0, 3, 1, 2)))
    cube = gen.integers(0, 255, (16, 4, 4, 4), dtype=U8)
    np.savez(tmp_path / "nchw.npz", images=cube, layout=np.array("NCHW"))
    np.savez(tmp_path / "nhwc.npz", images=cube, layout=np.array("NHWC"))
    assert torch.equal(load_npz(tmp_path / "nchw.npz").images, torch.from_numpy(cube))
    assert torch.equal(load_npz(tmp_path / "nhwc.npz").images, torch.from_numpy(cube.transpose(0, 3, 1, 2)))
    # and a channels-first file trains as its images, 3 x 8 x 8
    rgb = gen.integers(0, 255, (16, 8, 8, 3), dtype=U8)
    tmp, _, _ = succeed([*TRAIN, "data.name=npz", "data.path=rgb.npz"], runs, tmp_path, monkeypatch, capfd,
                        (npz("rgb.npz", images=rgb.transpose(0, 3, 1, 2), labels=np.arange(16) % 2),))
    info = json.loads((tmp / "new_run" / "config.json").read_text())
    assert info["dataset"]["shape"] == [3, 8, 8] and info["model"]["in_channels"] == 3


def test_latent_store_with_integer_labels_trains(runs, tmp_path, monkeypatch, capfd):
    tmp, _, _ = succeed(LT, runs, tmp_path, monkeypatch, capfd, (store("good"),))
    info = json.loads((tmp / "new_run" / "config.json").read_text())
    assert info["dataset"]["shape"] == [4, 4, 4] and info["dataset"]["num_classes"] == 3
    assert info["dataset"]["codec"]["name"] == "vae"


def test_moe_every_within_depth_trains_experts(runs, tmp_path, monkeypatch, capfd):
    from safetensors.torch import load_file

    tmp, _, _ = succeed([*TRAIN, "model.depth=2", "model.moe.experts=2", "model.moe.top_k=1", "model.moe.every=2"],
                        runs, tmp_path, monkeypatch, capfd)
    info = json.loads((tmp / "new_run" / "config.json").read_text())
    assert info["model"]["moe"]["experts"] == 2 and info["model"]["moe"]["every"] == 2
    (ckpt,) = (tmp / "new_run" / "checkpoints").glob("step_*")
    names = list(load_file(ckpt / "ema.safetensors"))
    assert any(n.startswith("blocks.1.") and ".experts.1." in n for n in names), names
    assert not any(n.startswith("blocks.0.") and ".experts." in n for n in names)


def test_encoder_trains_and_aligns(runs, tmp_path, monkeypatch, capfd):
    tmp, _, _ = succeed([*ENC, "--mask-ratio", "0.5"], runs, tmp_path, monkeypatch, capfd)
    facts = json.loads((tmp / "enc_out" / "encoder.json").read_text())
    assert np.isfinite(facts["first_loss"]) and np.isfinite(facts["final_loss"])
    assert sorted(p.name for p in tmp.iterdir()) == ["enc_out"]  # no hidden leftovers beside it
    assert main([*ALIGN[:-1], "align.encoder=enc_out", "run_dir=aligned"]) == 0
    assert list((tmp / "aligned" / "checkpoints").glob("step_*"))


def test_failed_first_run_leaves_nothing_so_the_next_starts_fresh(runs, tmp_path, monkeypatch, capfd):
    check(C("nan-run", [*LT, "nan_tolerance=1"], "nan_tolerance", NAN_STORE, store("good", name="good")),
          runs, tmp_path, monkeypatch, capfd)
    assert not Path("new_run").exists()
    assert main([*TRAIN, "data.name=latents", "data.path=good"]) == 0  # the same run_dir, no --resume needed
    assert list(Path("new_run/checkpoints").glob("step_*"))


def test_failed_resume_keeps_files_it_did_not_create(runs, tmp_path, monkeypatch, capfd):
    """A run dir left by an older version (config.json, metrics.jsonl, no checkpoint) that fails again keeps
    its files: only what a run created is removed."""
    import maskdit.training.trainer

    tmp = tmp_path / "case"
    tmp.mkdir()
    write_store(tmp / "st", value=float("nan"))
    monkeypatch.chdir(tmp)
    with monkeypatch.context() as m:
        m.setattr(maskdit.training.trainer, "remove_created", lambda paths: None)  # as before the fix
        assert main([*LT, "nan_tolerance=1"]) == 2
    left = sorted(p.name for p in Path("new_run").iterdir())
    assert left == ["config.json", "metrics.jsonl"]
    capfd.readouterr()
    assert main(["train", "--no-progress", "--resume", *TINY, "run_dir=new_run", "data.name=latents", "data.path=st",
                 "nan_tolerance=1"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "nan_tolerance" in err
    assert sorted(p.name for p in Path("new_run").iterdir()) == left


# -- fault: a full disk while maskdit latents writes its store ------------------------------------------
@pytest.fixture(scope="module")
def vae_and_images(tmp_path_factory):
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("full-disk")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(root / "vae")
    gen = np.random.default_rng(0)
    np.savez(root / "imgs.npz", images=gen.integers(0, 256, (32, 16, 16), dtype=np.uint8), labels=np.arange(32) % 3)
    return root


FULL_DISK = """
import resource, signal, sys
from maskdit.cli.app import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("limit", [64, 20_000], ids=["header", "mid-array"])
def test_full_disk_leaves_no_half_store(vae_and_images, tmp_path, limit):
    """mean.npy and std.npy are 32 x 2 x 4 x 8 x 8 float16 (32 KiB each): the write fails in the header or
    in the middle of the latents; the command says so in one line and leaves no store, whole or half."""
    from conftest import tree_hashes

    work = tmp_path / "work"
    work.mkdir()
    before = tree_hashes(vae_and_images), sorted(os.listdir(work))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK.format(limit=limit), "latents", str(vae_and_images / "imgs.npz"), "--vae",
         str(vae_and_images / "vae"), "--out", "sub/store", "--batch", "8", "--no-progress"],
        check=False, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert "sub/store" in proc.stderr and "File too large" in proc.stderr, proc.stderr
    assert sorted(os.listdir(work)) == before[1] == []  # no store, no hidden temporary, no parent made for it
    assert tree_hashes(vae_and_images) == before[0]  # the images and the VAE are untouched
