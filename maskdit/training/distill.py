"""Knowledge distillation from a frozen teacher run: the recovery finetune after depth pruning (TinyFusion),
or any smaller student of the same data and objective.

At every training step the teacher (the EMA model of ``distill.teacher``) predicts the objective's target at
the step's own noisy input, labels and condition mask, and a share ``w`` (``distill.weight``) of the
regression target comes from it: the target is ``(1 - w) * data target + w * teacher prediction``. Since
``(1 - w)|s - d|^2 + w|s - T|^2 = |s - ((1 - w) d + w T)|^2 + const``, this is the data loss plus ``w`` x
the student-to-teacher loss, in every recipe at once: recipes ask the objective for their target, and the
step hands them an objective whose target is mixed. ``w = 1`` is pure distillation. The teacher costs one
no-grad forward on every token per step.

``distill.attention`` adds CLEAR's attention-output distillation for a student that shares the teacher's blocks
(an attention-kind conversion, ``init_from`` a full-attention run): the mean squared gap between each block's
attention output and the teacher's on the same input, averaged over blocks, times the weight (the plain step only:
``mask.ratio=0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskdit.diffusion.objectives import Objective, hold_given
from maskdit.errors import CheckpointError, ConfigError, check_keys
from maskdit.model.aux import aux_active, report_aux_loss


class TeacherTarget:
    """``objective`` with its ``target`` mixed with the teacher's prediction for one step's ``y`` and ``given``;
    every other attribute is the objective's own."""

    def __init__(self, objective: Objective, teacher: nn.Module, weight: float, y: torch.Tensor | None,
                 given: torch.Tensor | None):
        self._objective, self._teacher, self._weight = objective, teacher, weight
        self._y, self._given = y, given

    def __getattr__(self, name: str) -> Any:
        return getattr(self._objective, name)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        data = self._objective.target(x0, noise, t)
        x_t = self._objective.noisy(x0, noise, t)
        teacher = self._teacher
        if self._given is not None:
            x_t = hold_given(x_t, x0, self._given, teacher.patch_size)
        with torch.no_grad():
            pred = teacher(x_t, t, self._y, given=self._given)[:, : data.shape[1]]
        return torch.lerp(data.float(), pred.float(), self._weight).to(data.dtype)


class Distillation:
    """A frozen teacher and the share of the target it supplies; :meth:`objective` wraps a step's objective.

    The teacher is held outside the module tree (a list), so it is neither trained nor checkpointed and
    adds no parameters to the optimizer or to DDP/FSDP.
    """

    def __init__(self, teacher: nn.Module, weight: float, attention: float = 0.0, student: nn.Module | None = None):
        if not 0 < weight <= 1:
            raise ConfigError(f"config key distill.weight must be in (0, 1], got {weight}")
        self._teacher = [teacher.eval().requires_grad_(False)]
        self.weight = float(weight)
        self.attention = float(attention)
        self._outputs: dict[tuple[str, int], torch.Tensor] = {}
        if self.attention > 0:
            if student is None or len(student.blocks) != len(teacher.blocks):
                raise ConfigError("distill.attention needs a student with the teacher's blocks (an attention-kind "
                                  "conversion); set distill.attention=0 for a pruned or reshaped student")
            for role, model in (("teacher", teacher), ("student", student)):
                for index, block in enumerate(model.blocks):
                    block.attn.register_forward_hook(self._hook(role, index))

    def _hook(self, role: str, index: int) -> Callable:
        """Keep block ``index``'s attention output; once the teacher's and the student's are both in, report the
        weighted gap as a loss term (the order of the two forwards is the recipe's)."""
        other = (("student" if role == "teacher" else "teacher"), index)

        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            if not aux_active():
                return
            mine = self._outputs.pop(other, None)
            if mine is None:
                self._outputs[(role, index)] = out
                return
            student, teacher = (out, mine) if role == "student" else (mine, out)
            gap = (student.float() - teacher.detach().float()).square().mean()
            report_aux_loss("distill_attention", gap * (self.attention / len(self.teacher.blocks)))

        return hook

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def to(self, device: torch.device | str) -> Distillation:
        self._teacher[0] = self.teacher.to(device)
        return self

    def objective(self, objective: Objective, y: torch.Tensor | None, given: torch.Tensor | None) -> TeacherTarget:
        self._outputs.clear()  # a new step: nothing left over from the last one pairs with it
        return TeacherTarget(objective, self.teacher, self.weight, y, given)


