"""Checkpoints: a directory per step, written atomically, with no pickles.

    RUN_DIR/checkpoints/step_000400/
        model.safetensors       training weights
        ema.safetensors         EMA weights (used for sampling)
        optimizer.safetensors   optimizer tensors; its hyper-parameters go in state.json
        aux.safetensors         (masked recipes only) training-only decoder / interpolater weights
        state.json              step, data position, RNG states, optimizer groups
        config.json             the full run config, the model's constructor arguments, dataset facts

Files are written into ``.step_000400.tmp`` and the directory is renamed into place once complete, so a
crash mid-write never leaves a partial checkpoint where :func:`latest_checkpoint` looks.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from maskdit.errors import CheckpointError

FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json", "config.json")
AUX_FILE = "aux.safetensors"  # optional: training-only parameters of a masked-training recipe


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and all((p / f).is_file() for f in FILES)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (-> its latest checkpoint) or a checkpoint directory; refuses anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run directory or a checkpoint directory")
    if all((path / f).is_file() for f in FILES):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path} holds no complete checkpoint (expected {checkpoint_dir(path)}/step_*/)")
    return latest


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Split an optimizer state dict into flat tensors (safetensors) and JSON-ready metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state(ckpt: Path, meta: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per-parameter optimizer state of a checkpoint, keyed by parameter index."""
    tensors = _load_tensors(ckpt / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return state


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path, meta: dict[str, Any]) -> None:
    state = optimizer_state(ckpt, meta)
    groups = meta["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"optimizer state in {ckpt} does not match the model's parameters")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
    aux: torch.nn.Module | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep`` checkpoints.

    ``aux`` holds training-only parameters (a masked-training decoder); they go to ``aux.safetensors``.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    save_file(_cpu_state(model), tmp / "model.safetensors")
    save_file(_cpu_state(ema), tmp / "ema.safetensors")
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    _write_json(tmp / "state.json", {**state, "step": step, "rng": rng_state(), "optimizer": opt_meta})
    _write_json(tmp / "config.json", config)
    if aux is not None and len(aux.state_dict()):
        save_file(_cpu_state(aux), tmp / AUX_FILE)
    for f in tmp.iterdir():
        _fsync(f)
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


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path}: {e}; the file is damaged or not a safetensors file") from e


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a safetensors file into ``model``; any missing, extra or mis-shaped tensor is refused clearly."""
    path = Path(path)
    tensors = _load_tensors(path)
    expected = model.state_dict()
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
    model.load_state_dict(tensors)


def load_aux(aux: torch.nn.Module, ckpt: Path) -> None:
    """Restore training-only recipe parameters; a checkpoint without them leaves ``aux`` as initialised."""
    if len(aux.state_dict()) and (ckpt / AUX_FILE).is_file():
        load_weights(aux, ckpt / AUX_FILE)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


class LoadedRun:
    """A model ready to sample, with the objective and facts it was trained with."""

    def __init__(self, ckpt: Path, model: torch.nn.Module, config: dict[str, Any], step: int):
        from maskdit.config import load_config
        from maskdit.objectives import objective_from_config

        self.path, self.model, self.step = ckpt, model, step
        self.info = config
        self.config = load_config(base=config["config"])
        self.objective = objective_from_config(self.config.objective)
        self.dataset = config["dataset"]


def load_run(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a run (or checkpoint) directory and load its EMA (or training) weights."""
    from maskdit.model import DiT

    ckpt = resolve_checkpoint(path)
    config = read_json(ckpt / "config.json")
    state = read_json(ckpt / "state.json")
    model = DiT.from_config(config["model"])
    load_weights(model, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    return LoadedRun(ckpt, model.to(device).eval(), config, int(state["step"]))
