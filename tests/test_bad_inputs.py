"""A corpus of bad inputs for every subcommand: each must end with exit status 2 and ONE stderr line.

Every case runs ``maskdit.cli.main`` in-process in its own temporary directory (the working directory
during the call) and checks:

1. the exit status is 2 (returned, or raised as ``SystemExit``); no exception escapes ``main``;
2. stderr is exactly one non-empty line starting with ``error:`` (so no usage block, no warning lines and
   no progress bar: every case fails before one would start);
3. that line names the case's offending key, option, value or file (a substring or a regex);
4. no ``Traceback`` in stdout or stderr;
5. no file under the case directory or the shared runs was modified, deleted or added (sha256 + the set
   of paths, directories included: a failing command leaves nothing behind).

Three tiny runs are trained once per session: an image run (digits), an image run trained with tasks
(inpaint/outpaint) and a video run (bouncing digits with tasks). Each keeps ONE checkpoint, so a damaged
copy has no older checkpoint to fall back to. Runs that a case may damage or train into are copied into
the case directory first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maskdit.cli import main

# -- tiny settings shared by the fixtures and the train cases ----------------------------------------
TINY = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "warmup_steps=1",
        "sample.steps=2", "steps=2", "ckpt_every=1", "keep_checkpoints=1"]
VIDEO = ["--preset", "bouncing-digits", *TINY, "compile=false", "data.num=16", "data.frames=4", "data.size=8"]
TRAIN = ["train", "--no-progress", *TINY, "run_dir=new_run"]
VTRAIN = ["train", "--no-progress", *VIDEO, "run_dir=new_run"]
RESUME = ["train", "--no-progress", "--resume", *TINY, "run_dir=new_run"]
SAMPLE = ["sample", "{img}", "--num", "2", "--steps", "1", "--out", "out.png"]
VTASK = ["sample", "{vid}", "--task", "predict", "--context", "clips.npz", "--steps", "1", "--out", "out.npz"]
INVERT = ["invert", "{img}", "--images", "images.npz", "--steps", "1", "--out", "noise.npz"]
FROM_NOISE = ["sample", "{img}", "--from-noise", "noise.npz", "--out", "out.png"]
ITASK = ["sample", "{timg}", "--task", "inpaint", "--context", "images.npz", "--steps", "1", "--out", "out.png"]
EVAL = ["eval", "{img}", "--num", "4", "--steps", "1", "--metrics", "domain_fid"]
REPORT = ["report", "{img}", "--per-class", "1", "--out", "r.html"]
DATA = ["data", "bouncing-digits", "--num", "2", "--frames", "4", "--size", "8", "--out", "clips_out.npz"]
BENCH = ["bench", "--preset", "tiny", "--input", "1x8x8", "--batch", "2", "--steps", "1", "--warmup", "1"]


@dataclasses.dataclass(frozen=True)
class Runs:
    img: Path  #: digits, class-conditional, no tasks
    timg: Path  #: digits trained with task.names=[inpaint,outpaint]
    vid: Path  #: bouncing digits 4x8x8, unconditional, all tasks, factorised attention

    def placeholders(self) -> dict[str, str]:
        return {"{img}": str(self.img), "{timg}": str(self.timg), "{vid}": str(self.vid)}


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("bad-input-runs")
    made = Runs(root / "img", root / "timg", root / "video_run")
    for argv in (
        ["train", "--no-progress", *TINY, f"run_dir={made.img}"],
        ["train", "--no-progress", *TINY, "task.names=[inpaint,outpaint]", f"run_dir={made.timg}"],
        ["train", "--no-progress", *VIDEO, f"run_dir={made.vid}"],
    ):
        assert main(argv) == 0, f"fixture run failed: {argv}"
    for run in (made.img, made.timg, made.vid):
        assert len(list((run / "checkpoints").glob("step_*"))) == 1, run
    return made


# -- case inputs: each helper returns a setup callable with a description (for the distinctness count) --
Setup = Callable[[Path, Runs], None]


def _setup(desc: str, fn: Setup) -> Setup:
    fn.desc = desc  # type: ignore[attr-defined]
    return fn


def npz(name: str, **arrays: np.ndarray) -> Setup:
    def make(tmp: Path, runs: Runs) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        with open(tmp / name, "wb") as f:
            np.savez(f, **arrays)
    return _setup(f"npz:{name}:" + ",".join(f"{k}{v.dtype}{v.shape}" for k, v in arrays.items()), make)


def text(name: str, content: str | bytes = "") -> Setup:
    def make(tmp: Path, runs: Runs) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (tmp / name).write_bytes(content)
        else:
            (tmp / name).write_text(content)
    return _setup(f"file:{name}:{content!r}", make)


def tensors(name: str, shapes: dict[str, tuple[int, ...]]) -> Setup:
    """A ``.pt`` state dict of zero tensors with the given names and shapes."""
    def make(tmp: Path, runs: Runs) -> None:
        torch.save({k: torch.zeros(v) for k, v in shapes.items()}, tmp / name)
    return _setup(f"pt:{name}:{sorted(shapes.items())}", make)


def folder(name: str) -> Setup:
    return _setup(f"dir:{name}", lambda tmp, runs: (tmp / name).mkdir(parents=True, exist_ok=True))


def png(name: str, shape: tuple[int, ...], value: int = 255) -> Setup:
    def make(tmp: Path, runs: Runs) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(shape, value, np.uint8)).save(tmp / name)
    return _setup(f"png:{name}:{shape}", make)


def copy_run(which: str, dst: str = "run", damage: Callable[[Path], None] | None = None, desc: str = "") -> Setup:
    """Copy a shared run into the case directory; ``damage`` gets the copy's (only) checkpoint directory."""
    def make(tmp: Path, runs: Runs) -> None:
        shutil.copytree(getattr(runs, which), tmp / dst)
        if damage is not None:
            (ckpt,) = sorted((tmp / dst / "checkpoints").glob("step_*"))
            damage(ckpt)
    return _setup(f"run:{which}:{dst}:{desc}", make)


def truncate(name: str, keep: int | None = None) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(b"" if keep == 0 else data[: keep if keep is not None else len(data) // 2])
    return damage


def overwrite(name: str, content: str) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).write_text(content)


def edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        data = json.loads((ckpt / name).read_text())
        edit(data)
        (ckpt / name).write_text(json.dumps(data))
    return damage


def remove(name: str) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).unlink()


