"""Training the image tokenizer of :mod:`maskdit.data.tokens` (``maskdit tokenizer train IMAGES --out DIR``): the FSQ
autoencoder fitted by reconstruction, then saved with its weights' SHA-256, whole or not at all."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdit.checkpoint import save_trained
from maskdit.data.codec import PIXELS
from maskdit.data.tokens import TOKENIZER_KIND, Tokenizer
from maskdit.errors import ConfigError, DataError
from maskdit.files import check_parents
from maskdit.training.schedule import warmup_cosine


def train_tokenizer(dataset: Any, out: str | Path, steps: int = 3000, batch_size: int = 64, factor: int = 2,
                    levels: list[int] | None = None, width: int = 64, lr: float = 2e-3, seed: int = 0,
                    progress: bool = True) -> dict[str, Any]:
    """Fit a :class:`Tokenizer` on ``dataset``'s images (uint8 pixels) by reconstruction and save it to ``out``."""

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new directory for the tokenizer")
    check_parents(out, "--out")
    if not getattr(dataset.codec, "stores_pixels", False) or len(dataset.shape) != 3:
        raise ConfigError(f"IMAGES must hold images (C x H x W pixels); {getattr(dataset, 'name', '')} holds "
                          f"{dataset.codec.name} values of shape {tuple(dataset.shape)}")
    torch.manual_seed(seed)
    model = Tokenizer(dataset.shape[0], list(dataset.shape[1:]), factor, levels, width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.time(), []
    for step in tqdm(range(steps), desc="tokenizer", disable=not progress):
        index = torch.randint(0, len(dataset), (batch_size,), generator=generator)
        x = PIXELS.encode(dataset.images[index])
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(lr, step, steps)
        loss = (model(x) - x).pow(2).mean()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise DataError(f"tokenizer training stopped at step {step}: the reconstruction loss is {losses[-1]}; "
                            "nothing was written: check that IMAGES holds finite values, or lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        sample = PIXELS.encode(dataset.images[: min(len(dataset), 1000)])
        error = (model.decode(model.encode(sample)) - sample).pow(2).mean().item()
    facts = {"kind": TOKENIZER_KIND, "config": model.config, "vocab_size": model.vocab_size, "steps": steps,
             "batch_size": batch_size, "first_loss": losses[0], "final_loss": sum(losses[-20:]) / len(losses[-20:]),
             "psnr": 10 * math.log10(4.0 / max(error, 1e-12)), "seconds": time.time() - start,
             "data": getattr(dataset, "name", "")}
    save_trained(out, "tokenizer", model, facts, "tokenizer", digest=True)
    return facts
