"""Mixture-of-experts feed-forward (DiT-MoE): top-k token-choice routing over routed experts, plus shared
experts every token passes through.

Each token's router picks its ``top_k`` experts (softmax over the router's logits, the chosen weights
renormalised to sum to 1). Routing has static shapes and never reads a device value on the host: every
expert has a fixed capacity of ``ceil(capacity * top_k * tokens / experts)`` slots, assignments take slots
in token order, and an assignment past its expert's capacity is not routed (its share of the output is
zero; the shared experts still see the token). Dropped tokens (masked training) never reach the block, so
they are simply not routed.

The balance loss (Switch Transformer / DiT-MoE) ``experts * sum_e f_e * P_e`` (``f_e`` the share of
assignments to expert ``e``, ``P_e`` its mean router probability) is 1 when routing is uniform and grows
as it concentrates; it goes to the training loss through the auxiliary-loss channel, weighted by
``balance``, and each expert's share ``f_e`` is logged as ``expert_load_<e>`` (mean over MoE blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskdit.model.aux import aux_active, report_aux_loss, report_aux_stat


@dataclass(frozen=True)
class MoESpec:
    """The MoE layer's shape: routed and shared experts, experts per token, capacity factor, loss weight."""

    experts: int
    shared: int = 0
    top_k: int = 2
    capacity: float = 2.0
    balance: float = 0.01


class MoEMlp(nn.Module):
    """``shared`` always-on experts plus ``experts`` routed ones, each a feed-forward ``make_expert()``."""

    def __init__(self, dim: int, spec: MoESpec, make_expert: Any):
        super().__init__()
        if not 1 <= spec.top_k <= spec.experts:
            raise ValueError(f"top_k {spec.top_k} must be in [1, experts={spec.experts}]")
        self.spec = spec
        self.router = nn.Linear(dim, spec.experts, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(spec.experts))
        self.shared = nn.ModuleList(make_expert() for _ in range(spec.shared))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        n, e, k = tokens.shape[0], self.spec.experts, self.spec.top_k
        probs = self.router(tokens).float().softmax(dim=-1)  # (N, E)
        weight, choice = probs.topk(k, dim=-1)  # (N, k)
        weight = weight / weight.sum(dim=-1, keepdim=True)
        # slots: the assignment order is token-major, so earlier tokens win a full expert's slots
        onehot = nn.functional.one_hot(choice.reshape(-1), e)  # (N*k, E)
        slot = ((onehot.cumsum(dim=0) - 1) * onehot).sum(dim=-1)  # each assignment's place in its expert
        capacity = max(1, math.ceil(self.spec.capacity * k * n / e))
        routed = slot < capacity
        token_of = torch.arange(n, device=x.device).repeat_interleave(k)
        # table (E, capacity) of token indices; unused slots point at a zero row appended at index n
        table = torch.full((e * capacity + 1,), n, device=x.device, dtype=torch.long)
        where = torch.where(routed, choice.reshape(-1) * capacity + slot, e * capacity)
        table = table.scatter(0, where, torch.where(routed, token_of, n))[:-1].reshape(e, capacity)
        padded = torch.cat([tokens, tokens.new_zeros(1, shape[-1])])
        out = torch.zeros_like(padded)
        gate = torch.zeros(n + 1, e, device=x.device, dtype=weight.dtype)
        gate[token_of, choice.reshape(-1)] = torch.where(routed, weight.reshape(-1), 0.0)
        for index, expert in enumerate(self.experts):
            rows = table[index]
            y = expert(padded[rows]) * gate[rows, index].unsqueeze(-1).to(padded.dtype)
            out = out.index_add(0, rows, y)
        out = out[:n]
        for expert in self.shared:
            out = out + expert(tokens)
        if aux_active():
            share = onehot.float().mean(dim=0)  # f_e: each expert's share of the assignments
            report_aux_loss("loss_balance", self.spec.balance * e * (share * probs.mean(dim=0)).sum())
            for index in range(e):
                report_aux_stat(f"expert_load_{index}", share[index].detach() * e)  # 1 = an even share
        return out.reshape(shape)
