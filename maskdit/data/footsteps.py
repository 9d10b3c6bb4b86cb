"""Footstep sounds for motion windows: a paired audio track, so motion can be generated *from* audio.

No package ships motion with its audio (dance with music, speech with gestures), so maskdit makes the pairing from
the motion itself, and says so: a foot that lands makes a sound. :func:`foot_steps` finds the frames where an
ankle comes down to the ground (forward kinematics of the grid), and :func:`footstep_sounds` puts a short decaying
thud at each step, low (:data:`TONES`) for the left foot and higher for the right, louder the faster the foot came
down. A model conditioned on the sound (``model.condition=audio``) has to put the right foot down at the right
frame, which :func:`step_scores` measures on the generated motion.

Sounds are waveforms at :data:`RATE` samples per second, :data:`HOP` samples per motion frame, so frame ``t``'s
audio is samples ``[t * HOP, (t + 1) * HOP)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from maskdit.data.datasets import DATASETS
from maskdit.data.motion import FPS, POINTS, MotionDataset, forward_kinematics, load_motion

RATE = 6000  #: samples per second of footstep sounds
HOP = RATE // FPS  #: samples per motion frame
FEET = ("left_ankle", "right_ankle")  #: the points whose landings sound, in :data:`TONES` order
TONES = (150.0, 600.0)  #: Hz of each foot's thud
DECAY = 0.03  #: seconds for a thud to fall by 1/e
GROUND, LIFT = 0.10, 0.14  #: an ankle lands when it comes below GROUND (m) after having been above LIFT
TOLERANCE = 2  #: frames a generated step may be off and still count


def ankle_heights(grids: torch.Tensor) -> torch.Tensor:
    """``(N, T, 2)``: the height (m) of each foot's ankle (:data:`FEET`) in each frame of motion grids
    ``(N, 4, T, J)``."""
    return forward_kinematics(grids.float())[..., [POINTS.index(f) for f in FEET], 1]


def foot_steps(grids: torch.Tensor, height: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``(N, T, 2)``: the frames where each foot (:data:`FEET`) of motion grids ``(N, 4, T, J)`` lands: its
    ankle comes down below :data:`GROUND` after having been lifted above :data:`LIFT` (since its last landing, or
    since the window began). The gap between the two heights keeps a foot trembling at the ground from landing
    again and again. ``height``: the grids' :func:`ankle_heights`, when already computed."""
    height = ankle_heights(grids) if height is None else height
    steps = torch.zeros(height.shape, dtype=torch.bool)
    lifted = height[:, 0] > GROUND
    for t in range(1, height.shape[1]):
        steps[:, t] = lifted & (height[:, t] < GROUND)
        lifted = (lifted & ~steps[:, t]) | (height[:, t] > LIFT)
    return steps


def landing_speed(height: torch.Tensor) -> torch.Tensor:
    """``(N, T, 2)``: how fast each foot was moving down into each frame (m/s, 0 when rising), from its
    :func:`ankle_heights`."""
    fall = torch.zeros_like(height)
    fall[:, 1:] = (height[:, :-1] - height[:, 1:]).clamp_min(0) * FPS
    return fall


def footstep_sounds(grids: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Waveforms ``float32 (N, T * HOP)`` in ``[-1, 1]``: a thud at every step of motion grids ``(N, 4, T, J)``,
    each foot's at its own pitch, on a faint noise floor (seeded, so the same motion always sounds the same)."""
    height = ankle_heights(grids)
    onsets = foot_steps(grids, height)
    n, frames = onsets.shape[:2]
    loudness = (0.4 + 0.3 * landing_speed(height)).clamp(max=1.0) * onsets  # (N, T, 2)
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(6 * DECAY * RATE)) / RATE
    envelope = torch.exp(-t / DECAY)
    out = torch.randn(n, frames * HOP, generator=gen) * 0.003
    for foot, tone in enumerate(TONES):
        thud = envelope * torch.sin(2 * torch.pi * tone * t)
        impulses = torch.zeros(n, frames * HOP)
        impulses[:, ::HOP] = loudness[..., foot]
        size = frames * HOP + len(thud)
        out += torch.fft.irfft(torch.fft.rfft(impulses, size) * torch.fft.rfft(thud, size), size)[:, :frames * HOP]
    return out.clamp(-1, 1).float()


def match_steps(made: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Precision, recall and F1 of steps ``made`` against steps ``truth`` (both bool ``(N, T, 2)``): a made step
    matches an unmatched true step of the same foot at most :data:`TOLERANCE` frames away (greedy, in time order,
    the nearest first)."""
    hits = 0
    for i in range(len(made)):
        for foot in range(made.shape[-1]):
            open_truth = torch.nonzero(truth[i, :, foot]).flatten().tolist()
            for f in torch.nonzero(made[i, :, foot]).flatten().tolist():
                near = [g for g in open_truth if abs(g - f) <= TOLERANCE]
                if near:
                    open_truth.remove(min(near, key=lambda g: abs(g - f)))
                    hits += 1
    n_made, n_true = int(made.sum()), int(truth.sum())
    precision = hits / n_made if n_made else 0.0
    recall = hits / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "steps": n_true, "generated_steps": n_made}


def step_scores(grids: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """How well the steps of motion grids ``(N, 4, T, J)`` match the steps ``truth`` (bool ``(N, T, 2)``, the
    steps the conditioning sound was made from): :func:`match_steps`."""
    return match_steps(foot_steps(grids), truth)


@dataclass
class FootstepDataset(MotionDataset):
    """Motion windows with the footstep sounds they make (``sounds``, float32 ``(N, T * HOP)``)."""

    name: str = "footsteps"
    sound_rate, sound_hop = RATE, HOP

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sounds = footstep_sounds(self.motion)


def load_footsteps(cfg: Any, split: str) -> FootstepDataset:
    """``data.name=footsteps``: :func:`~maskdit.data.motion.load_motion`'s windows with their footstep sounds."""
    motion = load_motion(cfg, split)
    return FootstepDataset(motion.motion, motion.clips, motion.codec)


DATASETS.add("footsteps", load_footsteps, "data.name=motion's windows paired with the footstep sounds they make "
             f"(synthesised: a thud per step, {RATE} Hz), for audio-driven motion (model.condition=audio)",
             needs_path=False, rank=2, timed=True, modality="motion")
