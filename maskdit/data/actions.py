"""Action sequences: an expert's demonstrations in a physics simulator, as chunks of future actions to generate
given the current observation (a diffusion policy, as MoDE trains).

``pybullet_envs`` ships locomotion environments and, in its examples, expert policies trained for them (small
MLPs whose weights are written out in the example files). maskdit reads those weights without running the files
(they are parsed as Python literals) and rolls the expert out in the simulator:

* each step records the observation and the expert's action; the action *executed* carries Gaussian noise
  (``NOISE``, as DART collects demonstrations), so the demonstrations visit states slightly off the expert's
  path and show how it recovers;
* an example is a chunk of the next ``frames`` expert actions, a rank-1 grid ``(action dims, frames)`` whose axis
  0 is time, conditioned on the observation it starts from (``model.condition=vector``);
* training episodes and test episodes use disjoint seeds (the start state is drawn from the seed).

The environments need the old ``gym`` API (``pip install 'maskdit[actions]'``: ``gym==0.23.1``, with
``setuptools<81`` for its ``pkg_resources``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.data.codec import StandardCodec
from maskdit.data.datasets import DATASETS
from maskdit.data.media import grid_png
from maskdit.data.modalities import MODALITIES, load_array, save_array
from maskdit.errors import ConfigError, DataError

#: task -> (pybullet_envs environment class, the example file holding its expert's weights)
EXPERTS = {"hopper": ("HopperBulletEnv", "enjoy_TF_HopperBulletEnv_v0_2017may.py")}
NOISE = 0.1  #: std of the noise added to the executed action (actions lie in [-1, 1])
EPISODE = 1000  #: the environments' time limit, in control steps
TEST_SEED = 10_000  #: test episodes are seeded from here on; training episodes from 0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Standard output closed at the file-descriptor level: pybullet's C library prints as it connects."""
    import os
    import sys

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _pybullet_envs() -> Any:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), _quiet():
            warnings.simplefilter("ignore")
            from pybullet_envs import gym_locomotion_envs
    except ImportError as e:
        raise DataError(f"action demonstrations need pybullet and gym 0.23 ({e}): pip install 'maskdit[actions]'"
                        ) from None
    return gym_locomotion_envs


