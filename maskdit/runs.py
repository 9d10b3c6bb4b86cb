"""A trained run read back from disk: the model with its EMA (or training) weights, and the objective, codec
and facts it was trained with, ready to sample, evaluate, export or teach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maskdit.checkpoint import first_loadable, load_weights, resolve_checkpoints
from maskdit.config import load_config
from maskdit.data.codec import codec_from_config
from maskdit.diffusion.objectives import objective_from_config
from maskdit.errors import CheckpointError, MaskditError
from maskdit.files import read_json
from maskdit.model.dit import DiT


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