def nan_weights(name: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(ckpt / name)
        key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
        tensors[key] = tensors[key].clone().fill_(float("nan"))
        save_file(tensors, ckpt / name)
    return damage


def wider_model(info: dict) -> None:
    info["model"]["hidden_size"] = 64


def drop_key(key: str) -> Callable[[dict], None]:
    return lambda info: info.pop(key)


U8 = np.uint8
IMAGES = np.zeros((20, 8, 8), U8)
LABELS = np.arange(20) % 2


def digits_like(n: int = 16, **extra: Any) -> dict[str, np.ndarray]:
    return {"images": np.random.default_rng(0).integers(0, 255, (n, 8, 8), dtype=U8), **extra}


def image_folder(name: str, kind: str) -> Setup:
    """Image folders: ``empty``, ``flat`` (images, no class subfolders), ``corrupt`` (one bad file in a class
    folder), ``mixed`` (two image sizes), ``noimages`` (class folders without images)."""
    def make(tmp: Path, runs: Runs) -> None:
        root = tmp / name
        root.mkdir(parents=True)
        if kind == "flat":
            for i in range(4):
                Image.fromarray(np.zeros((8, 8), U8)).save(root / f"{i}.png")
        elif kind in ("corrupt", "mixed", "noimages"):
            for c in ("a", "b"):
                (root / c).mkdir()
                if kind == "noimages":
                    (root / c / "notes.txt").write_text("no images here")
                    continue
                for i in range(4):
                    size = 6 if (kind == "mixed" and c == "b" and i == 2) else 8
                    Image.fromarray(np.zeros((size, size), U8)).save(root / c / f"{i}.png")
            if kind == "corrupt":
                (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return _setup(f"folder:{name}:{kind}", make)


# -- the corpus -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    id: str
    argv: list[str]
    expect: str | re.Pattern  #: a substring (case-sensitive) or a regex the error line must contain
    setup: tuple[Setup, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)  #: values may use {tmp}
    max_s: float | None = None  #: wall-clock bound for this case

    def key(self) -> tuple:
        return (tuple(self.argv), tuple(getattr(s, "desc", s.__name__) for s in self.setup),
                tuple(sorted(self.env.items())))


def C(id: str, argv: list[str], expect: str | re.Pattern, *setup: Setup, env: dict[str, str] | None = None,
      max_s: float | None = None) -> Case:
    return Case(id, list(argv), expect, tuple(setup), env or {}, max_s)


def word(w: str) -> re.Pattern:
    return re.compile(rf"(?<![\w.-]){re.escape(w)}(?![\w])")


CTX_CLIPS = npz("clips.npz", frames=np.zeros((2, 4, 8, 8, 1), U8))
CTX_IMAGES = npz("images.npz", images=np.zeros((2, 8, 8, 1), U8))
INV_IMAGES = npz("images.npz", images=np.zeros((2, 8, 8, 1), U8), labels=np.array([1, 2]))
NOISE2 = npz("noise.npz", noise=np.zeros((2, 1, 8, 8), np.float32))
SAMPLES = npz("samples.npz", images=np.zeros((4, 8, 8), U8), labels=np.array([0, 1, 0, 1]))
REAL = npz("real.npz", images=np.random.default_rng(1).integers(0, 255, (20, 8, 8), dtype=U8), labels=LABELS)
USER_FILE = text("userdir/notes.txt", "my notes, not a run")
HUGE_LABEL = np.zeros(16, np.int64)
HUGE_LABEL[3] = 10**9

CASES: list[Case] = [
    # ---- top-level usage -------------------------------------------------------------------------
    C("usage-no-command", [], "command"),
    C("usage-unknown-command", ["bogus"], "bogus"),
    C("usage-unknown-command-case", ["TRAIN"], "TRAIN"),
    C("usage-unknown-top-flag", ["--bogus"], "--bogus"),
    C("usage-train-unknown-flag", ["train", "--bogus"], "--bogus"),
    # a flag where overrides are key=value: the line names the flag, not every word after it
    C("usage-train-flag-among-overrides", ["train", "--steps", "1", "model.mlp=swiglu"],
      re.compile(r"unknown option\(s\) --steps \(see")),
    C("usage-train-preset-no-value", ["train", "--preset"], "--preset"),
    C("usage-sample-no-args", ["sample"], re.compile(r"run_dir|RUN_DIR|--out")),  # either missing one
    C("usage-sample-missing-out", ["sample", "{img}"], "--out"),
    C("usage-sample-out-no-value", ["sample", "{img}", "--out"], "--out"),
    C("usage-sample-unknown-flag", [*SAMPLE, "--temperature", "2"], "--temperature"),
    C("usage-sample-num-not-int", [*SAMPLE, "--num", "abc"], "--num"),
    C("usage-sample-seed-not-int", [*SAMPLE, "--seed", "abc"], "--seed"),
    C("usage-eval-num-float", [*EVAL, "--num", "1.5"], "--num"),
    C("usage-info-no-args", ["info"], "run_dir"),
    C("usage-info-two-dirs", ["info", "first_dir", "second_dir"], "second_dir"),
    C("usage-report-no-args", ["report"], "run_dir"),
    C("usage-data-no-args", ["data"], re.compile(r"name|NAME|--out")),  # either missing one
    C("usage-data-missing-out", ["data", "bouncing-digits"], "--out"),
    C("usage-bench-batch-not-int", [*BENCH, "--batch", "x"], "--batch"),
    C("usage-bench-positional", [*BENCH, "extra_arg"], "extra_arg"),

    # ---- train: config values (all tiny, into a fresh run_dir) ------------------------------------
    C("train-sampler-rk4", [*TRAIN, "sample.sampler=rk4"], "sample.sampler"),
    C("train-eta-negative", [*TRAIN, "sample.eta=-3"], "sample.eta"),
    C("train-eta-above-one", [*TRAIN, "objective.name=ddpm", "sample.eta=1.5"], "sample.eta"),
    C("train-sampler-vs-objective", [*TRAIN, "objective.name=ddpm", "sample.sampler=euler"], "euler"),
    C("train-sampler-ddim-on-flow", [*TRAIN, "sample.sampler=ddim"], "ddim"),
    C("train-factorised-on-images", [*TRAIN, "model.attention=factorised"], "factorised"),
    C("train-factorised-with-dropping", [*VTRAIN, "model.attention=factorised", "mask.ratio=0.5"], "factorised"),
    C("train-attention-bogus", [*TRAIN, "model.attention=sparse"], "model.attention"),
    C("train-num-heads-zero", [*TRAIN, "model.num_heads=0"], "model.num_heads"),
    C("train-depth-zero", [*TRAIN, "model.depth=0"], "model.depth"),
    C("train-heads-not-dividing", [*TRAIN, "model.hidden_size=30", "model.num_heads=4"], "hidden_size"),
    C("train-hidden-size-odd", [*TRAIN, "model.hidden_size=31", "model.num_heads=1"], "hidden_size"),
    C("train-hidden-size-zero", [*TRAIN, "model.hidden_size=0"], "hidden_size"),
    C("train-patch-not-dividing", [*TRAIN, "model.patch_size=3"], "patch_size"),
    C("train-patch-rank-mismatch", [*TRAIN, "model.patch_size=[1,2,2]"], "patch_size"),
    C("train-patch-zero", [*TRAIN, "model.patch_size=0"], "patch_size"),
    C("train-mixer-as-deep-as-model", [*TRAIN, "model.mixer_depth=1"], "mixer_depth"),
    C("train-mixer-negative", [*TRAIN, "model.mixer_depth=-1"], "mixer_depth"),
    C("train-mlp-ratio-zero", [*TRAIN, "model.mlp_ratio=0"], "mlp_ratio"),
    C("train-class-dropout-one", [*TRAIN, "model.class_dropout=1"], "class_dropout"),
    C("train-model-preset-unknown", [*TRAIN, "model.preset=DiT-Q/2"], "DiT-Q/2"),
    C("train-decoder-width-negative", [*TRAIN, "mask.decoder_width=-8"], "mask.decoder_width"),
    C("train-decoder-depth-zero", [*TRAIN, "mask.recipe=mae", "mask.ratio=0.5", "mask.decoder_depth=0"],
      "decoder_depth"),
    C("train-lr-inf", [*TRAIN, "lr=inf"], word("lr")),
    C("train-lr-nan", [*TRAIN, "lr=nan"], word("lr")),
    C("train-lr-negative", [*TRAIN, "lr=-1"], word("lr")),
    C("train-lr-min-above-lr", [*TRAIN, "lr=1e-3", "lr_min=0.1"], "lr_min"),
    C("train-lr-schedule-bogus", [*TRAIN, "lr_schedule=step"], "lr_schedule"),
    C("train-warmup-negative", [*TRAIN, "warmup_steps=-1"], "warmup_steps"),
    C("train-weight-decay-negative", [*TRAIN, "weight_decay=-0.1"], "weight_decay"),
    C("train-grad-clip-negative", [*TRAIN, "grad_clip=-1"], "grad_clip"),
    C("train-run-dir-empty", [*TRAIN, "run_dir="], "run_dir"),
    C("train-steps-zero", [*TRAIN, "steps=0"], word("steps")),
    C("train-steps-not-int", [*TRAIN, "steps=abc"], word("steps")),
    C("train-steps-float", [*TRAIN, "steps=2.5"], word("steps")),
    C("train-seed-float", [*TRAIN, "seed=1.5"], word("seed")),
    C("train-batch-size-zero", [*TRAIN, "batch_size=0"], "batch_size"),
    C("train-batch-size-above-dataset", [*TRAIN, "batch_size=100000"], "batch_size"),
    C("train-ema-decay-above-one", [*TRAIN, "ema_decay=1.5"], "ema_decay"),
    C("train-ckpt-every-zero", [*TRAIN, "ckpt_every=0"], "ckpt_every"),
    C("train-keep-checkpoints-zero", [*TRAIN, "keep_checkpoints=0"], "keep_checkpoints"),
    C("train-eval-num-small", [*TRAIN, "eval_num=2"], "eval_num"),
    C("train-max-seconds-zero", [*TRAIN, "max_seconds=0"], "max_seconds"),
    C("train-nan-tolerance-zero", [*TRAIN, "nan_tolerance=0"], "nan_tolerance"),
    C("train-precision-fp16", [*TRAIN, "precision=fp16"], "precision"),
    C("train-device-tpu", [*TRAIN, "device=tpu"], "device"),
    C("train-device-cuda-bad-index", [*TRAIN, "device=cuda:x"], "device"),
    C("train-unknown-key", [*TRAIN, "foo=1"], "foo"),
    C("train-unknown-nested-key", [*TRAIN, "model.foo=1"], "model.foo"),
    C("train-unknown-section", [*TRAIN, "modle.depth=2"], "modle"),
    C("train-section-not-mapping", [*TRAIN, "model=3"], "model"),
    C("train-override-without-value", [*TRAIN, "model.depth"], "model.depth"),
    C("train-override-without-key", [*TRAIN, "=5"], "=5"),
    C("train-mask-ratio-one", [*TRAIN, "mask.ratio=1.0"], "mask.ratio"),
    C("train-mask-ratio-min-above-ratio", [*TRAIN, "mask.ratio=0.5", "mask.ratio_min=0.9"], "mask.ratio_min"),
    C("train-mask-recipe-bogus", [*TRAIN, "mask.recipe=bogus"], "mask.recipe"),
    C("train-mask-schedule-bogus", [*TRAIN, "mask.schedule=sometimes"], "mask.schedule"),
    C("train-mae-with-tasks", [*TRAIN, "mask.recipe=mae", "mask.ratio=0.5", "task.names=[inpaint]"],
      "mask.recipe"),
    C("train-task-bogus", [*TRAIN, "task.names=[bogus]"], "task.names"),
    C("train-task-names-not-list", [*TRAIN, "task.names=inpaint"], "task.names"),
    C("train-task-weights-count", [*TRAIN, "task.names=[inpaint]", "task.weights=[1,2]"], "task.weights"),
    C("train-task-weights-zero", [*TRAIN, "task.names=[inpaint,outpaint]", "task.weights=[0,0]"],
      "task.weights"),
    C("train-video-task-on-images", [*TRAIN, "task.names=[predict]"], "predict"),
    C("train-objective-bogus", [*TRAIN, "objective.name=bogus"], "objective.name"),
    C("train-time-sampling-bogus", [*TRAIN, "objective.time_sampling=gauss"], "objective.time_sampling"),
    C("train-ddpm-schedule-bogus", [*TRAIN, "objective.name=ddpm", "objective.schedule=quadratic"],
      "objective.schedule"),
    C("train-ddpm-one-step-chain", [*TRAIN, "objective.name=ddpm", "objective.num_steps=1"],
      "objective.num_steps"),
    C("train-guidance-interval-reversed", [*TRAIN, "sample.guidance_interval=[0.8,0.2]"],
      "sample.guidance_interval"),
    C("train-path-drop-guidance-without-sprint", [*TRAIN, "sample.guidance=path-drop"], "sample.guidance"),
    C("train-sprint-too-shallow", [*TRAIN, "mask.recipe=sprint"], "mask.route"),
    C("train-path-drop-share-too-big", [*TRAIN, "mask.path_drop=1.5"], "mask.path_drop"),
    C("train-frame-drop-on-images", [*TRAIN, "mask.shape=frame", "mask.ratio=0.5"], "mask.shape"),
    C("train-route-contrast-without-tread", [*TRAIN, "sample.guidance=route-contrast"], "sample.guidance"),
    C("train-resize-not-a-folder", [*TRAIN, "data.resize=8"], "data.resize"),
    C("train-workers-negative", [*TRAIN, "data.workers=-1"], "data.workers"),
    C("train-unknown-dist-strategy", [*TRAIN, "dist.strategy=zero3"], "dist.strategy"),
    C("train-grad-checkpoint-not-bool", [*TRAIN, "grad_checkpoint=sometimes"], "grad_checkpoint"),
    C("usage-bench-grad-checkpoint-value", [*BENCH, "--grad-checkpoint=yes"], "--grad-checkpoint"),
    C("train-batch-not-divisible-over-ranks", [*TRAIN, "batch_size=7"], "batch_size",
      env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}),
    C("train-world-size-not-a-number", TRAIN, "WORLD_SIZE", env={"WORLD_SIZE": "two", "RANK": "0"}),
    C("train-latents-no-path", [*TRAIN, "data.name=latents"], "data.path"),
    C("train-latents-not-a-store", [*TRAIN, "data.name=latents", "data.path=adir"], "not a latent store",
      folder("adir")),
    C("latents-vae-hub-id", ["latents", "digits", "--vae", "stabilityai/sd-vae-ft-ema", "--out", "store"],
      "never downloads"),
    C("latents-out-exists", ["latents", "digits", "--vae", "vae", "--out", "adir"], "adir", folder("adir")),
    C("latents-images-missing", ["latents", "missing.npz", "--vae", "vae", "--out", "store"], "missing.npz"),
    C("latents-no-vae", ["latents", "digits", "--out", "store"], "--vae"),
    C("import-source-missing", ["import", "missing.pt", "--out", "run"], "missing.pt"),
    C("import-not-a-torch-file", ["import", "junk.pt", "--out", "run"], "junk.pt", text("junk.pt", b"not a zip")),
    C("import-out-not-empty", ["import", "junk.pt", "--out", "full"], "full", text("junk.pt", b"x"),
      text("full/notes.txt", "mine")),
    C("import-format-unknown", ["import", "junk.pt", "--format", "onnx", "--out", "run"], "--format"),
    C("import-num-heads-zero", ["import", "junk.pt", "--num-heads", "0", "--out", "run"], "--num-heads"),
    C("import-diffusers-dir-without-config", ["import", "hf", "--out", "run"], "config.json", folder("hf")),
    C("import-maskdit-file-as-dit", ["import", "m.pt", "--out", "run"], "--format maskdit",
      tensors("m.pt", {"model.x_embedder.proj.weight": (64, 4, 2, 2)})),
    C("import-dit-file-as-maskdit", ["import", "d.pt", "--format", "maskdit", "--out", "run"], "--format dit",
      tensors("d.pt", {"x_embedder.proj.weight": (64, 4, 2, 2), "y_embedder.embedding_table.weight": (11, 64)})),
    C("import-maskdit-with-cls-token", ["import", "c.pt", "--format", "maskdit", "--out", "run"], "class token",
      tensors("c.pt", {"model.x_embedder.proj.weight": (64, 4, 2, 2), "model.cls_token": (1, 1, 64)})),
    C("import-dit-file-as-mdt", ["import", "d.pt", "--format", "mdt", "--out", "run"], "MDT v2",
      tensors("d.pt", {"x_embedder.proj.weight": (64, 4, 2, 2), "blocks.0.attn.qkv.weight": (192, 64)})),
    C("train-long-skips-not-fitting-depth", [*TRAIN, "model.depth=6", "model.long_skips=3"], "long_skips"),
    C("train-long-skips-negative", [*TRAIN, "model.long_skips=-1"], "model.long_skips"),
    C("train-long-skips-with-mixer", [*TRAIN, "model.long_skips=2", "model.mixer_depth=1"], "mixer_depth"),
    C("train-guidance-power-zero", [*TRAIN, "sample.guidance_power=0"], "sample.guidance_power"),
    C("usage-sample-guidance-power-negative", ["sample", "{img}", "--guidance-power", "-1", "--out", "s.png"],
      "--guidance-power"),
    C("train-precond-unknown", [*TRAIN, "model.precond=vp"], "model.precond"),
    C("train-precond-with-ddpm", [*TRAIN, "model.precond=edm", "objective.name=ddpm"], "model.precond"),
    C("train-sigma-data-zero", [*TRAIN, "model.sigma_data=0"], "model.sigma_data"),
    C("train-decoder-width-odd", [*TRAIN, "model.decoder.width=33"], "model.decoder.width"),
    C("train-decoder-heads-not-dividing", [*TRAIN, "model.decoder.width=32", "model.decoder.num_heads=5"],
      "model.decoder.num_heads"),
    C("train-decoder-with-rope", [*TRAIN, "model.decoder.width=32", "model.pos=rope"], "decoder"),
    C("import-diffusers-bad-json", ["import", "hf", "--out", "run"], "config.json",
      text("hf/config.json", "{oops"), text("hf/diffusion_pytorch_model.safetensors", b"")),
    C("export-video-run", ["export", "{vid}", "--format", "diffusers", "--out", "exp"], "cannot be exported"),
    C("export-out-exists", ["export", "{img}", "--format", "diffusers", "--out", "adir"], "adir", folder("adir")),
    C("export-format-unknown", ["export", "{img}", "--format", "onnx", "--out", "exp"], "--format"),
    C("export-no-run", ["export", "norun", "--format", "diffusers", "--out", "exp"], "norun"),
    C("train-learn-sigma-with-flow", [*TRAIN, "model.learn_sigma=true"], "model.learn_sigma"),
    C("train-learn-sigma-with-mae", [*TRAIN, "model.learn_sigma=true", "objective.name=ddpm", "mask.recipe=mae"],
      "model.learn_sigma"),
    C("train-step-offset-two", [*TRAIN, "objective.step_offset=2"], "objective.step_offset"),
    C("train-pos-layout-unknown", [*TRAIN, "model.pos_layout=yx"], "model.pos_layout"),
    C("train-mlp-norm-eps-zero", [*TRAIN, "model.mlp_norm_eps=0"], "model.mlp_norm_eps"),
    C("train-norm-unknown", [*TRAIN, "model.norm=batchnorm"], "model.norm"),
    C("train-mlp-unknown", [*TRAIN, "model.mlp=relu"], "model.mlp"),
    C("train-pos-unknown", [*TRAIN, "model.pos=alibi"], "model.pos"),
    C("train-qk-norm-not-bool", [*TRAIN, "model.qk_norm=maybe"], "model.qk_norm"),
    C("train-token-time-without-tasks", [*TRAIN, "model.token_time=true"], "model.token_time"),
    C("train-full-blocks-beyond-depth", [*TRAIN, "model.full_blocks=[7]"], "full_blocks"),
    C("train-full-every-negative", [*TRAIN, "model.full_every=-1"], "model.full_every"),
    C("train-context-guidance-without-tasks", [*TRAIN, "sample.guidance=context"], "sample.guidance=context"),
    C("train-moe-top-k-above-experts", [*TRAIN, "model.moe.experts=2", "model.moe.top_k=3"], "model.moe.top_k"),
    C("train-moe-experts-negative", [*TRAIN, "model.moe.experts=-1"], "model.moe.experts"),
    C("train-moe-capacity-zero", [*TRAIN, "model.moe.experts=2", "model.moe.capacity=0"], "model.moe.capacity"),
    C("train-moe-every-zero", [*TRAIN, "model.moe.experts=2", "model.moe.every=0"], "model.moe.every"),
    C("train-moe-unknown-key", [*TRAIN, "model.moe.expert=4"], "model.moe.expert"),
    C("train-moe-routing-unknown", [*TRAIN, "model.moe.experts=2", "model.moe.routing=hash"], "model.moe.routing"),
    C("train-align-without-encoder", [*TRAIN, "align.weight=0.5"], "align.encoder"),
    C("train-align-encoder-not-a-dir", [*TRAIN, "align.weight=0.5", "align.block=1", "align.encoder=adir"],
      "align.encoder",
      folder("adir")),
    C("train-align-block-past-depth", [*TRAIN, "align.weight=0.5", "align.block=99", "align.encoder=enc"],
      "align.block", text("enc/encoder.json", '{"kind": "maskdit-mae", "config": {"input_size": [8, 8], '
                                             '"in_channels": 1, "width": 8, "depth": 1, "num_heads": 2}}'),
      text("enc/encoder.safetensors", b"")),
    C("train-distill-teacher-missing", [*TRAIN, "distill.teacher=noteacher"], "distill.teacher"),
    C("train-distill-teacher-not-a-run", [*TRAIN, "distill.teacher=userdir"], "distill.teacher", USER_FILE),
    C("train-distill-weight-zero", [*TRAIN, "distill.teacher={img}", "distill.weight=0"], "distill.weight"),
    C("train-distill-weight-above-one", [*TRAIN, "distill.teacher={img}", "distill.weight=1.5"], "distill.weight"),
    C("train-distill-teacher-other-objective", [*TRAIN, "objective.name=ddpm", "distill.teacher={img}"],
      "objective"),
    C("train-distill-teacher-without-tasks", [*TRAIN, "task.names=[inpaint]", "distill.teacher={img}"],
      "task.names"),
    C("train-distill-teacher-other-data", [*TRAIN, "distill.teacher={vid}"], "distill.teacher"),
    C("encoder-no-action", ["encoder", "digits", "--out", "enc"], "train"),
    C("encoder-out-exists", ["encoder", "train", "digits", "--out", "adir"], "adir", folder("adir")),
    C("encoder-heads-do-not-divide", ["encoder", "train", "digits", "--out", "enc", "--width", "10", "--heads", "4"],
      "--heads"),
    C("encoder-data-missing", ["encoder", "train", "missing.npz", "--out", "enc"], "missing.npz"),
    C("sample-accel-unknown", ["sample", "{img}", "--accel", "warp", "--out", "s.png"], "--accel"),
    C("sample-accel-bad-option", ["sample", "{img}", "--accel", "cache:evry=2", "--out", "s.png"], "--accel"),
    C("sample-accel-every-zero", ["sample", "{img}", "--accel", "cache:every=0", "--out", "s.png"], "--accel"),
    C("sample-accel-int8-groups-zero", ["sample", "{img}", "--accel", "int8:groups=0", "--out", "s.png"], "--accel"),
    C("sample-accel-int8-bits", ["sample", "{img}", "--accel", "int8:bits=4", "--out", "s.png"], "--accel"),
    C("sample-accel-empty-part", ["sample", "{img}", "--accel", "int8+", "--out", "s.png"], "--accel"),
    C("sample-accel-cache-and-ras", ["sample", "{img}", "--accel", "cache+ras", "--out", "s.png"], "--accel"),
    C("eval-accel-twice", ["eval", "{img}", "--accel", "int8+int8"], "--accel"),
    C("sample-size-not-a-size", ["sample", "{img}", "--size", "big", "--out", "s.png"], "--size"),
    C("sample-size-table-model", ["sample", "{img}", "--size", "16x16", "--out", "s.png"], "--size"),
    C("sample-guidance-channels-zero", ["sample", "{img}", "--guidance-channels", "0", "--out", "s.png"],
      "--guidance-channels"),
    C("train-resize-zero", [*TRAIN, "data.resize=0"], "data.resize"),
    C("train-flip-not-a-bool", [*TRAIN, "data.flip=sideways"], "data.flip"),
    C("train-factorised-structured-drop", [*VTRAIN, "model.attention=factorised", "mask.recipe=sprint",
                                           "mask.ratio=0.75", "mask.shape=structured"], "mask.shape"),
    C("train-eval-every-s-negative", [*TRAIN, "eval_every_s=-1"], "eval_every_s"),
    C("train-sample-steps-zero", [*TRAIN, "sample.steps=0"], "sample.steps"),
    C("train-data-name-bogus", [*TRAIN, "data.name=imagenet"], "data.name"),
    C("train-npz-without-path", [*TRAIN, "data.name=npz"], "data.path"),
    C("train-folder-without-path", [*TRAIN, "data.name=folder"], "data.path"),
    C("train-video-one-frame", [*VTRAIN, "data.frames=1"], "data.frames"),
    C("train-video-tiny-canvas", [*VTRAIN, "data.size=2"], "data.size"),
    C("train-init-from-missing", [*TRAIN, "init_from=missing_run"], "missing_run"),
    C("train-preset-unknown", ["train", "--no-progress", "--preset", "nonexistent", *TINY, "run_dir=new_run"],
      "nonexistent"),
    # overrides interleaved with flags (each subcommand parses options and key=value in any order)
    C("train-override-after-flag", ["train", *TINY, "run_dir=new_run", "--no-progress", "steps=abc"],
      word("steps")),
    C("train-override-after-preset", ["train", *TINY, "--preset", "digits", "run_dir=new_run", "steps=0"],
      word("steps")),
    # config files
    C("train-yaml-invalid", [*TRAIN, "bad.yaml"], "bad.yaml", text("bad.yaml", "steps: [1, 2\nmodel: {")),
    C("train-yaml-list", [*TRAIN, "list.yaml"], "list.yaml", text("list.yaml", "- steps: 2\n- lr: 0.1\n")),
    C("train-yaml-missing", [*TRAIN, "nowhere.yaml"], "nowhere.yaml"),
    C("train-config-txt", [*TRAIN, "config.txt"], "config.txt", text("config.txt", "steps: 2\n")),
    C("train-two-yaml", [*TRAIN, "a.yaml", "b.yaml"], "b.yaml", text("a.yaml", "steps: 2\n"),
      text("b.yaml", "lr: 0.001\n")),
    C("train-yaml-bad-value", [*TRAIN, "cfg.yaml"], "ema_decay", text("cfg.yaml", "ema_decay: 2\n")),
    C("train-yaml-unknown-key", [*TRAIN, "cfg.yaml"], "modle", text("cfg.yaml", "modle:\n  depth: 2\n")),
    C("train-yaml-is-directory", [*TRAIN, "cfgdir.yaml"], "cfgdir.yaml", folder("cfgdir.yaml")),

    # ---- train: data files -------------------------------------------------------------------------
    C("data-npz-missing", [*TRAIN, "data.name=npz", "data.path=missing.npz"], "missing.npz"),
    C("data-npz-not-zip", [*TRAIN, "data.name=npz", "data.path=notzip.npz"], "notzip.npz",
      text("notzip.npz", "hello, I am text")),
    C("data-npz-is-directory", [*TRAIN, "data.name=npz", "data.path=adir.npz"], "adir.npz", folder("adir.npz")),
    C("data-npz-no-images", [*TRAIN, "data.name=npz", "data.path=noimages.npz"], "noimages.npz",
      npz("noimages.npz", pixels=IMAGES)),
    C("data-npz-images-float", [*TRAIN, "data.name=npz", "data.path=float.npz"], "float.npz",
      npz("float.npz", images=IMAGES.astype(np.float32))),
    C("data-npz-images-2d", [*TRAIN, "data.name=npz", "data.path=flat.npz"], "flat.npz",
      npz("flat.npz", images=np.zeros((20, 64), U8))),
    C("data-npz-images-5d", [*TRAIN, "data.name=npz", "data.path=fivedim.npz"], "fivedim.npz",
      npz("fivedim.npz", images=np.zeros((2, 2, 8, 8, 1), U8))),
    C("data-npz-images-object", [*TRAIN, "data.name=npz", "data.path=object.npz"], "object.npz",
      npz("object.npz", images=np.array([np.zeros((8, 8)), np.zeros((4, 4))] * 8, dtype=object))),
    C("data-npz-zero-size-images", [*TRAIN, "data.name=npz", "data.path=zero.npz"], "zero.npz",
      npz("zero.npz", images=np.zeros((16, 0, 0), U8))),
    C("data-npz-pickled-objects", [*TRAIN, "data.name=npz", "data.path=obj.npz"],
      re.compile(r"obj\.npz.*never loads"),
      npz("obj.npz", images=np.array([None, 1], dtype=object))),
    C("data-config-yaml-is-a-directory", ["train", "--no-progress", "cfgdir.yaml"],
      re.compile("cfgdir.yaml.* is a directory"),
      folder("cfgdir.yaml")),
    C("data-npz-no-examples", [*TRAIN, "data.name=npz", "data.path=none.npz"], "none.npz",
      npz("none.npz", images=np.zeros((0, 8, 8), U8))),
    C("data-npz-labels-2d", [*TRAIN, "data.name=npz", "data.path=labels2d.npz"], "labels2d.npz",
      npz("labels2d.npz", **digits_like(labels=np.zeros((16, 2), np.int64)))),
    C("data-npz-labels-float", [*TRAIN, "data.name=npz", "data.path=floatlabels.npz"], "floatlabels.npz",
      npz("floatlabels.npz", **digits_like(labels=np.zeros(16, np.float32)))),
    C("data-npz-labels-negative", [*TRAIN, "data.name=npz", "data.path=neglabels.npz"], "neglabels.npz",
      npz("neglabels.npz", **digits_like(labels=np.arange(16) - 3))),
    C("data-npz-labels-count", [*TRAIN, "data.name=npz", "data.path=fewlabels.npz"], "fewlabels.npz",
      npz("fewlabels.npz", **digits_like(labels=np.arange(10)))),
    C("data-npz-label-huge", [*TRAIN, "data.name=npz", "data.path=hugelabel.npz"], "hugelabel.npz",
      npz("hugelabel.npz", **digits_like(labels=HUGE_LABEL)), max_s=20),
    C("data-npz-odd-size-vs-patch", [*TRAIN, "data.name=npz", "data.path=odd.npz"], "patch",
      npz("odd.npz", images=np.zeros((16, 7, 7), U8))),
    C("data-folder-missing", [*TRAIN, "data.name=folder", "data.path=nofolder"], "nofolder"),
    C("data-folder-is-file", [*TRAIN, "data.name=folder", "data.path=afile.png"], "afile.png",
      png("afile.png", (8, 8))),
    C("data-folder-empty", [*TRAIN, "data.name=folder", "data.path=emptyfolder"], "emptyfolder",
      folder("emptyfolder")),
    C("data-folder-no-classes", [*TRAIN, "data.name=folder", "data.path=flatfolder"], "flatfolder",
      image_folder("flatfolder", "flat")),
    C("data-folder-no-images", [*TRAIN, "data.name=folder", "data.path=textfolder"], "textfolder",
      image_folder("textfolder", "noimages")),
    C("data-folder-corrupt-image", [*TRAIN, "data.name=folder", "data.path=imgs"], "broken.png",
      image_folder("imgs", "corrupt")),
    C("data-folder-mixed-sizes", [*TRAIN, "data.name=folder", "data.path=mixedsizes"], "mixedsizes",
      image_folder("mixedsizes", "mixed")),

    # ---- train: nothing lost -----------------------------------------------------------------------
    C("train-into-user-dir", [*TRAIN, "run_dir=userdir"], "userdir", USER_FILE),
    C("train-into-existing-run", [*TRAIN, "run_dir=run"], "--resume", copy_run("img")),
    C("train-resume-user-dir", [*RESUME, "run_dir=userdir"], "userdir", USER_FILE),
    C("train-resume-missing-dir", [*RESUME, "run_dir=nowhere"], "nowhere"),
    C("train-run-dir-is-file", [*TRAIN, "run_dir=afile.txt"], "afile.txt", text("afile.txt", "keep me")),
    C("train-run-dir-under-file", [*TRAIN, "run_dir=afile.txt/run"], "afile.txt", text("afile.txt", "keep me")),
    C("train-resume-bad-override", [*RESUME, "run_dir=run", "steps=4", "lr=-1"], word("lr"),
      copy_run("img")),
    C("train-resume-damaged-state", [*RESUME, "run_dir=run", "steps=4"], "state.json",
      copy_run("img", damage=overwrite("state.json", "{not json"), desc="state")),
    C("train-resume-truncated-optimizer", [*RESUME, "run_dir=run", "steps=4"],
      "optimizer.safetensors", copy_run("img", damage=truncate("optimizer.safetensors"), desc="opt")),
    C("train-resume-truncated-model", [*RESUME, "run_dir=run", "steps=4"], "model.safetensors",
      copy_run("img", damage=truncate("model.safetensors"), desc="model")),

    # ---- sample: runs ------------------------------------------------------------------------------
    C("sample-run-missing", ["sample", "missing_run", "--out", "out.png"], "missing_run"),
    C("sample-run-no-checkpoint", ["sample", "userdir", "--out", "out.png"], "userdir", USER_FILE),
    C("sample-run-is-file", ["sample", "afile.txt", "--out", "out.png"], "afile.txt", text("afile.txt", "x")),
    C("sample-model-truncated", ["sample", "run", "--weights", "model", "--num", "2", "--out", "out.png"],
      "model.safetensors", copy_run("img", damage=truncate("model.safetensors"), desc="model-half")),
    C("sample-ema-truncated", ["sample", "run", "--num", "2", "--out", "out.png"], "ema.safetensors",
      copy_run("img", damage=truncate("ema.safetensors"), desc="ema-half")),
    C("sample-ema-empty", ["sample", "run", "--num", "2", "--out", "out.png"], "ema.safetensors",
      copy_run("img", damage=truncate("ema.safetensors", keep=0), desc="ema-empty")),
    C("sample-ema-header-only", ["sample", "run", "--num", "2", "--out", "out.png"], "ema.safetensors",
      copy_run("img", damage=truncate("ema.safetensors", keep=8), desc="ema-8-bytes")),
    C("sample-ema-nan", ["sample", "run", "--num", "2", "--out", "out.png"], "ema.safetensors",
      copy_run("img", damage=nan_weights("ema.safetensors"), desc="ema-nan")),
    C("sample-state-not-json", ["sample", "run", "--num", "2", "--out", "out.png"], "state.json",
      copy_run("img", damage=overwrite("state.json", "{not json"), desc="state")),
    C("sample-config-not-json", ["sample", "run", "--num", "2", "--out", "out.png"], "config.json",
      copy_run("img", damage=overwrite("config.json", "[1, 2"), desc="config-text")),
    C("sample-config-missing-model", ["sample", "run", "--num", "2", "--out", "out.png"], "config.json",
      copy_run("img", damage=edit_json("config.json", drop_key("model")), desc="config-no-model")),
    C("sample-config-wrong-shape", ["sample", "run", "--num", "2", "--out", "out.png"], "step_000002",
      copy_run("img", damage=edit_json("config.json", wider_model), desc="config-wider")),
    # ---- sample: options ---------------------------------------------------------------------------
    C("sample-num-zero", [*SAMPLE, "--num", "0"], "--num"),
    C("sample-num-negative", [*SAMPLE, "--num", "-3"], "--num"),
    C("sample-steps-zero", [*SAMPLE, "--steps", "0"], "--steps"),
    C("sample-guidance-negative", [*SAMPLE, "--guidance-scale", "-1"], "--guidance-scale"),
    C("sample-guidance-inf", [*SAMPLE, "--guidance-scale", "inf"], "--guidance-scale"),
    C("sample-guidance-interval-reversed", [*SAMPLE, "--guidance-interval", "0.8,0.2"], "--guidance-interval"),
    C("sample-guidance-interval-one-value", [*SAMPLE, "--guidance-interval", "0.5"], "--guidance-interval"),
    C("sample-guidance-unknown", [*SAMPLE, "--guidance", "nope"], "--guidance"),
    C("sample-path-drop-plain-model", [*SAMPLE, "--guidance", "path-drop", "--guidance-scale", "2"], "path-drop"),
    C("sample-route-contrast-plain-model", [*SAMPLE, "--guidance", "route-contrast", "--guidance-scale", "2"],
      "route-contrast"),
    C("sample-context-guidance-plain-model", [*SAMPLE, "--guidance", "context", "--guidance-scale", "2"],
      "guidance context"),
    C("sample-eta-two", [*SAMPLE, "--eta", "2"], "--eta"),
    C("sample-classes-out-of-range", [*SAMPLE, "--classes", "11"], "--classes"),
    C("sample-classes-not-ints", [*SAMPLE, "--classes", "a,b"], "--classes"),
    C("sample-classes-negative", [*SAMPLE, "--classes", "-1"], "--classes"),
    C("sample-sampler-rk4", [*SAMPLE, "--sampler", "rk4"], "rk4"),
    C("sample-sampler-ddim-on-flow", [*SAMPLE, "--sampler", "ddim"], "ddim"),
    C("sample-sampler-ddpm-on-flow", [*SAMPLE, "--sampler", "ddpm"], "ddpm"),
    C("sample-weights-bogus", [*SAMPLE, "--weights", "foo"], "--weights"),
    C("sample-batch-size-zero", [*SAMPLE, "--batch-size", "0"], "--batch-size"),
    C("sample-device-cuda", [*SAMPLE, "--device", "cuda"], "cuda"),
    C("sample-device-tpu", [*SAMPLE, "--device", "tpu"], "tpu"),
    C("sample-out-jpg", [*SAMPLE[:-1], "x.jpg"], "x.jpg"),
    C("sample-out-video-suffix-txt", ["sample", "{vid}", "--num", "2", "--steps", "1", "--out", "x.txt"],
      "x.txt"),
    C("sample-out-exists", SAMPLE[:-1] + ["existing.png"], "existing.png", png("existing.png", (8, 8), 7)),
    C("sample-out-exists-npz", SAMPLE[:-1] + ["existing.npz"], "existing.npz",
      npz("existing.npz", images=np.ones((2, 8, 8, 1), U8))),
    C("sample-out-is-directory", SAMPLE[:-1] + ["outdir.png"], "outdir.png", folder("outdir.png")),
    C("sample-out-parent-is-file", SAMPLE[:-1] + ["afile.txt/out.png"], "afile.txt", text("afile.txt", "x")),
    C("sample-classes-unconditional", ["sample", "{vid}", "--num", "2", "--steps", "1", "--classes", "1",
                                       "--out", "out.npz"], "--classes"),
    C("sample-given-frames-without-task", [*SAMPLE, "--given-frames", "2"], "--given-frames"),
    # ---- sample: tasks -----------------------------------------------------------------------------
    C("task-run-without-tasks", ["sample", "{img}", "--task", "inpaint", "--context", "images.npz",
                                 "--steps", "1", "--out", "out.png"], "task", CTX_IMAGES),
    C("task-predict-on-image-run", [*ITASK[:2], "--task", "predict", *ITASK[4:]], "predict", CTX_IMAGES),
    C("task-bogus", [*VTASK[:2], "--task", "bogus", *VTASK[4:]], "bogus", CTX_CLIPS),
    C("task-mask-wrong-size", [*ITASK, "--mask", "wrongsize.png"], "wrongsize.png", CTX_IMAGES,
      png("wrongsize.png", (16, 16))),
    C("task-mask-not-image", [*ITASK, "--mask", "notimage.png"], "notimage.png", CTX_IMAGES,
      text("notimage.png", "not an image")),
    C("task-mask-missing", [*ITASK, "--mask", "missing.png"], "missing.png", CTX_IMAGES),
    C("task-mask-all-given", [*ITASK, "--mask", "black.png"], "mask", CTX_IMAGES, png("black.png", (8, 8), 0)),
    C("task-mask-on-video-task", [*VTASK, "--mask", "m.png"], "--mask", CTX_CLIPS, png("m.png", (8, 8))),
    C("task-context-missing", VTASK, "clips.npz"),
    C("task-context-not-npz", [*VTASK[:5], "ctx.txt", *VTASK[6:]], "ctx.txt", text("ctx.txt", "frames")),
    C("task-context-garbage-npz", VTASK, "clips.npz", text("clips.npz", b"PK\x03\x04garbage")),
    C("task-context-pickled-objects", VTASK, re.compile(r"clips\.npz.*never loads"),
      npz("clips.npz", frames=np.array([None, 1], dtype=object))),
    C("task-context-is-a-directory", [*VTASK[:5], "ctxdir", *VTASK[6:]], re.compile("ctxdir.* is a directory"),
      folder("ctxdir")),
    C("task-context-no-arrays", VTASK, "clips.npz", npz("clips.npz", other=np.zeros(3, U8))),
    C("task-context-wrong-shape", VTASK, "clips.npz", npz("clips.npz", frames=np.zeros((2, 4, 16, 16, 1), U8))),
    C("task-context-wrong-frames", VTASK, "clips.npz", npz("clips.npz", frames=np.zeros((2, 6, 8, 8, 1), U8))),
    C("task-context-float", VTASK, "clips.npz", npz("clips.npz", frames=np.zeros((2, 4, 8, 8, 1), np.float32))),
    C("task-context-images-for-video", VTASK, "clips.npz", npz("clips.npz", images=np.zeros((2, 8, 8, 1), U8))),
    C("task-context-empty", VTASK, "clips.npz", npz("clips.npz", frames=np.zeros((0, 4, 8, 8, 1), U8))),
    C("task-given-frames-too-many", [*VTASK, "--given-frames", "99"], "99", CTX_CLIPS),
    C("task-given-frames-zero", [*VTASK, "--given-frames", "0"], "--given-frames", CTX_CLIPS),
    C("task-stride-with-predict", [*VTASK, "--stride", "2"], "--stride", CTX_CLIPS),
    C("task-given-frames-with-interpolate", [*VTASK[:2], "--task", "interpolate", *VTASK[4:], "--given-frames",
                                              "2"], "--given-frames", CTX_CLIPS),
    C("task-stride-too-large", [*VTASK[:2], "--task", "interpolate", *VTASK[4:], "--stride", "99"], "99",
      CTX_CLIPS),
    C("task-context-without-task", ["sample", "{vid}", "--context", "clips.npz", "--out", "out.npz"], "--task",
      CTX_CLIPS),
    C("task-without-context", [*VTASK[:4], *VTASK[6:]], "--context"),
    C("task-out-suffix-jpg", [*VTASK[:-1], "out.jpg"], "out.jpg", CTX_CLIPS),

    # ---- invert and sample --from-noise -------------------------------------------------------------
    C("invert-images-missing", INVERT, "images.npz"),
    C("invert-images-wrong-shape", INVERT, "images.npz", npz("images.npz", images=np.zeros((2, 16, 16, 1), U8))),
    C("invert-no-labels", INVERT, "--classes", npz("images.npz", images=np.zeros((2, 8, 8, 1), U8))),
    C("invert-labels-out-of-range", INVERT, "0-9", npz("images.npz", images=np.zeros((2, 8, 8, 1), U8),
                                                       labels=np.array([1, 12]))),
    C("invert-classes-out-of-range", [*INVERT, "--classes", "12"], "out of range", INV_IMAGES),
    C("invert-out-not-npz", [*INVERT[:-1], "noise.png"], ".npz", INV_IMAGES),
    C("invert-out-exists", INVERT, "--overwrite", INV_IMAGES, npz("noise.npz", other=np.zeros(2))),
    C("invert-ddim-on-flow", [*INVERT, "--sampler", "ddim"], "ddim", INV_IMAGES),
    C("invert-ddpm-sampler", [*INVERT, "--sampler", "ddpm"], "--sampler", INV_IMAGES),
    C("invert-steps-zero", [*INVERT, "--steps", "0"], "--steps", INV_IMAGES),
    C("from-noise-missing", FROM_NOISE, "noise.npz"),
    C("from-noise-garbage", FROM_NOISE, "noise.npz", text("noise.npz", b"PK\x03\x04garbage")),
    C("from-noise-no-noise", FROM_NOISE, "'noise'", npz("noise.npz", other=np.zeros(2))),
    C("from-noise-wrong-shape", FROM_NOISE, "1 x 8 x 8", npz("noise.npz", noise=np.zeros((2, 1, 4, 4), np.float32))),
    C("from-noise-integers", FROM_NOISE, "float", npz("noise.npz", noise=np.zeros((2, 1, 8, 8), np.int64))),
    C("from-noise-bad-labels", FROM_NOISE, "labels", npz("noise.npz", noise=np.zeros((2, 1, 8, 8), np.float32),
                                                         labels=np.zeros(3, np.int64))),
    C("from-noise-num-mismatch", [*FROM_NOISE, "--num", "5"], "--num", NOISE2),
    C("from-noise-with-size", [*FROM_NOISE, "--size", "8x8"], "--size", NOISE2),
    C("from-noise-count-vs-context", [*ITASK, "--from-noise", "noise.npz"], "--from-noise", CTX_IMAGES,
      npz("noise.npz", noise=np.zeros((7, 1, 8, 8), np.float32))),

    # ---- eval --------------------------------------------------------------------------------------
    C("eval-run-missing", ["eval", "missing_run", "--num", "4"], "missing_run"),
    C("eval-run-no-checkpoint", ["eval", "userdir", "--num", "4"], "userdir", USER_FILE),
    C("eval-config-wrong-shape", ["eval", "run", "--num", "4", "--steps", "1", "--metrics", "domain_fid"],
      "step_000002", copy_run("img", damage=edit_json("config.json", wider_model), desc="config-wider")),
    C("eval-metrics-bogus", [*EVAL[:-1], "bogus"], "bogus"),
    C("eval-metrics-empty", ["eval", "--samples", "samples.npz", "--data", "real.npz", "--metrics", ""],
      "--metrics", SAMPLES, REAL),
    C("eval-metrics-class-unlabelled", ["eval", "--samples", "nolabels.npz", "--data", "digits", "--metrics",
                                        "class"], "class", npz("nolabels.npz", images=np.zeros((4, 8, 8), U8))),
    C("eval-samples-missing", [*EVAL, "--samples", "missing.npz"], "missing.npz"),
    C("eval-samples-wrong-shape", ["eval", "--samples", "big.npz", "--data", "digits", "--metrics", "domain_fid"],
      "big.npz", npz("big.npz", images=np.zeros((4, 16, 16), U8))),
    C("eval-data-bogus", [*EVAL, "--data", "bogus"], "bogus"),
    C("eval-data-npz-missing", ["eval", "--samples", "samples.npz", "--data", "nodata.npz", "--metrics",
                                "domain_fid"], "nodata.npz", SAMPLES),
    C("eval-video-run", ["eval", "{vid}", "--num", "4", "--steps", "1", "--metrics", "pr"], "video"),
    C("eval-nothing-to-score", ["eval", "--metrics", "domain_fid"], "--samples"),
    C("eval-samples-without-data", ["eval", "--samples", "samples.npz", "--metrics", "domain_fid"], "--data",
      SAMPLES),
    C("eval-num-zero", [*EVAL, "--num", "0"], "--num"),
    C("eval-sampler-ddim-on-flow", [*EVAL, "--sampler", "ddim"], "ddim"),
    C("eval-guidance-nan", [*EVAL, "--guidance-scale", "nan"], "--guidance-scale"),
    C("eval-cache-is-file", ["eval", "--samples", "samples.npz", "--data", "real.npz", "--metrics", "class"],
      "cachefile", SAMPLES, REAL, text("cachefile", "not a directory"), env={"MASKDIT_CACHE": "{tmp}/cachefile"}),
    C("eval-cache-under-file", ["eval", "--samples", "samples.npz", "--data", "real.npz", "--metrics", "class"],
      "cachefile", SAMPLES, REAL, text("cachefile", "not a directory"),
      env={"MASKDIT_CACHE": "{tmp}/cachefile/sub"}),

    # ---- report ------------------------------------------------------------------------------------
    C("report-run-missing", ["report", "missing_run", "--out", "r.html"], "missing_run"),
    C("report-run-no-checkpoint", ["report", "userdir", "--out", "r.html"], "userdir", USER_FILE),
    C("report-ema-truncated", ["report", "run", "--per-class", "1", "--out", "r.html"], "ema.safetensors",
      copy_run("img", damage=truncate("ema.safetensors"), desc="ema-half")),
    C("report-out-png", [*REPORT[:-1], "r.png"], "r.png"),
    C("report-out-exists", [*REPORT[:-1], "existing.html"], "existing.html", text("existing.html", "<p>mine</p>")),
    C("report-per-class-zero", [*REPORT, "--per-class", "0"], "--per-class"),
    C("report-device-tpu", [*REPORT, "--device", "tpu"], "tpu"),

    # ---- info --------------------------------------------------------------------------------------
    C("info-run-missing", ["info", "missing_run"], "missing_run"),
    C("info-run-no-checkpoint", ["info", "userdir"], "userdir", USER_FILE),
    C("info-run-is-file", ["info", "afile.txt"], "afile.txt", text("afile.txt", "x")),
    C("info-ema-truncated", ["info", "run"], "ema.safetensors",
      copy_run("img", damage=truncate("ema.safetensors"), desc="ema-half")),
    C("info-ema-empty", ["info", "run"], "ema.safetensors",
      copy_run("img", damage=truncate("ema.safetensors", keep=0), desc="ema-empty")),
    C("info-state-not-json", ["info", "run"], "state.json",
      copy_run("img", damage=overwrite("state.json", "{not json"), desc="state")),
    C("info-state-missing-step", ["info", "run"], "state.json",
      copy_run("img", damage=edit_json("state.json", drop_key("step")), desc="state-no-step")),
    C("info-config-missing-model", ["info", "run"], "config.json",
      copy_run("img", damage=edit_json("config.json", drop_key("model")), desc="config-no-model")),
    C("info-config-is-list", ["info", "run"], "config.json",
      copy_run("img", damage=overwrite("config.json", "[]"), desc="config-list")),

    # ---- data --------------------------------------------------------------------------------------
    C("data-frames-one", [*DATA, "--frames", "1"], "frames"),
    C("data-frames-not-int", [*DATA, "--frames", "abc"], "--frames"),
    C("data-num-zero", [*DATA, "--num", "0"], "--num"),
    C("data-size-zero", [*DATA, "--size", "0"], "--size"),
    C("data-name-bogus", ["data", "mnist", "--out", "clips.npz"], "mnist"),
    C("data-split-bogus", [*DATA, "--split", "bogus"], "--split"),
    C("data-out-txt", [*DATA[:-1], "clips.txt"], "clips.txt"),
    C("data-out-exists", [*DATA[:-1], "existing.npz"], "existing.npz",
      npz("existing.npz", frames=np.ones((1, 2, 8, 8, 1), U8))),
    C("data-out-parent-is-file", [*DATA[:-1], "afile.txt/clips.npz"], "afile.txt", text("afile.txt", "x")),

    # ---- bench -------------------------------------------------------------------------------------
    C("bench-input-abc", [*BENCH, "--input", "abc"], "abc"),
    C("bench-override-not-model", [*BENCH, "steps=3"], "steps=3"),
    C("bench-override-unknown-field", [*BENCH, "model.foo=1"], "model.foo=1"),
    C("bench-override-bad-value", [*BENCH, "model.moe.experts=-1"], "model.moe.experts"),
    C("bench-input-zero-axis", [*BENCH, "--input", "4x0x32"], "4x0x32"),
    C("bench-input-not-divisible", [*BENCH, "--input", "4x33x32"], "33"),
    C("bench-input-too-many-axes", [*BENCH, "--input", "4x8x8x8x8"], "4x8x8x8x8"),
    C("bench-preset-unknown", [*BENCH, "--preset", "nope"], "nope"),
    C("bench-mask-ratio-above-one", [*BENCH, "--mask-ratio", "1.5"], "--mask-ratio"),
    C("bench-recipe-bogus", [*BENCH, "--recipe", "bogus"], "--recipe"),
    C("bench-mixer-depth-too-deep", [*BENCH, "--mixer-depth", "99"], "mixer"),
    C("bench-mixer-depth-negative", [*BENCH, "--mixer-depth", "-1"], "mixer"),
    C("bench-batch-zero", [*BENCH, "--batch", "0"], "--batch"),
    C("bench-steps-zero", [*BENCH, "--steps", "0"], "--steps"),
    C("bench-warmup-zero", [*BENCH, "--warmup", "0"], "--warmup"),
    C("bench-device-tpu", [*BENCH, "--device", "tpu"], "tpu"),
    C("bench-device-cuda", [*BENCH, "--device", "cuda"], "cuda"),
]


# -- the harness ------------------------------------------------------------------------------------
def _tree(roots: list[Path]) -> dict[str, str]:
    """Every path under ``roots`` (directories included) -> sha256 of its content (``dir`` for directories)."""
    out: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *sorted(root.rglob("*"))]:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[str(p)] = "dir"
            else:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _vm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _memory_cap(extra: int = 3 << 30):
    """Cap the address space at its current size plus ``extra`` while a case runs: a command that tries to
    allocate for a billion classes fails here instead of taking the machine's memory."""
    vm = _vm_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if vm is None:
        yield
        return
    cap = vm + extra if hard == resource.RLIM_INFINITY else min(vm + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _run(argv: list[str]) -> tuple[Any, str | None]:
    """``main(argv)`` -> (exit status, traceback of an exception that escaped, if any)."""
    try:
        with _memory_cap():
            rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # noqa: BLE001 - any escaping exception is a failure of the case
        return "exception", traceback.format_exc()
    return rc, None


def test_corpus_is_large_and_distinct():
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
    keys = {c.key() for c in CASES}
    assert len(keys) == len(CASES), "two cases have the same input"
    assert len(keys) >= 130, len(keys)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    tmp = tmp_path / "case"
    tmp.mkdir()
    for setup in case.setup:
        setup(tmp, runs)
    subst = {**runs.placeholders(), "{tmp}": str(tmp)}
    argv = list(case.argv)
    for i, arg in enumerate(argv):
        for k, v in subst.items():
            arg = arg.replace(k, v)
        argv[i] = arg
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.replace("{tmp}", str(tmp)))
    monkeypatch.chdir(tmp)
    watched = [tmp, runs.img, runs.timg, runs.vid]
    before = _tree(watched)
    capfd.readouterr()

    start = time.perf_counter()
    rc, tb = _run(argv)
    elapsed = time.perf_counter() - start

    out, err = capfd.readouterr()
    after = _tree(watched)
    shown = f"\nargv: {argv}\nexit: {rc}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
    assert tb is None, f"an exception escaped main():\n{tb}{shown}"
    assert "Traceback" not in out and "Traceback" not in err, f"traceback printed{shown}"
    assert rc == 2, f"exit status {rc}, expected 2{shown}"
    line = err[:-1] if err.endswith("\n") else err
    assert line.strip(), f"nothing on stderr{shown}"
    assert "\n" not in line and "\r" not in line, f"stderr is not exactly one line{shown}"
    assert line.startswith("error:") and line[len("error:"):].strip(), f"stderr does not start with 'error:'{shown}"
    if isinstance(case.expect, re.Pattern):
        assert case.expect.search(line), f"error line does not match {case.expect.pattern!r}{shown}"
    else:
        assert case.expect in line, f"error line does not name {case.expect!r}{shown}"
    changed = sorted(p for p in before if p in after and before[p] != after[p])
    deleted = sorted(p for p in before if p not in after)
    added = sorted(p for p in after if p not in before)
    assert not (changed or deleted or added), (
        f"files touched by a failing command: changed {changed}, deleted {deleted}, added {added}{shown}")
    if case.max_s is not None:
        assert elapsed < case.max_s, f"took {elapsed:.1f}s, expected under {case.max_s}s{shown}"
