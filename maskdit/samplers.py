"""Samplers: integrate a trained model from noise (``t = 1``) to data (``t = 0``).

A sampler takes ``fn(x, t) -> prediction`` (velocity for flow matching, eps for DDPM; see
:mod:`maskdit.objectives` for the time convention) and the starting noise. Labels and guidance are bound
into ``fn`` by :func:`guided`, so the samplers know nothing about conditioning.

* ``euler`` / ``heun`` (flow): ``steps`` uniform steps in t; Euler makes ``steps`` model calls, Heun
  ``2 * steps`` (a predictor and a corrector every step, including the last).
* ``ddim`` (eps, with ``eta``) and ``ddpm`` (ancestral): ``steps`` evenly spaced steps of the
  ``T``-step chain, one model call each. Ancestral DDPM on a respaced chain is DDIM with ``eta = 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from maskdit.errors import ConfigError
from maskdit.objectives import DDPM, FlowMatching, Objective, hold_given

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = {"flow": ("euler", "heun"), "ddpm": ("ddim", "ddpm")}


def _at(x: torch.Tensor, t: float) -> torch.Tensor:
    """The time ``t`` for every sample of ``x``."""
    return torch.full((x.shape[0],), t, device=x.device)


def flow_euler(fn: ModelFn, x: torch.Tensor, steps: int, progress: bool = False) -> torch.Tensor:
    """Euler integration of ``dx/dt = v(x, t)`` from t=1 to t=0 in ``steps`` model calls."""
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for t, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc="sampling", disable=not progress, leave=False):
        x = x + (t_next - t) * fn(x, _at(x, t))
    return x


def flow_heun(fn: ModelFn, x: torch.Tensor, steps: int, progress: bool = False) -> torch.Tensor:
    """Heun's second-order method (trapezoidal corrector) in ``steps`` steps, ``2 * steps`` model calls."""
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for t, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc="sampling", disable=not progress, leave=False):
        dt = t_next - t
        v = fn(x, _at(x, t))
        x_pred = x + dt * v
        v_next = fn(x_pred, _at(x, t_next))
        x = x + dt * 0.5 * (v + v_next)
    return x


def ddim(
    fn: ModelFn,
    x: torch.Tensor,
    objective: DDPM,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM on ``steps`` evenly spaced steps of the chain; ``eta = 0`` is deterministic, 1 is ancestral."""
    if not 1 <= steps <= objective.num_steps:
        raise ConfigError(f"steps must be in [1, {objective.num_steps}] for this DDPM, got {steps}")
    ks = torch.linspace(objective.num_steps - 1, 0, steps).round().long().tolist()
    ab = objective.alpha_bar
    for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        k = ks[i]
        a, a_prev = ab[k].item(), (ab[ks[i + 1]].item() if i + 1 < steps else 1.0)
        t = objective.time_of(torch.tensor(k)).float().item()
        eps = fn(x, _at(x, t))
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator).to(x)
    return x


def sample(
    fn: ModelFn,
    noise: torch.Tensor,
    objective: Objective,
    sampler: str,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the named sampler from ``noise`` (the state at ``t = 1``) to ``t = 0``."""
    allowed = SAMPLERS[objective.name]
    if sampler not in allowed:
        raise ConfigError(f"sampler {sampler!r} does not fit the {objective.name} objective: use one of {allowed}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if isinstance(objective, FlowMatching):
        integrate = flow_euler if sampler == "euler" else flow_heun
        return integrate(fn, noise, steps, progress)
    return ddim(fn, noise, objective, steps, eta=eta if sampler == "ddim" else 1.0, generator=generator,
                progress=progress)


def default_sampler(objective: Objective) -> str:
    """The sampler used when none is named: Heun for flow matching, DDIM for DDPM."""
    return "heun" if objective.name == "flow" else "ddim"


def guided(
    model: torch.nn.Module,
    y: torch.Tensor | None,
    scale: float = 1.0,
    interval: Sequence[float] | None = None,
    given: torch.Tensor | None = None,
) -> ModelFn:
    """Bind labels and classifier-free guidance into ``fn(x, t)``.

    Output ``u + scale * (c - u)`` on all channels, where ``c`` is the prediction for ``y`` and ``u`` the
    prediction for the null label. Guidance is applied only while ``interval[0] <= t <= interval[1]``
    (when given); elsewhere, and whenever ``scale == 1`` or the model is unconditional, the output is the
    conditional prediction and no unconditional pass is made. ``given`` ``(B, N)`` (a task's condition
    mask) is passed to the model with every call.
    """
    conditional = getattr(model, "num_classes", 0) > 0
    if conditional and y is None:
        raise ConfigError("a class-conditional model needs labels to sample")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_now = float(t[0])
        in_interval = interval is None or interval[0] <= t_now <= interval[1]
        extra = {} if given is None else {"given": given}
        if not conditional or scale == 1.0 or not in_interval:
            return model(x, t, y, **extra)
        null = torch.full_like(y, model.null_label)
        if given is not None:
            extra = {"given": torch.cat([given, given])}
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), **extra)
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
) -> torch.Tensor:
    """``num`` samples ``(num, C, *S)`` in model space. The noise of sample ``i`` depends only on ``seed``
    and ``i``, so results do not change with ``batch_size``.

    With a condition mask ``given`` ``(num, N)`` and ``context`` ``(num, C, *S)``, the given tokens are
    held to their context values before every model call and in the result, which therefore equals
    ``context`` exactly on them; only the other tokens are generated.
    """
    sampler = sampler or default_sampler(objective)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((num, model.in_channels, *model.input_size), generator=gen)
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
        if given is None:
            fn = guided(model, y, guidance_scale, guidance_interval)
            x = sample(fn, x, objective, sampler, steps, eta, gen)
        else:
            g, ctx = given[part].to(device), context[part].to(device)

            def hold(x: torch.Tensor, g: torch.Tensor = g, ctx: torch.Tensor = ctx) -> torch.Tensor:
                return hold_given(x, ctx, g, model.patch_size)

            fn = guided(model, y, guidance_scale, guidance_interval, given=g)
            x = hold(sample(lambda x, t, fn=fn: fn(hold(x), t), hold(x), objective, sampler, steps, eta, gen))
        out.append(x.float().cpu())
    return torch.cat(out)
