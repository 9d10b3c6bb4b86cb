"""A trained run read back from disk: the model with its EMA (or training) weights, and the objective, codec
and facts it was trained with, ready to sample, evaluate, export or teach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maskdit.checkpoint import first_loadable, load_tensors, load_weights, resolve_checkpoint, resolve_checkpoints
from maskdit.config import load_config
from maskdit.data.codec import codec_from_config
from maskdit.diffusion.objectives import objective_from_config
from maskdit.errors import CheckpointError, ConfigError, MaskditError
from maskdit.files import file_sha256, read_json
from maskdit.model.dit import DiT
from maskdit.model.lora import BASE_WEIGHTS, load_base, merge


class LoadedRun:
    """A model ready to sample, with the objective, codec and facts it was trained with."""

    def __init__(self, ckpt: Path, model: torch.nn.Module, config: dict[str, Any], step: int):
        self.path, self.model, self.step = ckpt, model, step
        self.info = config
        try:
            self.config = load_config(base=config["config"])
            self.codec = codec_from_config(config["dataset"].get("codec"))
        except MaskditError as e:
            raise CheckpointError(f"{ckpt / 'config.json'} is damaged or from another version: {e}") from e
        self.objective = objective_from_config(self.config.objective)
        self.dataset = config["dataset"]


def _load_run(ckpt: Path, ema: bool) -> LoadedRun:
    config = read_json(ckpt / "config.json", keys=("config", "model", "dataset"))
    state = read_json(ckpt / "state.json", keys=("step",))
    try:
        model = DiT.from_config(config["model"])
    except (MaskditError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt / 'config.json'} does not describe a model this version can build: {e}") from e
    weights = ckpt / ("ema.safetensors" if ema else "model.safetensors")
    if "lora" in config:  # an adapter: its base, then the updates merged in
        load_base(model, config["lora"], f"run {ckpt}")
        merge(model, load_tensors(weights), config["lora"]["scale"], 1.0, str(weights))
    else:
        load_weights(model, weights)
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()),
               None)
    if bad is not None:
        raise CheckpointError(f"{weights} holds non-finite weights (e.g. {bad}): the run diverged before this "
                              "checkpoint; sample an earlier one")
    return LoadedRun(ckpt, model.eval(), config, int(state["step"]))


def load_run(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a run (or checkpoint) directory and load its EMA (or training) weights; a
    damaged latest checkpoint falls back to the previous complete one with a warning."""
    run = first_loadable(resolve_checkpoints(path), lambda ckpt: _load_run(ckpt, ema))
    run.model.to(device)
    return run


def add_adapters(run: LoadedRun, adapters: list[tuple[str, float]]) -> None:
    """Merge the EMA updates of each LoRA run ``(path, scale)`` into ``run``'s model; each must adapt the
    weights ``run`` stands on (its own, or its base when ``run`` is itself an adapter)."""
    base = run.info["lora"]["sha256"] if "lora" in run.info else file_sha256(run.path / BASE_WEIGHTS)
    for path, scale in adapters:
        try:
            ckpt = resolve_checkpoint(path)
            lora = read_json(ckpt / "config.json", keys=("model",)).get("lora")
        except CheckpointError as e:
            raise ConfigError(f"--lora {path}: {e}") from None
        if not isinstance(lora, dict) or "sha256" not in lora:
            raise ConfigError(f"--lora {path} is not a LoRA run (one trained with lora.rank and init_from): pass "
                              "the run directory of an adapter")
        if lora["sha256"] != base:
            raise ConfigError(f"--lora {path} adapts the weights of {lora['base']}, not those of {run.path}: "
                              "sample it on the run it was trained on")
        merge(run.model, load_tensors(ckpt / BASE_WEIGHTS), lora["scale"], scale, str(ckpt / BASE_WEIGHTS))


def merge_run(path: str | Path, out: str | Path, adapters: list[tuple[str, float]] = ()) -> Path:
    """Write ``out``: a plain run whose weights are ``path``'s with its LoRA updates (and ``adapters``, each
    times its scale) merged in, to sample, export or finetune without the base. Returns its checkpoint."""
    import torch.optim

    from maskdit.checkpoint import checkpoint_files, save_checkpoint
    from maskdit.files import atomic_directory, write_json_atomic

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} already exists: choose a new directory for the merged run")
    weights = [load_run(path, ema=ema) for ema in (True, False)]
    if "lora" not in weights[0].info and not adapters:
        raise ConfigError(f"{path} is not a LoRA run and no --lora was given: there is nothing to merge")
    for run in weights:
        add_adapters(run, list(adapters))
    ema, raw = weights
    base = ema.config.to_dict()
    base["run_dir"], base["init_from"], base["lora"] = str(out), None, {}
    info = {"config": load_config(base=base).to_dict(), "model": ema.info["model"], "dataset": ema.dataset,
            "merged": {"source": str(ema.path), "step": ema.step, "lora": ema.info.get("lora"),
                       "adapters": [{"run": str(p), "scale": s} for p, s in adapters]}}
    files, meta = checkpoint_files(raw.model, ema.model, torch.optim.AdamW(raw.model.parameters()))
    with atomic_directory(out) as tmp:
        write_json_atomic(tmp / "config.json", info)
        ckpt = save_checkpoint(tmp, ema.step, files, {"optimizer": meta, "data_position": {}, "wall_time": 0.0}, info)
    return out / ckpt.relative_to(tmp)
