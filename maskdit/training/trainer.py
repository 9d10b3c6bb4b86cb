"""The training loop: batches, loss, AdamW step, EMA, metrics, checkpoints and exact resume.

Reproducibility does not depend on carrying RNG streams across a restart: every random input of step
``k`` comes from :class:`maskdit.training.step.StepSampler`, a pure function of ``(seed, k)`` (and of the epoch for
the data order). A run stopped after step ``k`` and resumed therefore sees exactly the batches and noise
an uninterrupted run would, and reaches bit-identical weights.

Nothing is lost: ``run_dir`` is checked before anything is written (a directory that is not a run is
never written into), ``config.json`` and checkpoints are written atomically, SIGINT and SIGTERM finish the
step and checkpoint, a step with a non-finite loss or gradient is skipped (and ``nan_tolerance`` of them
in a row stop the run, keeping the last good checkpoint), and the step itself never waits on the device
except at log steps.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from maskdit.checkpoint import (
    ALIGN_FILE,
    checkpoint_files,
    checkpoint_path,
    find_run,
    first_loadable,
    load_aux,
    load_optimizer,
    load_weights,
    optimizer_state,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
    slot_like,
)
from maskdit.conditions.base import CONDITIONERS
from maskdit.config import Config, check_against_data, device_name_ok
from maskdit.data.datasets import dataset_from_config, examples, timed_data
from maskdit.diffusion.objectives import objective_from_config
from maskdit.distributed import (
    STRATEGIES,
    World,
    autocast,
    barrier,
    full,
    join,
    local,
    world_from_env,
)
from maskdit.errors import CheckpointError, ConfigError
from maskdit.files import read_json, write_json_atomic
from maskdit.model import DiT
from maskdit.model.attention import kind_layer
from maskdit.model.config import DecoderConfig, model_arguments
from maskdit.model.lora import add_lora, base_info, is_adapter_key, load_base
from maskdit.runs import load_run
from maskdit.training.distill import distillation_for
from maskdit.training.loop import (  # Interrupted, StopOnSignal, TrainingDiverged: the trainer's public names too
    Checkpointer,
    Evaluator,
    Interrupted,  # noqa: F401
    MetricsLog,
    NonFiniteStreak,
    StopOnSignal,
    StopPolicy,
    TrainingClock,
    TrainingDiverged,  # noqa: F401
    agree_after_step,
    truncate_metrics,
)
from maskdit.training.recipes import build_recipe
from maskdit.training.schedule import learning_rate
from maskdit.training.step import StepSampler, TrainingStep, seeded  # noqa: F401  (seeded: public helper)


def check_compiler(device: torch.device) -> None:
    """``compile=true`` on a CPU builds C++ kernels: refuse up front, not at the first step, without a compiler."""
    if device.type != "cpu":
        return
    names = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    if not any(name and shutil.which(name) for name in names):
        raise ConfigError("compile=true on the CPU needs a C++ compiler (g++ or clang++, or $CXX) and none was "
                          "found: install one (e.g. apt-get install g++) or pass compile=false")


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; refuses what this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not device_name_ok(name):
        raise ConfigError(f"device {name!r} is not a device maskdit runs on: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for but CUDA is not available on this machine: use cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def model_for(cfg: Config, dataset_shape: tuple[int, ...], num_classes: int,
              condition_options: dict[str, Any] | None = None, vocab_size: int | None = None) -> DiT:
    """The run's model: the ``model`` section plus what the data (grid, channels, classes, a text vocabulary in
    ``condition_options``, the token vocabulary of discrete data), the objective (a time-agnostic masked model) and
    the recipe (a SPRINT or TREAD route, condition masks) decide."""
    m = cfg.model
    guided = cfg.sample.guidance_channels
    if guided is not None and guided > dataset_shape[0]:
        raise ConfigError(f"config key sample.guidance_channels={guided} is more than the data's {dataset_shape[0]} "
                          "channels: use at most that many, or null to guide every channel")
    return DiT(**model_arguments(
        m, input_size=dataset_shape[1:], in_channels=dataset_shape[0],
        num_classes=num_classes if m.conditional else 0, task_conditioning=bool(cfg.task.names),
        fusion=cfg.sprint_route(), route=cfg.tread_route(), condition_options=condition_options,
        control=cfg.control.signal, control_kind=cfg.control.kind,
        control_options=cfg.control.options or None, vocab_size=vocab_size,
        time_input=not cfg.objective.time_agnostic))


def condition_options(cfg: Config, dataset: Any, source: Path | None) -> dict[str, Any] | None:
    """What the run's conditioner is built with, from the config and the data (a text vocabulary); a run resumed
    or started from ``source`` keeps that run's facts (its token ids keep their meaning)."""
    if not cfg.model.conditional:
        return None
    saved = None
    if source is not None:
        saved_model = read_json(source / "config.json", keys=("model",))["model"]
        if saved_model.get("condition", "label") == cfg.model.condition:
            saved = saved_model.get("condition_options")
    return CONDITIONERS.get(cfg.model.condition).data_options(dataset, cfg.model, saved) or None


