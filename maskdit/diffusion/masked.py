"""Sampling and scoring a masked-diffusion model over token ids
(:class:`~maskdit.diffusion.objectives.MaskedDiffusion`).

Every sampler starts from the all-masked grid (id ``-1`` everywhere but in given cells) and reveals cells until
none is masked; a revealed cell never changes. ``fn(x, t)`` returns logits ``(B, V, *S)``.

* ``ancestral`` (MD4, MDLM): ``steps`` steps of the reverse chain on a uniform time grid; from ``t`` to ``s`` each
  masked cell is revealed with probability ``(m(t) - m(s)) / m(t)``, its id drawn from the model. A time-agnostic
  model's output depends on the grid alone, so a step in which no cell of the batch changed reuses the last
  output (MDLM's cache): exact, and most steps of a long chain reveal nothing.
* ``first-hitting`` (Zheng et al., "Masked diffusion models are secretly time-agnostic masked models"): with ``n``
  cells masked at time ``t`` the next reveal happens at ``tau`` with ``m(tau) = m(t) u^(1/n)``, drawn exactly; one
  masked cell, chosen uniformly, is revealed there. One network call per generated cell, whatever ``steps``; the
  same distribution as the ancestral chain in the limit of infinitely many steps.
* ``maskgit`` (Chang et al.): ``steps`` rounds of confidence-ordered parallel decoding. Every masked cell draws an
  id; the least confident stay masked, as many as MaskGIT's cosine schedule says (``n0 cos(pi/2 (i + 1) / steps)``),
  with Gumbel noise of scale ``choice_temperature * (1 - (i + 1) / steps)`` added to the confidences.

**Categorical draws are made in float64** (an inverse-CDF draw from one float64 uniform per cell). A float32
Gumbel-max draw is biased: float32 uniforms stop at ``1 - 2^-24``, which caps the Gumbel noise near 16.6 and
coarsens its upper tail, so rare ids are drawn too rarely (a lower effective temperature that flatters
generative perplexity); :func:`gumbel_max` reproduces it for the tests and the docs.

Randomness comes from :class:`~maskdit.diffusion.samplers.NoiseStreams` (one stream per sample), so sample ``i``
depends only on the seed, ``i`` and the batch size, as for the continuous samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from maskdit.diffusion.guidance import ModelFn
from maskdit.diffusion.objectives import MaskedDiffusion
from maskdit.diffusion.samplers import SAMPLERS, NoiseStreams, _steps
from maskdit.errors import ConfigError
from maskdit.grid import patchify

#: MaskGIT's default scale of the Gumbel noise on the confidences (annealed to 0 over the rounds).
CHOICE_TEMPERATURE = 4.5


def categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One id per row of ``logits`` ``(M, V)`` from float64 uniforms ``u`` ``(M,)``: the inverse of the softmax's
    cumulative distribution at ``temperature``, computed in float64."""
    if temperature <= 0:
        raise ConfigError(f"the sampling temperature must be positive, got {temperature}")
    cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(dim=-1)
    target = (u.double().to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_max(logits.shape[-1] - 1)


def gumbel_max(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Gumbel-max draws, one per row of ``logits``, from uniforms ``u`` of the same shape, computed in ``u``'s dtype.
    float32 uniforms (``torch.rand``'s: multiples of ``2^-24`` below 1) show the truncation bias the module
    docstring describes; float64 uniforms push the cap past 36, beyond any practical vocabulary."""
    tiny = torch.finfo(u.dtype).tiny
    return (logits.to(u.dtype) - torch.log(-torch.log(u.clamp_min(tiny)))).argmax(dim=-1)


#: The largest Gumbel noise float32 uniforms can give: ``-log(-log(1 - 2^-24))``.
FLOAT32_GUMBEL_CAP = -math.log(-math.log1p(-2.0**-24))


def _cells(x: torch.Tensor) -> torch.Tensor:
    """The grid ``(B, C, *S)`` as a view ``(B, L)`` of its cells (``L = C * prod(S)``)."""
    return x.reshape(len(x), -1)


def _logits_of_cells(out: torch.Tensor, channels: int) -> torch.Tensor:
    """Model output ``(B, C * V, *S)`` -> ``(B, L, V)``, the cells in :func:`_cells`' order."""
    b, vocab = len(out), out.shape[1] // channels
    return out.reshape(b, channels, vocab, -1).transpose(2, 3).reshape(b, -1, vocab)


def _streams(noise: Callable[[], torch.Tensor] | None, x: torch.Tensor) -> NoiseStreams:
    if isinstance(noise, NoiseStreams):
        return noise
    return NoiseStreams(0, range(len(x)), x.shape[1:])


def _check(objective: Any) -> MaskedDiffusion:
    if not isinstance(objective, MaskedDiffusion):
        raise ConfigError("the ancestral, first-hitting and maskgit samplers generate token ids: they need a model "
                          "trained with objective.name=masked")
    return objective


@SAMPLERS.register("ancestral", "masked diffusion: MD4's reverse chain on a uniform time grid; a time-agnostic "
                   "model reuses its output while nothing changes (MDLM's cache)", objectives=("masked",),
                   default=True, calls_per_step=1, discrete=True)
def ancestral(fn: ModelFn, x: torch.Tensor, objective: Any, steps: int, *, eta: float = 0.0,
              noise: Callable[[], torch.Tensor] | None = None, progress: bool = False,
              temperature: float = 1.0, choice_temperature: float = CHOICE_TEMPERATURE) -> torch.Tensor:
    """The reverse chain in ``steps`` steps (at most ``steps`` calls; fewer for a time-agnostic model, whose
    output is reused while no cell of the batch changed)."""
    objective, streams = _check(objective), _streams(noise, x)
    x = x.clone()
    cells = _cells(x)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    shares = objective.masked_share(ts).tolist()
    logits, changed = None, True
    for i in _steps(steps, progress):
        u = streams.uniform((2, cells.shape[1])).to(x.device)
        masked = cells < 0
        reveal = masked & (u[:, 0] < (1.0 if shares[i + 1] <= 0 else (shares[i] - shares[i + 1]) / shares[i]))
        if not bool(masked.any()):
            break
        if logits is None or changed or not objective.time_agnostic:
            logits = _logits_of_cells(fn(x, float(ts[i])), x.shape[1])
        rows, cols = reveal.nonzero(as_tuple=True)
        cells[rows, cols] = categorical(logits[rows, cols], u[rows, 1, cols], temperature).to(cells.dtype)
        changed = len(rows) > 0
    return x


@SAMPLERS.register("first-hitting", "masked diffusion: the exact time of the next reveal, one cell per network call "
                   "(steps is ignored)", objectives=("masked",), calls_per_step=1, discrete=True)
def first_hitting(fn: ModelFn, x: torch.Tensor, objective: Any, steps: int, *, eta: float = 0.0,
                  noise: Callable[[], torch.Tensor] | None = None, progress: bool = False,
                  temperature: float = 1.0, choice_temperature: float = CHOICE_TEMPERATURE) -> torch.Tensor:
    """First-hitting sampling: one call per masked cell. Each sample carries its own time, which the model gets
    (a time-agnostic model ignores it)."""
    objective, streams = _check(objective), _streams(noise, x)
    x = x.clone()
    cells = _cells(x)
    t = torch.ones(len(x), dtype=torch.float64)
    total = int((cells < 0).sum(dim=1).max())
    for _ in _steps(total, progress):
        u = streams.uniform((3,))
        masked = (cells < 0).cpu()
        n = masked.sum(dim=1)
        if not bool((n > 0).any()):
            break
        share = objective.masked_share(t) * u[:, 0] ** (1.0 / n.clamp_min(1))
        t = torch.where(n > 0, objective.time_of_share(share), t)
        logits = _logits_of_cells(fn(x, t.float().to(x.device)), x.shape[1])
        rank = (u[:, 1] * n).floor().long().clamp_max((n - 1).clamp_min(0))  # which masked cell, uniformly
        col = ((masked.cumsum(dim=1) - 1 == rank[:, None]) & masked).float().argmax(dim=1)
        rows = (n > 0).nonzero(as_tuple=True)[0]
        ids = categorical(logits[rows.to(x.device), col[rows].to(x.device)], u[rows, 2], temperature)
        cells[rows.to(x.device), col[rows].to(x.device)] = ids.to(cells.dtype)
    return x


@SAMPLERS.register("maskgit", "masked diffusion: MaskGIT's confidence-ordered parallel decoding in steps rounds "
                   "(cosine schedule, choice temperature)", objectives=("masked",), calls_per_step=1, discrete=True)
def maskgit(fn: ModelFn, x: torch.Tensor, objective: Any, steps: int, *, eta: float = 0.0,
            noise: Callable[[], torch.Tensor] | None = None, progress: bool = False,
            temperature: float = 1.0, choice_temperature: float = CHOICE_TEMPERATURE) -> torch.Tensor:
    """``steps`` rounds; after round ``i`` the ``floor(n0 cos(pi/2 (i + 1) / steps))`` least confident cells
    (at least one fewer than before) are still masked."""
    objective, streams = _check(objective), _streams(noise, x)
    x = x.clone()
    cells = _cells(x)
    length = cells.shape[1]
    n0 = (cells < 0).sum(dim=1)
    for i in _steps(steps, progress):
        u = streams.uniform((2, length)).to(x.device)
        masked = cells < 0
        n = masked.sum(dim=1)
        if not bool((n > 0).any()):
            break
        logits = _logits_of_cells(fn(x, objective.time_of_share(n.double() / length).float()), x.shape[1])
        ids = categorical(logits.reshape(-1, logits.shape[-1]), u[:, 0].reshape(-1), temperature).reshape(cells.shape)
        log_p = torch.log_softmax(logits.double() / temperature, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        ratio = (i + 1) / steps
        gumbel = -torch.log(-torch.log(u[:, 1].clamp(1e-300, 1 - 1e-16)))
        confidence = torch.where(masked, log_p + choice_temperature * (1 - ratio) * gumbel, math.inf)
        still = torch.floor(n0.double() * math.cos(0.5 * math.pi * ratio)).long()
        still = torch.minimum(still, (n - 1).clamp_min(0)) if i + 1 < steps else torch.zeros_like(still)
        order = confidence.argsort(dim=1).argsort(dim=1)  # each cell's rank, least confident first
        reveal = masked & (order >= still[:, None])
        cells[reveal] = ids[reveal].to(cells.dtype)
    return x


@torch.no_grad()
def bits_per_token(model: torch.nn.Module, objective: MaskedDiffusion, x0: torch.Tensor, y: Any = None,
                   times: int = 16, seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    """The masked-diffusion bound on ``-log2 p(x_0)`` per cell, averaged over the examples ``x0`` (model space,
    ``(N, 1, *S)``; ``y`` their condition values): the bound's time integral by ``times`` stratified times per
    example (one uniform offset per example), each with its own mask draw. Returns the mean bits per token and
    its standard error over examples."""
    objective = _check(objective)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    per_example = []
    for first in range(0, len(x0), batch_size):
        x = x0[first:first + batch_size].to(device)
        labels = None if y is None else y[first:first + batch_size].to(device)
        total = torch.zeros(len(x), dtype=torch.float64, device=device)
        offset = torch.rand(len(x), generator=generator, dtype=torch.float64)
        for k in range(times):
            t = ((offset + k) / times).clamp_min(1e-6).float()
            noise = torch.randn(x.shape, generator=generator).to(device)
            x_t = objective.noisy(x, noise, t.to(device))
            target = patchify(objective.target(x, noise, t.to(device)), model.patch_size)
            pred = patchify(model(x_t, t.to(device), labels), model.patch_size)
            total += objective.cell_loss(pred, target, t).flatten(1).mean(dim=1).double()
        per_example.append((total / times).cpu())
    bits = torch.cat(per_example) / math.log(2.0)
    return {"bits_per_token": float(bits.mean()),
            "stderr": float(bits.std() / math.sqrt(len(bits))) if len(bits) > 1 else 0.0,
            "num": len(bits), "times": times}
