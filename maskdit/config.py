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

from maskdit.conditions.base import CONDITIONERS
from maskdit.conditions.control import CONTROL_SIGNALS, check_fits, parse_signal
from maskdit.data.datasets import DATASETS, DataConfig
from maskdit.diffusion.guidance import GUIDANCES
from maskdit.diffusion.objectives import ObjectiveConfig
from maskdit.diffusion.samplers import SampleConfig, check_sampler
from maskdit.distributed import PRECISIONS, DistConfig
from maskdit.errors import ConfigError, check_keys
from maskdit.grid import as_patch_size, token_grid_shape
from maskdit.masks import DROP_SHAPES, TaskConfig
from maskdit.model.config import ModelConfig
from maskdit.model.control import CONTROL_KINDS, ControlConfig
from maskdit.model.lora import LoraConfig
from maskdit.registry import one_of
from maskdit.training.align import AlignConfig
from maskdit.training.distill import DistillConfig
from maskdit.training.recipes import RECIPES, MaskConfig, sprint_route, tread_route
from maskdit.training.schedule import LR_SCHEDULES
from maskdit.training.step import MAX_SEED

PRESET_DIR = Path(__file__).parent / "configs"


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
    lora: LoraConfig = field(default_factory=LoraConfig)
    control: ControlConfig = field(default_factory=ControlConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check value ranges and cross-field rules; raise :class:`ConfigError` naming the first bad key."""
        m, data, obj, mask, task, smp = self.model, self.data, self.objective, self.mask, self.task, self.sample
        checks = [
            ("run_dir", bool(self.run_dir.strip()), "a non-empty path"),
            ("steps", self.steps >= 1, "at least 1"),
            ("seed", 0 <= self.seed <= MAX_SEED, f"an integer in [0, {MAX_SEED}] (what a random generator takes)"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, "one of " + one_of(LR_SCHEDULES.names())),
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
            ("precision", self.precision in PRECISIONS, "one of " + one_of(PRECISIONS.names())),
            ("init_from", self.init_from is None or bool(self.init_from.strip()), "null or a run directory"),
        ]
        check_keys("", self, checks)
        m.validate()
        check_keys("", self, [
            ("model.precond", m.precond is None or self.objective.name == "flow",
             "null unless objective.name=flow (EDM's preconditioning is presented as a flow velocity)"),
        ])
        m.validate_shape()
        for section in (data, obj, mask, self.dist, self.align, self.distill, task, smp, self.lora, self.control):
            section.validate()
        # cross-section rules
        if data.resize is not None and not DATASETS.entry(data.name).facts.get("resizes", False):
            raise ConfigError(f"config key data.resize applies to image folders (data.name=folder), not data.name="
                              f"{data.name}: resize the images beforehand or drop data.resize")
        if DATASETS.entry(data.name).facts["needs_path"] and not data.path:
            raise ConfigError(f"config key data.path is required when data.name={data.name}")
        if smp.sampler is not None:
            check_sampler(smp.sampler, obj.name)
        for key in ("temperature", "choice_temperature"):
            if getattr(smp, key) is not None and obj.name != "masked":
                raise ConfigError(f"config key sample.{key} sets a masked model's draws; objective.name={obj.name} "
                                  f"integrates real values: leave sample.{key} out")
        captioned = CONDITIONERS[m.condition].gives_tokens
        if self.control.signal is not None:
            if data.flip:
                raise ConfigError("config key data.flip=true mirrors images but not the control maps computed from "
                                  "them: set data.flip=false for a controlled model")
            if CONTROL_KINDS.get(self.control.kind).frozen_base and not self.init_from:
                raise ConfigError(f"config key control.kind={self.control.kind} trains control layers beside a frozen "
                                  "trained base: set init_from=BASE_RUN, or use control.kind=concat")
            if self.lora.on:
                raise ConfigError("config key control.signal with lora: a LoRA run trains only its updates, and "
                                  "the control's embedding must train too; this pairing is not built yet: finetune "
                                  "the whole model (leave lora out)")
        if obj.source == "control":
            degraded = self.control.signal is not None and CONTROL_SIGNALS.entry(
                parse_signal(self.control.signal)[0]).facts["degrades"]
            if not degraded:
                raise ConfigError("config key objective.source=control starts the chain at the control map: it needs "
                                  "a degraded copy of the image as the control (control.signal=lowres:F or blur:S), "
                                  f"not control.signal={self.control.signal}")
        if self.lora.on and not self.init_from:
            key = f"lora.rank={self.lora.rank}" if self.lora.rank else "lora.affine=true"
            raise ConfigError(f"config key {key} adapts a trained model: set init_from=BASE_RUN (the run whose "
                              "weights stay frozen), or leave lora.rank and lora.affine out")
        if captioned and not m.conditional:
            raise ConfigError(f"config key model.condition={m.condition} conditions on a token sequence: it needs "
                              "model.conditional=true")
        if m.text is not None and not captioned:
            tokens = "|".join(n for n in CONDITIONERS if CONDITIONERS[n].gives_tokens)
            raise ConfigError(f"config key model.text={m.text} injects a condition's tokens: it needs one of "
                              f"model.condition={tokens}")
        if m.text == "aligned" and self.mask.ratio > 0:
            raise ConfigError(f"config key model.text=aligned adds each frame's condition to that frame's tokens, and "
                              f"mask.ratio={self.mask.ratio} drops tokens: set mask.ratio=0 or use model.text=cross")
        if captioned and data.flip:
            raise ConfigError("config key data.flip=true mirrors images, which swaps left and right in their captions: "
                              "set data.flip=false for a text model")
        for key, value in (("model.text_encoder", m.text_encoder), ("data.captions", data.captions)):
            if value is not None and m.condition != "hf":
                raise ConfigError(f"config key {key} applies to model.condition=hf (a frozen Hugging Face text "
                                  "encoder): set model.condition=hf or leave it out")
        if m.condition == "hf" and not m.text_encoder:
            raise ConfigError("config key model.text_encoder is required when model.condition=hf: a local Hugging Face "
                              "text encoder directory")
        if m.token_time and not task.names:
            raise ConfigError("config key model.token_time=true conditions the given tokens of a task on time 0: it "
                              "needs condition masks (set task.names) or model.token_time=false")
        if task.names and not RECIPES.entry(mask.recipe).facts["tasks"]:
            raise ConfigError(f"config key mask.recipe={mask.recipe} does not support condition masks (task.names): "
                              f"use mask.recipe={one_of(RECIPES.names(tasks=True))}")
        needs = GUIDANCES.entry(smp.guidance).facts["recipe"]  # sample.guidance is a GUIDANCES name by now
        if needs and mask.recipe != needs:
            raise ConfigError(f"config key sample.guidance={smp.guidance} needs a model trained with "
                              f"mask.recipe={needs}: set mask.recipe={needs} or sample.guidance=cfg")
        if GUIDANCES.entry(smp.guidance).facts.get("tasks") and not task.names:
            raise ConfigError(f"config key sample.guidance={smp.guidance} needs a model trained on tasks: set "
                              "task.names or sample.guidance=cfg")
        if obj.name == "masked" and not RECIPES.entry(mask.recipe).facts.get("token_ids", True):
            fits = [n for n in RECIPES.names() if RECIPES.entry(n).facts.get("token_ids", True)]
            raise ConfigError(f"config key mask.recipe={mask.recipe} regresses dropped tokens onto the noisy input, "
                              f"which a masked model over token ids does not have: use mask.recipe={one_of(fits)}")
        if obj.name == "masked" and self.control.signal is not None:
            raise ConfigError("config key control.signal does not apply to objective.name=masked (a model over token "
                              "ids): leave control.signal out")
        if m.learn_sigma and obj.name != "ddpm":
            raise ConfigError(f"config key model.learn_sigma=true needs objective.name=ddpm (a learned DDPM "
                              f"variance), not {obj.name}: set objective.name=ddpm or model.learn_sigma=false")
        if m.learn_sigma and not RECIPES.entry(mask.recipe).facts.get("learned_variance", False):
            raise ConfigError(f"config key model.learn_sigma=true is not supported by mask.recipe={mask.recipe}: use "
                              f"mask.recipe={one_of(RECIPES.names(learned_variance=True))} or model.learn_sigma=false")
        if mask.recipe == "sprint" and m.mixer_depth:
            raise ConfigError("config key model.mixer_depth must be 0 with mask.recipe=sprint: its dense shallow "
                              "blocks (mask.route START) are the patch mixer")
        if data.sizes:
            self.check_sizes()
        if m.attention == "factorised" and mask.ratio > 0 and not DROP_SHAPES.entry(mask.shape).facts["grid"]:
            raise ConfigError(f"config key mask.shape={mask.shape} does not keep a frames x positions grid, which "
                              "model.attention=factorised needs: use mask.shape="
                              f"{one_of(DROP_SHAPES.names(grid=True))}, set mask.ratio=0, or use model.attention=full")
        self.architecture()
        return self

    def check_sizes(self) -> None:
        """``data.sizes`` trains each step at one size as the leading corner of the data's grid, the rest of the
        grid absent (dropped): the plain path only, on real values that resize."""
        m, why = self.model, None
        if self.mask.recipe != "drop":
            why = f"mask.recipe={self.mask.recipe} (use mask.recipe=drop; any mask.ratio)"
        elif self.task.names:
            why = "condition masks (task.names)"
        elif self.objective.name == "masked" or self.data.levels is not None:
            why = "token ids (objective.name=masked), which do not resize"
        elif self.data.name == "latents":
            why = "VAE latents, which do not resize (resize the images and encode each size)"
        elif self.control.signal is not None:
            why = "control.signal"
        elif self.align.weight > 0:
            why = "alignment (align.weight)"
        elif m.attention == "factorised" or m.long_skips is not None or m.decoder.width:
            why = "factorised attention, MDT's long skips or a decoder"
        if why is not None:
            raise ConfigError(f"config key data.sizes trains at smaller sizes by leaving the rest of the grid out, "
                              f"which does not go with {why}: leave data.sizes out or change that")

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
        """The model's size fields (preset plus ``model.*`` overrides), after checking that every section that
        depends on the depth or the head width fits them."""
        fields = self.model.architecture()
        self.mask.check_depth(fields["depth"])
        if self.model.pos == "rope":  # each head's channel pairs are split over the token grid's axes
            head = fields["hidden_size"] // fields["num_heads"]
            rank = DATASETS.entry(self.data.name).facts["rank"] if self.data.name in DATASETS else 2
            if head // 2 // rank < 1:
                raise ConfigError(
                    f"config key model.pos=rope needs heads of at least {2 * rank} channels (a rotated pair per "
                    f"axis of data.name={self.data.name}'s {rank}-axis token grid), but model.hidden_size="
                    f"{fields['hidden_size']} / model.num_heads={fields['num_heads']} gives {head}: use fewer "
                    "model.num_heads, a larger model.hidden_size or model.pos=sincos")
        self.model.check_experts(fields["depth"])
        self.align.check_depth(fields["depth"])
        self.mask.check_decoder()
        return fields


def check_against_data(cfg: Config, dataset: Any) -> None:
    """Rules that need the dataset's shape: run after loading the data, before anything is written."""
    rank = len(dataset.shape) - 1
    vocab = getattr(dataset.codec, "vocab_size", None)
    if cfg.objective.name == "masked" and vocab is None:
        raise ConfigError(f"config key objective.name=masked generates token ids, but data.name={cfg.data.name} holds "
                          f"{dataset.codec.name} values: quantise images with data.levels=K (the digits: 17), or "
                          "train on token data")
    if cfg.objective.name != "masked" and vocab is not None:
        raise ConfigError(f"data.name={cfg.data.name} holds token ids (a {vocab}-symbol vocabulary), which "
                          f"objective.name={cfg.objective.name} cannot diffuse: set objective.name=masked"
                          + (" or leave data.levels out" if cfg.data.levels is not None else ""))
    if cfg.control.signal is not None:
        check_fits(cfg.control.signal, dataset.shape[1:])
    if cfg.model.attention == "factorised" and rank != 3:
        raise ConfigError(f"config key model.attention=factorised needs video (T x H x W) data, but data.name="
                          f"{cfg.data.name} has rank-{rank} examples {tuple(dataset.shape)}: use model.attention=full")
    if rank not in DROP_SHAPES.entry(cfg.mask.shape).facts["ranks"]:
        raise ConfigError(f"config key mask.shape={cfg.mask.shape} ({DROP_SHAPES.entry(cfg.mask.shape).summary}) "
                          f"needs video (T x H x W) data, but data.name={cfg.data.name} has rank-{rank} examples")
    if cfg.data.flip and getattr(dataset, "mirrored", False):
        raise ConfigError(f"config key data.flip=true would reverse data.name={cfg.data.name}'s last axis, which is "
                          "not a mirror image of it (its training split holds its own mirrors already): leave "
                          "data.flip out")
    if cfg.batch_size > len(dataset):
        raise ConfigError(f"config key batch_size {cfg.batch_size} is larger than the dataset "
                          f"({len(dataset)} examples)")
    try:  # the patchifier's own rules, named by the config key
        grid = token_grid_shape(dataset.shape[1:], as_patch_size(cfg.architecture()["patch_size"], rank))
    except ConfigError as e:
        raise ConfigError(f"config key model.patch_size does not fit data.name={cfg.data.name} "
                          f"({'x'.join(map(str, dataset.shape))}): {e}") from e
    DROP_SHAPES.get(cfg.mask.shape)(1, grid, cfg.mask.ratio, None)  # the shape's own rules (an even grid...)
    patch = as_patch_size(cfg.architecture()["patch_size"], rank)
    for size in cfg.data.size_list():
        full = tuple(dataset.shape[1:])
        if len(size) != rank or any(s > f or s % p for s, f, p in zip(size, full, patch)):
            raise ConfigError(f"config key data.sizes: {'x'.join(map(str, size))} must have {rank} axes, each at most "
                              f"the data's {'x'.join(map(str, full))} and a multiple of the patch "
                              f"{'x'.join(map(str, patch))}")


def device_name_ok(name: str) -> bool:
    """``cpu``, ``cuda`` or ``cuda:N`` (``auto`` is handled by the caller)."""
    kind, _, index = name.partition(":")
    return kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit())


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
