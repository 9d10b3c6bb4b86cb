"""Shared fixtures and helpers: tiny model overrides, weight perturbation, an isolated cache."""

import hashlib
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: The smallest useful model and run for digits: 1 block of width 32, batch 32, 3 sampler steps.
SMALL = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "batch_size=32", "warmup_steps=2",
         "sample.steps=3"]


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


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """The bad-input corpus's three tiny runs (image, image with tasks, video), trained once per session."""
    from corpus import make_runs

    return make_runs(tmp_path_factory.mktemp("bad-input-runs"))


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