def check_teacher(student: nn.Module, teacher: nn.Module, cfg: Any, teacher_cfg: Any) -> None:
    """Refuse a teacher (``cfg.distill.teacher``, trained with ``teacher_cfg``) that does not predict the
    student's target on the student's inputs."""
    where = cfg.distill.teacher
    facts = [
        ("input channels", student.in_channels, teacher.in_channels),
        ("input size", tuple(student.input_size), tuple(teacher.input_size)),
        ("patch size", tuple(student.patch_size), tuple(teacher.patch_size)),
        ("classes", student.num_classes, teacher.num_classes),
        ("objective", cfg.objective.name, teacher_cfg.objective.name),
        ("preconditioning", student.config.get("precond"), teacher.config.get("precond")),
    ]
    if cfg.objective.name == "ddpm":
        facts += [(f"objective.{k}", getattr(cfg.objective, k), getattr(teacher_cfg.objective, k))
                  for k in ("schedule", "num_steps", "step_offset")]
    for what, mine, theirs in facts:
        if mine != theirs:
            raise ConfigError(f"distill.teacher {where} cannot teach this model: its {what} is {theirs}, this "
                              f"model's is {mine}; distil from a run of the same data and objective")
    if cfg.task.names and not teacher_cfg.task.names:
        raise ConfigError(f"distill.teacher {where} was trained without condition-mask tasks and cannot predict "
                          f"with given tokens; drop task.names or distil from a task-trained run")


def distillation_for(cfg: Any, student: nn.Module, device: torch.device | str,
                     load_run: Callable[[str], Any]) -> Distillation | None:
    """The run's :class:`Distillation` (``distill.teacher`` set, read by ``load_run``, i.e.
    :func:`maskdit.runs.load_run`), or ``None``."""
    if not cfg.distill.teacher:
        return None
    try:
        teacher = load_run(cfg.distill.teacher)
    except CheckpointError as e:
        raise ConfigError(f"distill.teacher: {e}") from e
    check_teacher(student, teacher.model, cfg, teacher.config)
    if cfg.distill.attention > 0 and (cfg.mask.ratio > 0 or cfg.mask.recipe != "drop"):
        raise ConfigError(f"distill.attention pairs each block's attention output with the teacher's on every token, "
                          f"but mask.recipe={cfg.mask.recipe} with mask.ratio={cfg.mask.ratio:g} runs the student "
                          "otherwise: use mask.ratio=0 (the plain step) or distill.attention=0")
    return Distillation(teacher.model, cfg.distill.weight, cfg.distill.attention, student).to(device)


@dataclass
class DistillConfig:
    teacher: str | None = None  #: a run (or checkpoint) whose EMA model teaches, e.g. the unpruned run; null = off
    weight: float = 1.0  #: share of the regression target the teacher supplies, in (0, 1] (1 = pure distillation)
    attention: float = 0.0  #: weight of the blocks' attention-output gap to the teacher's (CLEAR; 0 = off)

    def validate(self) -> None:
        """Check ``distill.weight`` and ``distill.attention``."""
        check_keys("distill.", self, [
            ("weight", 0 < self.weight <= 1, "in (0, 1] (set distill.teacher=null to turn it off)"),
            ("attention", self.attention >= 0 and math.isfinite(self.attention), "a finite number >= 0 (0: off)"),
        ])
        if self.attention > 0 and not self.teacher:
            raise ConfigError(f"distill.attention={self.attention:g} needs a teacher: set distill.teacher=RUN (the "
                              "full-attention run converted from) or distill.attention=0")
