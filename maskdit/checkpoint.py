"""Checkpoints: a directory per step, written atomically, with no pickles.

    RUN_DIR/checkpoints/step_000400/
        model.safetensors       training weights
        ema.safetensors         EMA weights (used for sampling)
        optimizer.safetensors   optimizer tensors; its hyper-parameters go in state.json
        aux.safetensors         (masked recipes only) training-only decoder / interpolater weights
        align.safetensors       (representation alignment only) the projector's weights
        state.json              step, data position, RNG states, optimizer groups
        config.json             the full run config, the model's constructor arguments, dataset facts

Files are written into ``.step_000400.tmp`` and the directory is renamed into place once complete, so a
crash mid-write never leaves a partial checkpoint where :func:`latest_checkpoint` looks. Only directories
named exactly ``step_<digits>`` count as checkpoints, and pruning deletes nothing else. A damaged latest
checkpoint is passed over, with a warning, for the previous complete one.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from maskdit.distributed import full, shard_like
from maskdit.errors import CheckpointError, DataError
from maskdit.files import atomic_directory, check_parents, file_sha256, fsync, write_json_atomic

FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json", "config.json")
AUX_FILE = "aux.safetensors"  # optional: training-only parameters of a masked-training recipe
ALIGN_FILE = "align.safetensors"  # optional: the representation-alignment projector
STEP_NAME = re.compile(r"step_(\d{6,})")
T = TypeVar("T")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint ``step`` of a run lives (once written)."""
    return checkpoint_dir(run_dir) / f"step_{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if STEP_NAME.fullmatch(p.name) and p.is_dir() and all((p / f).is_file() for f in FILES)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint directory, or a run directory's complete checkpoints newest first; refuses anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run directory or a checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file: pass a run directory or a checkpoint directory")
    if all((path / f).is_file() for f in FILES):
        return [path]
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} holds no complete checkpoint (expected {checkpoint_dir(path)}/step_*/)")
    return found[::-1]


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (-> its latest checkpoint) or a checkpoint directory; refuses anything else."""
    return resolve_checkpoints(path)[0]


def first_loadable(candidates: list[Path], load: Callable[[Path], T]) -> T:
    """``load`` the newest of ``candidates`` that loads; a damaged one is skipped with a warning on stderr
    (the error of the last one is raised when none loads)."""
    for i, ckpt in enumerate(candidates):
        try:
            return load(ckpt)
        except CheckpointError as e:
            if i + 1 == len(candidates):
                raise
            print(f"warning: skipping damaged checkpoint {ckpt} ({e}); using {candidates[i + 1]}", file=sys.stderr)
    raise CheckpointError("no checkpoint to load")


def is_run(path: Path) -> bool:
    """True when ``path`` holds a maskdit run: complete checkpoints, or a readable ``config.json`` with its
    ``config`` and ``model`` sections (a run that stopped before its first checkpoint)."""
    config = path / "config.json"
    if (path / "checkpoints").is_dir() and list_checkpoints(path):
        return True
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"config", "model"} <= set(data)


def remove_run(run_dir: Path) -> None:
    """Delete a maskdit run directory (a benchmark's scratch run, before it is trained again). Anything else
    there is refused, so a directory the project did not make is never removed."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir() or (any(run_dir.iterdir()) and not is_run(run_dir)):
        raise CheckpointError(f"{run_dir} exists and is not a maskdit run, so it was left alone: move it, or "
                              "choose another runs directory")
    shutil.rmtree(run_dir)


def find_run(run_dir: Path, resume: bool) -> list[Path]:
    """Decide, before anything is written, what training into ``run_dir`` means: the checkpoints to resume
    from, newest first (empty: start at step 0). Refuses a file, a directory holding anything but a run,
    an existing run without ``resume``, and ``resume`` where there is no run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run_dir {run_dir} is a file: choose a directory for the run")
    check_parents(run_dir, "run_dir", CheckpointError)
    empty = not run_dir.exists() or not any(run_dir.iterdir())
    if empty:
        if resume:
            raise CheckpointError(f"--resume: {run_dir} holds no run to resume; leave out --resume to start one")
        return []
    if not is_run(run_dir):
        sample = sorted(p.name for p in run_dir.iterdir())[0]
        raise CheckpointError(f"run_dir {run_dir} already holds files that are not a maskdit run (e.g. {sample}): "
                              "choose a new or empty run_dir")
    found = list_checkpoints(run_dir)
    if not resume:
        if found:
            raise CheckpointError(f"run_dir {run_dir} already holds checkpoints: pass --resume to continue it, "
                                  "or choose another run_dir")
        raise CheckpointError(f"run_dir {run_dir} holds a run that stopped before its first checkpoint: pass "
                              "--resume to start it again from step 0, or choose another run_dir")
    return found[::-1]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def rng_state() -> dict[str, str]:
    """Global torch RNG states, base64-encoded for JSON."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda:{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in states.items()}


def set_rng_state(states: dict[str, str]) -> None:
    for key, text in states.items():
        state = torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
        if key == "cpu":
            torch.set_rng_state(state)
        elif torch.cuda.is_available() and int(key.split(":")[1]) < torch.cuda.device_count():
            torch.cuda.set_rng_state(state, int(key.split(":")[1]))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors (safetensors, whole: sharded state is gathered) and
    JSON-ready metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = full(value).detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state(ckpt: Path, meta: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per-parameter optimizer state of a checkpoint, keyed by parameter index."""
    tensors = load_tensors(ckpt / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return state


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path, meta: dict[str, Any]) -> None:
    """Restore the optimizer's state (laid out like its parameters: sharded ones get their shard)."""
    state = optimizer_state(ckpt, meta)
    groups = meta["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"optimizer state in {ckpt} does not match the model's parameters")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, slots in state.items():
        if index < len(params):
            state[index] = {k: slot_like(v, params[index]) for k, v in slots.items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def slot_like(value: Any, param: torch.Tensor) -> Any:
    """An optimizer slot read from a checkpoint, placed like ``param`` (a moment of a sharded parameter
    becomes this rank's shard; scalars such as Adam's step count stay as they are)."""
    if not torch.is_tensor(value):
        return value
    if value.shape != param.shape or value.dim() == 0:
        return value.to(param.device)
    return shard_like(value.to(param.device), param)


def checkpoint_files(model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     aux: torch.nn.Module | None = None, align: torch.nn.Module | None = None,
                     only: Callable[[str], bool] | None = None
                     ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The tensors of a checkpoint, whole and on the CPU, by file name, and the optimizer's JSON metadata.

    Sharded (FSDP) weights and optimizer state are gathered: every rank must call this, then one writes.
    ``aux`` holds training-only parameters (a masked-training decoder); they go to ``aux.safetensors``.
    ``only`` keeps the weights whose keys it accepts (a LoRA run saves its adapter, not the frozen base).
    """
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    files = {"model.safetensors": _cpu_state(model, only), "ema.safetensors": _cpu_state(ema, only),
             "optimizer.safetensors": opt_tensors}
    if aux is not None and len(aux.state_dict()):
        files[AUX_FILE] = _cpu_state(aux)
    if align is not None:
        files[ALIGN_FILE] = _cpu_state(align)
    return files, opt_meta


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically (``tensors``: safetensors files by name, from
    :func:`checkpoint_files`), then delete all but the newest ``keep`` checkpoints."""
    final = checkpoint_path(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, file_tensors in tensors.items():
            save_file(file_tensors, tmp / name)
        _write_json(tmp / "state.json", {**state, "step": step, "rng": rng_state()})
        _write_json(tmp / "config.json", config)
        for f in tmp.iterdir():
            fsync(f)
        fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write leaves nothing half-made behind
        raise
    if final.exists():  # re-saving a step (e.g. a resumed run that ends where it started)
        old = root / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale)
    return final


def _cpu_state(model: torch.nn.Module, only: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    return {k: full(v).detach().cpu().contiguous() for k, v in model.state_dict().items() if only is None or only(k)}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or unreadable file is a :class:`CheckpointError`."""
    try:
        return load_file(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}; the file is damaged or not a safetensors file") from e


def save_trained(out: Path, name: str, module: torch.nn.Module, facts: dict[str, Any], what: str,
                 digest: bool = False) -> None:
    """What a training command made: ``out/NAME.safetensors`` (``module``'s weights) and ``out/NAME.json``
    (``facts``, plus the weights' ``sha256`` with ``digest``), in a new directory that appears whole or not at all;
    a failed write is one error naming ``what`` (the encoder, the tokenizer ...)."""
    try:
        with atomic_directory(out) as tmp:
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors")
            if digest:
                facts["sha256"] = file_sha256(tmp / f"{name}.safetensors")
            write_json_atomic(tmp / f"{name}.json", facts)
    except OSError as e:
        raise DataError(f"cannot write the {what} to {out}: {e.strerror or e}; nothing was kept: free space or "
                        "choose another --out") from None


def load_weights(model: torch.nn.Module, path: str | Path, only: Callable[[str], bool] | None = None,
                 optional: Callable[[str], bool] | None = None) -> None:
    """Load a safetensors file into ``model`` (into the weights whose keys ``only`` accepts, when given); any
    missing, extra or mis-shaped tensor is refused clearly, except that a key ``optional`` accepts may be absent on
    either side (a layer one attention kind has and another lacks: it keeps its initial value)."""
    path = Path(path)
    tensors = load_tensors(path)
    expected = {k: v for k, v in model.state_dict().items() if only is None or only(k)}
    if optional is not None:
        tensors = {k: v for k, v in tensors.items() if k in expected or not optional(k)}
        expected = {k: v for k, v in expected.items() if k in tensors or not optional(k)}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [(k, tuple(tensors[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in tensors and tensors[k].shape != v.shape]
    if missing or extra or wrong:
        parts = []
        if wrong:
            k, got, want = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: checkpoint {got} vs model {want}")
        if missing:
            parts.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
        raise CheckpointError(
            f"checkpoint {path} does not match the model ({'; '.join(parts)}): "
            "build the model from the checkpoint's config.json"
        )
    model.load_state_dict({k: shard_like(v, expected[k]) for k, v in tensors.items()},
                          strict=only is None and optional is None)


def load_aux(aux: torch.nn.Module, ckpt: Path, name: str = AUX_FILE) -> None:
    """Restore training-only parameters (a recipe's, or the alignment projector's with ``name``); a
    checkpoint without them leaves ``aux`` as initialised."""
    if len(aux.state_dict()) and (ckpt / name).is_file():
        load_weights(aux, ckpt / name)
