"""The training loop: batches, loss, AdamW step, EMA, metrics, checkpoints and exact resume.

Reproducibility does not depend on carrying RNG streams across a restart: the data order of epoch ``e``
comes from a generator seeded with ``(seed, e)`` and all noise of step ``k`` (times, eps, label dropout)
from one seeded with ``(seed, k)``. A run stopped after step ``k`` and resumed therefore sees exactly
the batches and noise an uninterrupted run would, and reaches bit-identical weights.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdit.checkpoint import (
    latest_checkpoint,
    load_optimizer,
    load_weights,
    read_json,
    save_checkpoint,
    set_rng_state,
)
from maskdit.config import Config
from maskdit.data import ImageDataset, load_dataset
from maskdit.errors import ConfigError
from maskdit.model import DiT, build_model
from maskdit.objectives import denoising_loss, objective_from_config


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available: use device=cpu or auto")
    return torch.device(name)


def seeded(seed: int, index: int) -> torch.Generator:
    """A CPU generator for stream ``index`` of run ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def learning_rate(cfg: Config, step: int) -> float:
    """Linear warmup to ``lr``, then constant or cosine decay to ``lr_min`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


def model_for(cfg: Config, dataset_shape: tuple[int, ...], num_classes: int) -> DiT:
    m = cfg.model
    return build_model(
        m.preset, dataset_shape[1:], dataset_shape[0], num_classes if m.conditional else 0,
        depth=m.depth, hidden_size=m.hidden_size, num_heads=m.num_heads, patch_size=m.patch_size,
        mlp_ratio=m.mlp_ratio,
    )


class Trainer:
    """Owns the model, EMA, optimizer and data of one run directory.

    ``resume=True`` continues from the latest checkpoint in ``run_dir`` (and starts fresh when there is
    none); without it an existing checkpoint is refused rather than overwritten.
    """

    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.run_dir = Path(cfg.run_dir)
        self.device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.dataset: ImageDataset = load_dataset(cfg.data.name, cfg.data.path)
        if cfg.batch_size > len(self.dataset):
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the dataset ({len(self.dataset)} images)")
        self.objective = objective_from_config(cfg.objective)
        self.model = model_for(cfg, self.dataset.shape, self.dataset.num_classes).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999)
        )
        self.step = 0
        self.batches_per_epoch = len(self.dataset) // cfg.batch_size
        self._perm: tuple[int, torch.Tensor] | None = None
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        existing = latest_checkpoint(self.run_dir)
        if resume and existing is not None:
            self.load(existing)
        elif existing is not None:
            raise ConfigError(
                f"run_dir {self.run_dir} already holds checkpoints: pass --resume to continue it, "
                "or choose another run_dir"
            )

    # -- facts saved next to the weights -------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.config,
            "dataset": {
                "name": self.dataset.name,
                "shape": list(self.dataset.shape),
                "size": len(self.dataset),
                "num_classes": self.dataset.num_classes,
                "class_names": self.dataset.class_names,
            },
        }

    def data_position(self, step: int) -> dict[str, int]:
        epoch, batch = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "batch": batch}

    # -- one step ------------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        pos = self.data_position(step)
        if self._perm is None or self._perm[0] != pos["epoch"]:
            gen = seeded(self.cfg.seed, -1 - pos["epoch"])
            self._perm = (pos["epoch"], torch.randperm(len(self.dataset), generator=gen))
        b = self.cfg.batch_size
        return self._perm[1][pos["batch"] * b : (pos["batch"] + 1) * b]

    def train_step(self, step: int) -> tuple[float, float]:
        cfg, dev = self.cfg, self.device
        gen = seeded(cfg.seed, step)
        x0, y = self.dataset.batch(self.batch_indices(step))
        t = self.objective.sample_time(len(x0), gen)
        noise = torch.randn(x0.shape, generator=gen)
        if self.model.num_classes > 0:
            drop = torch.rand(len(y), generator=gen) < cfg.model.class_dropout
            y = torch.where(drop, torch.full_like(y, self.model.null_label), y).to(dev)
        else:
            y = None
        lr = learning_rate(cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = denoising_loss(self.model, self.objective, x0.to(dev), y, t.to(dev), noise.to(dev))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.update_ema(step)
        return loss.item(), grad_norm.item()

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))  # warm up so early EMA is not stale
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.model.parameters()), 1.0 - decay)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"data_position": self.data_position(self.step), "wall_time": time.time()}
        path = save_checkpoint(
            self.run_dir, self.step, self.model, self.ema, self.optimizer, state, self.run_info(),
            keep=self.cfg.keep_checkpoints,
        )
        return path

    def load(self, ckpt: Path) -> None:
        load_weights(self.model, ckpt / "model.safetensors")
        load_weights(self.ema, ckpt / "ema.safetensors")
        state = read_json(ckpt / "state.json")
        load_optimizer(self.optimizer, ckpt, state["optimizer"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> Path:
        """Train to ``cfg.steps`` (or stop after step ``stop_after``, as if interrupted); returns the run dir."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.run_info(), indent=2))
        metrics_path = self.run_dir / "metrics.jsonl"
        self._truncate_metrics(metrics_path)
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress,
                   dynamic_ncols=True, file=sys.stderr)
        losses: list[float] = []
        started, last_step, last_time = time.time(), self.step, time.time()
        self.model.train()
        with metrics_path.open("a") as metrics, _StopOnInterrupt() as interrupt:
            while self.step < end and not interrupt.requested:
                loss, grad_norm = self.train_step(self.step)
                self.step += 1
                losses.append(loss)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    now = time.time()
                    record = {
                        "step": self.step, "loss": sum(losses) / len(losses), "grad_norm": grad_norm,
                        "lr": learning_rate(cfg, self.step - 1),
                        "steps_per_s": (self.step - last_step) / max(now - last_time, 1e-9),
                        "elapsed_s": now - started,
                    }
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    losses, last_step, last_time = [], self.step, now
                if self.step % cfg.ckpt_every == 0 or self.step == end:
                    self.save()
        bar.close()
        if interrupt.requested:
            path = self.save()
            print(f"interrupted at step {self.step}: saved {path}; continue with --resume", file=sys.stderr)
            raise KeyboardInterrupt
        return self.run_dir

    def _truncate_metrics(self, path: Path) -> None:
        """On resume, drop records logged after the checkpoint so the file matches the weights."""
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
        path.write_text("".join(line + "\n" for line in keep))


class _StopOnInterrupt:
    """First Ctrl-C asks the loop to finish its step and checkpoint; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(cfg: Config, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train a run described by ``cfg``; returns its run directory."""
    return Trainer(cfg, resume=resume, progress=progress).run(stop_after=stop_after)
