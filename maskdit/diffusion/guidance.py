"""Guidance: how a sampler's ``fn(x, t)`` combines two predictions of the model, ``weak + scale * (strong - weak)``.

:data:`GUIDANCES` holds the modes (classifier-free guidance, SPRINT's path drop, TREAD's route contrast, the
task models' context contrast); :func:`guided` binds a model, its condition and a mode into the ``fn(x, t)``
every sampler takes. The unconditional branch asks the model's conditioner for its null value
(:mod:`maskdit.conditions`), so guidance works for any condition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from maskdit.errors import ConfigError
from maskdit.masks import random_keep_indices
from maskdit.registry import Registry, one_of

#: ``fn(x, t) -> prediction``: what every sampler integrates.
ModelFn = Callable[[torch.Tensor, float], torch.Tensor]


#: Guidance modes: name -> ``fn(model, x, t, time, y, null, extra) -> (weak, strong)``, the two predictions
#: that guidance combines as ``weak + scale * (strong - weak)`` (``t`` the ``(B,)`` time tensor, ``time`` the
#: same as a Python float, ``extra`` the model's ``given`` mask, if any);
#: facts ``recipe`` (the training recipe the model needs, or None) and ``labels`` (needs class labels).
GUIDANCES: Registry[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = Registry("guidance", key="sample.guidance")

#: Route-contrast guidance's two TREAD routing ratios (share of tokens that skip the route): strong, weak.
ROUTE_CONTRAST = (0.3, 0.7)


@GUIDANCES.register("cfg", "classifier-free guidance: the weak branch drops the class label", recipe=None,
                    labels=True)
def _cfg(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, time: float, y: torch.Tensor,
         null: torch.Tensor, extra: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    both = {k: torch.cat([v, v]) for k, v in extra.items()}  # one batched call for both branches
    strong, weak = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), **both).chunk(2)
    return weak, strong


@GUIDANCES.register("path-drop", "SPRINT's path-drop guidance: the weak branch also skips the deep path "
                    "(cheaper); needs mask.recipe=sprint", recipe="sprint", labels=True)
def _path_drop(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, time: float, y: torch.Tensor,
               null: torch.Tensor, extra: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return model(x, t, null, path_drop=True, **extra), model(x, t, y, **extra)


@GUIDANCES.register("route-contrast", "TREAD: contrast the model routing 0.3 and 0.7 of the tokens past its route, "
                    "both with the label (unconditional models too); needs mask.recipe=tread", recipe="tread",
                    labels=False)
def _route_contrast(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, time: float, y: torch.Tensor | None,
                    null: torch.Tensor | None, extra: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(round(time * 1e6))  # the same routes for every sample at this time
    keeps = [random_keep_indices(1, model.num_tokens, r, gen, x.device).expand(len(x), -1) for r in ROUTE_CONTRAST]
    strong, weak = (model(x, t, y, keep_idx=keep, route=model.tread_route, **extra) for keep in keeps)
    return weak, strong


@GUIDANCES.register("context", "task models: contrast the prediction that knows which tokens are given (clean) "
                    "with one that does not (works without labels)", recipe=None, labels=False, tasks=True)
def _context(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, time: float, y: torch.Tensor | None,
             null: torch.Tensor | None, extra: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    strong = model(x, t, y, **extra)
    if "given" not in extra:  # nothing is given: there is nothing to contrast
        return strong, strong
    return model(x, t, y), strong  # the weak branch sees the same values, unflagged and at the sample's time


#: model attribute each training recipe leaves, which a guidance needing that recipe checks
_RECIPE_ATTRS = {"sprint": "fusion", "tread": "tread_route"}


def check_guidance(name: str, model: torch.nn.Module) -> None:
    """Refuse a guidance mode the model cannot run (path drop without a SPRINT fusion, route contrast
    without a TREAD route)."""
    if name not in GUIDANCES:
        raise ConfigError(f"unknown guidance {name!r}: choose one of {one_of(GUIDANCES.names())}")
    recipe = GUIDANCES.entry(name).facts["recipe"]
    if recipe and getattr(model, _RECIPE_ATTRS[recipe], None) is None:
        raise ConfigError(f"guidance {name} needs a {recipe.upper()} model (trained with mask.recipe={recipe}): "
                          "use cfg")
    if GUIDANCES.entry(name).facts.get("tasks") and not getattr(model, "task_conditioning", False):
        raise ConfigError(f"guidance {name} contrasts given and open tokens: it needs a model trained on tasks "
                          "(task.names) and a task to sample; use cfg")


def guided(
    model: torch.nn.Module,
    y: torch.Tensor | None,
    scale: float = 1.0,
    interval: Sequence[float] | None = None,
    given: torch.Tensor | None = None,
    guidance: str = "cfg",
    channels: int | None = None,
    power: float | None = None,
    negative: torch.Tensor | None = None,
) -> ModelFn:
    """Bind labels and guidance into ``fn(x, t)``.

    ``channels``: guide only the first so many output channels and take the rest from the strong branch
    (DiT guides 3 of its 8; a learned variance is never guided). Default: every channel of the prediction
    (the model's ``target_channels``: its data channels, or a masked model's logits), the variance channels of a
    learned-variance model from the strong branch.

    Output ``w + scale * (s - w)`` on all channels, where ``s`` and ``w`` are the strong and weak
    predictions of the :data:`GUIDANCES` mode: for ``cfg`` the prediction for ``y`` and the unconditional
    one (null label); for ``path-drop`` the weak one also skips the deep path; for ``route-contrast`` both
    route tokens past the TREAD route (30% and 70%). Guidance is applied only while
    ``interval[0] <= t <= interval[1]`` (when given); elsewhere, whenever ``scale == 1``, and when the mode
    needs labels but the model is unconditional, the output is the plain prediction and no second pass is
    made. ``given`` ``(B, N)`` (a task's condition mask) is passed to the model with every call. ``t`` is a
    Python float, so deciding costs no device sync, or a ``(B,)`` tensor of per-sample times, whose mean decides.

    ``power`` ``p`` scales the guidance by MDT's power-cosine schedule: ``1 + (scale - 1) * (1 - cos(pi *
    (1 - t)^p)) / 2``, from 1 at ``t = 1`` to ``scale`` at ``t = 0`` (small ``p``: nearly constant).

    ``negative``: the condition of the weak branch instead of the conditioner's null value (a negative prompt's
    token ids, one per sample), so guidance steers away from it.
    """
    check_guidance(guidance, model)
    conditional = getattr(model, "conditioner", None) is not None
    if conditional and y is None:
        raise ConfigError("a conditional model needs its condition (labels, prompts) to sample")
    if negative is not None and (not conditional or negative.shape != y.shape):
        raise ConfigError("a negative condition takes the place of the null one: it needs a conditional model and "
                          "one value per sample, shaped like the condition")
    branches = GUIDANCES.get(guidance)
    needs_labels = GUIDANCES.entry(guidance).facts["labels"]
    guide = channels or getattr(model, "target_channels", getattr(model, "in_channels", None))

    def fn(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        # float64: t = k / 1000 reaches the time embedding as exactly k (DiT's integer steps)
        if torch.is_tensor(t):  # one time per sample (first-hitting sampling): the schedules read their mean
            t_batch, t = t.to(x.device, torch.float64), float(t.double().mean())
        else:
            t_batch = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float64)
        in_interval = interval is None or interval[0] <= t <= interval[1]
        extra = {} if given is None else {"given": given}
        if (needs_labels and not conditional) or scale == 1.0 or not in_interval:
            return model(x, t_batch, y, **extra)
        null = (model.conditioner.null(y) if negative is None else negative) if conditional else None
        weak, strong = branches(model, x, t_batch, float(t), y, null, extra)
        w = scale if power is None else 1 + (scale - 1) * (1 - math.cos(math.pi * (1 - float(t)) ** power)) / 2
        if guide is None or guide >= strong.shape[1]:
            return torch.lerp(weak, strong, w)
        return torch.cat([torch.lerp(weak[:, :guide], strong[:, :guide], w), strong[:, guide:]], dim=1)

    return fn