#: Model fields that fix what a model's weights compute, with the values of runs saved before they existed.
FUNCTION_FIELDS = {"pos_layout": "axes", "time_scale": 1000.0, "time_offset": 0.0, "time_freq_shift": 0.0,
                   "mlp_norm_eps": 1e-6, "pos": "sincos", "norm": "layernorm", "precond": None, "sigma_data": 0.5}


def inherit_function(cfg: Config, ckpt: Path) -> None:
    """A run resumed or started from ``ckpt`` keeps what its weights mean: how positions enter and their
    table's layout, the time embedding, the norms (from the saved model) and, for the same DDPM, its step
    offset. (Options that change the weights' shapes are checked when the weights load.)"""
    saved = read_json(ckpt / "config.json", keys=("model", "config"))
    for key, legacy in FUNCTION_FIELDS.items():
        setattr(cfg.model, key, saved["model"].get(key, legacy))
    # layers an import brought (MaskDiT's decoder, MDT's skips and biases) stay unless the config names them
    if saved["model"].get("decoder") and not cfg.model.decoder.width:
        cfg.model.decoder = DecoderConfig(**saved["model"]["decoder"])
    if saved["model"].get("rel_pos_bias"):
        cfg.model.rel_pos_bias = True
    if saved["model"].get("long_skips") is not None and cfg.model.long_skips is None:
        cfg.model.long_skips = saved["model"]["long_skips"]
    objective = saved["config"].get("objective", {}) if isinstance(saved["config"], dict) else {}
    if objective.get("name") == cfg.objective.name == "ddpm":
        cfg.objective.step_offset = int(objective.get("step_offset", 1))


def _label_table(key: str) -> bool:
    return key.startswith("y_embedder.")


def _either(*tests: Any) -> Any:
    """The keys any of ``tests`` (None: none) accepts, or None when no test is given."""
    given = [t for t in tests if t is not None]
    return (lambda key: any(t(key) for t in given)) if given else None


def recipe_for(cfg: Config, model: DiT) -> torch.nn.Module:
    return build_recipe(cfg.mask.recipe, model, cfg.mask)


class StepBatches(torch.utils.data.Dataset):
    """Step ``k`` -> this rank's ``(inputs, x0, y)``: all a step consumes, a pure function of ``(seed, k)``,
    so DataLoader workers (``data.workers``) can prepare the next steps while the current one trains."""

    def __init__(self, sampler: StepSampler, dataset: Any, flip: bool, world: World):
        self.sampler, self.dataset, self.flip, self.world = sampler, dataset, flip, world

    def __len__(self) -> int:
        return 2**62  # steps are named by the loader's sampler

    def __getitem__(self, step: int) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
        inputs = self.sampler.draw(step).shard(self.world.rank, self.world.size)
        return (inputs, *examples(self.dataset, inputs.index, self.flip))


