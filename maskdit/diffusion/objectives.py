"""Training objectives. **The time convention of the whole package is fixed here.**

Time ``t`` is a float in ``[0, 1]``: ``t = 0`` is clean data, ``t = 1`` is (all but) pure noise. Models
receive ``t`` as given; samplers integrate from ``t = 1`` down to ``t = 0``.

* :class:`FlowMatching` (rectified flow): ``x_t = (1 - t) x_0 + t eps``; the model predicts the velocity
  ``v = eps - x_0`` (so ``dx/dt = v``).
* :class:`DDPM`: ``T`` discrete steps ``k = 0..T-1`` with ``alpha_bar_k`` from a linear or cosine schedule;
  step ``k`` is time ``t = (k + step_offset) / T`` (``step_offset`` 1 by default, so no step sits at the
  clean ``t = 0``; 0 for models imported from DiT, whose step ``k`` embeds ``1000 t = k``);
  ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps`` and the model predicts ``eps`` (and, with a
  learned variance, where its log-variance sits between the posterior's bounds).

* :class:`MaskedDiffusion` (absorbing-state diffusion over token ids, MD4 / MDLM): each cell of a grid of ids is
  masked (id ``-1``) with probability ``m(t)`` (``m(0) = 0``: clean; ``m(1) = 1``: all masked); the model predicts
  the logits of every cell's id, and the loss is the continuous-time bound: ``m'(t) / m(t)`` times the cross-entropy
  on the masked cells. Its samplers live in :mod:`maskdit.diffusion.masked`.

Each objective turns ``(x_0, eps, t)`` into the model input and the regression target, and its ``token_loss``
averages the error over exactly the tokens a loss covers (:func:`token_mse` for the real-valued ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from maskdit.errors import ConfigError, check_keys
from maskdit.grid import patchify, unpatchify
from maskdit.masks import gather_tokens
from maskdit.registry import Registry, one_of

#: name -> objective class (built from an ``ObjectiveConfig`` by its ``from_config``).
OBJECTIVES: Registry[type] = Registry("objective", key="objective.name")
TIME_SAMPLINGS: Registry[None] = Registry("time sampling", key="objective.time_sampling")
TIME_SAMPLINGS.add("uniform", None, "t ~ U(0, 1)")
TIME_SAMPLINGS.add("logit_normal", None, "t = sigmoid(N(logit_mean, logit_std)) (SD3)")
DDPM_SCHEDULES: Registry[None] = Registry("DDPM schedule", key="objective.schedule")
DDPM_SCHEDULES.add("linear", None, "DDPM's linear betas")
DDPM_SCHEDULES.add("cosine", None, "improved DDPM's cosine alpha-bar")
#: masked diffusion: the share of masked cells ``m(t)`` (``objective.schedule`` when ``objective.name=masked``).
MASKING_SCHEDULES: Registry[None] = Registry("masking schedule", key="objective.schedule")
MASKING_SCHEDULES.add("linear", None, "m(t) = t (MDLM, MD4's linear)")
MASKING_SCHEDULES.add("cosine", None, "m(t) = sin(pi t / 2): MaskGIT's cosine, MD4's cosine")


#: Where a flow's chain starts at ``t = 1`` (``objective.source``).
SOURCES: Registry[None] = Registry("chain source", key="objective.source")
SOURCES.add("noise", None, "Gaussian noise (generation)")
SOURCES.add("control", None, "the control map plus objective.kappa x noise: a degraded image's chain starts at it "
            "(ResShift's residual shifting, for restoration with control.signal=lowres:F or blur:S)")


@OBJECTIVES.register("flow", "rectified flow, velocity prediction")
class FlowMatching:
    """Rectified flow with velocity prediction; uniform or logit-normal training times.

    ``source="control"`` shifts the chain's start from noise to the degraded image: ``x_1 = map + kappa * noise``,
    where ``map`` is a controlled model's control map (a low-resolution or blurred copy, in the image's space), so
    the flow only has to carry the residual from the degraded image to the clean one (ResShift's residual shifting,
    on a straight path: few steps suffice). :func:`chain_start` builds that start in training and sampling."""

    name = "flow"
    prediction = "velocity"

    def __init__(self, time_sampling: str = "logit_normal", logit_mean: float = 0.0, logit_std: float = 1.0,
                 source: str = "noise", kappa: float = 1.0):
        if time_sampling not in TIME_SAMPLINGS:
            raise ConfigError(f"objective.time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}")
        if logit_std <= 0:
            raise ConfigError(f"objective.logit_std must be positive, got {logit_std}")
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std
        self.source, self.kappa = source, float(kappa)

    @classmethod
    def from_config(cls, cfg: Any) -> FlowMatching:
        return cls(cfg.time_sampling, cfg.logit_mean, cfg.logit_std, cfg.source, cfg.kappa)

    def sample_time(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.time_sampling == "uniform":
            return torch.rand(batch, generator=generator)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, generator=generator))

    @staticmethod
    def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _expand(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    @staticmethod
    def token_loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
        return token_mse(pred, target, weight)


def _betas(schedule: str, steps: int) -> torch.Tensor:
    if schedule == "linear":  # Ho et al. 2020, scaled to the number of steps
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":  # Nichol & Dhariwal 2021
        s = 0.008
        f = lambda k: math.cos((k / steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f(k + 1) / f(k), 0.999) for k in range(steps)], dtype=torch.float64)
    raise ConfigError(f"objective.schedule must be 'linear' or 'cosine', got {schedule!r}")


@OBJECTIVES.register("ddpm", "discrete-time DDPM, eps prediction")
class DDPM:
    """Denoising diffusion with noise (eps) prediction on ``num_steps`` discrete steps."""

    name = "ddpm"
    prediction = "eps"

    def __init__(self, schedule: str = "linear", num_steps: int = 1000, step_offset: int = 1):
        if num_steps < 2:
            raise ConfigError(f"objective.num_steps must be at least 2, got {num_steps}")
        if step_offset not in (0, 1):
            raise ConfigError(f"objective.step_offset must be 0 (DiT's t = k / T) or 1 (t = (k + 1) / T), "
                              f"got {step_offset}")
        self.schedule, self.num_steps, self.step_offset = schedule, num_steps, step_offset
        self.betas = _betas(schedule, num_steps)  # float64, index k
        self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)
        self._tables_on: dict[torch.device, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> DDPM:
        return cls(cfg.schedule, cfg.num_steps, cfg.step_offset)

    def time_of_step(self, k: int) -> float:
        """Step index -> package time ``t = (k + step_offset) / T`` as a Python float (for samplers)."""
        return (k + self.step_offset) / self.num_steps

    def time_of(self, k: torch.Tensor) -> torch.Tensor:
        """Step index -> package time ``t = (k + step_offset) / T``."""
        return (k.double() + self.step_offset) / self.num_steps

    def step_of(self, t: torch.Tensor) -> torch.Tensor:
        """Package time -> nearest step index."""
        return (t.double() * self.num_steps).round().long().sub(self.step_offset).clamp(0, self.num_steps - 1)

    def _tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The schedule's float64 tables on ``device`` (cached; looked up there, so no host sync)."""
        if device not in self._tables_on:
            ab = self.alpha_bar
            ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
            posterior = self.betas * (1 - ab_prev) / (1 - ab)  # 0 at k = 0: clipped to k = 1 for its log
            self._tables_on[device] = {k: v.to(device) for k, v in {
                "alpha_bar": ab, "alpha_bar_prev": ab_prev, "betas": self.betas,
                "log_posterior": torch.log(torch.cat([posterior[1:2], posterior[1:]])),
            }.items()}
        return self._tables_on[device]

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_bar`` at times ``t`` (float64, on ``t``'s device)."""
        return self._tables(t.device)["alpha_bar"][self.step_of(t)]

    def variance_terms(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                       v: torch.Tensor) -> torch.Tensor:
        """The variational bound's term at each element, in bits, for a learned variance (improved DDPM).

        ``v`` in [-1, 1] places the model's log-variance between the posterior's ``log beta_tilde_k`` and
        ``log beta_k``; the mean comes from ``eps``, which callers detach so this term trains only the
        variance (DiT's ``learn_sigma`` loss). Step ``k > 0``: KL(true posterior || model) per element;
        ``k = 0``: the negative log-likelihood of ``x0`` under the model's Gaussian discretised to 256
        bins on [-1, 1]. All tensors share one shape ``(B, ...)``; ``t`` is ``(B,)``.
        """
        tables, k = self._tables(t.device), self.step_of(t)
        def at(name: str) -> torch.Tensor:
            return _expand(tables[name][k], x0)
        ab, ab_prev, beta = at("alpha_bar"), at("alpha_bar_prev"), at("betas")
        x0, x_t, eps, v = x0.double(), x_t.double(), eps.double(), v.double()
        coef_x0, coef_xt = beta * ab_prev.sqrt() / (1 - ab), (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
        true_mean = coef_x0 * x0 + coef_xt * x_t
        true_log_var = at("log_posterior")
        pred_x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        mean = coef_x0 * pred_x0 + coef_xt * x_t
        frac = (v + 1) / 2
        log_var = frac * beta.log() + (1 - frac) * true_log_var
        kl = 0.5 * (-1.0 + log_var - true_log_var + (true_log_var - log_var).exp()
                    + (true_mean - mean) ** 2 * (-log_var).exp())
        nll = -_discretised_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        first = (k == 0).reshape(-1, *([1] * (x0.dim() - 1)))
        return (torch.where(first, nll, kl) / math.log(2.0)).float()

    def sample_time(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.randint(0, self.num_steps, (batch,), generator=generator)
        return self.time_of(k).float()

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = _expand(self.alpha_bar_at(t), x0).to(x0.dtype)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise

    @staticmethod
    def token_loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
        return token_mse(pred, target, weight)


#: The model-space id of a masked cell (the embedding maps it to its mask row; :mod:`maskdit.model.discrete`).
MASK_ID = -1
#: Training times start here: below it almost no cell is masked and ``m'(t) / m(t)`` only adds variance.
MIN_MASKED_TIME = 1e-3


@OBJECTIVES.register("masked", "absorbing-state (masked) diffusion over token ids; logits, the MD4/MDLM bound")
class MaskedDiffusion:
    """Masked diffusion over token ids (MD4, MDLM), in the package's time: cell ids ``(B, 1, *S)`` are masked
    independently with probability ``m(t)`` (:data:`MASKING_SCHEDULES`). The noise is the usual standard normal
    draw, mapped to a uniform ``u = Phi(eps)`` per cell, and a cell is masked where ``u < m(t)``: so the step
    sampler, seeds and resume work unchanged. The loss is the negative ELBO per cell,
    ``m'(t) / m(t) * CE(logits, x_0)`` on the masked cells (in nats; the bound in bits is it over ``ln 2``).

    ``time_agnostic``: the model gets no time input (the paper "Masked diffusion models are secretly time-agnostic
    masked models": the optimal prediction depends only on which cells are masked); the run builds its DiT with
    ``time_input=False``. Training times are stratified over each batch (one uniform offset, then evenly spread,
    as MD4's antithetic sampling), which lowers the variance of the weighted loss.
    """

    name = "masked"
    prediction = "logits"

    def __init__(self, schedule: str = "linear", time_agnostic: bool = False):
        if schedule not in MASKING_SCHEDULES:
            raise ConfigError(f"objective.schedule must be one of {one_of(MASKING_SCHEDULES.names())} for "
                              f"objective.name=masked, got {schedule!r}")
        self.schedule, self.time_agnostic = schedule, bool(time_agnostic)

    @classmethod
    def from_config(cls, cfg: Any) -> MaskedDiffusion:
        return cls(cfg.schedule, cfg.time_agnostic)

    def masked_share(self, t: torch.Tensor) -> torch.Tensor:
        """``m(t)``, the probability that a cell is masked at time ``t``."""
        return t if self.schedule == "linear" else torch.sin(0.5 * math.pi * t)

    def time_of_share(self, m: torch.Tensor) -> torch.Tensor:
        """The time at which a share ``m`` of the cells is masked (``m``'s inverse)."""
        m = m.clamp(0, 1)
        return m if self.schedule == "linear" else torch.asin(m) * (2 / math.pi)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """``m'(t) / m(t)``: the weight of a masked cell's cross-entropy in the bound."""
        if self.schedule == "linear":
            return 1 / t
        return 0.5 * math.pi / torch.tan(0.5 * math.pi * t)

    def sample_time(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = (torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(batch) / batch) % 1
        return (MIN_MASKED_TIME + (1 - MIN_MASKED_TIME) * u).float()

    def masked(self, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Which cells are masked at ``t`` for standard-normal ``noise`` (a uniform ``Phi(noise)`` below ``m(t)``)."""
        u = 0.5 * torch.erfc(-noise.double() / math.sqrt(2.0))
        return u < _expand(self.masked_share(t.double()), noise)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.where(self.masked(noise, t), torch.full_like(x0, MASK_ID), x0)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The id to predict in each masked cell, ``MASK_ID`` where nothing is to be predicted."""
        return torch.where(self.masked(noise, t), x0, torch.full_like(x0, MASK_ID))

    def prior(self, noise: torch.Tensor) -> torch.Tensor:
        """The chain's start at ``t = 1``: every cell masked."""
        return torch.full_like(noise, MASK_ID)

    def cell_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The bound's term of every cell, ``(B, K, P)`` from logits ``(B, K, P * V)`` and target ids ``(B, K, P)``:
        ``m'(t) / m(t)`` times the cross-entropy where a cell is masked, 0 elsewhere (nats)."""
        b, k, p = target.shape
        logits = pred.float().reshape(b * k * p, -1)
        ids = target.reshape(-1).round().long()
        ce = torch.nn.functional.cross_entropy(logits, ids.clamp_min(0), reduction="none").reshape(b, k, p)
        return torch.where(target >= 0, ce, 0.0) * _expand(self.rate(t.float().to(ce.device)), ce)

    def token_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
        """The bound per cell, averaged over the tokens ``weight`` covers (all without it)."""
        per_token = self.cell_loss(pred, target, t).mean(dim=-1)
        if weight is None:
            return per_token.mean()
        weight = weight.to(per_token.dtype)
        return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


Objective = FlowMatching | DDPM | MaskedDiffusion


def token_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over tokens ``(B, N, P)``, averaged over the tokens with ``weight`` 1.

    ``weight`` ``(B, N)`` (0/1 or soft) selects the tokens the loss covers; the result is the mean of the
    per-token errors over exactly those tokens, so its scale does not depend on how many are covered.
    """
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
    if weight is None:
        return per_token.mean()
    weight = weight.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


def regression_pair(
    objective: Objective, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, patch: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model input ``x_t`` (a grid) and the regression target as tokens ``(B, N, P)``."""
    return objective.noisy(x0, noise, t), patchify(objective.target(x0, noise, t), patch)


def training_pair(
    objective: Objective, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, patch: tuple[int, ...],
    given: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The model input ``x_t``, the target tokens and the loss weight ``(B, N)`` of one training step.

    ``given`` ``(B, N)`` bool (a condition mask): those tokens enter clean (their ``x_0`` at every ``t``)
    and get weight 0, so the loss covers generated tokens only; without it the weight is ``None`` (all).
    """
    x_t, target = regression_pair(objective, x0, noise, t, patch)
    if given is None:
        return x_t, target, None
    return hold_given(x_t, x0, given, patch), target, ~given


def denoising_loss(
    model: torch.nn.Module,
    objective: Objective,
    x0: torch.Tensor,
    y: torch.Tensor | None,
    t: torch.Tensor,
    noise: torch.Tensor,
    keep_idx: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
) -> torch.Tensor:
    """The objective's regression loss at times ``t``, averaged over the tokens it covers.

    ``keep_idx`` ``(B, K)``: only kept tokens pass the model and count. ``given`` ``(B, N)`` bool: those
    tokens enter clean and are left out of the loss (see :func:`training_pair`). The loss is the mean over
    tokens that are kept and generated.
    """
    x_t, target, weight = training_pair(objective, x0, noise, t, model.patch_size, given)
    pred = model(x_t, t, y, keep_idx, given=given)
    if keep_idx is None:
        pred = patchify(pred, model.patch_size)
    else:
        target = gather_tokens(target, keep_idx)
        weight = None if weight is None else weight.gather(1, keep_idx.flatten(1))
    return prediction_loss(model, objective, pred, target, x0, x_t, t, keep_idx, weight)


def prediction_loss(
    model: torch.nn.Module,
    objective: Objective,
    pred: torch.Tensor,
    target: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    keep_idx: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of prediction tokens ``pred`` (``keep_idx``'s, or all ``N``) against ``target`` tokens: the
    MSE, plus for a learned-variance model (``2C`` channels) the variational bound on its variance."""
    if not getattr(model, "learn_sigma", False):
        return objective.token_loss(pred, target, t, weight)
    # a learned variance: each token holds (patch offsets..., 2C) values, the target's C first
    b, n = pred.shape[:2]
    c = x0.shape[1]
    pred = pred.reshape(b, n, -1, 2 * c)
    eps, v = pred[..., :c].reshape(b, n, -1), pred[..., c:].reshape(b, n, -1)
    x0_tokens, xt_tokens = patchify(x0, model.patch_size), patchify(x_t, model.patch_size)
    if keep_idx is not None:
        x0_tokens, xt_tokens = gather_tokens(x0_tokens, keep_idx), gather_tokens(xt_tokens, keep_idx)
    bound = objective.variance_terms(x0_tokens, xt_tokens, t, eps.detach(), v)
    per_token = bound.mean(dim=-1)
    vb = per_token.mean() if weight is None else (per_token * weight).sum() / weight.sum().clamp_min(1.0)
    return token_mse(eps, target, weight) + vb


def hold_given(x: torch.Tensor, context: torch.Tensor, given: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """``x`` with the tokens marked ``given`` ``(B, N)`` replaced by ``context``'s (grids ``(B, C, *S)``)."""
    tokens = torch.where(given.unsqueeze(-1), patchify(context, patch), patchify(x, patch))
    return unpatchify(tokens, patch, x.shape[2:], x.shape[1])


def _discretised_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
                                         ) -> torch.Tensor:
    """log P(x) for data in [-1, 1] on 256 levels under N(mean, exp(log_scale)^2), the outer bins open."""
    def cdf(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    inv_scale = (-log_scale).exp()
    centred = x - mean
    upper, lower = cdf(inv_scale * (centred + 1 / 255)), cdf(inv_scale * (centred - 1 / 255))
    tiny = 1e-12
    log_below = upper.clamp_min(tiny).log()
    log_above = (1 - lower).clamp_min(tiny).log()
    log_mid = (upper - lower).clamp_min(tiny).log()
    return torch.where(x < -0.999, log_below, torch.where(x > 0.999, log_above, log_mid))


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.device)


def chain_start(objective: Objective, noise: torch.Tensor, conditioner: Any, y: Any) -> torch.Tensor:
    """The state at ``t = 1`` for standard-normal ``noise``: the noise itself, or with ``objective.source=control``
    the control map of the condition values ``y`` plus ``kappa`` times the noise. (A masked model's chain starts
    at its all-masked ``prior``; its noise only decides which cells are masked in training.)"""
    if getattr(objective, "source", "noise") == "noise":
        return noise
    if y is None or not hasattr(conditioner, "split"):
        raise ConfigError("objective.source=control starts the chain at the control map: a controlled model with its "
                          "condition values (maskdit sample --control FILE.npz)")
    control = conditioner.split(y)[1]
    if control.shape != noise.shape:
        raise ConfigError(f"objective.source=control needs a control map shaped like the images {tuple(noise.shape)}, "
                          f"got {tuple(control.shape)}: use a degradation (control.signal=lowres:F or blur:S)")
    return control.to(noise.device, noise.dtype) + objective.kappa * noise


def objective_from_config(cfg: Any) -> Objective:
    """The objective described by a :class:`maskdit.config.ObjectiveConfig`."""
    return OBJECTIVES.get(cfg.name).from_config(cfg)


@dataclass
class ObjectiveConfig:
    name: str = "flow"  #: a maskdit.diffusion.objectives.OBJECTIVES entry: flow | ddpm | masked
    time_sampling: str = "logit_normal"  #: flow: uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    schedule: str = "linear"  #: ddpm: linear | cosine (betas); masked: linear | cosine (the masked share m(t))
    num_steps: int = 1000  #: ddpm: length of the chain
    step_offset: int = 1  #: ddpm: step k is t = (k + step_offset) / T; 0 = DiT's integer timesteps (imports)
    source: str = "noise"  #: flow: where the chain starts, noise | control (ResShift: the degraded image + noise)
    kappa: float = 1.0  #: flow with source=control: the noise added to the degraded image at the start
    time_agnostic: bool = False  #: masked: the model gets no time input (it reads the masked cells alone)

    def validate(self) -> None:
        """Check every ``objective.*`` value against its registry and range."""
        check_keys("objective.", self, [
            ("name", self.name in OBJECTIVES, "one of " + one_of(OBJECTIVES.names())),
            ("time_sampling", self.time_sampling in TIME_SAMPLINGS, "one of " + one_of(TIME_SAMPLINGS.names())),
            ("logit_std", self.logit_std > 0, "positive"),
            ("schedule", self.schedule in (MASKING_SCHEDULES if self.name == "masked" else DDPM_SCHEDULES),
             "one of " + one_of((MASKING_SCHEDULES if self.name == "masked" else DDPM_SCHEDULES).names())),
            ("num_steps", self.num_steps >= 2, "at least 2"),
            ("step_offset", self.step_offset in (0, 1), "0 (DiT: t = k / T) or 1 (t = (k + 1) / T)"),
            ("source", self.source in SOURCES, "one of " + one_of(SOURCES.names())),
            ("source", self.source == "noise" or self.name == "flow", "noise unless objective.name=flow"),
            ("kappa", math.isfinite(self.kappa) and self.kappa >= 0, "a non-negative number"),
            ("time_agnostic", not self.time_agnostic or self.name == "masked", "false unless objective.name=masked"),
        ])
