"""A small autoregressive character model: the judge of generated text (generative perplexity) and the baseline a
masked-diffusion text model is compared with.

Generative perplexity is ``exp`` of the mean negative log-likelihood per character of samples under a judge trained
on the same corpus; a sampler that lowers its temperature looks better by it, so every figure goes with the samples'
**unigram entropy** (of their character frequencies), which such a sampler lowers too. The model is a pre-norm
causal transformer (``torch.nn.TransformerEncoder`` with a causal mask) over character ids with learned positions.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from maskdit.training.schedule import warmup_cosine


class CharLM(nn.Module):
    """A causal transformer over ``vocab_size`` character ids, sequences of up to ``length``."""

    def __init__(self, vocab_size: int, length: int, width: int = 128, depth: int = 6, num_heads: int = 4):
        super().__init__()
        self.vocab_size, self.length = vocab_size, length
        self.embed = nn.Embedding(vocab_size + 1, width)  # the last id is the start symbol
        self.pos = nn.Parameter(torch.zeros(1, length, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, V)`` of each next character given ``ids`` ``(B, L)`` shifted right behind a start symbol."""
        start = torch.full_like(ids[:, :1], self.vocab_size)
        inputs = torch.cat([start, ids[:, :-1]], dim=1)
        n = inputs.shape[1]
        causal = torch.triu(torch.full((n, n), float("-inf"), device=ids.device), diagonal=1)
        hidden = self.blocks(self.embed(inputs) + self.pos[:, :n], mask=causal, is_causal=True)
        return self.head(self.norm(hidden))

    def nll(self, ids: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per character (nats) of each sequence ``(B,)``."""
        logits = self.forward(ids)
        return nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none").mean(dim=1)

    @torch.no_grad()
    def sample(self, num: int, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
        """``num`` sequences of ``length`` ids, each character drawn in float64 at ``temperature``."""
        from maskdit.diffusion.masked import categorical

        generator = torch.Generator().manual_seed(seed)
        ids = torch.zeros(num, 0, dtype=torch.long)
        for position in range(self.length):
            logits = self.forward(torch.cat([ids, ids.new_zeros(num, 1)], dim=1))[:, position]
            u = torch.rand(num, generator=generator, dtype=torch.float64)
            ids = torch.cat([ids, categorical(logits, u, temperature)[:, None]], dim=1)
        return ids


def train_charlm(ids: torch.Tensor, vocab_size: int, steps: int = 3000, batch_size: int = 64, lr: float = 1e-3,
                 seconds: float | None = None, seed: int = 0, progress: bool = True, **size: Any
                 ) -> tuple[CharLM, dict]:
    """Fit a :class:`CharLM` on sequences ``ids`` ``(N, L)`` for ``steps`` (or ``seconds`` of wall-clock)."""
    torch.manual_seed(seed)
    model = CharLM(vocab_size, ids.shape[1], **size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start, losses, step = time.time(), [], 0
    bar = tqdm(total=steps, desc="char LM", disable=not progress)
    while step < steps and (seconds is None or time.time() - start < seconds):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(lr, step, steps)
        batch = ids[torch.randint(0, len(ids), (batch_size,), generator=generator)]
        loss = model.nll(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
    bar.close()
    return model.eval(), {"steps": step, "seconds": time.time() - start, "final_loss": sum(losses[-50:]) / 50}


@torch.no_grad()
def generative_perplexity(judge: CharLM, ids: torch.Tensor, batch_size: int = 256) -> float:
    """``exp`` of the judge's mean negative log-likelihood per character over the sequences ``ids`` ``(N, L)``."""
    nll = torch.cat([judge.nll(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])
    return float(torch.exp(nll.mean()))


def unigram_entropy(texts: list[str]) -> float:
    """The entropy (nats) of the character frequencies over all ``texts``."""
    counts = Counter("".join(texts))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())
