"""Samplers: integrate a trained model from noise (``t = 1``) to data (``t = 0``).

A sampler takes ``fn(x, t) -> prediction`` (``t`` a Python float; velocity for flow matching, eps for
DDPM; see :mod:`maskdit.objectives` for the time convention) and the starting noise. Labels and guidance
are bound into ``fn`` by :func:`guided`, so the samplers know nothing about conditioning. Every sampler is
an entry of :data:`SAMPLERS`; config validation, the CLI and the docs read that table, so a new sampler
is one registered function here plus its test.

* ``euler`` / ``heun`` (flow): ``steps`` uniform steps in t; Euler makes ``steps`` model calls, Heun
  ``2 * steps`` (a predictor and a corrector every step, including the last).
* ``ddim`` (eps, with ``eta``) and ``ddpm`` (ancestral): ``steps`` evenly spaced steps of the
  ``T``-step chain, one model call each. Ancestral DDPM on a respaced chain is DDIM with ``eta = 1``.

Stochastic samplers draw their step noise from :class:`NoiseStreams`, one stream per sample, so sample
``i`` depends only on the seed and ``i`` and never on the batch it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdit.errors import ConfigError
from maskdit.objectives import Objective, hold_given
from maskdit.registry import Registry, one_of

ModelFn = Callable[[torch.Tensor, float], torch.Tensor]
Sampler = Callable[..., torch.Tensor]

#: name -> sampler ``(fn, x, objective, steps, *, eta, noise, progress) -> x_0``; facts: ``objectives``
#: (the objective names it integrates), ``default`` (the one used when none is named), ``calls_per_step``.
SAMPLERS: Registry[Sampler] = Registry("sampler", key="sample.sampler")


def _seed_of(seed: int, index: int) -> int:
    """A 63-bit seed for stream ``index`` of ``seed`` (a fixed mix, the same on every platform)."""
    return (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)


class NoiseStreams:
    """Per-sample Gaussian streams: each call returns ``(len(indices), *shape)`` whose row ``i`` depends
    only on ``seed``, ``indices[i]`` and how many calls came before."""

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int]):
        self.shape = tuple(shape)
        self.generators = [torch.Generator().manual_seed(_seed_of(seed, int(i))) for i in indices]

    def __call__(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])


def _steps(steps: int, progress: bool) -> tqdm:
    return tqdm(range(steps), desc="sampling", disable=not progress, leave=False)


@SAMPLERS.register("euler", "Euler steps on the flow ODE, one model call per step", objectives=("flow",),
                   calls_per_step=1)
def flow_euler(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int, *, eta: float = 0.0,
               noise: Callable[[], torch.Tensor] | None = None, progress: bool = False) -> torch.Tensor:
    """Euler integration of ``dx/dt = v(x, t)`` from t=1 to t=0 in ``steps`` model calls."""
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for i in _steps(steps, progress):
        x = x + (ts[i + 1] - ts[i]) * fn(x, ts[i])
    return x


@SAMPLERS.register("heun", "Heun's second-order method on the flow ODE, two model calls per step",
                   objectives=("flow",), default=True, calls_per_step=2)
def flow_heun(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int, *, eta: float = 0.0,
              noise: Callable[[], torch.Tensor] | None = None, progress: bool = False) -> torch.Tensor:
    """Heun's method (trapezoidal corrector) in ``steps`` steps, ``2 * steps`` model calls."""
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for i in _steps(steps, progress):
        dt = ts[i + 1] - ts[i]
        v = fn(x, ts[i])
        v_next = fn(x + dt * v, ts[i + 1])
        x = x + dt * 0.5 * (v + v_next)
    return x


@SAMPLERS.register("ddim", "DDIM on a respaced DDPM chain; eta 0 deterministic, 1 ancestral",
                   objectives=("ddpm",), default=True, calls_per_step=1, takes_eta=True)
