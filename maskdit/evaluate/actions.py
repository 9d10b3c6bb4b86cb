"""Scoring a diffusion policy: imitation error on held-out demonstrations, and the return it earns in the simulator.

*Imitation error*: for observations of the test episodes (seeds no training episode uses), the mean squared error
between a sampled chunk of actions and the expert's, in action units. *Return*: the policy drives fresh episodes
itself (closed loop); every ``execute`` steps it samples a chunk for every running episode at once (one batch) and
carries out the first ``execute`` actions (receding horizon), and the episodes' summed rewards are compared with
the expert's own on the same start states.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from maskdit.data.actions import EPISODE, TEST_SEED, chunks, demonstrations, expert_action, make_env, reset
from maskdit.diffusion.samplers import default_sampler, generate


def policy_values(model: torch.nn.Module, observations: torch.Tensor) -> torch.Tensor:
    """The condition values of raw observations ``(B, D)`` for ``model``'s vector conditioner."""
    return model.conditioner.given(observations)


def sample_chunks(run: Any, observations: torch.Tensor, seed: int = 0, **sampling: Any) -> torch.Tensor:
    """Action chunks ``(B, A, frames)`` in action units, one per observation ``(B, D)``."""
    model = run.model
    x = generate(model, run.objective, len(observations), policy_values(model, observations), seed=seed,
                 batch_size=len(observations), **sampling)
    return run.codec.decode(x.cpu())


def imitation_error(run: Any, task: str, frames: int, num: int = 500, episodes: int = 5, seed: int = 0,
                    **sampling: Any) -> dict[str, float]:
    """Mean squared error (action units) of sampled chunks against the expert's, on ``num`` chunks spread over
    ``episodes`` test episodes."""
    truth, obs = chunks(demonstrations(task, "test", episodes), frames)
    pick = torch.linspace(0, len(obs) - 1, min(num, len(obs))).round().long().unique()
    made = sample_chunks(run, obs[pick], seed, **sampling)
    error = (made - truth[pick]).square()
    return {"mse": float(error.mean()), "mse_first": float(error[..., 0].mean()), "num": len(pick)}


def rollouts(run: Any, task: str, episodes: int = 4, execute: int = 4, seed: int = 0,
             **sampling: Any) -> dict[str, Any]:
    """``episodes`` closed-loop episodes of the policy from test start states, with the expert's on the same starts:
    mean return and length of each, and the seconds spent sampling."""
    envs = [make_env(task) for _ in range(episodes)]
    obs = [reset(env, TEST_SEED + 500 + i) for i, env in enumerate(envs)]
    returns, lengths = np.zeros(episodes), np.zeros(episodes, np.int64)
    alive, sampling_s, plan, calls = list(range(episodes)), 0.0, {}, 0
    for step in range(EPISODE):
        if step % execute == 0:
            start = time.perf_counter()
            made = sample_chunks(run, torch.tensor(np.stack([obs[i] for i in alive]), dtype=torch.float32),
                                 seed + step, **sampling)
            sampling_s += time.perf_counter() - start
            calls += 1
            plan = {i: made[j].numpy() for j, i in enumerate(alive)}
        for i in list(alive):
            obs[i], reward, done, _ = envs[i].step(np.clip(plan[i][:, step % execute], -1, 1))
            returns[i] += reward
            lengths[i] = step + 1
            if done:
                alive.remove(i)
        if not alive:
            break
    for env in envs:
        env.close()
    return {"return": float(returns.mean()), "length": float(lengths.mean()),
            "expert_return": expert_return(task, episodes), "episodes": episodes, "sampling_s": sampling_s,
            "policy_calls": calls}


@lru_cache(maxsize=8)
def expert_return(task: str, episodes: int) -> float:
    """The expert's mean return on the start states of :func:`rollouts` (computed once per process: every
    evaluation compares with it)."""
    env, total = make_env(task), 0.0
    for i in range(episodes):
        obs = reset(env, TEST_SEED + 500 + i)
        for _ in range(EPISODE):
            obs, reward, done, _ = env.step(expert_action(task, obs))
            total += reward
            if done:
                break
    env.close()
    return total / episodes


def training_eval(model: torch.nn.Module, objective: Any, dataset: Any, cfg: Any) -> dict[str, Any]:
    """What ``eval_every`` and ``maskdit eval`` report for an action run: imitation error on ``cfg.eval_num`` test
    chunks, and the return of four closed-loop episodes beside the expert's."""
    from types import SimpleNamespace

    run = SimpleNamespace(model=model, objective=objective, codec=dataset.codec)
    s = cfg.sample
    sampling = {"sampler": s.sampler or default_sampler(objective), "steps": s.steps}
    scores = imitation_error(run, dataset.task, dataset.frames, cfg.eval_num, seed=cfg.seed, **sampling)
    played = rollouts(run, dataset.task, seed=cfg.seed, **sampling)
    return {"num": scores["num"], "imitation_mse": scores["mse"], "return": played["return"],
            "expert_return": played["expert_return"], "episode_length": played["length"]}
