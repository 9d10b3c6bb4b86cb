"""One training step as one module, and the random draws it consumes.

* :class:`StepInputs` holds every random choice of one step for the whole global batch: dataset indices,
  times, noise, label drops, kept-token indices and condition masks.
* :class:`StepSampler` draws them from generators seeded by ``(seed, epoch)`` (data order) and
  ``(seed, step)`` (everything else), so any process can rebuild any step, and a multi-process run can
  take its slice (:meth:`StepInputs.shard`) and see exactly what one process would.
* :class:`TrainingStep` is model + masking recipe + objective behind one ``nn.Module`` whose
  ``forward(batch, inputs)`` returns ``(loss, parts)``: the one thing a DDP/FSDP wrapper wraps. Terms
  reported through :mod:`maskdit.model.aux` (MoE balance, alignment) are added to the loss here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskdit.diffusion.objectives import Objective, chain_start
from maskdit.grid import resize
from maskdit.masks import DROP_SHAPES, mask_ratio, mix_task_masks
from maskdit.model.aux import collect_aux_losses
from maskdit.training.recipes import RECIPES

#: The largest seed maskdit takes (``seed`` in a config, ``--seed``): what a torch generator accepts as is.
MAX_SEED = 2**63 - 1


#: The stream index of step ``k``'s size draw (``data.sizes``) is ``SIZE_STREAM - k``: far from the steps' own.
SIZE_STREAM = -(2**40)


def seeded(seed: int, index: int) -> torch.Generator:
    """A CPU generator for stream ``index`` of run ``seed`` (the mix wraps at 2^64, so any seed up to
    :data:`MAX_SEED` works and small seeds keep the streams they always had)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**64)


@dataclass
class StepInputs:
    """The random inputs of one training step, for every sample of the (global) batch."""

    index: torch.Tensor  #: ``(B,)`` dataset indices
    t: torch.Tensor  #: ``(B,)`` times
    noise: torch.Tensor  #: ``(B, C, *S)`` Gaussian noise
    drop_condition: torch.Tensor | None  #: ``(B,)`` bool: condition replaced by its null value (None: unconditional)
    keep_idx: torch.Tensor | None  #: ``(B, K)`` kept-token indices (None: nothing dropped)
    given: torch.Tensor | None  #: ``(B, N)`` bool condition masks (None: no tasks)
    mask_ratio: float  #: the drop ratio of this step
    path_drop: torch.Tensor | None = None  #: ``(B,)`` bool: SPRINT's deep path replaced by mask tokens
    size: tuple[int, ...] | None = None  #: ``data.sizes``: this step's size in pixels (None: the data's own)

    def shard(self, rank: int, world: int) -> StepInputs:
        """Rank ``rank``'s contiguous share of the batch (the batch size must divide by ``world``)."""
        size = len(self.index) // world
        part = slice(rank * size, (rank + 1) * size)
        return self._map(lambda v: v[part])

    def to(self, device: torch.device | str) -> StepInputs:
        return self._map(lambda v: v.to(device, non_blocking=True))

    def pin_memory(self) -> StepInputs:
        """Page-locked copies (what a DataLoader with ``pin_memory=True`` calls), for faster copies to a GPU."""
        return self._map(lambda v: v.pin_memory())

    def _map(self, fn: Any) -> StepInputs:
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if torch.is_tensor(getattr(self, f.name))})


