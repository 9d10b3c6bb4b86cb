"""Run configuration: plain dataclasses, YAML presets and ``key=value`` overrides, validated at load time.

Precedence, lowest first: the dataclass defaults, a named preset (``maskdit/configs/NAME.yaml``), a YAML
file, then dotted overrides such as ``model.depth=4`` or ``steps=100``. Unknown keys and bad values fail
before training starts, naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskdit.errors import ConfigError
from maskdit.masks import SCHEDULES, TASKS
from maskdit.model.dit import ATTENTIONS
from maskdit.recipes import RECIPES

PRESET_DIR = Path(__file__).parent / "configs"


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
    conditional: bool = True  #: use the dataset's labels (False: unconditional model)
    class_dropout: float = 0.1  #: share of labels replaced by the null label (for guidance)


@dataclass
class DataConfig:
    name: str = "digits"  #: digits | npz | folder | bouncing-digits | bouncing-balls
    path: str | None = None
    num: int = 2000  #: video datasets: training clips generated
    frames: int = 8  #: video datasets: frames per clip
    size: int = 16  #: video datasets: canvas size in pixels


@dataclass
class ObjectiveConfig:
    name: str = "flow"  #: flow | ddpm
    time_sampling: str = "logit_normal"  #: flow: uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    schedule: str = "linear"  #: ddpm: linear | cosine
    num_steps: int = 1000  #: ddpm: length of the chain


@dataclass
class MaskConfig:
    recipe: str = "drop"  #: drop | mae | mdt (what fills the dropped tokens; see maskdit.recipes)
    ratio: float = 0.0  #: share of tokens dropped per step (the maximum for schedules); 0 = no masking
    ratio_min: float = 0.0  #: random: lower end of the range; increasing: the starting ratio
    schedule: str = "constant"  #: constant | random | linear_decay | cosine_decay | increasing
    schedule_steps: int | None = None  #: length of the schedule (default: steps)
    aux_weight: float = 0.1  #: mae: weight of the reconstruction loss on dropped tokens
    decoder_depth: int = 2  #: mae: decoder blocks; mdt: backbone blocks after the interpolater
    decoder_width: int | None = None  #: mae: decoder width (default: half the model width)


@dataclass
class TaskConfig:
    names: list[str] = field(default_factory=list)  #: tasks mixed in training (maskdit.masks.TASKS); [] = none
    weights: list[float] | None = None  #: one per name (default: equal)


@dataclass
class SampleConfig:
    sampler: str | None = None  #: euler | heun (flow); ddim | ddpm (ddpm). None: heun or ddim
    steps: int = 25
    guidance_scale: float = 1.0
    guidance_interval: list[float] | None = None  #: [t_low, t_high]: guide only there
    eta: float = 0.0  #: ddim only


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
    eval_num: int = 200  #: samples drawn for that eval
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    max_seconds: float | None = None  #: stop (with a checkpoint) after this much training wall-clock
    init_from: str | None = None  #: start from this run's/checkpoint's weights (e.g. the unmasking finetune)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check value ranges; raise :class:`ConfigError` naming the first bad key."""
        checks = [
            ("steps", self.steps >= 1, "at least 1"),
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
            ("eval_num", self.eval_num >= 4, "at least 4"),
            ("device", self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
             "auto, cpu, cuda or cuda:N"),
            ("model.class_dropout", 0 <= self.model.class_dropout < 1, "in [0, 1)"),
            ("model.mlp_ratio", self.model.mlp_ratio > 0, "positive"),
            ("data.name", self.data.name in ("digits", "npz", "folder", "bouncing-digits", "bouncing-balls"),
             "digits, npz, folder, bouncing-digits or bouncing-balls"),
            ("data.num", self.data.num >= 1, "at least 1"),
            ("data.frames", self.data.frames >= 2, "at least 2"),
            ("model.attention", self.model.attention in ATTENTIONS, _one_of(ATTENTIONS)),
            ("task.names", all(n in TASKS for n in self.task.names), f"a list from {', '.join(TASKS)}"),
            ("task.weights", self.task.weights is None or (len(self.task.weights) == len(self.task.names)
                                                           and min(self.task.weights, default=0) >= 0
                                                           and sum(self.task.weights) > 0),
             "null or one non-negative weight per task name, not all zero"),
            ("objective.name", self.objective.name in ("flow", "ddpm"), "flow or ddpm"),
            ("objective.time_sampling", self.objective.time_sampling in ("uniform", "logit_normal"),
             "uniform or logit_normal"),
            ("objective.schedule", self.objective.schedule in ("linear", "cosine"), "linear or cosine"),
            ("max_seconds", self.max_seconds is None or self.max_seconds > 0, "null or positive"),
            ("model.mixer_depth", self.model.mixer_depth >= 0, "non-negative (and below the model depth)"),
            ("mask.recipe", self.mask.recipe in RECIPES, _one_of(RECIPES)),
            ("mask.ratio", 0 <= self.mask.ratio < 1, "in [0, 1)"),
            ("mask.ratio_min", 0 <= self.mask.ratio_min <= self.mask.ratio, "in [0, mask.ratio]"),
            ("mask.schedule", self.mask.schedule in SCHEDULES, _one_of(SCHEDULES)),
            ("mask.schedule_steps", self.mask.schedule_steps is None or self.mask.schedule_steps >= 1,
             "null or at least 1"),
            ("mask.aux_weight", self.mask.aux_weight >= 0, "non-negative"),
            ("mask.decoder_depth", self.mask.decoder_depth >= 1, "at least 1"),
            ("sample.steps", self.sample.steps >= 1, "at least 1"),
            ("sample.guidance_scale", self.sample.guidance_scale >= 0, "non-negative"),
            ("sample.guidance_interval", self.sample.guidance_interval is None
             or (len(self.sample.guidance_interval) == 2
                 and 0 <= self.sample.guidance_interval[0] <= self.sample.guidance_interval[1] <= 1),
             "null or [t_low, t_high] with 0 <= t_low <= t_high <= 1"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"config key {key} must be {allowed}, got {_get(self, key)!r}")
        from maskdit.model import PRESETS

        if self.model.preset not in PRESETS:
            raise ConfigError(f"config key model.preset must be one of {', '.join(PRESETS)}, got {self.model.preset!r}")
        if self.data.name in ("npz", "folder") and not self.data.path:
            raise ConfigError(f"config key data.path is required when data.name={self.data.name}")
        return self


def _one_of(names: tuple[str, ...]) -> str:
    """``('a', 'b', 'c')`` -> ``'a, b or c'``."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


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
            raise ConfigError(f"config key {prefix}{key} has the wrong type: got {value!r}, expected {hint}")
        else:
            kwargs[key] = float(value) if hint is float else value
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
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
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
