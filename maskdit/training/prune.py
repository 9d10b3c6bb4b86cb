"""Depth pruning: keep ``K`` of a trained DiT's blocks, chosen by a short learned search (TinyFusion) or
evenly spaced, and write the shallower model as a new run for a recovery finetune (``init_from``).

TinyFusion's point is that the blocks to keep are the ones after which the model *recovers* best, not
the ones whose removal hurts least right away. The search splits the blocks into groups of ``M`` in a row
and keeps ``N`` of each (``N/M = K/depth``; TinyFusion's N:M layout). Each group holds learnable logits
over its ``C(M, N)`` choices; every step samples one choice per group with the straight-through
Gumbel-softmax, so the forward pass runs a hard subset (a dropped block passes its input through) while
the logits get gradients, and the model's weights train alongside (the recoverability), both on the
run's own denoising loss. The most likely choice of each group is kept, with the *original* weights:
what the search trained is thrown away, and ``maskdit train init_from=OUT model.depth=K`` recovers.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from maskdit.errors import ConfigError
from maskdit.files import check_parents
from maskdit.registry import Registry

#: name -> ``fn(model, keep, **search) -> kept block indices``.
PRUNERS: Registry[Any] = Registry("pruning method", key="--method")

MAX_CHOICES = 1024  #: per group; more than this and the search space is too large to enumerate
SEARCH_STEPS = 200  #: training steps of the learned search unless told otherwise (the CLI's default too)


def group_layout(depth: int, keep: int) -> tuple[int, int]:
    """``(M, N)``: the smallest groups of ``M`` consecutive blocks from which keeping ``N`` each leaves ``keep``."""
    if depth < 2:
        raise ConfigError(f"--keep-blocks {keep}: a {depth}-block model has no block to spare; prune a deeper run")
    if not 1 <= keep < depth:
        raise ConfigError(f"--keep-blocks {keep}: must be between 1 and {depth - 1} for a {depth}-block model")
    m = depth // math.gcd(depth, keep)
    return m, m * keep // depth


def evenly_spaced(depth: int, keep: int) -> list[int]:
    """``keep`` block indices spread evenly over ``depth``, first and last included (for half depth: every
    other block)."""
    if keep == 1:
        return [depth // 2]
    return sorted({round(i * (depth - 1) / (keep - 1)) for i in range(keep)})


@contextmanager
def gated_blocks(model: nn.Module, gates: list[torch.Tensor | None]) -> Iterator[None]:
    """While open, block ``i`` outputs ``input + gates[i] * (output - input)`` (a 0 gate skips it)."""
    def gate_of(i: int) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            g = gates[i]
            return None if g is None else args[0] + g.to(out) * (out - args[0])
        return hook

    handles = [block.register_forward_hook(gate_of(i)) for i, block in enumerate(model.blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@PRUNERS.register("every-other", "evenly spaced blocks, first and last kept (no search)")
def prune_evenly(model: nn.Module, keep: int, **_: Any) -> list[int]:
    return evenly_spaced(len(model.blocks), keep)


@PRUNERS.register("learned", "TinyFusion: learned N:M choice per group of blocks, trained with the weights")
def prune_learned(model: nn.Module, keep: int, loss_fn: Any, steps: int = SEARCH_STEPS, lr: float = 1e-4,
                  logit_lr: float = 0.05, tau: float = 1.0, seed: int = 0, progress: bool = False) -> list[int]:
    """``loss_fn(model, step) -> loss`` is the denoising loss on one batch (of the run's data)."""
    depth = len(model.blocks)
    m, n = group_layout(depth, keep)
    choices = [list(c) for c in itertools.combinations(range(m), n)]
    if len(choices) > MAX_CHOICES:
        raise ConfigError(f"--keep-blocks {keep} of {depth}: groups of {m} blocks keeping {n} have {len(choices)} "
                          f"choices each, too many to search; keep a number that divides the depth more evenly")
    groups = depth // m
    work = copy.deepcopy(model).train()
    logits = nn.Parameter(torch.zeros(groups, len(choices), device=next(model.parameters()).device))
    member = torch.zeros(len(choices), m, device=logits.device)  # choice -> which of the group's blocks it keeps
    for c, kept in enumerate(choices):
        member[c, kept] = 1.0
    opt = torch.optim.AdamW([{"params": work.parameters(), "lr": lr, "weight_decay": 0.0},
                             {"params": [logits], "lr": logit_lr, "weight_decay": 0.0}])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for step in tqdm(range(steps), desc="searching blocks", disable=not progress):
        u = torch.rand(logits.shape, generator=gen).to(logits.device).clamp(1e-9, 1 - 1e-9)
        soft = ((logits - torch.log(-torch.log(u))) / tau).softmax(dim=-1)
        hard = nn.functional.one_hot(soft.argmax(dim=-1), len(choices)).to(soft.dtype)
        pick = hard + soft - soft.detach()  # straight through: hard forward, soft gradient
        gates = (pick @ member).reshape(-1)  # (depth,) in {0, 1}
        with gated_blocks(work, list(gates)):
            loss = loss_fn(work, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    best = logits.detach().argmax(dim=-1).tolist()
    return [g * m + b for g, c in enumerate(best) for b in choices[c]]


def keep_blocks(model: nn.Module, kept: list[int]) -> dict[str, torch.Tensor]:
    """The state dict of the model with only ``kept`` blocks, renumbered ``0..K-1``."""
    out: dict[str, torch.Tensor] = {}
    renumber = {old: new for new, old in enumerate(kept)}
    for name, value in model.state_dict().items():
        if name.startswith("blocks."):
            index, _, rest = name[len("blocks."):].partition(".")
            if int(index) not in renumber:
                continue
            name = f"blocks.{renumber[int(index)]}.{rest}"
        out[name] = value.detach().clone()
    return out


@torch.no_grad()
def held_out_loss(model: nn.Module, kept: list[int] | None, loss_fn: Any, batches: int = 8) -> float:
    """The mean denoising loss over ``batches`` fixed batches with only ``kept`` blocks running."""
    was = model.training
    model.eval()
    gates: list[torch.Tensor | None] = [None] * len(model.blocks)
    if kept is not None:
        gates = [torch.tensor(1.0 if i in kept else 0.0) for i in range(len(model.blocks))]
    with gated_blocks(model, gates):
        value = sum(float(loss_fn(model, 10**6 + i)) for i in range(batches)) / batches
    model.train(was)
    return value


def denoising_batches(run: Any, batch_size: int, seed: int = 0) -> Any:
    """``loss_fn(model, step)``: the run's denoising loss on batch ``step`` of its data (a fixed draw per step)."""
    from maskdit.data.datasets import dataset_from_config
    from maskdit.diffusion.objectives import chain_start, denoising_loss

    dataset = dataset_from_config(run.config.data)
    device = next(run.model.parameters()).device
    conditioner = run.model.conditioner
    values = None if conditioner is None else conditioner.values(dataset)  # as training pairs them (captions, maps)
    if values is not None:
        dataset.labels = values

    def loss_fn(model: nn.Module, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x0, y = dataset.batch(torch.randint(len(dataset), (batch_size,), generator=gen))
        t = run.objective.sample_time(batch_size, gen)
        y = y.to(device) if y is not None and conditioner is not None else None
        noise = chain_start(run.objective, torch.randn(x0.shape, generator=gen).to(device), conditioner, y)
        return denoising_loss(model, run.objective, x0.to(device), y, t.to(device), noise)

    return loss_fn


def prune_run(source: str | Path, out: str | Path, keep: int, method: str = "learned", steps: int = SEARCH_STEPS,
              device: str | torch.device = "cpu", progress: bool = False) -> dict[str, Any]:
    """Prune the run at ``source`` to ``keep`` blocks with ``method`` and write it as a new run at ``out``
    (step 0, model = EMA = the kept blocks' original EMA weights); returns what was chosen and measured."""
    from maskdit.checkpoint import checkpoint_files, find_run, save_checkpoint
    from maskdit.config import load_config
    from maskdit.errors import CheckpointError
    from maskdit.files import write_json_atomic
    from maskdit.model import DiT
    from maskdit.runs import load_run

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} already exists: choose a new directory for the pruned run")
    check_parents(out, "--out")
    find_run(out, resume=False)
    if method not in PRUNERS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(PRUNERS.names())}")
    run = load_run(source, device=device)
    model = run.model
    depth = len(model.blocks)
    group_layout(depth, keep)  # refuses a keep outside 1..depth-1
    if model.fusion_route is not None or model.tread_route is not None:
        raise ConfigError("this run routes tokens past chosen blocks (SPRINT/TREAD): its routes name blocks "
                          "that pruning would remove; prune a plainly trained or finetuned run")
    if model.skips is not None or model.decoder is not None:
        raise ConfigError("this run has long skips (MDT) or a decoder (MaskDiT): pruning blocks would break the "
                          "pairs of blocks they join; prune a plain DiT")
    if model.control is not None and model.control_kind != "concat":
        raise ConfigError(f"this run's control (control.kind={model.control_kind}) holds layers per base block: "
                          "pruning would leave them pointing at removed blocks; prune the base and train the "
                          "control again")
    if model.moe is not None and model.moe_every != 1:
        raise ConfigError(f"this run has mixture-of-experts every {model.moe_every} blocks: pruning would move "
                          "them; prune a run with model.moe.every=1 or a dense one")
    if keep <= model.mixer_depth:  # the pruned model keeps the mixer's depth and needs blocks after it
        raise ConfigError(f"--keep-blocks {keep}: this run's patch mixer is {model.mixer_depth} blocks deep "
                          f"(model.mixer_depth), and the pruned model needs blocks after it: keep at least "
                          f"{model.mixer_depth + 1}")
    loss_fn = denoising_batches(run, run.config.batch_size)
    kept = PRUNERS.get(method)(model, keep, loss_fn=loss_fn, steps=steps, progress=progress)
    baseline = evenly_spaced(depth, keep)
    measured = {"kept": kept, "method": method, "search_steps": steps if method == "learned" else 0,
                "loss_full": held_out_loss(model, None, loss_fn), "loss_kept": held_out_loss(model, kept, loss_fn),
                "every_other": baseline, "loss_every_other": held_out_loss(model, baseline, loss_fn)}
    config = {**model.config, "depth": keep, "mixer_depth": min(model.mixer_depth, keep)}
    if model.full_blocks:  # the kept blocks' new places
        config["full_blocks"] = [new for new, old in enumerate(kept) if old in model.full_blocks]
    pruned = DiT.from_config(config)
    pruned.load_state_dict(keep_blocks(model, kept))
    base = run.config.to_dict()
    base["model"].update(depth=keep, mixer_depth=config["mixer_depth"], full_blocks=config.get("full_blocks", []),
                         full_every=0)  # the kept full blocks, by their new places
    base["run_dir"], base["init_from"] = str(out), None
    cfg = load_config(base=base)
    info = {"config": cfg.to_dict(), "model": pruned.config, "dataset": run.dataset,
            "pruned": {"source": str(run.path), "step": run.step, "depth": depth, **measured}}
    files, meta = checkpoint_files(pruned, pruned, torch.optim.AdamW(pruned.parameters()))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", info)
    save_checkpoint(out, 0, files, {"optimizer": meta, "data_position": {}, "wall_time": 0.0}, info)
    return measured