class StepSampler:
    """Draws :class:`StepInputs` for step ``k`` of a run: a pure function of ``(seed, k)``.

    Args:
        seed: the run's seed. dataset_size, batch_size: the data order is a permutation per epoch.
        example_shape: ``(C, *S)`` of one model-space example (the noise shape).
        objective: draws the times. class_dropout: share of labels dropped (``None``: unconditional).
        num_tokens, token_grid: the model's token grid. mask: a ``MaskConfig``; total_steps: its default
        schedule length. tasks: ``{name: weight}`` of condition-mask tasks (empty: none). timed: whether the
        grid's axis 0 is time (None: only a video's is), as :func:`~maskdit.masks.task_mask` reads it.
    """

    def __init__(self, seed: int, dataset_size: int, batch_size: int, example_shape: tuple[int, ...],
                 objective: Objective, class_dropout: float | None, num_tokens: int, token_grid: tuple[int, ...],
                 mask: Any, total_steps: int, tasks: dict[str, float] | None = None,
                 sizes: list[tuple[int, ...]] | None = None, timed: bool | None = None):
        self.seed, self.dataset_size, self.batch_size = seed, dataset_size, batch_size
        self.timed = timed
        self.example_shape, self.objective, self.class_dropout = tuple(example_shape), objective, class_dropout
        self.num_tokens, self.token_grid = num_tokens, tuple(token_grid)
        self.mask, self.total_steps, self.tasks = mask, total_steps, dict(tasks or {})
        self.sizes = [tuple(s) for s in sizes or []]
        self.patch = tuple(e // g for e, g in zip(self.example_shape[1:], self.token_grid))
        self.batches_per_epoch = dataset_size // batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def data_position(self, step: int) -> dict[str, int]:
        epoch, batch = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "batch": batch}

    def indices(self, step: int) -> torch.Tensor:
        """Dataset indices of step ``step``: batch ``b`` of epoch ``e``'s permutation (seeded by ``(seed, e)``)."""
        pos = self.data_position(step)
        if self._perm is None or self._perm[0] != pos["epoch"]:
            order = torch.randperm(self.dataset_size, generator=seeded(self.seed, -1 - pos["epoch"]))
            self._perm = (pos["epoch"], order)
        b = self.batch_size
        return self._perm[1][pos["batch"] * b : (pos["batch"] + 1) * b]

    def draw(self, step: int) -> StepInputs:
        gen = seeded(self.seed, step)
        b = self.batch_size
        t = self.objective.sample_time(b, gen)
        noise = torch.randn((b, *self.example_shape), generator=gen)
        drop = None if self.class_dropout is None else torch.rand(b, generator=gen) < self.class_dropout
        m = self.mask
        ratio = mask_ratio(m.schedule, m.ratio, step, m.schedule_steps or self.total_steps, m.ratio_min, gen)
        size, grid = None, self.token_grid
        if self.sizes:  # its own stream, so the other draws are those of the same run without sizes
            choice = int(torch.randint(len(self.sizes), (1,), generator=seeded(self.seed, SIZE_STREAM - step)))
            size = self.sizes[choice]
            grid = tuple(s // p for s, p in zip(size, self.patch))
        keep_idx = DROP_SHAPES.get(getattr(m, "shape", "random"))(b, grid, ratio, gen)
        given = mix_task_masks(b, self.token_grid, self.tasks, gen, timed=self.timed)[0] if self.tasks else None
        path_drop = None
        if RECIPES.entry(m.recipe).facts.get("path_drop") and m.path_drop > 0:  # drawn last: earlier draws unchanged
            path_drop = torch.rand(b, generator=gen) < m.path_drop
        return StepInputs(self.indices(step), t, noise, drop, keep_idx, given, ratio, path_drop, size)


class TrainingStep(nn.Module):
    """Model + masking recipe + objective: ``forward((x0, y), inputs) -> (loss, parts)``.

    ``parts`` are detached scalar tensors (the recipe's loss terms and every auxiliary term by name), so
    reading them is left to the caller's log steps. Parameters are the model's, then the recipe's
    training-only ones, then the alignment projector's, if any (the optimizer's order). ``alignment`` (a
    :class:`maskdit.training.align.Alignment`) sees the clean batch before the recipe runs the model;
    ``distillation`` (a :class:`maskdit.training.distill.Distillation`) mixes a frozen teacher's prediction into the
    target the recipe regresses.
    """

    def __init__(self, model: nn.Module, recipe: nn.Module, objective: Objective,
                 alignment: nn.Module | None = None, distillation: Any = None):
        super().__init__()
        self.model, self.recipe, self.objective = model, recipe, objective
        self.alignment, self.distillation = alignment, distillation

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor | None], inputs: StepInputs
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, y = batch
        model = self.model
        noise = inputs.noise
        if inputs.size is not None and tuple(inputs.size) != tuple(x0.shape[2:]):  # data.sizes: this step's size
            x0 = resize(x0, inputs.size)
            noise = noise[(slice(None), slice(None), *[slice(0, s) for s in inputs.size])]
        y = None if model.conditioner is None else model.conditioner.drop(y, inputs.drop_condition)
        noise = chain_start(self.objective, noise, model.conditioner, y)
        if self.alignment is not None:
            self.alignment.prepare(x0)
        try:
            with collect_aux_losses() as aux:
                extra = {} if inputs.path_drop is None else {"path_drop": inputs.path_drop}
                objective = self.objective
                if self.distillation is not None:
                    objective = self.distillation.objective(objective, y, inputs.given)
                loss, parts = self.recipe.loss(model, objective, x0, y, inputs.t, noise,
                                               inputs.keep_idx, inputs.given, **extra)
        finally:
            if self.alignment is not None:
                self.alignment.clear()
        stats: dict[str, list[torch.Tensor]] = {}
        for name, value, adds in aux:
            if adds:
                loss = loss + value
                parts[name] = parts.get(name, 0.0) + value.detach()
            else:
                stats.setdefault(name, []).append(value)
        parts.update({name: torch.stack(values).mean() for name, values in stats.items()})
        return loss, parts
