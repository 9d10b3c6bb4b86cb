"""Training-step benchmark: forward + backward steps/s, memory and (on CUDA) model FLOPs utilisation."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskdit.diffusion.objectives import FlowMatching
from maskdit.distributed import autocast
from maskdit.errors import ConfigError
from maskdit.masks import DROP_SHAPES, num_kept
from maskdit.model import build_model
from maskdit.model.aux import collect_aux_losses
from maskdit.model.dit import preset as preset_fields
from maskdit.training.recipes import build_recipe, default_sprint_route

#: Dense bf16 tensor-core peak (FLOP/s) by device name, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def add_timing_arguments(p: Any) -> None:
    """The options of the side-by-side throughput benchmarks (``benchmarks/*_throughput.py``)."""
    from maskdit.cli.args import positive_int

    p.add_argument("--preset", default="DiT-S/2")
    p.add_argument("--input", default="4x32x32")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=4, help="timed steps per configuration and round")
    p.add_argument("--rounds", type=positive_int, default=2)
    p.add_argument("--device", default="cpu")


def parse_shape(text: str) -> tuple[int, ...]:
    """``'4x32x32'`` -> ``(4, 32, 32)``: channels then 1-3 spatial sizes."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ConfigError(f"--input {text!r} must look like CxL, CxHxW or CxTxHxW with positive sizes, e.g. 4x32x32")
    return shape


def active_params(model: torch.nn.Module) -> int:
    """Parameters one token passes through: an MoE layer counts its router, shared experts and ``top_k``
    routed experts (what "equal active parameters" compares), every other layer all of its weights."""
    from maskdit.model.moe import MoEMlp

    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, MoEMlp):
            per_expert = sum(p.numel() for p in m.experts[0].parameters())
            total -= per_expert * (m.spec.experts - m.spec.top_k)
    return total


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
    mask_ratio: float = 0.0,
    recipe: str = "drop",
    mixer_depth: int = 0,
    decoder_depth: int = 2,
    compile: bool = False,
    grad_checkpoint: bool = False,
    model_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` forward+backward passes of a preset model on random data.

    With ``mask_ratio > 0`` each step drops that share of the tokens (fresh random indices per step) and
    computes the loss of masked-training ``recipe`` (drop / mae / mdt), with the first ``mixer_depth``
    blocks running on all tokens (deferred masking). ``compile`` compiles every block with
    ``torch.compile`` after the FLOPs and saved activations are counted (eagerly); its warm-up steps
    include the compilation. ``grad_checkpoint`` recomputes every block's activations in backward (the
    saved activations shrink; FLOPs and MFU still count the model's own work, not the recomputation).
    ``model_fields`` override the preset's block fields (``norm``, ``mlp``, ``pos``, ``moe`` ...); the loss
    includes the auxiliary terms the model reports (an MoE balance loss), as in training.
    """
    dev = torch.device(device)
    depth = preset_fields(preset)["depth"]
    fusion = default_sprint_route(depth) if recipe == "sprint" else None
    model = build_model(preset, input_shape[1:], input_shape[0], num_classes, mixer_depth=mixer_depth,
                        fusion=fusion, **(model_fields or {})).to(dev)
    loss_of = build_recipe(recipe, model, decoder_depth=decoder_depth).to(dev)
    objective = FlowMatching()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *input_shape), generator=gen).to(dev)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(dev)
    t = torch.rand(batch, generator=gen).to(dev)
    noise = torch.randn(x.shape, generator=gen).to(dev)
    mixed = autocast("auto", dev)  # bf16 on a GPU, fp32 on a CPU, as training does by default
    keep = num_kept(model.num_tokens, mask_ratio)
    shape = "structured" if recipe == "sprint" else "random"  # SPRINT's mask: the same share of every 2x2 group

    def one_step() -> None:
        keep_idx = DROP_SHAPES.get(shape)(batch, model.token_grid, mask_ratio, gen)
        keep_idx = None if keep_idx is None else keep_idx.to(dev)
        with mixed, collect_aux_losses() as aux:
            loss, _ = loss_of.loss(model, objective, x, y, t, noise, keep_idx)
        loss = loss + sum((v for _, v, adds in aux if adds), torch.zeros((), device=dev))
        loss.backward()
        model.zero_grad(set_to_none=True)
        loss_of.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        one_step()
    flops = counter.get_total_flops()  # the model's FLOPs: counted before any recomputation is switched on
    if grad_checkpoint:
        model.checkpoint_blocks()
    saved = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        one_step()
    if compile:
        model.compile_blocks()
    for _ in range(max(0, warmup - 2) + (2 if compile else 0)):
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
        "active_params": active_params(model),
        "model_fields": model_fields or {},
        "training_only_params": sum(p.numel() for p in loss_of.parameters()),
        "tokens": model.num_tokens,
        "kept_tokens": keep,
        "mask_ratio": mask_ratio,
        "recipe": recipe,
        "mixer_depth": mixer_depth,
        "compiled": compile,
        "grad_checkpoint": grad_checkpoint,
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
