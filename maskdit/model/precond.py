"""Preconditioning: a network trained as another family's denoiser, presented as a flow-matching model.

MaskDiT's released models are EDM denoisers (Karras et al. 2022): ``D(x, sigma) = c_skip x + c_out
F(c_in x, ln(sigma) / 4)`` on ``x = x0 + sigma * noise``. maskdit's flow time ``t`` and EDM's noise level are
the same path in other units: ``x_t = (1 - t) x0 + t noise = x_sigma / (1 + sigma)`` with ``sigma = t / (1 - t)``,
and the velocity is ``v = (x_t - x0) / t``. So :class:`EDMPrecond` feeds the network EDM's inputs and returns
``v = (x_t - D) / t``: every flow sampler, guidance and task runs on it unchanged, and Euler steps on this
velocity are exactly EDM's Euler steps in ``sigma`` (both are DDIM). Outside EDM's range
``[sigma_min, sigma_max]`` (``t`` = 0 or 1) the network sees the clamped level, as EDM's sampler never leaves it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from maskdit.grid import patchify
from maskdit.masks import gather_tokens
from maskdit.registry import Registry

#: preconditioning name -> module class; ``DiT(precond=NAME)``
PRECONDS: Registry[None] = Registry("preconditioning", key="model.precond")
PRECONDS.add("edm", None, "EDM's preconditioning presented as a flow velocity (MaskDiT imports)")


class EDMPrecond(nn.Module):
    """EDM's denoiser preconditioning around a network ``net(x, c_noise, **kw)``, as a flow velocity."""

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)

    def forward(self, net: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                patch_size: tuple[int, ...], keep_idx: torch.Tensor | None = None, **kw) -> torch.Tensor:
        t_lo, t_hi = self.sigma_min / (1 + self.sigma_min), self.sigma_max / (1 + self.sigma_max)
        tc = t.to(torch.float64).clamp(t_lo, t_hi)
        sigma = tc / (1 - tc)
        sd2 = self.sigma_data**2
        c_in = (sd2 + sigma**2).rsqrt() * (1 + sigma)  # x_sigma = (1 + sigma) x_t
        c_skip = sd2 / (sigma**2 + sd2) * (1 + sigma)
        c_out = sigma * self.sigma_data * (sigma**2 + sd2).rsqrt()
        shape = (-1,) + (1,) * (x.dim() - 1)
        out = net(x * c_in.to(x.dtype).view(shape), (sigma.log() / 4).to(t.dtype), keep_idx=keep_idx, **kw)
        x_out = x if keep_idx is None else gather_tokens(patchify(x, patch_size), keep_idx)
        shape = (-1,) + (1,) * (out.dim() - 1)
        denoised = c_skip.to(out.dtype).view(shape) * x_out + c_out.to(out.dtype).view(shape) * out
        return (x_out - denoised) / tc.to(out.dtype).view(shape)
