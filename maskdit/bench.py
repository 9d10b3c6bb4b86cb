"""Training-step benchmark: forward + backward steps/s, memory and (on CUDA) model FLOPs utilisation."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskdit.errors import ConfigError
from maskdit.model import build_model
from maskdit.objectives import FlowMatching, denoising_loss

#: Dense bf16 tensor-core peak (FLOP/s) by device name, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def parse_shape(text: str) -> tuple[int, ...]:
    """``'4x32x32'`` -> ``(4, 32, 32)``: channels then 1-3 spatial sizes."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ConfigError(f"--input {text!r} must look like CxL, CxHxW or CxTxHxW with positive sizes, e.g. 4x32x32")
    return shape


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class _SavedBytes:
    """Counts the bytes autograd saves for backward: the activation memory of one step."""

    def __init__(self) -> None:
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.total += t.numel() * t.element_size()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def benchmark(
    preset: str,
    input_shape: tuple[int, ...],
    batch: int,
    steps: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    num_classes: int = 1000,
    step_fn: Any = None,
) -> dict[str, Any]:
    """Time ``steps`` forward+backward passes of a preset model on random data.

    ``step_fn(model, x, y, t, noise)`` -> loss may replace the plain denoising loss (masked recipes do).
    """
    dev = torch.device(device)
    model = build_model(preset, input_shape[1:], input_shape[0], num_classes).to(dev)
    objective = FlowMatching()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *input_shape), generator=gen).to(dev)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(dev)
    t = torch.rand(batch, generator=gen).to(dev)
    noise = torch.randn(x.shape, generator=gen).to(dev)
    step_fn = step_fn or (lambda m, x, y, t, n: denoising_loss(m, objective, x, y, t, n))
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def one_step() -> None:
        with autocast:
            loss = step_fn(model, x, y, t, noise)
        loss.backward()
        model.zero_grad(set_to_none=True)

    saved = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        one_step()
    with FlopCounterMode(display=False) as counter:
        one_step()
    flops = counter.get_total_flops()
    for _ in range(max(0, warmup - 2)):
        one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - start
    steps_per_s = steps / elapsed
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:  # process peak resident set (Linux reports KiB)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = _peak_flops(dev)
    return {
        "preset": preset,
        "input": "x".join(map(str, input_shape)),
        "batch": batch,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "params": sum(p.numel() for p in model.parameters()),
        "tokens": model.num_tokens,
        "steps_per_s": steps_per_s,
        "gflop_per_step": flops / 1e9,
        "activation_mb": saved.total / 2**20,
        "peak_mem_mb": peak_mb,
        "mfu": flops * steps_per_s / peak if peak else None,
        "timed_steps": steps,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
