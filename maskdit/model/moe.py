"""Mixture-of-experts feed-forward (DiT-MoE): top-k token-choice routing over routed experts, plus shared
experts every token passes through.

Each token's router picks its ``top_k`` experts (softmax over the router's logits, the chosen weights
renormalised to sum to 1). Routing has static shapes and never reads a device value on the host: every
expert has a fixed capacity of ``ceil(capacity * top_k * tokens / experts)`` slots, assignments take slots
in token order, and an assignment past its expert's capacity is not routed (its share of the output is
zero; the shared experts still see the token). Dropped tokens (masked training) never reach the block, so
they are simply not routed.

With ``routing=noise`` (MoDE) a sample's experts are chosen from its noise level alone: the router reads
sinusoidal features of the time the model was called with (:func:`noise_level`), not the tokens, so every token of a
sample goes to the same ``top_k`` experts. Samples are grouped per expert in training. While sampling, every sample
of a step shares its time, so inside :func:`cached_routes` the route of each time is computed once and kept, and
the layer runs just those experts on the whole batch: no router, no dispatch, ``top_k`` feed-forwards.

The balance loss (Switch Transformer / DiT-MoE) ``experts * sum_e f_e * P_e`` (``f_e`` the share of
assignments to expert ``e``, ``P_e`` its mean router probability) is 1 when routing is uniform and grows
as it concentrates; it goes to the training loss through the auxiliary-loss channel, weighted by
``balance``, and each expert's share ``f_e`` is logged as ``expert_load_<e>`` (mean over MoE blocks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskdit.errors import ConfigError
from maskdit.grid import sincos_time
from maskdit.model.aux import aux_active, report_aux_loss, report_aux_stat
from maskdit.registry import Registry

#: How tokens meet experts: ``token`` (each token picks its top-k experts, DiT-MoE) or ``expert`` (each
#: expert picks its ``capacity * top_k / experts`` share of each sample's tokens; balanced by construction,
#: no balance loss; micro-budget training).
ROUTINGS: Registry[None] = Registry("routing", key="model.moe.routing")
ROUTINGS.add("token", None, "each token picks its top_k experts")
ROUTINGS.add("expert", None, "each expert picks its tokens (expert choice)")
ROUTINGS.add("noise", None, "each sample's top_k experts from its noise level alone (MoDE): cacheable per step")

_time: ContextVar[torch.Tensor | None] = ContextVar("maskdit_noise_level", default=None)
_routes: ContextVar[dict[Any, list[tuple[int, float]]] | None] = ContextVar("maskdit_routes", default=None)
NOISE_FEATURES = 32  #: sinusoidal features of the time that a noise router reads


@contextmanager
def noise_level(t: torch.Tensor) -> Iterator[None]:
    """Make the model's time ``t`` ``(B,)`` visible to noise-routed layers for the calls inside the block."""
    token = _time.set(t)
    try:
        yield
    finally:
        _time.reset(token)


@contextmanager
def cached_routes() -> Iterator[dict[Any, list[tuple[int, float]]]]:
    """Inside the block, noise-routed layers compute each time's route once and run only its experts (sampling)."""
    cache: dict[Any, list[tuple[int, float]]] = {}
    token = _routes.set(cache)
    try:
        yield cache
    finally:
        _routes.reset(token)


@dataclass(frozen=True)
class MoESpec:
    """The MoE layer's shape: routed and shared experts, experts per token, capacity factor, loss weight,
    routing, and whether the router also sees the time/label conditioning (Switch-DiT, MoDE)."""

    experts: int
    shared: int = 0
    top_k: int = 2
    capacity: float = 2.0
    balance: float = 0.01
    routing: str = "token"
    time_gate: bool = False


