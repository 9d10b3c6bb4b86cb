"""Samplers on Gaussian data, where the optimal predictor is known in closed form.

Data x0 ~ N(mu, s^2) per coordinate. Flow: x_t = (1-t) x0 + t eps, so x_t ~ N((1-t) mu, (1-t)^2 s^2 + t^2)
and E[x0|x_t], E[eps|x_t] are linear in x_t. DDPM: x_t = a x0 + b eps with a^2 = alpha_bar, b^2 = 1 - a^2.
A correct sampler driven by the exact predictor must land on N(mu, s^2).
"""

import math

import pytest
import torch

from maskdit.conditions.label import LabelConditioner
from maskdit.diffusion.guidance import guided
from maskdit.diffusion.objectives import DDPM, FlowMatching, token_mse
from maskdit.diffusion.samplers import sample
from maskdit.errors import ConfigError

MU, S = 1.5, 0.5


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def flow_velocity(x, t):
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    var = (1 - t) ** 2 * S**2 + t**2
    resid = x.double() - (1 - t) * MU
    x0 = MU + (1 - t) * S**2 / var * resid
    eps = t / var * resid
    return (eps - x0).float()


def closed_form_alpha_bar(schedule, k, num_steps=1000):
    """alpha_bar of step k from the published formulas, independent of maskdit's tables: the linear
    schedule's betas run from 1e-4 to 0.02 (Ho et al.); the cosine one is f(k+1)/f(0) with
    f(u) = cos((u/T + s)/(1 + s) * pi/2)^2, s = 0.008 (Nichol & Dhariwal; betas clipped at 0.999)."""
    if schedule == "linear":
        betas = [1e-4 + (0.02 - 1e-4) * i / (num_steps - 1) for i in range(k + 1)]
        return math.prod(1 - b for b in betas)
    f = lambda u: math.cos((u / num_steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return math.prod(1 - min(1 - f(i + 1) / f(i), 0.999) for i in range(k + 1))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_schedules_match_the_published_formulas(schedule):
    objective = DDPM(schedule)
    for k in (0, 1, 10, 250, 500, 990, 999):
        assert objective.alpha_bar[k].item() == pytest.approx(closed_form_alpha_bar(schedule, k), rel=1e-9, abs=1e-15)
    if schedule == "cosine":  # unclipped, alpha_bar is the ratio f(k+1)/f(0) directly
        f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        assert objective.alpha_bar[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)


def ddpm_eps(objective):
    def fn(x, t):
        k = round(t * objective.num_steps) - 1  # package time (k + 1) / T
        ab = torch.tensor(closed_form_alpha_bar(objective.schedule, k), dtype=torch.float64)
        a, b2 = ab.sqrt(), 1 - ab
        return (b2.sqrt() / (ab * S**2 + b2) * (x.double() - a * MU)).float()
    return fn


def _check(samples):
    assert abs(samples.mean().item() - MU) < 0.03
    assert abs(samples.std().item() - S) < 0.03


@pytest.mark.parametrize("sampler, steps, calls", [("euler", 100, 100), ("heun", 12, 24)])
def test_flow_samplers_reach_target_distribution(sampler, steps, calls):
    fn = Counter(flow_velocity)
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    x = sample(fn, noise, FlowMatching(), sampler, steps)
    _check(x)
    assert fn.calls == calls


def test_euler_with_few_steps_is_biased_and_heun_fixes_it():
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    euler = sample(flow_velocity, noise, FlowMatching(), "euler", 3)
    heun = sample(flow_velocity, noise, FlowMatching(), "heun", 3)
    assert abs(heun.std().item() - S) < abs(euler.std().item() - S)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 50, 0.0), ("ddim", 100, 0.5), ("ddpm", 250, 1.0)])
def test_ddpm_samplers_reach_target_distribution(schedule, sampler, steps, eta):
    objective = DDPM(schedule)
    fn = Counter(ddpm_eps(objective))
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)  # one stream for the whole batch: the maths under test, 100x faster
    x = sample(fn, noise, objective, sampler, steps, eta=eta, noise=lambda: torch.randn(20000, 1, generator=gen))
    _check(x)
    assert fn.calls == steps


def test_sampler_must_fit_objective():
    with pytest.raises(ConfigError, match="does not fit the flow objective"):
        sample(flow_velocity, torch.zeros(2, 1), FlowMatching(), "ddim", 5)


def test_flow_training_pair_is_consistent():
    obj = FlowMatching("uniform")
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.rand(4)
    xt, v = obj.noisy(x0, eps, t), obj.target(x0, eps, t)
    # following the target velocity from x_t for time t lands on x0
    assert torch.allclose(xt - t[:, None] * v, x0, atol=1e-6)
    assert torch.equal(obj.noisy(x0, eps, torch.zeros(4)), x0)


def test_time_sampling_ranges():
    g = torch.Generator().manual_seed(0)
    t = FlowMatching("logit_normal").sample_time(10000, g)
    assert 0 < t.min() and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.02
    ddpm = DDPM("linear", 1000)
    t = ddpm.sample_time(1000, g)
    assert torch.equal(ddpm.time_of(ddpm.step_of(t)).float(), t)
    assert ddpm.alpha_bar[0] > 0.999 and ddpm.alpha_bar[-1] < 1e-4


def test_token_mse_averages_over_covered_tokens_only():
    pred, target = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    target[0, 1] = 2.0  # error 4 on one token
    target[1, 3] = 100.0  # a huge error on a token the weight leaves out
    weight = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    assert token_mse(pred, target, weight).item() == pytest.approx(4.0 / 3)
    assert token_mse(pred, target).item() == pytest.approx((4.0 + 10000.0) / 8)


class LabelModel(torch.nn.Module):
    """Output = label value broadcast; records the labels it saw. Conditioned on 3 classes (null label 3)."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.conditioner = LabelConditioner(3, 4)
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append(y.clone())
        return y.float().reshape(-1, 1).expand_as(x) + x


def test_guidance_scale_one_is_conditional_output_with_one_pass():
    model = LabelModel()
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 1])
    out = guided(model, y, scale=1.0)(x, 0.5)
    assert torch.equal(out, model(x, None, y))
    assert len(model.seen) == 2 and torch.equal(model.seen[0], y)


def test_guidance_uses_null_label_for_unconditional_half_and_interval():
    model = LabelModel()
    x, y = torch.zeros(2, 1), torch.tensor([1, 2])
    fn = guided(model, y, scale=3.0, interval=(0.2, 0.8))
    out = fn(x, 0.5)
    assert torch.equal(model.seen[-1], torch.tensor([1, 2, 3, 3]))
    # u + 3 (c - u) with c = y, u = 3
    assert torch.equal(out, (3 + 3 * (y - 3)).float().reshape(-1, 1))
    out = fn(x, 0.9)  # outside the interval: conditional only
    assert torch.equal(model.seen[-1], y) and torch.equal(out, y.float().reshape(-1, 1))