@lru_cache(maxsize=4)
def expert_layers(task: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The expert's layers ``((W, b), ...)`` read from its example file as literals (the file is never run)."""
    _pybullet_envs()
    import pybullet_envs

    path = Path(pybullet_envs.__file__).parent / "examples" / EXPERTS[task][1]
    arrays: dict[str, np.ndarray] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id.startswith("weights_") and isinstance(node.value, ast.Call):
            arrays[node.targets[0].id[len("weights_"):]] = np.array(ast.literal_eval(node.value.args[0]), np.float64)
    names = ("dense1", "dense2", "final")
    if any(f"{n}_{p}" not in arrays for n in names for p in "wb"):
        raise DataError(f"{path} does not hold the expert's weights this version of maskdit reads")
    return tuple((arrays[f"{n}_w"], arrays[f"{n}_b"]) for n in names)


def expert_action(task: str, obs: np.ndarray) -> np.ndarray:
    """The expert's action for observations ``(..., D)``: two ReLU layers and a linear output."""
    x = np.asarray(obs, np.float64)
    layers = expert_layers(task)
    for w, b in layers[:-1]:
        x = np.maximum(x @ w + b, 0)
    return x @ layers[-1][0] + layers[-1][1]


def make_env(task: str) -> Any:
    """A fresh environment of ``task`` (headless)."""
    if task not in EXPERTS:
        raise ConfigError(f"unknown action task {task!r}: choose one of {', '.join(EXPERTS)}")
    module = _pybullet_envs()
    with _quiet():
        env = getattr(module, EXPERTS[task][0])()
        env.reset()  # connects to the physics server (where the C library prints)
    return env


def reset(env: Any, seed: int) -> np.ndarray:
    """Reset ``env`` to the start state that ``seed`` draws."""
    env.seed(int(seed))
    with _quiet():
        return np.asarray(env.reset(), np.float64)


@dataclass
class Demonstrations:
    """Episodes of one task: observations ``(E, T, D)``, expert actions ``(E, T, A)``, lengths ``(E,)`` (steps before
    the episode ended; the rest is zero) and returns ``(E,)``."""

    observations: np.ndarray
    actions: np.ndarray
    lengths: np.ndarray
    returns: np.ndarray


@lru_cache(maxsize=8)
def demonstrations(task: str, split: str, episodes: int, noise: float = NOISE) -> Demonstrations:
    """``episodes`` expert episodes of ``task`` (training seeds 0.., test seeds from :data:`TEST_SEED`)."""
    if split not in ("train", "test"):
        raise ConfigError(f"action split must be train or test, got {split!r}")
    env = make_env(task)
    base = 0 if split == "train" else TEST_SEED
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    obs_all, act_all = np.zeros((episodes, EPISODE, dims[0])), np.zeros((episodes, EPISODE, dims[1]))
    lengths, returns = np.zeros(episodes, np.int64), np.zeros(episodes)
    for e in range(episodes):
        rng = np.random.default_rng([base + e, 1])
        obs = reset(env, base + e)
        for t in range(EPISODE):
            action = expert_action(task, obs)
            obs_all[e, t], act_all[e, t] = obs, action
            executed = np.clip(action + noise * rng.standard_normal(action.shape), -1, 1)
            obs, reward, done, _ = env.step(executed)
            returns[e] += reward
            if done:
                break
        lengths[e] = t + 1
    env.close()
    return Demonstrations(obs_all.astype(np.float32), act_all.astype(np.float32), lengths, returns)


def chunks(demos: Demonstrations, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every chunk of ``frames`` consecutive expert actions inside an episode, ``(N, A, frames)``, and the observation
    it starts from ``(N, D)``."""
    starts = [(e, t) for e in range(len(demos.lengths)) for t in range(int(demos.lengths[e]) - frames + 1)]
    if not starts:
        raise ConfigError(f"data.frames={frames} is longer than every episode: choose fewer frames")
    e, t = (np.array(v) for v in zip(*starts))
    index = t[:, None] + np.arange(frames)
    actions = demos.actions[e[:, None], index]  # (N, frames, A)
    return torch.from_numpy(actions).permute(0, 2, 1).contiguous(), torch.from_numpy(demos.observations[e, t])


class ActionDataset:
    """Action chunks ``(A, frames)`` in model space (standardised per action dimension by the chunks of
    ``train_episodes`` training episodes, the ones a run trains on) with their starting observations, which batches
    pair with each chunk (what ``model.condition=vector`` embeds)."""

    num_classes = 0
    class_names: list[str] = []

    def __init__(self, task: str, split: str, episodes: int, frames: int, train_episodes: int | None = None):
        self.task, self.name, self.frames = task, task, frames
        self.demos = demonstrations(task, split, episodes)
        raw, self.observations = chunks(self.demos, frames)
        train = raw if split == "train" else chunks(demonstrations(task, "train", train_episodes or episodes),
                                                    frames)[0]
        mean, std = train.mean(dim=(0, 2)), train.std(dim=(0, 2)).clamp_min(0.05)  # per action dimension
        self.codec = StandardCodec(mean[:, None].tolist(), std[:, None].tolist())
        self.values = self.codec.encode(raw)
        self.labels: torch.Tensor | None = self.observations

    @property
    def condition_dim(self) -> int:
        return int(self.observations.shape[1])

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.values[idx], None if self.labels is None else self.labels[idx]


def action_curves(values: torch.Tensor, height: int = 32) -> torch.Tensor:
    """Action chunks ``(N, A, T)`` in ``[-1, 1]`` drawn as curves: uint8 images ``(N, 1, height * A, 4 * T)``, one
    band per action dimension, dark on white."""
    n, dims, frames = values.shape
    width = 4 * frames
    x = np.linspace(0, frames - 1, width)
    out = np.full((n, 1, height * dims, width), 255, np.uint8)
    for i in range(n):
        for d in range(dims):
            y = np.interp(x, np.arange(frames), values[i, d].clamp(-1, 1).numpy())
            rows = d * height + ((1 - y) / 2 * (height - 1)).round().astype(int)
            out[i, 0, rows, np.arange(width)] = 0
            out[i, 0, d * height + height // 2, ::4] = 160  # the zero line, dotted
    return torch.from_numpy(out)


class ActionView:
    """Action files: ``.npz`` (``actions``: float32 ``N x T x A``) or curves ``.png``."""

    key = "actions"
    suffixes = (".npz", ".png")

    def save(self, path: str | Path, values: torch.Tensor, truth: torch.Tensor | None = None,
             given: torch.Tensor | None = None) -> Path:
        if str(path).lower().endswith(".npz"):
            return save_array(path, self.key, values)
        from maskdit.files import atomic_file

        shown = values if truth is None else torch.cat([truth.float(), values.float()])
        rows = None if truth is None else torch.arange(len(shown)) // len(values)
        with atomic_file(path, "--out") as tmp:
            Path(tmp).write_bytes(grid_png(action_curves(shown.float()), rows))
        return Path(path)

    def load(self, path: str | Path, shape: tuple[int, ...], flag: str = "--context") -> torch.Tensor:
        return load_array(path, self.key, shape, flag)

    def preview(self, values: torch.Tensor) -> bytes:
        return grid_png(action_curves(values[:16].float()))


MAX_EPISODES = 200


def _load(cfg: Any, split: str) -> ActionDataset:
    if cfg.num > MAX_EPISODES:
        raise ConfigError(f"config key data.num={cfg.num} counts {cfg.name} expert episodes (about 0.4 s each to "
                          f"simulate): choose at most {MAX_EPISODES}, e.g. 20 as the {cfg.name} preset does")
    return ActionDataset(cfg.name, split, cfg.num if split == "train" else max(1, cfg.num // 4), cfg.frames, cfg.num)


MODALITIES.add("actions", ActionView(), "action chunks as (A, T) grids: .npz, or curves .png")
DATASETS.add("hopper", _load, "pybullet's Hopper: chunks of data.frames expert actions (3 joints) given the "
             "observation (15 numbers), from data.num expert episodes (needs maskdit[actions])", needs_path=False,
             rank=1, timed=True, modality="actions")