class MoEMlp(nn.Module):
    """``shared`` always-on experts plus ``experts`` routed ones, each a feed-forward ``make_expert()``."""

    def __init__(self, dim: int, spec: MoESpec, make_expert: Any):
        super().__init__()
        if not 1 <= spec.top_k <= spec.experts:
            raise ConfigError(f"moe top_k {spec.top_k} must be in [1, experts={spec.experts}]")
        if spec.routing not in ROUTINGS:
            raise ConfigError(f"moe routing must be one of {', '.join(ROUTINGS)}, got {spec.routing!r}")
        if spec.capacity <= 0 or spec.shared < 0 or spec.balance < 0:
            raise ConfigError(f"moe capacity must be positive and shared, balance non-negative, got {spec}")
        self.spec = spec
        self.router = nn.Linear(NOISE_FEATURES if spec.routing == "noise" else dim, spec.experts, bias=False)
        self.gate_cond = nn.Linear(dim, spec.experts, bias=False) if spec.time_gate else None
        self.experts = nn.ModuleList(make_expert() for _ in range(spec.experts))
        self.shared = nn.ModuleList(make_expert() for _ in range(spec.shared))

    def logits(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Router logits ``(B, L, E)``; with ``time_gate`` the conditioning ``c`` ``(B, D)`` shifts them
        per sample, so the choice of experts can follow the noise level."""
        logits = self.router(x)
        if self.gate_cond is not None and c is not None:
            logits = logits + self.gate_cond(c).unsqueeze(1)
        return logits.float()

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.spec.routing == "expert":
            return self._expert_choice(x, c)
        if self.spec.routing == "noise":
            return self._noise_choice(x)
        shape = x.shape  # (B, L, D)
        tokens = x.reshape(-1, shape[-1])
        n, e, k = tokens.shape[0], self.spec.experts, self.spec.top_k
        probs = self.logits(x, c).reshape(n, e).softmax(dim=-1)  # (N, E)
        weight, choice = probs.topk(k, dim=-1)  # (N, k)
        weight = weight / weight.sum(dim=-1, keepdim=True)
        # slots: the assignment order is token-major, so earlier tokens win a full expert's slots
        onehot = nn.functional.one_hot(choice.reshape(-1), e)  # (N*k, E)
        slot = ((onehot.cumsum(dim=0) - 1) * onehot).sum(dim=-1)  # each assignment's place in its expert
        capacity = max(1, math.ceil(self.spec.capacity * k * n / e))
        routed = slot < capacity
        token_of = torch.arange(n, device=x.device).repeat_interleave(k)
        # dispatch: each routed assignment has its own row of the (E * capacity) expert input; the
        # unrouted ones all land on one spare row that no expert reads. Unique destinations mean no
        # atomic accumulation into a shared row (a GPU hot spot), forward or backward.
        where = torch.where(routed, choice.reshape(-1) * capacity + slot, e * capacity)
        dispatched = tokens.new_zeros(e * capacity + 1, shape[-1]).index_put((where,), tokens[token_of])
        outputs = [expert(dispatched[i * capacity:(i + 1) * capacity]) for i, expert in enumerate(self.experts)]
        outputs.append(tokens.new_zeros(1, shape[-1]))  # what an unrouted assignment reads
        combined = torch.cat(outputs)[where] * torch.where(routed, weight.reshape(-1), 0.0).unsqueeze(-1).to(x.dtype)
        out = combined.reshape(n, k, shape[-1]).sum(dim=1)
        for expert in self.shared:
            out = out + expert(tokens)
        if aux_active():
            share = onehot.float().mean(dim=0)  # f_e: each expert's share of the assignments
            report_aux_loss("loss_balance", self.spec.balance * e * (share * probs.mean(dim=0)).sum())
            self._report_loads(share * e)  # 1 = an even share
        return out.reshape(shape)

    def _expert_choice(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Each expert takes its top-scoring ``capacity * top_k / E`` share of every sample's tokens (so
        samples never compete for an expert, and sample i does not depend on its batch)."""
        b, n, d = x.shape
        e = self.spec.experts
        probs = self.logits(x, c).softmax(dim=-1)  # (B, N, E)
        chosen = min(n, max(1, math.ceil(self.spec.capacity * self.spec.top_k * n / e)))
        gate, rows = probs.transpose(1, 2).topk(chosen, dim=-1)  # (B, E, C): each expert's tokens
        out = torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            picked = rows[:, index]  # (B, C)
            inputs = x.gather(1, picked.unsqueeze(-1).expand(-1, -1, d))
            y = expert(inputs) * gate[:, index].unsqueeze(-1).to(x.dtype)
            out = out.scatter_add(1, picked.unsqueeze(-1).expand(-1, -1, d), y)
        for expert in self.shared:
            out = out + expert(x)
        if aux_active():
            counts = torch.zeros(b, n, e, device=x.device).scatter_(1, rows.transpose(1, 2), 1.0)
            self._report_loads(counts.sum(dim=(0, 1)) / counts.sum() * e)
        return out

    def _noise_choice(self, x: torch.Tensor) -> torch.Tensor:
        """Every token of sample ``b`` goes to the ``top_k`` experts its time picks (MoDE's noise routing)."""
        t = _time.get()
        if t is None or len(t) != len(x):
            raise ConfigError("a noise-routed mixture of experts reads the model's time: call the model, not the layer")
        k, cache = self.spec.top_k, _routes.get()
        out = torch.zeros_like(x)
        if cache is not None and not torch.is_grad_enabled() and bool((t == t[0]).all()):
            key = (id(self), float(t[0]))
            if key not in cache:  # this step's route, computed once
                weight, choice = self.router(sincos_time(t[:1], NOISE_FEATURES)).float().softmax(-1).topk(k, dim=-1)
                cache[key] = list(zip(choice[0].tolist(), (weight[0] / weight[0].sum()).tolist()))
            for index, share in cache[key]:
                out = out + share * self.experts[index](x)
        else:
            probs = self.router(sincos_time(t, NOISE_FEATURES)).float().softmax(-1)  # (B, E)
            weight, choice = probs.topk(k, dim=-1)
            weight = weight / weight.sum(dim=-1, keepdim=True)
            for index, expert in enumerate(self.experts):
                rows, slot = (choice == index).nonzero(as_tuple=True)
                if len(rows):
                    y = expert(x[rows]) * weight[rows, slot].to(x.dtype)[:, None, None]
                    out = out.index_add(0, rows, y)
            if aux_active():
                share = nn.functional.one_hot(choice, self.spec.experts).float().sum(1).mean(0) / k
                e = self.spec.experts
                report_aux_loss("loss_balance", self.spec.balance * e * (share * probs.mean(dim=0)).sum())
                self._report_loads(share * e)
        for expert in self.shared:
            out = out + expert(x)
        return out

    def _report_loads(self, loads: torch.Tensor) -> None:
        for index in range(self.spec.experts):
            report_aux_stat(f"expert_load_{index}", loads[index].detach())
