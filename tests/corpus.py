"""The bad-input corpus harness: case inputs, the three tiny shared runs and the checks every case must pass.

Every case runs ``maskdit.cli.app.main`` in-process in its own temporary directory (the working directory
during the call) and :func:`check` asserts:

1. the exit status is 2 (returned, or raised as ``SystemExit``); no exception escapes ``main``;
2. stderr is exactly one non-empty line starting with ``error:`` (so no usage block, no warning lines and
   no progress bar: every case fails before one would start);
3. that line names the case's offending key, option, value or file (a substring or a regex);
4. no ``Traceback`` in stdout or stderr;
5. no file under the case directory or the shared runs was modified, deleted or added (sha256 + the set
   of paths, directories included: a failing command leaves nothing behind).

Three tiny runs are trained once per session (the ``runs`` fixture in conftest.py, from its run factory
``trained``): an image run (digits), an image run trained with tasks (inpaint/outpaint) and a video run
(bouncing digits with tasks). Each keeps ONE checkpoint, so a damaged copy has no older checkpoint to fall
back to. Runs that a case may damage or train into are copied into the case directory first.
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
import torch
from conftest import TINY
from PIL import Image

from maskdit.cli.app import main

# -- tiny settings shared by the fixtures and the train cases (TINY: conftest's shared tiny run) ------
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
    #: conftest's session run factory, for a case that needs another tiny run: ``trained(*overrides, into=...)``
    trained: Callable[..., Path] = dataclasses.field(compare=False, repr=False)

    def placeholders(self) -> dict[str, str]:
        return {"{img}": str(self.img), "{timg}": str(self.timg), "{vid}": str(self.vid)}


def make_runs(trained: Callable[..., Path]) -> Runs:
    """The three shared runs, from conftest's session run factory ``trained`` (other tests share them too)."""
    made = Runs(trained(*TINY), trained(*TINY, "task.names=[inpaint,outpaint]"),
                trained(*VIDEO[2:], preset=VIDEO[1]), trained)
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


CTX_CLIPS = npz("clips.npz", frames=np.zeros((2, 4, 8, 8, 1), U8))
CTX_IMAGES = npz("images.npz", images=np.zeros((2, 8, 8, 1), U8))
INV_IMAGES = npz("images.npz", images=np.zeros((2, 8, 8, 1), U8), labels=np.array([1, 2]))
NOISE2 = npz("noise.npz", noise=np.zeros((2, 1, 8, 8), np.float32))
SAMPLES = npz("samples.npz", images=np.zeros((4, 8, 8), U8), labels=np.array([0, 1, 0, 1]))
REAL = npz("real.npz", images=np.random.default_rng(1).integers(0, 255, (20, 8, 8), dtype=U8), labels=LABELS)
USER_FILE = text("userdir/notes.txt", "my notes, not a run")
HUGE_LABEL = np.zeros(16, np.int64)
HUGE_LABEL[3] = 10**9


def assert_distinct(cases: list[Case], minimum: int = 0) -> None:
    """No two ``cases`` share an id or an input (argv, setup and environment), and there are ``minimum``."""
    assert len({c.id for c in cases}) == len(cases), "duplicate case ids"
    keys = {c.key() for c in cases}
    assert len(keys) == len(cases), "two cases have the same input"
    assert len(keys) >= minimum, len(keys)

def prepare(case: Case, runs: Runs, tmp_path: Path, monkeypatch) -> tuple[Path, list[str]]:
    """Lay out the case's files in ``tmp_path/case``, substitute placeholders, set its environment and
    enter its directory; returns the directory and the argv to run."""
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
    return tmp, argv


def check(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd) -> None:
    """Run one bad-input case and assert the five properties in the module docstring."""
    tmp, argv = prepare(case, runs, tmp_path, monkeypatch)
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
    line = err.removesuffix("\n")
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


def succeed(argv: list[str], runs: Runs, tmp_path: Path, monkeypatch, capfd, setup: tuple[Setup, ...] = (),
            env: dict[str, str] | None = None) -> tuple[Path, str, str]:
    """A "must succeed" case: lay out ``setup``, run ``argv`` and assert exit 0 with no traceback and no
    third-party log lines on stderr; returns the case directory, stdout and stderr."""
    tmp, argv = prepare(C("ok", argv, "", *setup, env=env), runs, tmp_path, monkeypatch)
    capfd.readouterr()
    rc, tb = _run(argv)
    out, err = capfd.readouterr()
    shown = f"\nargv: {argv}\nexit: {rc}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
    assert tb is None, f"an exception escaped main():\n{tb}{shown}"
    assert rc == 0, f"exit status {rc}, expected 0{shown}"
    assert "Traceback" not in err and "warn" not in err.lower(), f"unexpected stderr{shown}"
    return tmp, out, err
