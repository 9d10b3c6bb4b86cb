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
    load_aux,
    load_optimizer,
    load_weights,
    optimizer_state,
    read_json,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from maskdit.config import Config
from maskdit.data import dataset_from_config
from maskdit.errors import ConfigError
from maskdit.masks import drop_tokens, mask_ratio, mix_task_masks
from maskdit.model import DiT, build_model
from maskdit.objectives import objective_from_config
from maskdit.recipes import build_recipe


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
        mlp_ratio=m.mlp_ratio, mixer_depth=m.mixer_depth, attention=m.attention,
        task_conditioning=bool(cfg.task.names),
    )


def recipe_for(cfg: Config, model: DiT) -> torch.nn.Module:
    m = cfg.mask
    if cfg.task.names and m.recipe != "drop":
        raise ConfigError(f"mask.recipe={m.recipe} does not support condition masks (task.names): use mask.recipe=drop")
    return build_recipe(m.recipe, model, decoder_depth=m.decoder_depth, decoder_width=m.decoder_width,
                        aux_weight=m.aux_weight)


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
        self.dataset = dataset_from_config(cfg.data)
        if cfg.batch_size > len(self.dataset):
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the dataset ({len(self.dataset)} images)")
        self.objective = objective_from_config(cfg.objective)
        self.model = model_for(cfg, self.dataset.shape, self.dataset.num_classes).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.recipe = recipe_for(cfg, self.model).to(self.device)
        self.optimizer = torch.optim.AdamW(
            [*self.model.parameters(), *self.recipe.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay,
            betas=(0.9, 0.999),
        )
        if cfg.task.names:  # refuse a task that does not fit the token grid before training starts
            self.given_mask(torch.Generator().manual_seed(0))
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
        elif cfg.init_from:
            self.init_from(resolve_checkpoint(cfg.init_from))

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
                "class_names": getattr(self.dataset, "class_names", []),
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

    def keep_indices(self, step: int, gen: torch.Generator) -> tuple[float, torch.Tensor | None]:
        """This step's drop ratio and kept-token indices (``None`` when nothing is dropped)."""
        m = self.cfg.mask
        ratio = mask_ratio(m.schedule, m.ratio, step, m.schedule_steps or self.cfg.steps, m.ratio_min, gen)
        return ratio, drop_tokens(self.cfg.batch_size, self.model.num_tokens, ratio, gen, self.device)

    def given_mask(self, gen: torch.Generator) -> torch.Tensor | None:
        """This step's condition masks ``(B, N)``, a task per sample drawn by ``task.weights`` (or ``None``)."""
        names = self.cfg.task.names
        if not names:
            return None
        weights = dict(zip(names, self.cfg.task.weights or [1.0] * len(names)))
        given, _ = mix_task_masks(self.cfg.batch_size, self.model.token_grid, weights, gen)
        return given.to(self.device)

    def train_step(self, step: int) -> dict[str, float]:
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
        ratio, keep_idx = self.keep_indices(step, gen)
        given = self.given_mask(gen)
        lr = learning_rate(cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss, parts = self.recipe.loss(self.model, self.objective, x0.to(dev), y, t.to(dev), noise.to(dev),
                                           keep_idx, given)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.update_ema(step)
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), "mask_ratio": ratio, **parts}

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))  # warm up so early EMA is not stale
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.model.parameters()), 1.0 - decay)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"data_position": self.data_position(self.step), "wall_time": time.time()}
        return save_checkpoint(
            self.run_dir, self.step, self.model, self.ema, self.optimizer, state, self.run_info(),
            keep=self.cfg.keep_checkpoints, aux=self.recipe,
        )

    def load(self, ckpt: Path) -> None:
        load_weights(self.model, ckpt / "model.safetensors")
        load_weights(self.ema, ckpt / "ema.safetensors")
        load_aux(self.recipe, ckpt)
        state = read_json(ckpt / "state.json")
        load_optimizer(self.optimizer, ckpt, state["optimizer"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def init_from(self, ckpt: Path) -> None:
        """Start a new stage from another run's weights (e.g. unmasking after masked training).

        Model and EMA weights are copied; so are the optimizer moments of the backbone parameters, so the
        new stage does not restart Adam's statistics from zero. Training-only recipe parameters start
        fresh (the stage may use another recipe or none), and the step count starts at 0.
        """
        load_weights(self.model, ckpt / "model.safetensors")
        load_weights(self.ema, ckpt / "ema.safetensors")
        state = read_json(ckpt / "state.json")
        moments = optimizer_state(ckpt, state["optimizer"])
        for index, p in enumerate(self.model.parameters()):
            slots = moments.get(index, {})
            if all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape for v in slots.values()):
                self.optimizer.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in slots.items()}

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
        losses: list[dict[str, float]] = []
        started, last_step, last_time = time.time(), self.step, time.time()
        self.model.train()
        with metrics_path.open("a") as metrics, _StopOnInterrupt() as interrupt:
            while self.step < end and not interrupt.requested:
                stats = self.train_step(self.step)
                self.step += 1
                losses.append(stats)
                bar.update(1)
                out_of_time = cfg.max_seconds is not None and time.time() - started >= cfg.max_seconds
                if self.step % cfg.log_every == 0 or self.step == end or out_of_time:
                    now = time.time()
                    record = {
                        "step": self.step, **{k: sum(s.get(k, 0.0) for s in losses) / len(losses) for k in stats},
                        "lr": learning_rate(cfg, self.step - 1),
                        "steps_per_s": (self.step - last_step) / max(now - last_time, 1e-9),
                        "elapsed_s": now - started,
                    }
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    losses, last_step, last_time = [], self.step, now
                if cfg.eval_every and self.step % cfg.eval_every == 0:  # leaves every RNG stream untouched
                    from maskdit.evaluate.suite import training_eval

                    eval_start = time.time()
                    result = training_eval(self.ema, self.objective, self.dataset, cfg)
                    metrics.write(json.dumps({"step": self.step, "eval": result}) + "\n")
                    metrics.flush()
                    last_time += time.time() - eval_start  # keep evaluation out of steps_per_s
                if self.step % cfg.ckpt_every == 0 or self.step == end or out_of_time:
                    self.save()
                if out_of_time:
                    break
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
