"""Multi-process training on torchrun: one process per device, the training step replicated (DDP) or sharded (FSDP2).

    torchrun --standalone --nproc_per_node=2 -m maskdit train --preset digits

torchrun starts the processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; maskdit joins them
into one process group (gloo on the CPU, NCCL on CUDA). ``batch_size`` stays the global batch: every rank
draws the whole step's random inputs from ``(seed, step)`` and takes its own contiguous slice
(:meth:`maskdit.training.step.StepInputs.shard`), so N processes compute what one process computes. Rank 0 alone
writes (checkpoints, metrics, progress, evaluations); stop decisions (a signal on any rank, the time
budget on rank 0) are agreed on every step, so all ranks stop after the same step.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from maskdit.errors import ConfigError, check_keys
from maskdit.registry import Registry, one_of

#: A gloo group over the same ranks for small host values (stop decisions) when the main group is NCCL,
#: so agreeing on them never waits for the GPU; ``None`` means the default group serves.
_host_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank, the number of processes and its device index on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0


def world_from_env() -> World:
    """The :class:`World` torchrun describes in the environment (one process when it is not set)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them): {e}") from None
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK {rank} does not fit WORLD_SIZE {size}: launch with torchrun")
    return World(rank, size, local)


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group of ``world`` (no-op for one process); returns this rank's device (a CUDA run
    uses the GPU of its local rank)."""
    if world.size == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    global _host_group
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _host_group = dist.new_group(backend="gloo") if device.type == "cuda" else None
    return device


#: ``precision`` values: how the forward pass computes (weights, gradients and optimizer stay fp32).
PRECISIONS: Registry[None] = Registry("precision", key="precision")
PRECISIONS.add("auto", None, "bf16 autocast on a GPU, fp32 on a CPU")
PRECISIONS.add("fp32", None, "float32 everywhere")
PRECISIONS.add("bf16", None, "bfloat16 autocast (weights stay float32)")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The forward pass's autocast context: bf16 for ``bf16``, and for ``auto`` on a GPU; fp32 otherwise.

    On a CPU with AVX-512 BF16 (AMD Zen 4, Intel Sapphire Rapids) bf16 can buy speed only with compiled
    blocks, and not at every shape: eager bf16 spends what the matmuls save on casts (docs/tasks.md)."""
    on = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def leave() -> None:
    """Leave the process group, if this process joined one."""
    global _host_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _host_group = None


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def agree(world: World, values: list[float]) -> list[float]:
    """The element-wise maximum of small host values over all ranks (every rank gets the same list),
    exchanged on the host: it adds no GPU synchronisation to a step."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group)
    return t.tolist()


def mean_over_ranks(world: World, stats: dict[str, torch.Tensor | float], device: torch.device
                    ) -> dict[str, torch.Tensor | float]:
    """``stats`` averaged over ranks (for logging: each rank's loss covers its own slice of the batch)."""
    if world.size == 1:
        return stats
    keys = sorted(stats)
    t = torch.stack([torch.as_tensor(stats[k], dtype=torch.float64).to(device).reshape(()) for k in keys])
    dist.all_reduce(t)  # on the main group's device: a log step reads these values anyway
    return dict(zip(keys, (t / world.size).tolist()))


# -- strategies: how the training step is spread over the ranks ----------------------------------------
STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "dist.strategy")


class Strategy:
    """Spreads one run's training step over the ranks of a process group.

    ``wrap`` returns what a step calls; ``sharded`` says whether parameters are split over the ranks (then
    gathering a full state is a collective that every rank must enter).
    """

    sharded = False

    def __init__(self, world: World, device: torch.device):
        self.world, self.device = world, device

    def wrap(self, step_module: nn.Module, model: nn.Module, ema: nn.Module) -> nn.Module:
        raise NotImplementedError


@STRATEGIES.register("ddp", "every rank holds the whole model; gradients are averaged (DistributedDataParallel)")
class Replicated(Strategy):
    def wrap(self, step_module: nn.Module, model: nn.Module, ema: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(step_module,
                                       device_ids=[self.device.index] if self.device.type == "cuda" else None)


@STRATEGIES.register("fsdp", "weights, gradients, optimizer state and EMA split over the ranks (FSDP2 fully_shard)")
class Sharded(Strategy):
    """FSDP2: each transformer block is one unit (its weights gathered just for its forward and backward),
    the rest of the model and the recipe's training-only weights the root unit. On CUDA the gathered
    weights compute in bf16 and gradients are reduced in fp32; on the CPU everything stays fp32. The EMA
    is sharded the same way, so its update stays local to each rank."""

    sharded = True

    def wrap(self, step_module: nn.Module, model: nn.Module, ema: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world.size,))
        precision = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                          cast_forward_inputs=False)
                     if self.device.type == "cuda" else MixedPrecisionPolicy())
        for root, blocks in ((step_module, model.blocks), (ema, ema.blocks)):
            for block in blocks:
                fully_shard(block, mesh=mesh, mp_policy=precision)
            fully_shard(root, mesh=mesh, mp_policy=precision)
        return step_module


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (itself unless it is a sharded DTensor): for element-wise updates of
    tensors sharded alike, such as the EMA towards the weights."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of ``tensor``: a sharded DTensor is gathered (a collective: every rank must call)."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def shard_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` (whole, the same on every rank) laid out as ``like``: this rank's shard where ``like`` is a
    DTensor (no communication), else ``tensor`` itself."""
    if not _is_dtensor(like):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(tensor.to(like.device, like.dtype), like.device_mesh, like.placements,
                             src_data_rank=None)


@dataclass
class DistConfig:
    strategy: str = "ddp"  #: under torchrun: a maskdit.distributed.STRATEGIES entry (ddp | fsdp)

    def validate(self) -> None:
        """Check ``dist.strategy`` against :data:`STRATEGIES`."""
        check_keys("dist.", self, [
            ("strategy", self.strategy in STRATEGIES, "one of " + one_of(STRATEGIES.names())),
        ])


def _is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a sharded DTensor; one can exist only once its module is imported, which takes
    about a second, so a process that never shards never imports it."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)
