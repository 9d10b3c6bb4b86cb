"""Run configuration: plain dataclasses, YAML presets and ``key=value`` overrides, validated at load time.

Precedence, lowest first: the dataclass defaults, a named preset (``maskdit/configs/NAME.yaml``), a YAML
file, then dotted overrides such as ``model.depth=4`` or ``steps=100``. Unknown keys and bad values fail
before training starts, naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskdit.data.datasets import DATASETS, DataConfig
from maskdit.diffusion.objectives import DDPM_SCHEDULES, OBJECTIVES, TIME_SAMPLINGS
from maskdit.diffusion.samplers import GUIDANCES, SAMPLERS, check_sampler
from maskdit.distributed import PRECISIONS, STRATEGIES
from maskdit.errors import ConfigError
from maskdit.grid import as_patch_size, token_grid_shape
from maskdit.masks import DROP_SHAPES, SCHEDULES, TASKS
from maskdit.model.blocks import MLPS, NORMS
from maskdit.model.dit import ATTENTIONS, POS_LAYOUTS, POSITIONS, PRESETS
from maskdit.model.moe import ROUTINGS
from maskdit.model.precond import PRECONDS
from maskdit.registry import one_of
from maskdit.training.recipes import RECIPES, MaskConfig, sprint_route, tread_route
from maskdit.training.step import MAX_SEED

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class MoEConfig:
    experts: int = 0  #: routed experts per MoE feed-forward; 0 = dense blocks
    shared: int = 0  #: always-on shared experts (DiT-MoE)
    top_k: int = 2  #: experts each token is routed to
    every: int = 1  #: every N-th block (1 = all) gets the mixture
    capacity: float = 2.0  #: slots per expert, in multiples of an even share; assignments past it are not routed
    balance: float = 0.01  #: weight of the load-balance loss (token routing)
    routing: str = "token"  #: token (each token picks top_k experts) | expert (each expert picks its tokens)
    time_gate: bool = False  #: the router also sees the time/label conditioning (Switch-DiT, MoDE)


@dataclass
class DecoderConfig:
    width: int = 0  #: MaskDiT's released decoder between the blocks and the final layer (0 = none)
    depth: int = 8
    num_heads: int = 16


@dataclass
class ModelConfig:
    preset: str = "tiny"  #: a name from maskdit.model.PRESETS; the fields below override it
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | list[int] | None = None
    mlp_ratio: float = 4.0
    mixer_depth: int = 0  #: leading blocks that see all tokens before dropping (deferred masking)
    attention: str = "full"  #: full | factorised (VDT: temporal then spatial attention; rank-3 grids)
    full_every: int = 0  #: factorised models: every N-th block attends over all tokens (0: none; full: all do)
    full_blocks: list[int] = field(default_factory=list)  #: factorised models: more blocks with full attention
    token_time: bool = False  #: task models: given tokens are conditioned on time 0, the rest on t (per-token time)
    conditional: bool = True  #: use the dataset's labels (False: unconditional model)
    class_dropout: float = 0.1  #: share of labels replaced by the null label (for guidance)
    learn_sigma: bool = False  #: ddpm: also predict the variance (DiT's 8-channel head; VLB loss term)
    pos_layout: str | None = None  #: sin-cos table order: xy (DiT, columns first) | axes; null: xy for images
    time_scale: float = 1000.0  #: the time embedding embeds time_offset + time_scale * t (SiT imports: 1 - t)
    time_offset: float = 0.0
    time_freq_shift: float = 0.0  #: sinusoid frequencies 10000^(-i / (128 - shift)): 0 DiT, 1 diffusers' DiT
    mlp_norm_eps: float = 1e-6  #: epsilon of the LayerNorm before each MLP (DiT 1e-6, diffusers' DiT 1e-5)
    norm: str = "layernorm"  #: the blocks' pre-norms: layernorm | rmsnorm
    qk_norm: bool = False  #: RMS-normalise queries and keys in every attention
    mlp: str = "gelu"  #: feed-forward: gelu | swiglu (same parameters)
    pos: str = "sincos"  #: positions: sincos (a fixed table) | rope (axial rotary, by each token's grid index)
    moe: MoEConfig = field(default_factory=MoEConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  #: used at sampling too (MaskDiT imports)
    rel_pos_bias: bool = False  #: a learned bias per head and 2-D token offset in attention (MDT)
    long_skips: int | None = None  #: MDT's layout: U-Net long skips, then this many blocks joining the input
    precond: str | None = None  #: edm: EDM's preconditioning presented as a flow velocity (MaskDiT imports)
    sigma_data: float = 0.5  #: precond=edm: the data's standard deviation


@dataclass
class ObjectiveConfig:
    name: str = "flow"  #: a maskdit.diffusion.objectives.OBJECTIVES entry: flow | ddpm
    time_sampling: str = "logit_normal"  #: flow: uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    schedule: str = "linear"  #: ddpm: linear | cosine
    num_steps: int = 1000  #: ddpm: length of the chain
    step_offset: int = 1  #: ddpm: step k is t = (k + step_offset) / T; 0 = DiT's integer timesteps (imports)


@dataclass
class TaskConfig:
    names: list[str] = field(default_factory=list)  #: tasks mixed in training (maskdit.masks.TASKS); [] = none
    weights: list[float] | None = None  #: one per name (default: equal)


@dataclass
class SampleConfig:
    sampler: str | None = None  #: a maskdit.diffusion.samplers.SAMPLERS entry that fits the objective; None: its default
    steps: int = 25
    guidance_scale: float = 1.0
    guidance_interval: list[float] | None = None  #: [t_low, t_high]: guide only there
    guidance: str = "cfg"  #: a maskdit.diffusion.samplers.GUIDANCES entry: cfg | path-drop | route-contrast | context
    eta: float = 0.0  #: ddim only, in [0, 1]
    guidance_channels: int | None = None  #: guide only the first N channels, the rest from the conditional branch
    guidance_power: float | None = None  #: MDT's power-cosine schedule of the scale over t (null: constant)


@dataclass
class AlignConfig:
    weight: float = 0.0  #: REPA's lambda; 0 = no representation alignment
    block: int = 2  #: align the tokens after this block (1-based)
    encoder: str | None = None  #: a directory from `maskdit encoder train` (the frozen target encoder)
    hidden: int | None = None  #: the projector MLP's width (default 4 x model width)


@dataclass
class DistillConfig:
    teacher: str | None = None  #: a run (or checkpoint) whose EMA model teaches, e.g. the unpruned run; null = off
    weight: float = 1.0  #: share of the regression target the teacher supplies, in (0, 1] (1 = pure distillation)


@dataclass
class DistConfig:
    strategy: str = "ddp"  #: under torchrun: a maskdit.distributed.STRATEGIES entry (ddp | fsdp)


@dataclass
class Config:
    run_dir: str = "runs/digits"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "cosine"  #: constant | cosine (after warmup, to lr_min)
    lr_min: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0  #: max gradient norm; 0 disables clipping
    ema_decay: float = 0.999
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 25
    eval_every: int = 0  #: every this many steps log a small-sample eval (domain FID, class accuracy); 0 = off
    eval_every_s: float = 0.0  #: also evaluate after every this many seconds of training; 0 = off
    eval_num: int = 200  #: samples drawn for that eval
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    max_seconds: float | None = None  #: stop (with a checkpoint) after this much training wall-clock
    init_from: str | None = None  #: start from this run's/checkpoint's weights (e.g. the unmasking finetune)
    compile: bool = False  #: torch.compile every transformer block (first steps compile; a CPU needs a C++ compiler)
    precision: str = "auto"  #: auto (bf16 autocast on a GPU, fp32 on a CPU) | fp32 | bf16; weights stay fp32
    grad_checkpoint: bool = False  #: recompute each block's activations in backward (less memory, ~1/3 more compute)
    nan_tolerance: int = 5  #: stop after this many steps in a row with a non-finite loss or gradient (skipped)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check value ranges and cross-field rules; raise :class:`ConfigError` naming the first bad key."""
        m, data, obj, mask, task, smp = self.model, self.data, self.objective, self.mask, self.task, self.sample
        weights = task.weights
        checks = [
            ("run_dir", bool(self.run_dir.strip()), "a non-empty path"),
            ("steps", self.steps >= 1, "at least 1"),
            ("seed", 0 <= self.seed <= MAX_SEED, f"an integer in [0, {MAX_SEED}] (what a random generator takes)"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("lr_schedule", self.lr_schedule in ("constant", "cosine"), "constant or cosine"),
            ("lr_min", 0 <= self.lr_min <= self.lr, "in [0, lr]"),
            ("warmup_steps", self.warmup_steps >= 0, "non-negative"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("grad_clip", self.grad_clip >= 0, "non-negative (0 disables)"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("ckpt_every", self.ckpt_every >= 1, "at least 1"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "at least 1"),
            ("log_every", self.log_every >= 1, "at least 1"),
            ("eval_every", self.eval_every >= 0, "non-negative (0 disables)"),
            ("eval_every_s", self.eval_every_s >= 0, "non-negative seconds (0 disables)"),
            ("eval_num", self.eval_num >= 4, "at least 4"),
            ("nan_tolerance", self.nan_tolerance >= 1, "at least 1"),
            ("device", self.device == "auto" or device_name_ok(self.device), "auto, cpu, cuda or cuda:N"),
            ("max_seconds", self.max_seconds is None or self.max_seconds > 0, "null or positive"),
            ("precision", self.precision in PRECISIONS, "one of " + one_of(PRECISIONS)),
            ("init_from", self.init_from is None or bool(self.init_from.strip()), "null or a run directory"),
            ("model.preset", m.preset in PRESETS, "one of " + one_of(list(PRESETS))),
            ("model.pos_layout", m.pos_layout is None or m.pos_layout in POS_LAYOUTS,
             "null or one of " + one_of(POS_LAYOUTS)),
            ("model.time_scale", m.time_scale != 0, "non-zero"),
            ("model.time_freq_shift", 0 <= m.time_freq_shift <= 1, "in [0, 1]"),
            ("model.mlp_norm_eps", m.mlp_norm_eps > 0, "positive"),
            ("model.norm", m.norm in NORMS, "one of " + one_of(list(NORMS))),
            ("model.mlp", m.mlp in MLPS, "one of " + one_of(list(MLPS))),
            ("model.pos", m.pos in POSITIONS, "one of " + one_of(POSITIONS)),
            ("model.moe.experts", m.moe.experts >= 0, "non-negative (0 = dense)"),
            ("model.moe.shared", m.moe.shared >= 0, "non-negative"),
            ("model.moe.top_k", m.moe.experts == 0 or 1 <= m.moe.top_k <= m.moe.experts,
             f"in [1, model.moe.experts={m.moe.experts}]"),
            ("model.moe.every", m.moe.every >= 1, "at least 1"),
            ("model.moe.capacity", m.moe.capacity > 0, "positive"),
            ("model.moe.balance", m.moe.balance >= 0, "non-negative"),
            ("model.moe.routing", m.moe.routing in ROUTINGS, "one of " + one_of(ROUTINGS)),
            ("model.decoder.width", m.decoder.width >= 0 and m.decoder.width % 2 == 0, "0 (none) or an even width"),
            ("model.decoder.depth", m.decoder.depth >= 1, "at least 1"),
            ("model.decoder.num_heads", m.decoder.num_heads >= 1 and m.decoder.width % m.decoder.num_heads == 0,
             f"at least 1 and a divisor of model.decoder.width={m.decoder.width}"),
            ("model.precond", m.precond is None or m.precond in PRECONDS, "null or one of " + one_of(PRECONDS)),
            ("model.sigma_data", m.sigma_data > 0, "positive"),
            ("model.long_skips", m.long_skips is None or m.long_skips >= 0, "null or non-negative"),
            ("model.precond", m.precond is None or self.objective.name == "flow",
             "null unless objective.name=flow (EDM's preconditioning is presented as a flow velocity)"),
            ("model.depth", m.depth is None or m.depth >= 1, "null or at least 1"),
            ("model.hidden_size", m.hidden_size is None or (m.hidden_size >= 2 and m.hidden_size % 2 == 0),
             "null or an even number of at least 2"),
            ("model.num_heads", m.num_heads is None or m.num_heads >= 1, "null or at least 1"),
            ("model.patch_size", m.patch_size is None or (min(_as_list(m.patch_size), default=0) >= 1
                                                           and 1 <= len(_as_list(m.patch_size)) <= 3),
             "null, a positive int or a list of 1-3 positive ints"),
            ("model.class_dropout", 0 <= m.class_dropout < 1, "in [0, 1)"),
            ("model.mlp_ratio", m.mlp_ratio > 0, "positive"),
            ("model.mixer_depth", m.mixer_depth >= 0, "non-negative (and below the model depth)"),
            ("model.full_every", m.full_every >= 0, "0 (no full blocks) or a positive block period"),
            ("model.attention", m.attention in ATTENTIONS, "one of " + one_of(ATTENTIONS)),
            ("data.name", data.name in DATASETS, "one of " + one_of(DATASETS.names())),
            ("data.num", data.num >= 1, "at least 1"),
            ("data.frames", data.frames >= 2, "at least 2"),
            ("data.size", data.size >= 4, "at least 4 (video canvas pixels)"),
            ("data.resize", data.resize is None or data.resize >= 1, "a positive image side in pixels"),
            ("data.workers", data.workers >= 0, "0 (load in the training process) or more worker processes"),
            ("objective.name", obj.name in OBJECTIVES, "one of " + one_of(OBJECTIVES.names())),
            ("objective.time_sampling", obj.time_sampling in TIME_SAMPLINGS, "one of " + one_of(TIME_SAMPLINGS)),
            ("objective.logit_std", obj.logit_std > 0, "positive"),
            ("objective.schedule", obj.schedule in DDPM_SCHEDULES, "one of " + one_of(DDPM_SCHEDULES)),
            ("objective.num_steps", obj.num_steps >= 2, "at least 2"),
            ("mask.recipe", mask.recipe in RECIPES, "one of " + one_of(RECIPES.names())),
            ("mask.ratio", 0 <= mask.ratio < 1, "in [0, 1)"),
            ("mask.ratio_min", 0 <= mask.ratio_min <= mask.ratio, "in [0, mask.ratio]"),
            ("mask.schedule", mask.schedule in SCHEDULES, "one of " + one_of(SCHEDULES.names())),
            ("mask.shape", mask.shape in DROP_SHAPES, "one of " + one_of(DROP_SHAPES.names())),
            ("mask.path_drop", 0 <= mask.path_drop < 1, "in [0, 1)"),
            ("mask.schedule_steps", mask.schedule_steps is None or mask.schedule_steps >= 1, "null or at least 1"),
            ("mask.aux_weight", mask.aux_weight >= 0, "non-negative"),
            ("mask.decoder_depth", mask.decoder_depth >= 1, "at least 1"),
            ("mask.decoder_width", mask.decoder_width is None or mask.decoder_width >= 2,
             "null or a positive even width"),
            ("mask.route", mask.route is None or (len(mask.route) == 2 and 0 <= mask.route[0] < mask.route[1]),
             "null or [START, END] with 0 <= START < END <= model.depth"),
            ("dist.strategy", self.dist.strategy in STRATEGIES, "one of " + one_of(STRATEGIES.names())),
            ("align.weight", self.align.weight >= 0, "non-negative (0 = off)"),
            ("align.block", self.align.block >= 1, "at least 1"),
            ("align.encoder", self.align.weight == 0 or bool(self.align.encoder),
             "a directory from maskdit encoder train when align.weight > 0"),
            ("align.hidden", self.align.hidden is None or self.align.hidden >= 1, "null or at least 1"),
            ("distill.weight", 0 < self.distill.weight <= 1, "in (0, 1] (set distill.teacher=null to turn it off)"),
            ("task.names", all(n in TASKS for n in task.names), f"a list from {one_of(TASKS.names())}"),
            ("task.weights", weights is None or (len(weights) == len(task.names) and min(weights, default=0) >= 0
                                                 and sum(weights) > 0),
             "null or one non-negative weight per task name, not all zero"),
            ("sample.sampler", smp.sampler is None or smp.sampler in SAMPLERS, "one of " + one_of(SAMPLERS.names())),
            ("sample.steps", smp.steps >= 1, "at least 1"),
            ("sample.guidance_scale", smp.guidance_scale >= 0, "non-negative"),
            ("sample.guidance_interval", smp.guidance_interval is None
             or (len(smp.guidance_interval) == 2
                 and 0 <= smp.guidance_interval[0] <= smp.guidance_interval[1] <= 1),
             "null or [t_low, t_high] with 0 <= t_low <= t_high <= 1"),
            ("sample.eta", 0 <= smp.eta <= 1, "in [0, 1]"),
            ("sample.guidance_channels", smp.guidance_channels is None or smp.guidance_channels >= 1,
             "null (every predicted channel) or at least 1"),
            ("sample.guidance_power", smp.guidance_power is None or smp.guidance_power > 0,
             "null (a constant scale) or positive"),
            ("objective.step_offset", obj.step_offset in (0, 1), "0 (DiT: t = k / T) or 1 (t = (k + 1) / T)"),
            ("sample.guidance", smp.guidance in GUIDANCES, "one of " + one_of(GUIDANCES.names())),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"config key {key} must be {allowed}, got {_get(self, key)!r}")
        # cross-field rules
        if data.resize is not None and not DATASETS.entry(data.name).facts.get("resizes", False):
            raise ConfigError(f"config key data.resize applies to image folders (data.name=folder), not data.name="
                              f"{data.name}: resize the images beforehand or drop data.resize")
        if DATASETS.entry(data.name).facts["needs_path"] and not data.path:
            raise ConfigError(f"config key data.path is required when data.name={data.name}")
        if smp.sampler is not None:
            check_sampler(smp.sampler, obj.name)
        if m.token_time and not task.names:
            raise ConfigError("config key model.token_time=true conditions the given tokens of a task on time 0: it "
                              "needs condition masks (set task.names) or model.token_time=false")
        if task.names and not RECIPES.entry(mask.recipe).facts["tasks"]:
            raise ConfigError(f"config key mask.recipe={mask.recipe} does not support condition masks (task.names): "
                              f"use mask.recipe={one_of(RECIPES.names(tasks=True))}")
        needs = GUIDANCES.entry(smp.guidance).facts["recipe"] if smp.guidance in GUIDANCES else None
        if needs and mask.recipe != needs:
            raise ConfigError(f"config key sample.guidance={smp.guidance} needs a model trained with "
                              f"mask.recipe={needs}: set mask.recipe={needs} or sample.guidance=cfg")
        if smp.guidance in GUIDANCES and GUIDANCES.entry(smp.guidance).facts.get("tasks") and not task.names:
            raise ConfigError(f"config key sample.guidance={smp.guidance} needs a model trained on tasks: set "
                              "task.names or sample.guidance=cfg")
        if m.learn_sigma and obj.name != "ddpm":
            raise ConfigError(f"config key model.learn_sigma=true needs objective.name=ddpm (a learned DDPM "
                              f"variance), not {obj.name}: set objective.name=ddpm or model.learn_sigma=false")
        if m.learn_sigma and not RECIPES.entry(mask.recipe).facts.get("learned_variance", False):
            raise ConfigError(f"config key model.learn_sigma=true is not supported by mask.recipe={mask.recipe}: use "
                              f"mask.recipe={one_of(RECIPES.names(learned_variance=True))} or model.learn_sigma=false")
        if mask.recipe == "sprint" and m.mixer_depth:
            raise ConfigError("config key model.mixer_depth must be 0 with mask.recipe=sprint: its dense shallow "
                              "blocks (mask.route START) are the patch mixer")
        if m.attention == "factorised" and mask.ratio > 0 and not DROP_SHAPES.entry(mask.shape).facts["grid"]:
            raise ConfigError(f"config key mask.shape={mask.shape} does not keep a frames x positions grid, which "
                              "model.attention=factorised needs: use mask.shape="
                              f"{one_of(DROP_SHAPES.names(grid=True))}, set mask.ratio=0, or use model.attention=full")
        self.architecture()
        return self

    def sprint_route(self) -> tuple[int, int] | None:
        """The SPRINT model's deep path ``(START, END)`` when ``mask.recipe=sprint``, else ``None``."""
        if self.mask.recipe != "sprint":
            return None
        return sprint_route(self.mask.route, self.architecture()["depth"])

    def tread_route(self) -> tuple[int, int] | None:
        """The TREAD route ``(START, END)`` when ``mask.recipe=tread`` (kept in the model config, so sampling
        can route as in training for route-contrast guidance), else ``None``."""
        if self.mask.recipe != "tread":
            return None
        return tread_route(self.mask.route, self.architecture()["depth"])

    def architecture(self) -> dict[str, Any]:
        """The preset's architecture fields with the ``model.*`` overrides applied; refuses shapes that
        cannot build (heads that do not divide the width, a patch mixer as deep as the model)."""
        fields = dict(PRESETS[self.model.preset])
        for key in ("depth", "hidden_size", "num_heads", "patch_size"):
            if getattr(self.model, key) is not None:
                fields[key] = getattr(self.model, key)
        if fields["hidden_size"] % fields["num_heads"]:
            raise ConfigError(f"config key model.num_heads={fields['num_heads']} must divide model.hidden_size="
                              f"{fields['hidden_size']}")
        if self.model.mixer_depth >= fields["depth"]:
            raise ConfigError(f"config key model.mixer_depth must be below model.depth={fields['depth']}, "
                              f"got {self.model.mixer_depth}")
        if self.mask.recipe == "sprint":
            try:
                sprint_route(self.mask.route, fields["depth"])
            except ConfigError as e:
                raise ConfigError(f"config key mask.route does not fit mask.recipe=sprint: {e}") from e
        if self.mask.route is not None and self.mask.route[1] > fields["depth"]:
            raise ConfigError(f"config key mask.route {self.mask.route} ends after the last block: END must be at "
                              f"most model.depth={fields['depth']}")
        if self.mask.recipe == "tread":
            try:
                tread_route(self.mask.route, fields["depth"])
            except ConfigError as e:
                raise ConfigError(f"config key mask.route does not fit mask.recipe=tread: {e}") from e
        if self.model.pos == "rope":  # each head's channel pairs are split over the token grid's axes
            head = fields["hidden_size"] // fields["num_heads"]
            rank = DATASETS.entry(self.data.name).facts["rank"] if self.data.name in DATASETS else 2
            if head // 2 // rank < 1:
                raise ConfigError(
                    f"config key model.pos=rope needs heads of at least {2 * rank} channels (a rotated pair per "
                    f"axis of data.name={self.data.name}'s {rank}-axis token grid), but model.hidden_size="
                    f"{fields['hidden_size']} / model.num_heads={fields['num_heads']} gives {head}: use fewer "
                    "model.num_heads, a larger model.hidden_size or model.pos=sincos")
        moe = self.model.moe
        if moe.experts > 0 and moe.every > fields["depth"]:
            raise ConfigError(f"config key model.moe.every={moe.every} is larger than model.depth={fields['depth']}: "
                              "no block would get the mixture of experts (every N-th block does); use model.moe.every "
                              f"in [1, {fields['depth']}], or model.moe.experts=0 for a dense model")
        for key, value, on in (("shared", moe.shared, moe.shared > 0), ("time_gate", "true", moe.time_gate)):
            if on and moe.experts == 0:
                raise ConfigError(f"config key model.moe.{key}={value} needs routed experts, but model.moe.experts=0 "
                                  "builds dense blocks (no mixture at all): set model.moe.experts to at least 1, or "
                                  f"leave model.moe.{key} out")
        if self.align.weight > 0 and self.align.block > fields["depth"]:
            raise ConfigError(f"config key align.block must be at most model.depth={fields['depth']}, "
                              f"got {self.align.block}")
        if self.mask.recipe == "mae" and self.mask.decoder_width is not None and self.mask.decoder_width % 4:
            raise ConfigError(f"config key mask.decoder_width must be a multiple of 4 (the decoder has 4 heads), "
                              f"got {self.mask.decoder_width}")
        return fields


def check_against_data(cfg: Config, dataset: Any) -> None:
    """Rules that need the dataset's shape: run after loading the data, before anything is written."""
    rank = len(dataset.shape) - 1
    if cfg.model.attention == "factorised" and rank != 3:
        raise ConfigError(f"config key model.attention=factorised needs video (T x H x W) data, but data.name="
                          f"{cfg.data.name} has rank-{rank} examples {tuple(dataset.shape)}: use model.attention=full")
    if rank not in DROP_SHAPES.entry(cfg.mask.shape).facts["ranks"]:
        raise ConfigError(f"config key mask.shape={cfg.mask.shape} ({DROP_SHAPES.entry(cfg.mask.shape).summary}) "
                          f"needs video (T x H x W) data, but data.name={cfg.data.name} has rank-{rank} examples")
    if cfg.batch_size > len(dataset):
        raise ConfigError(f"config key batch_size {cfg.batch_size} is larger than the dataset "
                          f"({len(dataset)} examples)")
    try:  # the patchifier's own rules, named by the config key
        token_grid_shape(dataset.shape[1:], as_patch_size(cfg.architecture()["patch_size"], rank))
    except ConfigError as e:
        raise ConfigError(f"config key model.patch_size does not fit data.name={cfg.data.name} "
                          f"({'x'.join(map(str, dataset.shape))}): {e}") from e
    grid = token_grid_shape(dataset.shape[1:], as_patch_size(cfg.architecture()["patch_size"], rank))
    DROP_SHAPES.get(cfg.mask.shape)(1, grid, cfg.mask.ratio, None)  # the shape's own rules (an even grid...)


def _as_list(value: Any) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def device_name_ok(name: str) -> bool:
    """``cpu``, ``cuda`` or ``cuda:N`` (``auto`` is handled by the caller)."""
    kind, _, index = name.partition(":")
    return kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit())


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """``int | None`` -> ``'int or null'``, for messages."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate a config dataclass from a nested dict, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}': known keys are {', '.join(sorted(names))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {prefix}{key} must be a mapping, got {value!r}")
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        elif isinstance(value, str) and _type_ok(1.0, hint) and _is_number(value):
            kwargs[key] = float(value)  # YAML 1.1 reads "1e-4" as a string
        elif not _type_ok(value, hint):
            raise ConfigError(f"config key {prefix}{key} has the wrong type: got {value!r}, "
                              f"expected {_type_name(hint)}")
        else:
            kwargs[key] = float(value) if hint is float else value
        if isinstance(kwargs.get(key), float) and not math.isfinite(kwargs[key]):
            raise ConfigError(f"config key {prefix}{key} must be a finite number, got {kwargs[key]!r}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory: give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}): "
                          "save it as UTF-8 (YAML config files are text)") from None
    try:
        data = yaml.safe_load(content) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``a.b=value`` -> ``{'a': {'b': value}}``; the value is parsed as YAML (``4``, ``0.5``, ``[1,2]``, ``null``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. steps=100 or model.depth=4)")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: list[str] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config` from a preset, a YAML file and ``key=value`` overrides."""
    values: dict[str, Any] = dict(base or {})
    if preset is not None:
        if preset not in preset_names():
            raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(preset_names())}")
        values = _merge(values, read_yaml(PRESET_DIR / f"{preset}.yaml"))
    if path is not None:
        values = _merge(values, read_yaml(path))
    for text in overrides:
        values = _merge(values, parse_override(text))
    return _build(Config, values).validate()
