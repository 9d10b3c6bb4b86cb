"""Samplers: integrate a trained model from noise (``t = 1``) to data (``t = 0``).

A sampler takes ``fn(x, t) -> prediction`` (``t`` a Python float; velocity for flow matching, eps for
DDPM; see :mod:`maskdit.diffusion.objectives` for the time convention) and the starting noise. Labels and guidance
are bound into ``fn`` by :func:`guided`, so the samplers know nothing about conditioning. Every sampler is
an entry of :data:`SAMPLERS`; config validation, the CLI and the docs read that table, so a new sampler
is one registered function here plus its test.

* ``euler`` / ``heun`` (flow): ``steps`` uniform steps in t; Euler makes ``steps`` model calls, Heun
  ``2 * steps`` (a predictor and a corrector every step, including the last).
* ``edm`` (flow): EDM's Heun on its ``sigma`` grid (rho 7), ``2 * steps - 1`` calls; MaskDiT's sampler.
* ``ddim`` (eps, with ``eta``) and ``ddpm`` (ancestral): ``steps`` evenly spaced steps of the
  ``T``-step chain, one model call each. Ancestral DDPM on a respaced chain is DDIM with ``eta = 1``.

**Batches.** :func:`generate` and :func:`invert` call the network on batches of exactly ``batch_size``
samples: the last batch is padded with copies of its last sample, which are computed and dropped. BLAS and
oneDNN pick their kernels (and so their rounding) by the shapes of a call, and on some CPUs by where a row
sits in it; with every call the same shape and sample ``i`` always in row ``i % batch_size``, sample ``i``
depends only on the seed, ``i`` and ``batch_size``, exactly, on any CPU or GPU, never on ``num`` or on
which other samples share its batch. Different batch sizes agree to float rounding only (kernels differ),
which the tests bound; the default is :data:`BATCH_SIZE` everywhere. Stochastic samplers draw their step
noise from :class:`NoiseStreams`, one stream per sample, so that noise, too, follows the sample.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdit.diffusion.accel import accelerated, transformed
from maskdit.diffusion.guidance import GUIDANCES, ModelFn, guided
from maskdit.diffusion.objectives import Objective, chain_start, hold_given
from maskdit.errors import ConfigError, check_keys
from maskdit.model.control import condition_cache
from maskdit.model.moe import cached_routes
from maskdit.registry import Registry, one_of

Sampler = Callable[..., torch.Tensor]

#: name -> sampler ``(fn, x, objective, steps, *, eta, noise, progress) -> x_0``; facts: ``objectives``
#: (the objective names it integrates), ``default`` (the one used when none is named), ``calls_per_step``.
SAMPLERS: Registry[Sampler] = Registry("sampler", key="sample.sampler")

#: Samples per network call when no batch size is given (the CLI's ``--batch-size`` default too).
BATCH_SIZE = 32


def padded(x: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """``x`` with copies of its last row appended up to ``rows`` rows, so every network call has one shape."""
    if x is None or len(x) == rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])])


def batches(num: int, batch_size: int) -> range:
    """The first index of each batch of ``batch_size`` (positive) among ``num`` samples."""
    if batch_size < 1:
        raise ConfigError(f"the batch size must be a positive number of samples, got {batch_size}")
    return range(0, num, batch_size)


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

    def uniform(self, shape: Sequence[int]) -> torch.Tensor:
        """Float64 uniforms ``(len(indices), *shape)`` from the same streams (a masked model's categorical draws)."""
        return torch.stack([torch.rand(tuple(shape), generator=g, dtype=torch.float64) for g in self.generators])


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


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """EDM's noise levels: ``steps`` levels from ``sigma_max`` to ``sigma_min``, even in ``sigma^(1/rho)``,
    then 0 (Karras et al. 2022, eq. 5)."""
    if steps < 2:
        raise ConfigError(f"the edm sampler needs at least 2 steps, got {steps}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)] + [0.0]


@SAMPLERS.register("edm", "EDM's deterministic Heun sampler (Karras et al.): sigma from 80 to 0.002, rho 7, Euler "
                   "at the last step", objectives=("flow",), calls_per_step=2)
def edm_heun(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int, *, eta: float = 0.0,
             noise: Callable[[], torch.Tensor] | None = None, progress: bool = False) -> torch.Tensor:
    """EDM's second-order sampler run on a flow model, ``2 * steps - 1`` calls. The state is EDM's
    ``x_sigma = x_t / (1 - t)`` with ``sigma = t / (1 - t)``; the denoised estimate is ``x_t - t v``. It starts
    from ``sigma_max`` times the given noise, as EDM does, and reproduces MaskDiT's ``edm_sampler`` (no churn)."""
    sigmas = edm_sigmas(steps)
    x = x * sigmas[0]

    def slope(x_sigma: torch.Tensor, sigma: float) -> torch.Tensor:  # dx_sigma / dsigma = (x_sigma - D) / sigma
        t = sigma / (1 + sigma)
        x_t = x_sigma / (1 + sigma)
        return (x_sigma - (x_t - t * fn(x_t, t))) / sigma

    for i in _steps(steps, progress):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = slope(x, s)
        x_next = x + (s_next - s) * d
        if s_next > 0:
            x_next = x + (s_next - s) * 0.5 * (d + slope(x_next, s_next))
        x = x_next
    return x


@SAMPLERS.register("ddim", "DDIM on a respaced DDPM chain; eta 0 deterministic, 1 ancestral",
                   objectives=("ddpm",), default=True, calls_per_step=1, takes_eta=True)
def ddim(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int, *, eta: float = 0.0,
         noise: Callable[[], torch.Tensor] | None = None, progress: bool = False,
         spacing: str = "linspace") -> torch.Tensor:
    """DDIM on ``steps`` evenly spaced steps of the chain (:data:`SPACINGS`); ``eta = 0`` is deterministic,
    1 is ancestral."""
    if not 1 <= steps <= objective.num_steps:
        raise ConfigError(f"steps must be in [1, {objective.num_steps}] for this DDPM, got {steps}")
    if eta > 0 and noise is None:
        noise = NoiseStreams(0, range(len(x)), x.shape[1:])
    ks = respaced_steps(objective.num_steps, steps, spacing)
    ab = objective.alpha_bar.tolist()
    channels = x.shape[1]
    for i in _steps(steps, progress):
        k = ks[i]
        a, a_prev = ab[k], (ab[ks[i + 1]] if i + 1 < steps else 1.0)
        out = fn(x, objective.time_of_step(k))
        eps = out[:, :channels]  # a learned-variance model adds channels after the prediction
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise().to(x)
    return x


#: How a ``T``-step chain is thinned to ``n`` sampling steps (largest first): ``linspace`` (the default)
#: rounds ``linspace(T - 1, 0, n)``, the set DiT's ``space_timesteps(T, "n")`` takes, ending at 0;
#: ``leading`` takes ``k * (T // n)`` for ``k = n-1..0``, diffusers' default ``timestep_spacing``.
SPACINGS: Registry[None] = Registry("step spacing")
SPACINGS.add("linspace", None, "evenly spaced over the chain, ends included")
SPACINGS.add("leading", None, "every (num_steps // steps)-th step from 0 (DiT, diffusers)")
#: The noise seed of the float samples an accelerator calibrates on (int8).
CALIBRATION_SEED = 2**31 - 1


def respaced_steps(num_steps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """``steps`` steps of a ``num_steps`` chain, from the largest down to 0 (see :data:`SPACINGS`)."""
    if spacing == "leading":
        return [k * (num_steps // steps) for k in range(steps - 1, -1, -1)]
    if spacing != "linspace":
        raise ConfigError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    return torch.linspace(num_steps - 1, 0, steps).round().long().tolist()


@SAMPLERS.register("ddpm", "ancestral DDPM on a respaced chain (DDIM with eta 1)", objectives=("ddpm",),
                   calls_per_step=1)
def ddpm_ancestral(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int, *, eta: float = 0.0,
                   noise: Callable[[], torch.Tensor] | None = None, progress: bool = False,
                   spacing: str = "linspace") -> torch.Tensor:
    """Ancestral sampling on the respaced chain (``eta`` is ignored): each step draws from the posterior
    ``q(x_prev | x, x0)`` around the model's ``x0``. Its variance is the posterior's ``beta_tilde``
    (DDIM with ``eta = 1``), or for a learned-variance model (``2C`` output channels) the model's own
    interpolation between ``log beta_tilde`` and ``log beta`` of the respaced chain (DiT's sampler)."""
    if not 1 <= steps <= objective.num_steps:
        raise ConfigError(f"steps must be in [1, {objective.num_steps}] for this DDPM, got {steps}")
    if noise is None:
        noise = NoiseStreams(0, range(len(x)), x.shape[1:])
    ks = respaced_steps(objective.num_steps, steps, spacing)
    ab = objective.alpha_bar.tolist()
    channels = x.shape[1]
    # the respaced chain's betas and posterior variances (0 at the final step, which adds no noise)
    a_of = [ab[k] for k in ks] + [1.0]
    beta = [1 - a_of[i] / a_of[i + 1] for i in range(steps)]
    tilde = [(1 - a_of[i + 1]) / (1 - a_of[i]) * beta[i] for i in range(steps)]
    log_tilde = [math.log(v) if v > 0 else 0.0 for v in tilde]
    for i in _steps(steps, progress):
        a, a_prev = a_of[i], a_of[i + 1]
        out = fn(x, objective.time_of_step(ks[i]))
        eps = out[:, :channels]
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - tilde[i], 0.0) ** 0.5 * eps  # the posterior mean
        if i + 1 == steps:
            break  # the last step adds no noise
        if out.shape[1] == 2 * channels:
            frac = (out[:, channels:].double() + 1) / 2
            log_var = frac * math.log(beta[i]) + (1 - frac) * log_tilde[i]
            x = x + (0.5 * log_var).exp().to(x.dtype) * noise().to(x)
        else:
            x = x + tilde[i] ** 0.5 * noise().to(x)
    return x


#: sampler name -> its inversion ``(fn, x0, objective, steps, progress) -> x at t = 1``: the deterministic
#: scheme run from data to noise on the same time grid, so sampling from the result with that sampler and
#: ``steps`` returns (nearly) ``x0`` (DDIM inversion; reverse Euler / Heun for flow). ``ddpm`` has none.
INVERSIONS: Registry[Sampler] = Registry("inversion", key="--sampler")


@INVERSIONS.register("euler", "Euler steps from t=0 to t=1 on the flow ODE")
def flow_euler_inverse(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int,
                       progress: bool = False) -> torch.Tensor:
    ts = torch.linspace(0.0, 1.0, steps + 1).tolist()
    for i in _steps(steps, progress):
        x = x + (ts[i + 1] - ts[i]) * fn(x, ts[i])
    return x


@INVERSIONS.register("heun", "Heun steps from t=0 to t=1 on the flow ODE")
def flow_heun_inverse(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int,
                      progress: bool = False) -> torch.Tensor:
    ts = torch.linspace(0.0, 1.0, steps + 1).tolist()
    for i in _steps(steps, progress):
        dt = ts[i + 1] - ts[i]
        v = fn(x, ts[i])
        x = x + dt * 0.5 * (v + fn(x + dt * v, ts[i + 1]))
    return x


@INVERSIONS.register("ddim", "DDIM inversion (eta 0) up the respaced chain")
def ddim_inverse(fn: ModelFn, x: torch.Tensor, objective: Objective, steps: int,
                 progress: bool = False) -> torch.Tensor:
    """Each step re-noises the model's ``x0`` with its own ``eps`` to the next noise level; the ``eps`` of
    the first step (from clean data) comes from the chain's lowest sampling step."""
    if not 1 <= steps <= objective.num_steps:
        raise ConfigError(f"steps must be in [1, {objective.num_steps}] for this DDPM, got {steps}")
    ks = respaced_steps(objective.num_steps, steps)
    ab = objective.alpha_bar.tolist()
    a_of = [ab[k] for k in ks] + [1.0]
    channels = x.shape[1]
    for step in _steps(steps, progress):
        i = steps - 1 - step  # from noise level a_of[i + 1] up to a_of[i]
        k = ks[i + 1] if i + 1 < steps else ks[i]
        eps = fn(x, objective.time_of_step(k))[:, :channels]
        x0 = (x - (1 - a_of[i + 1]) ** 0.5 * eps) / a_of[i + 1] ** 0.5
        x = a_of[i] ** 0.5 * x0 + (1 - a_of[i]) ** 0.5 * eps
    return x


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
    **draws: float,
) -> torch.Tensor:
    """Run the named sampler from ``x`` (the state at ``t = 1``) to ``t = 0``; ``noise`` draws the step
    noise of stochastic samplers (default: per-sample streams of seed 0). ``draws``: a masked model's sampler
    options, ``temperature`` and ``choice_temperature`` (:mod:`maskdit.diffusion.masked`)."""
    check_sampler(sampler, objective.name)
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    return SAMPLERS.get(sampler)(fn, x, objective, steps, eta=eta, noise=noise, progress=progress, **draws)


def default_sampler(objective: Objective | str) -> str:
    """The sampler used when none is named: the registered default for the objective (heun, ddim)."""
    name = objective if isinstance(objective, str) else objective.name
    return SAMPLERS.names(objectives=name, default=True)[0]


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
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
    given: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    guidance: str = "cfg",
    guidance_channels: int | None = None,
    size: Sequence[int] | None = None,
    accel: str | None = None,
    start: torch.Tensor | None = None,
    guidance_power: float | None = None,
    negative: torch.Tensor | None = None,
    temperature: float | None = None,
    choice_temperature: float | None = None,
) -> torch.Tensor:
    """``num`` samples ``(num, C, *S)`` in model space (``size``: another ``S``, for rotary models). The
    network sees batches of exactly ``batch_size`` samples (the last one padded) and the starting and step
    noise of sample ``i`` depend only on ``seed`` and ``i``, so sample ``i`` depends only on ``seed``,
    ``i`` and ``batch_size`` (module docstring). ``accel`` names a sampling accelerator
    (:mod:`maskdit.diffusion.accel`), opened afresh for every batch. ``start`` ``(num, C, *S)`` replaces the
    seeded starting noise (the result of :func:`invert`, to reconstruct or edit real inputs); step noise still
    comes from ``seed``.

    With a condition mask ``given`` ``(num, N)`` and ``context`` ``(num, C, *S)``, the given tokens are
    held to their context values before every model call and in the result, which therefore equals
    ``context`` exactly on them; only the other tokens are generated.

    ``temperature`` and ``choice_temperature``: a masked model's categorical draws and MaskGIT's confidence noise
    (:mod:`maskdit.diffusion.masked`; ``None``: 1 and MaskGIT's 4.5).
    """
    sampler = sampler or default_sampler(objective)
    check_sampler(sampler, objective.name)
    draws = {k: v for k, v in (("temperature", temperature), ("choice_temperature", choice_temperature))
             if v is not None}
    if draws and not SAMPLERS.entry(sampler).facts.get("discrete"):
        raise ConfigError(f"{', '.join(draws)} set the draws of a masked model's sampler; sampler {sampler!r} "
                          "integrates real values: leave them out")
    discrete = SAMPLERS.entry(sampler).facts.get("discrete", False)
    if draws.get("temperature", 1.0) <= 0 or draws.get("choice_temperature", 0.0) < 0 or (accel and discrete):
        raise ConfigError("a masked model samples with a positive temperature, a non-negative choice temperature "
                          "and no accelerator (their caches assume a continuous chain)")
    device = next(model.parameters()).device
    shape = (model.in_channels, *(size or model.input_size))
    if start is not None:
        if tuple(start.shape) != (num, *shape):
            raise ConfigError(f"the starting noise has shape {tuple(start.shape)}; this model and count need "
                              f"{(num, *shape)}")
        noise = start.float()
    else:
        noise = torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed))
    if labels is not None and len(labels) != num:
        raise ConfigError(f"{len(labels)} labels for {num} samples")
    if hasattr(objective, "prior"):  # a masked model: every cell masked
        if start is not None:
            raise ConfigError("a masked model's chain starts with every cell masked: it takes no starting noise")
        noise = objective.prior(noise)
    elif start is None:  # a restoration chain (objective.source=control) starts at the degraded image
        noise = chain_start(objective, noise, getattr(model, "conditioner", None), labels)
    if getattr(objective, "source", "noise") != "noise" and eta > 0:
        raise ConfigError(f"--eta {eta}: stochastic steps re-noise towards Gaussian noise, but this model's chain "
                          "starts at its control map (objective.source=control): sample with --eta 0")
    if given is not None:
        if context is None or len(given) != num or len(context) != num:
            raise ConfigError(f"a condition mask needs one mask and one context per sample ({num})")
        if bool(given.all(dim=1).any()):
            raise ConfigError("the condition mask leaves nothing to generate for some sample: mark tokens to generate")
    if accel:
        def calibrate(float_model: torch.nn.Module, n: int) -> torch.Tensor:  # float samples, a fixed seed
            if labels is None or labels.dim() == 1:
                y = None if labels is None else torch.arange(n) % max(1, getattr(float_model, "num_classes", 1))
            else:  # caption token ids: the ones asked for, in turn
                y = labels[torch.arange(n) % len(labels)]
            return generate(float_model, objective, n, y, sampler, steps, guidance_scale, guidance_interval, eta,
                            CALIBRATION_SEED, batch_size, guidance=guidance, guidance_channels=guidance_channels,
                            size=size, guidance_power=guidance_power)
        key = (objective.name, sampler, steps, guidance_scale, tuple(guidance_interval or ()), eta, guidance,
               guidance_channels, tuple(size or ()), labels is None, guidance_power)
        model = transformed(model, accel, calibrate, key)
    out = []
    for first in tqdm(batches(num, batch_size), desc="sampling", disable=not progress or num <= batch_size):
        part = slice(first, first + batch_size)
        kept = len(noise[part])
        y = padded(labels[part], batch_size).to(device) if labels is not None else None
        neg = padded(negative[part], batch_size).to(device) if negative is not None else None
        x = padded(noise[part], batch_size).to(device)
        streams = NoiseStreams(seed, range(first, first + batch_size), shape)
        calls = steps * SAMPLERS.entry(sampler).facts["calls_per_step"]
        with accelerated(model, accel, calls), condition_cache(model), cached_routes():  # weights fixed for a batch
            if given is None:
                fn = guided(model, y, guidance_scale, guidance_interval, guidance=guidance,
                            channels=guidance_channels, power=guidance_power, negative=neg)
                x = sample(fn, x, objective, sampler, steps, eta, streams, **draws)
            else:
                g, ctx = padded(given[part], batch_size).to(device), padded(context[part], batch_size).to(device)

                def hold(x: torch.Tensor, g: torch.Tensor = g, ctx: torch.Tensor = ctx) -> torch.Tensor:
                    return hold_given(x, ctx, g, model.patch_size)

                fn = guided(model, y, guidance_scale, guidance_interval, given=g, guidance=guidance,
                            channels=guidance_channels, power=guidance_power, negative=neg)
                x = hold(sample(lambda x, t, fn=fn: fn(hold(x), t), hold(x), objective, sampler, steps, eta,
                                streams, **draws))
        out.append(x[:kept].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def invert(
    model: torch.nn.Module,
    objective: Objective,
    x0: torch.Tensor,
    labels: torch.Tensor | None = None,
    sampler: str | None = None,
    steps: int = 50,
    guidance_scale: float = 1.0,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
) -> torch.Tensor:
    """The starting noise ``(N, C, *S)`` from which ``sampler`` with ``steps`` (and the same labels and
    guidance) draws ``x0`` (model space): the deterministic sampler run backwards (:data:`INVERSIONS`).
    Guidance above 1 makes the inversion drift (null-text inversion's subject); 1 inverts best. Batches
    are padded as in :func:`generate`, so input ``i``'s noise depends only on that input and ``batch_size``."""
    sampler = sampler or default_sampler(objective)
    check_sampler(sampler, objective.name)
    if sampler not in INVERSIONS:
        usable = [n for n in INVERSIONS.names() if n in SAMPLERS.names(objectives=objective.name)]
        if not usable:
            raise ConfigError(f"this model's {objective.name} chain reveals ids at random: it has no deterministic "
                              "inverse to invert images with")
        raise ConfigError(f"sampler {sampler!r} is stochastic and cannot be inverted: use {one_of(usable)}")
    if labels is not None and len(labels) != len(x0):
        raise ConfigError(f"{len(labels)} labels for {len(x0)} inputs")
    device = next(model.parameters()).device
    out = []
    starts = batches(len(x0), batch_size)
    for first in tqdm(starts, desc="inverting", disable=not progress or len(starts) == 1):
        part = slice(first, first + batch_size)
        y = padded(labels[part], batch_size).to(device) if labels is not None else None
        fn = guided(model, y, guidance_scale)
        x = padded(x0[part], batch_size).to(device).float()
        out.append(INVERSIONS.get(sampler)(fn, x, objective, steps)[:len(x0[part])].float().cpu())
    return torch.cat(out)


@dataclass
class SampleConfig:
    sampler: str | None = None  #: a SAMPLERS entry that fits the objective; None: its default
    steps: int = 25
    guidance_scale: float = 1.0
    guidance_interval: list[float] | None = None  #: [t_low, t_high]: guide only there
    guidance: str = "cfg"  #: a maskdit.diffusion.guidance.GUIDANCES entry: cfg | path-drop | route-contrast | context
    eta: float = 0.0  #: ddim only, in [0, 1]
    guidance_channels: int | None = None  #: guide only the first N channels, the rest from the conditional branch
    guidance_power: float | None = None  #: MDT's power-cosine schedule of the scale over t (null: constant)
    temperature: float | None = None  #: masked models: the categorical draws' temperature (null: 1)
    choice_temperature: float | None = None  #: the maskgit sampler: Gumbel noise on its confidences (null: 4.5)

    def merged(self, given: dict[str, Any], fallback: dict[str, Any] | None = None) -> dict[str, Any]:
        """These settings as a dict of fields, overridden field by field: by ``given`` where not None (the command
        line), else by ``fallback`` (e.g. what a ``--from-noise`` file recorded). Other keys are ignored."""
        merged = {}
        for f in dataclasses.fields(self):
            for source in (given, fallback or {}):
                if source.get(f.name) is not None:
                    merged[f.name] = source[f.name]
                    break
            else:
                merged[f.name] = getattr(self, f.name)
        return merged

    def validate(self) -> None:
        """Check every ``sample.*`` value (the sampler's fit to the objective is a cross-section rule)."""
        check_keys("sample.", self, [
            ("sampler", self.sampler is None or self.sampler in SAMPLERS, "one of " + one_of(SAMPLERS.names())),
            ("steps", self.steps >= 1, "at least 1"),
            ("guidance_scale", self.guidance_scale >= 0, "non-negative"),
            ("guidance_interval", self.guidance_interval is None
             or (len(self.guidance_interval) == 2
                 and 0 <= self.guidance_interval[0] <= self.guidance_interval[1] <= 1),
             "null or [t_low, t_high] with 0 <= t_low <= t_high <= 1"),
            ("eta", 0 <= self.eta <= 1, "in [0, 1]"),
            ("guidance_channels", self.guidance_channels is None or self.guidance_channels >= 1,
             "null (every predicted channel) or at least 1"),
            ("guidance_power", self.guidance_power is None or self.guidance_power > 0,
             "null (a constant scale) or positive"),
            ("guidance", self.guidance in GUIDANCES, "one of " + one_of(GUIDANCES.names())),
            ("temperature", self.temperature is None or self.temperature > 0, "null (1) or positive"),
            ("choice_temperature", self.choice_temperature is None or self.choice_temperature >= 0,
             "null (4.5) or non-negative"),
        ])