def ddim(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int, *, eta: float = 0.0,
         noise: Callable[[], torch.Tensor] | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM on ``steps`` evenly spaced steps of the chain; ``eta = 0`` is deterministic, 1 is ancestral."""
    if not 1 <= steps <= objective.num_steps:
        raise ConfigError(f"steps must be in [1, {objective.num_steps}] for this DDPM, got {steps}")
    if eta > 0 and noise is None:
        noise = NoiseStreams(0, range(len(x)), x.shape[1:])
    ks = torch.linspace(objective.num_steps - 1, 0, steps).round().long().tolist()
    ab = objective.alpha_bar.tolist()
    for i in _steps(steps, progress):
        k = ks[i]
        a, a_prev = ab[k], (ab[ks[i + 1]] if i + 1 < steps else 1.0)
        eps = fn(x, objective.time_of_step(k))
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise().to(x)
    return x


@SAMPLERS.register("ddpm", "ancestral DDPM on a respaced chain (DDIM with eta 1)", objectives=("ddpm",),
                   calls_per_step=1)
def ddpm_ancestral(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int, *, eta: float = 0.0,
                   noise: Callable[[], torch.Tensor] | None = None, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling: DDIM with ``eta = 1`` (``eta`` is ignored)."""
    return ddim(fn, x, objective, steps, eta=1.0, noise=noise, progress=progress)


def check_sampler(sampler: str, objective_name: str) -> None:
    """Refuse a sampler that is unknown or does not integrate ``objective_name``'s prediction."""
    SAMPLERS.entry(sampler)
    allowed = SAMPLERS.names(objectives=objective_name)
    if sampler not in allowed:
        raise ConfigError(f"sample.sampler {sampler!r} does not fit the {objective_name} objective: "
                          f"use {one_of(allowed)}")


def sample(
    fn: ModelFn,
    x: torch.Tensor,
    objective: Objective,
    sampler: str,
    steps: int,
    eta: float = 0.0,
    noise: Callable[[], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the named sampler from ``x`` (the state at ``t = 1``) to ``t = 0``; ``noise`` draws the step
    noise of stochastic samplers (default: per-sample streams of seed 0)."""
    check_sampler(sampler, objective.name)
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    return SAMPLERS.get(sampler)(fn, x, objective, steps, eta=eta, noise=noise, progress=progress)


def default_sampler(objective: Objective | str) -> str:
    """The sampler used when none is named: the registered default for the objective (heun, ddim)."""
    name = objective if isinstance(objective, str) else objective.name
    return SAMPLERS.names(objectives=name, default=True)[0]


#: Guidance modes: name -> the extra model arguments of the unconditional branch (beyond the null label).
GUIDANCES: Registry[dict[str, Any]] = Registry("guidance", key="sample.guidance")
GUIDANCES.add("cfg", {}, "classifier-free guidance: the unconditional branch drops the class label", fusion=False)
GUIDANCES.add("path-drop", {"path_drop": True}, "SPRINT's path-drop guidance: the unconditional branch also skips "
              "the deep path (cheaper); needs mask.recipe=sprint", fusion=True)


def check_guidance(name: str, model: torch.nn.Module) -> None:
    """Refuse a guidance mode the model cannot run (path drop without a SPRINT fusion)."""
    if name not in GUIDANCES:
        raise ConfigError(f"unknown guidance {name!r}: choose one of {one_of(GUIDANCES.names())}")
    if GUIDANCES.entry(name).facts["fusion"] and getattr(model, "fusion", None) is None:
        raise ConfigError(f"guidance {name} needs a SPRINT model (trained with mask.recipe=sprint): use cfg")


def guided(
    model: torch.nn.Module,
    y: torch.Tensor | None,
    scale: float = 1.0,
    interval: Sequence[float] | None = None,
    given: torch.Tensor | None = None,
    guidance: str = "cfg",
) -> ModelFn:
    """Bind labels and guidance into ``fn(x, t)``.

    Output ``u + scale * (c - u)`` on all channels, where ``c`` is the prediction for ``y`` and ``u`` the
    unconditional one: the null label (``cfg``), plus the deep path dropped (``path-drop``). Guidance is
    applied only while ``interval[0] <= t <= interval[1]``
    (when given); elsewhere, and whenever ``scale == 1`` or the model is unconditional, the output is the
    conditional prediction and no unconditional pass is made. ``given`` ``(B, N)`` (a task's condition
    mask) is passed to the model with every call. ``t`` is a Python float, so deciding costs no device sync.
    """
    check_guidance(guidance, model)
    conditional = getattr(model, "num_classes", 0) > 0
    if conditional and y is None:
        raise ConfigError("a class-conditional model needs labels to sample")

    def fn(x: torch.Tensor, t: float) -> torch.Tensor:
        t_batch = torch.full((x.shape[0],), float(t), device=x.device)
        in_interval = interval is None or interval[0] <= t <= interval[1]
        extra = {} if given is None else {"given": given}
        if not conditional or scale == 1.0 or not in_interval:
            return model(x, t_batch, y, **extra)
        null = torch.full_like(y, model.null_label)
        if guidance != "cfg":  # a different network for the unconditional branch: two calls
            return torch.lerp(model(x, t_batch, null, **extra, **GUIDANCES.get(guidance)),
                              model(x, t_batch, y, **extra), scale)
        if given is not None:
            extra = {"given": torch.cat([given, given])}
        out = model(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([y, null]), **extra)
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return fn


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    objective: Objective,
    num: int,
    labels: torch.Tensor | None = None,
    sampler: str | None = None,
    steps: int = 25,
    guidance_scale: float = 1.0,
    guidance_interval: Sequence[float] | None = None,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    given: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    guidance: str = "cfg",
) -> torch.Tensor:
    """``num`` samples ``(num, C, *S)`` in model space. The starting noise and the step noise of sample
    ``i`` depend only on ``seed`` and ``i``, so results do not change with ``batch_size``.

    With a condition mask ``given`` ``(num, N)`` and ``context`` ``(num, C, *S)``, the given tokens are
    held to their context values before every model call and in the result, which therefore equals
    ``context`` exactly on them; only the other tokens are generated.
    """
    sampler = sampler or default_sampler(objective)
    check_sampler(sampler, objective.name)
    device = next(model.parameters()).device
    shape = (model.in_channels, *model.input_size)
    noise = torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed))
    if labels is not None and len(labels) != num:
        raise ConfigError(f"{len(labels)} labels for {num} samples")
    if given is not None:
        if context is None or len(given) != num or len(context) != num:
            raise ConfigError(f"a condition mask needs one mask and one context per sample ({num})")
        if bool(given.all(dim=1).any()):
            raise ConfigError("the condition mask leaves nothing to generate for some sample: mark tokens to generate")
    out = []
    for start in tqdm(range(0, num, batch_size), desc="sampling", disable=not progress or num <= batch_size):
        part = slice(start, start + batch_size)
        y = labels[part].to(device) if labels is not None else None
        x = noise[part].to(device)
        streams = NoiseStreams(seed, range(start, start + len(x)), shape)
        if given is None:
            fn = guided(model, y, guidance_scale, guidance_interval, guidance=guidance)
            x = sample(fn, x, objective, sampler, steps, eta, streams)
        else:
            g, ctx = given[part].to(device), context[part].to(device)

            def hold(x: torch.Tensor, g: torch.Tensor = g, ctx: torch.Tensor = ctx) -> torch.Tensor:
                return hold_given(x, ctx, g, model.patch_size)

            fn = guided(model, y, guidance_scale, guidance_interval, given=g, guidance=guidance)
            x = hold(sample(lambda x, t, fn=fn: fn(hold(x), t), hold(x), objective, sampler, steps, eta, streams))
        out.append(x.float().cpu())
    return torch.cat(out)