class Trainer:
    """Owns the model, EMA, optimizer and data of one run directory.

    ``resume=True`` continues from the latest loadable checkpoint in ``run_dir`` (a run that stopped before
    its first checkpoint starts again from step 0); without it an existing run is refused rather than
    overwritten, and so is a directory that holds anything but a maskdit run.
    """

    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.run_dir = Path(cfg.run_dir)
        to_resume = find_run(self.run_dir, resume)  # refuses before anything is built or written
        source = to_resume[0] if to_resume else resolve_checkpoint(cfg.init_from) if cfg.init_from else None
        if source is not None and not to_resume and "lora" in read_json(source / "config.json"):
            raise ConfigError(f"init_from={cfg.init_from} is a LoRA adapter, not a whole model: merge it first "
                              f"(maskdit lora merge {cfg.init_from} --out NEW_RUN) and start from NEW_RUN")
        if source is not None:
            inherit_function(cfg, source)
        self.world = world_from_env()
        if cfg.batch_size % self.world.size:
            raise ConfigError(f"config key batch_size={cfg.batch_size} is the global batch and must divide evenly "
                              f"over the {self.world.size} processes: use a multiple of {self.world.size}")
        self.device = join(self.world, pick_device(cfg.device))
        if cfg.compile:
            check_compiler(self.device)
        if cfg.precision == "bf16" and self.device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            print("warning: this CPU has no native bf16, so precision=bf16 emulates it and trains slower: "
                  "pass precision=fp32", file=sys.stderr)
        torch.manual_seed(cfg.seed)
        self.dataset = dataset_from_config(cfg.data)
        check_against_data(cfg, self.dataset)
        self.objective = objective_from_config(cfg.objective)
        self.condition_options = condition_options(cfg, self.dataset, source)
        self.model = model_for(cfg, self.dataset.shape, self.dataset.num_classes, self.condition_options,
                               getattr(self.dataset.codec, "vocab_size", None)).to(self.device)
        values = None if self.model.conditioner is None else self.model.conditioner.values(self.dataset)
        self.real_data = copy.copy(self.dataset)  # as loaded: what evaluation compares with (its labels)
        if values is not None:  # what batches pair with each example: caption token ids, a label and control map
            self.dataset.labels = values
        self.lora = self.adapt(bool(to_resume))  # a LoRA run: the frozen base loaded, the updates added
        if self.model.control is not None and self.model.control.frozen_base:  # only the control's layers train
            self.model.requires_grad_(False).control.requires_grad_(True)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.recipe = recipe_for(cfg, self.model).to(self.device)
        self.alignment = None
        if cfg.align.weight > 0:  # REPA: hooks onto a block of the (not yet compiled) model
            from maskdit.training.align import Alignment, load_encoder

            self.alignment = Alignment(self.model, load_encoder(cfg.align.encoder), cfg.align.block,
                                       cfg.align.weight, cfg.align.hidden).to(self.device)
        self.distillation = distillation_for(cfg, self.model, self.device, load_run)  # distill.teacher, if set
        self.step_module = TrainingStep(self.model, self.recipe, self.objective, self.alignment, self.distillation)
        self.forward = self.step_module  # what a step calls: wrapped by the dist.strategy on several ranks
        self.strategy = STRATEGIES.get(cfg.dist.strategy)(self.world, self.device) if self.world.size > 1 else None
        self.sharded = bool(self.strategy and self.strategy.sharded)
        if self.strategy:
            self.forward = self.strategy.wrap(self.step_module, self.model, self.ema)
        if cfg.grad_checkpoint:  # the EMA copy stays as it is: it only samples
            self.model.checkpoint_blocks()
        if cfg.compile:
            self.model.compile_blocks()
        self.optimizer = torch.optim.AdamW(self.step_module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.999), fused=True)
        tasks = dict(zip(cfg.task.names, cfg.task.weights or [1.0] * len(cfg.task.names)))
        self.inputs = StepSampler(  # with data.flip, index i >= N stands for example i - N mirrored
            cfg.seed, len(self.dataset) * (2 if cfg.data.flip else 1), cfg.batch_size, self.dataset.shape,
            self.objective,
            cfg.model.class_dropout if self.model.conditioner is not None else None, self.model.num_tokens,
            self.model.token_grid, cfg.mask, cfg.steps, tasks, cfg.data.size_list(), timed_data(cfg.data.name),
        )
        if tasks:  # refuse a task that does not fit the token grid before training starts
            self.inputs.draw(0)
        self.step = 0
        self._wrote_checkpoint = False  # by this process: a run that stops before its first one cleans up
        self.streak = NonFiniteStreak(self.device)  # counted on the device, read at log steps
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if to_resume:  # the newest checkpoint that loads; a damaged one is passed over with a warning
            first_loadable(to_resume, self.load)
        elif cfg.init_from and self.lora is None:
            self.init_from(resolve_checkpoint(cfg.init_from))
        barrier(self.world)  # every rank has read the run directory before rank 0 writes to it

    def adapt(self, resumed: bool) -> dict[str, Any] | None:
        """With ``lora.rank`` or ``lora.affine``: load the base (``init_from``'s EMA weights; resumed, the very base
        the run recorded) into the model, freeze it and add the LoRA updates; returns what the run records of
        them."""
        lora = self.cfg.lora
        saved = read_json(self.run_dir / "config.json", keys=("config",)).get("lora") if resumed else None
        if resumed and bool(saved) != lora.on:
            raise ConfigError(f"{self.run_dir} was trained {'with' if saved else 'without'} LoRA: resume it as it was "
                              f"(leave lora.rank and lora.affine out of the overrides)")
        if not lora.on:
            return None
        info = saved or {**base_info(resolve_checkpoint(self.cfg.init_from)), "rank": lora.rank,
                         "affine": lora.affine, "scale": lora.scale, "targets": list(lora.targets)}
        load_base(self.model, info, f"run {self.run_dir}")
        return {**info, "layers": add_lora(self.model, lora)}

    # -- facts saved next to the weights -------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        lora = {} if self.lora is None else {"lora": self.lora}
        return {**lora,
            "config": self.cfg.to_dict(),
            "model": self.model.config,
            "dataset": {
                "name": self.dataset.name,
                "shape": list(self.dataset.shape),
                "size": len(self.dataset),
                "num_classes": self.dataset.num_classes,
                "class_names": getattr(self.dataset, "class_names", []),
                "codec": self.dataset.codec.config,
            },
        }

    def data_position(self, step: int) -> dict[str, int]:
        return self.inputs.data_position(step)

    def keep_indices(self, step: int) -> tuple[float, torch.Tensor | None]:
        """Step ``step``'s drop ratio and kept-token indices (``None`` when nothing is dropped)."""
        inputs = self.inputs.draw(step)
        return inputs.mask_ratio, inputs.keep_idx

    def examples(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-space examples and labels at ``index`` (``data.flip``: see :func:`examples`)."""
        return examples(self.dataset, index, self.cfg.data.flip)

    def batches(self, start: int, end: int) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor | None]]:
        """This rank's inputs and examples of steps ``start..end-1``, from ``data.workers`` DataLoader workers
        (pinned for a GPU) or, with none, built in this process when asked for."""
        source = StepBatches(self.inputs, self.dataset, self.cfg.data.flip, self.world)
        if not self.cfg.data.workers:
            return map(source.__getitem__, range(start, end))
        return iter(torch.utils.data.DataLoader(source, batch_size=None, sampler=range(start, end),
                                                num_workers=self.cfg.data.workers,
                                                pin_memory=self.device.type == "cuda"))

    # -- one step ------------------------------------------------------------------------------------
    def train_step(self, step: int, prepared: tuple[Any, torch.Tensor, torch.Tensor | None] | None = None
                   ) -> dict[str, torch.Tensor | float]:
        """One optimizer step; returns its statistics as tensors (read on the host only when logged).

        A step whose loss or gradient norm is not finite leaves weights, optimizer and EMA unchanged
        (decided on the device: the fused AdamW skips through ``found_inf``, the EMA blends by weight 0).
        """
        cfg, dev = self.cfg, self.device
        inputs, x0, y = prepared or next(self.batches(step, step + 1))
        batch = (x0.to(dev, non_blocking=True), None if y is None else y.to(dev, non_blocking=True))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with autocast(cfg.precision, dev):
            loss, parts = self.forward(batch, inputs.to(dev))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = full(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
        self.optimizer.found_inf = bad.float()  # read by the fused AdamW step, as torch's GradScaler does
        self.optimizer.step()
        self.update_ema(step, (~bad).float())
        self.streak.update(bad)
        return {"loss": loss.detach().float(), "grad_norm": grad_norm.detach().float(), "mask_ratio": inputs.mask_ratio,
                "nan_skipped": bad.float(), **parts}

    @torch.no_grad()
    def update_ema(self, step: int, weight: torch.Tensor | float = 1.0) -> None:
        """Blend the EMA towards the weights; ``weight`` 0 (a skipped step) leaves it unchanged.

        Not torch.optim.swa_utils.AveragedModel: its update reads its ``n_averaged`` counter on the host twice
        per step (test_the_training_step_never_reads_device_values_back fails), and its state dict renames
        the weights (``module.*``, plus ``n_averaged``) that ema.safetensors keeps loadable into a plain model.
        """
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))  # warm up so early EMA is not stale
        pairs = [(local(e), local(p)) for e, p in zip(self.ema.parameters(), self.model.parameters())
                 if p.requires_grad]  # sharded alike under FSDP: a local update; a frozen base stays as it is
        torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], weight * (1.0 - decay))

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write checkpoint ``self.step`` (one process; on several, :meth:`save_on_main`)."""
        return self._write(self._checkpoint_files())

    def _write(self, files: tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]) -> Path:
        tensors, optimizer_meta = files
        state = {"data_position": self.data_position(self.step), "wall_time": time.time(), "optimizer": optimizer_meta}
        path = save_checkpoint(self.run_dir, self.step, tensors, state, self.run_info(), keep=self.cfg.keep_checkpoints)
        self._wrote_checkpoint = True
        return path

    @property
    def saved_keys(self) -> Any:
        """Which weights a checkpoint holds: all, or a LoRA run's updates only (``None``: all)."""
        return None if self.lora is None else is_adapter_key

    def load(self, ckpt: Path) -> None:
        load_weights(self.model, ckpt / "model.safetensors", self.saved_keys)
        load_weights(self.ema, ckpt / "ema.safetensors", self.saved_keys)
        load_aux(self.recipe, ckpt)
        if self.alignment is not None:
            load_aux(self.alignment.projector, ckpt, ALIGN_FILE)
        state = read_json(ckpt / "state.json", keys=("step", "optimizer", "rng"))
        load_optimizer(self.optimizer, ckpt, state["optimizer"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def init_from(self, ckpt: Path) -> None:
        """Start a new stage from another run's weights (e.g. unmasking after masked training, or class-conditional
        training after unlabelled pretraining: the class table the source lacks starts fresh).

        Model and EMA weights are copied; so are the optimizer moments of the backbone parameters, so the
        new stage does not restart Adam's statistics from zero. Training-only recipe parameters carry over
        when the new stage uses the same recipe and start fresh otherwise; the step count starts at 0. Control that
        the source lacks (a base being taught to follow control) starts from the base: zero-initialised, a
        ControlNet branch copied from its blocks; a kind that keeps the base frozen trains on the base's EMA weights,
        the ones it samples with.
        """
        info = read_json(ckpt / "config.json", keys=("config", "model"))
        control = self.model.control
        fresh = control is not None and info["model"].get("control") is None
        had = (info["model"].get("control"), info["model"].get("control_kind", "concat"))
        if control is not None and not fresh and had != (self.model.control_signal, self.cfg.control.kind):
            raise ConfigError(f"init_from={self.cfg.init_from} was trained with control.kind={had[1]} on "
                              f"control.signal={had[0]}; this run asks for control.kind={self.cfg.control.kind} on "
                              f"{self.model.control_signal}: start from a run without control (its base)")
        only = (lambda key: not key.startswith("control.")) if fresh else None
        frozen = fresh and control.frozen_base
        converts = info["model"].get("attention", "full") != self.model.attention  # LiT's weight inheritance
        # a source trained without labels (EzAudio's unlabelled pretraining): the class table starts fresh
        labels_fresh = not info["model"].get("num_classes") and getattr(self.model, "num_classes", 0) > 0
        optional = _either(kind_layer if converts else None, _label_table if labels_fresh else None)
        load_weights(self.model, ckpt / ("ema.safetensors" if frozen else "model.safetensors"), only, optional)
        load_weights(self.ema, ckpt / "ema.safetensors", only, optional)
        if fresh:
            for model in (self.model, self.ema):
                model.control.start_from_base(model)
        saved = info["config"]
        if isinstance(saved, dict) and saved.get("mask", {}).get("recipe") == self.cfg.mask.recipe:
            try:  # the same recipe goes on with its decoder (an MDT import's side block)...
                load_aux(self.recipe, ckpt)
            except CheckpointError:  # ...unless this stage shapes it differently: then it starts fresh
                pass
        state = read_json(ckpt / "state.json", keys=("optimizer",))
        moments = optimizer_state(ckpt, state["optimizer"])
        pairs = enumerate(self.model.parameters())
        if converts or labels_fresh:  # layers one side lacks shift the indices: carry the moments by name
            mine = dict(self.model.named_parameters())
            pairs = ((index, mine[name]) for index, name in enumerate(parameter_names(info["model"])) if name in mine)
        for index, p in pairs:
            slots = moments.get(index, {})
            if all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape for v in slots.values()):
                self.optimizer.state[p] = {k: slot_like(v, p) for k, v in slots.items()}

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> Path:
        """Train to ``cfg.steps`` (or stop after step ``stop_after``, as if interrupted); returns the run dir.

        On SIGINT or SIGTERM the current step finishes, a checkpoint is written and :class:`Interrupted`
        is raised; a second signal while the checkpoint is being written is ignored (it would lose it).
        Several ranks (torchrun) agree on every step whether to stop, so they stop after the same step;
        rank 0 alone writes.
        """
        main, run_dir = self.world.main, self.run_dir
        # what this run creates, outermost first: missing parents and run_dir, config.json, metrics, checkpoints/
        created = [p for p in [run_dir, *run_dir.parents] if not p.exists()][::-1] + [
            p for p in (run_dir / "config.json", run_dir / "metrics.jsonl", run_dir / "checkpoints")
            if not p.exists()] if main else []
        try:
            if main:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(run_dir / "config.json", self.run_info())
                truncate_metrics(run_dir / "metrics.jsonl", self.step)
            return self._run(stop_after)
        except BaseException:
            if main and not self._wrote_checkpoint:
                remove_created(created)  # a run that wrote no checkpoint leaves nothing behind
            raise

    def _run(self, stop_after: int | None) -> Path:
        """The sequencer: after each step every part of the loop (:mod:`maskdit.training.loop`) says whether
        the step is its own and acts, in this order: log, evaluate, checkpoint, stop."""
        cfg, world = self.cfg, self.world
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        clock = TrainingClock()
        self.model.train()
        batches = self.batches(self.step, end)
        with MetricsLog(self.run_dir / "metrics.jsonl", cfg, world, self.device, clock, self.step,
                        partial(learning_rate, cfg), self.progress) as log, StopOnSignal() as signals:
            stop = StopPolicy(cfg, end, world, signals, self.streak, self.run_dir)
            evaluator = Evaluator(cfg, world, clock, log, self.eval_model, self.objective, self.real_data)
            checkpointer = Checkpointer(cfg.ckpt_every, lambda: self.save_on_main(signals))
            while not stop.done(self.step):
                log.add(self.train_step(self.step, next(batches)))
                self.step += 1
                agree_after_step(world, clock, stop, evaluator)  # a signal on any rank, rank 0's clocks
                saving = checkpointer.due(self.step, last=stop.last(self.step))
                if log.due(self.step) or saving:  # a checkpoint's step is always logged
                    log.log(self.step)
                    stop.check_finite(self.step)
                if evaluator.due(self.step):
                    evaluator.run(self.step)
                if saving:
                    checkpointer.save()
                    stop.listen()  # a signal that came during the write stops right here
            if stop.signal is not None:  # every rank stops after the same step, with a checkpoint
                log.close()
                stop.check_finite(self.step)
                raise stop.interrupted(self.step, checkpointer.save())
        barrier(world)
        return self.run_dir

    def save_on_main(self, stop: StopOnSignal) -> Path:
        """Rank 0 writes the checkpoint (uninterruptibly); every rank waits for it and gets its path."""
        path = checkpoint_path(self.run_dir, self.step)
        with stop.critical():
            if self.world.main or self.sharded:  # sharded: every rank takes part in gathering the full state
                files = self._checkpoint_files()
            if self.world.main:
                path = self._write(files)
        barrier(self.world)
        return path

    def _checkpoint_files(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """The run's checkpoint tensors, whole (gathered from the ranks when sharded: every rank calls)."""
        return checkpoint_files(self.model, self.ema, self.optimizer, self.recipe,
                                None if self.alignment is None else self.alignment.projector, self.saved_keys)

    def eval_model(self) -> DiT | None:
        """The EMA weights as one whole model for rank 0's evaluation (``None`` on other ranks); sharded
        weights are gathered first, which every rank must enter."""
        if not self.sharded:
            return self.ema if self.world.main else None
        weights = {k: full(v) for k, v in self.ema.state_dict().items()}
        if not self.world.main:
            return None
        whole = model_for(self.cfg, self.dataset.shape, self.dataset.num_classes, self.condition_options,
                          getattr(self.dataset.codec, "vocab_size", None)).to(self.device)
        if self.lora is not None:
            add_lora(whole, self.cfg.lora)
        whole.load_state_dict(weights)
        return whole.requires_grad_(False)


def remove_created(paths: list[Path]) -> None:
    """Remove what a run that wrote no checkpoint created (``paths``, outermost first), deepest first: files,
    then directories only while empty (anything else found in them stays, and so do they)."""
    for path in reversed(paths):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.exists():
                path.unlink()
        except OSError:
            pass


def train(cfg: Config, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train a run described by ``cfg``; returns its run directory."""
    return Trainer(cfg, resume=resume, progress=progress).run(stop_after=stop_after)


def parameter_names(config: dict[str, Any]) -> list[str]:
    """The parameter names of a model with this ``config`` (:attr:`DiT.config`), in order (what its optimizer
    state's indices mean), from a copy built without memory; none when it cannot be built so (its moments are then
    not carried)."""
    try:
        with torch.device("meta"):
            return [name for name, _ in DiT.from_config(config).named_parameters()]
    except Exception:  # noqa: BLE001 - a conditioner that reads files: start its moments afresh instead
        return []
