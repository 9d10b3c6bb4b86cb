"""Shared fixtures and helpers: tiny model overrides, weight perturbation, an isolated cache, tiny runs trained
once per session (``trained``)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: The smallest useful model and run for digits: 1 block of width 32, batch 32, 3 sampler steps.
SMALL = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "batch_size=32", "warmup_steps=2",
         "sample.steps=3"]
#: The tiny run the bad-input corpus and other tests share through ``trained(*TINY)``: batch 8, 2 steps, 2 sampler
#: steps and ONE checkpoint (so a damaged copy has no older one to fall back to).
TINY = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "warmup_steps=1",
        "sample.steps=2", "steps=2", "ckpt_every=1", "keep_checkpoints=1"]


def perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add small noise to every weight, so zero-initialised (adaLN-Zero) layers stop being the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (to prove nothing was changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Classifier caches go to a per-session temp folder, never the user's home."""
    monkeypatch.setenv("MASKDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def torchrun(args: list[str], cwd: Path, processes: int = 2, **kw) -> subprocess.Popen:
    """``maskdit train --no-progress ARGS`` under torchrun: ``processes`` gloo processes, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
           "maskdit", "train", "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


class RunFactory:
    """Tiny runs trained once per session, one per distinct configuration (see the ``trained`` fixture)."""

    def __init__(self, root: Path, cache: Path):
        self.root, self.cache = root, cache
        self.made: dict[str, tuple[Path, dict[str, str]]] = {}  #: config key -> (run, its files' hashes)
        self.lent: set[str] = set()  #: the runs handed out themselves (not copied) since the ``trained`` fixture began

    def __call__(self, *overrides: str, preset: str = "digits", into: Path | None = None, processes: int = 1) -> Path:
        """The run of ``preset`` with ``overrides`` (trained now if no test asked for it before), in this process
        or under torchrun with ``processes`` processes. Without ``into`` it is the shared run itself, to read
        only; with ``into`` a fresh copy there, to change."""
        from maskdit.config import load_config
        from maskdit.training.trainer import train

        config = load_config(preset, None, [*overrides, "run_dir=unused"]).to_dict()
        del config["run_dir"]
        key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
        key += f"-x{processes}" if processes > 1 else ""
        if key not in self.made:
            run = self.root / f"{preset}-{key}"
            with pytest.MonkeyPatch.context() as mp:  # asked for by module fixtures too, before _isolated_cache
                mp.setenv("MASKDIT_CACHE", str(self.cache))
                if processes > 1:
                    proc = torchrun(["--preset", preset, *overrides, f"run_dir={run}"], self.root, processes)
                    _, err = proc.communicate(timeout=240)
                    assert proc.returncode == 0, err
                else:
                    train(load_config(preset, None, [*overrides, f"run_dir={run}"]), progress=False)
            self.made[key] = run, tree_hashes(run)
        run = self.made[key][0]
        if into is None:
            self.lent.add(key)
            return run
        shutil.copytree(run, into)
        return Path(into)

    def check_untouched(self, keys: set[str] | None = None) -> None:
        """Fail if a test changed a shared run (it should have asked for a copy): the runs of ``keys``, or every
        run. Each change is reported once."""
        changed = []
        for key in self.made if keys is None else keys:
            run, hashes = self.made[key]
            now = tree_hashes(run)
            if now != hashes:
                changed.append(str(run))
                self.made[key] = run, now
        assert not changed, f"a test changed the shared run(s) {changed}: ask trained(..., into=tmp_path / NAME)"


@pytest.fixture(scope="session")
def run_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunFactory]:
    """The session's :class:`RunFactory` (tests ask for ``trained``; session fixtures such as ``runs`` for this)."""
    factory = RunFactory(tmp_path_factory.mktemp("trained"), tmp_path_factory.getbasetemp() / "cache")
    yield factory
    factory.check_untouched()


@pytest.fixture
def trained(run_factory: RunFactory) -> Iterator[RunFactory]:
    """``trained(*overrides, preset="digits", into=None, processes=1) -> Path``: a tiny run trained once per
    session for each distinct configuration (overrides that resolve to the same config share it; ``run_dir``
    aside), so tests that need the same run do not each train it. Read the returned run; pass
    ``into=tmp_path / NAME`` for a copy to resume, damage or write into. Only for configurations whose input
    files do not change within a session. A test that changes a shared run it was handed fails when it ends."""
    run_factory.lent.clear()
    yield run_factory
    run_factory.check_untouched(run_factory.lent)


@pytest.fixture(scope="session")
def runs(run_factory: RunFactory):
    """The bad-input corpus's three tiny runs (image, image with tasks, video), trained once per session."""
    from corpus import make_runs

    return make_runs(run_factory)


def shape_sensitive_kernels(monkeypatch, eps: float = 1e-7) -> None:
    """Make every ``nn.Linear`` behave like a BLAS that picks its kernel by the call's shape (as oneDNN and
    MKL do on AMX/AVX-512 CPUs): each output moves by ``eps`` of its size times an amount (up to 109) that
    depends on how many rows share the call and on the row's place in it, i.e. by a few float32 ulps. Code
    that is exact only on friendly CPUs fails here."""
    plain = torch.nn.Linear.forward

    def skewed(self, x):
        out = plain(self, x)
        rows = out.numel() // out.shape[-1]
        shift = (rows % 97 + torch.arange(rows, device=out.device) % 13).to(out.dtype)
        return out + eps * out.abs() * shift.reshape(*out.shape[:-1], 1)

    monkeypatch.setattr(torch.nn.Linear, "forward", skewed)
