"""Sound as a condition, heard frame by frame: motion generated from audio (footsteps, music, speech).

A value is a waveform with one more entry, a flag (1: a real sound, 0: "no sound", whose tokens are a learned null
vector, so condition dropout and classifier-free guidance work as for labels). The conditioner cuts the waveform
into one frame of ``hop`` samples per frame of the generated grid's time axis, and hears each as its log energies
in a few frequency bands (:func:`frame_bands`), standardised by the training sounds' statistics. A small
convolution over time (so a token hears its neighbours: an onset is a rise) embeds them as one condition token per
frame with its sin-cos time position. ``model.text=aligned`` adds each frame's token to the grid tokens of that
frame, as audio-driven motion models feed frame-aligned audio features; the attention modes (``cross``, joint,
in-context) take them too, but had to learn the alignment and did not (docs/modalities.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from maskdit.conditions.base import CONDITIONERS, Condition, Conditioner, flagged
from maskdit.errors import ConfigError
from maskdit.grid import sincos_1d

BANDS = 8  #: frequency bands a frame is heard in
LOWEST = 50.0  #: Hz, the upper edge of the lowest band (the bands are evenly spaced in log frequency above it)


def frame_bands(waves: torch.Tensor, hop: int, rate: int, bands: int = BANDS) -> torch.Tensor:
    """Log energies ``(N, L, bands)`` of consecutive frames of ``hop`` samples of waveforms ``(N, L * hop)`` at
    ``rate`` Hz (Hann-windowed), in bands from :data:`LOWEST` Hz to Nyquist spaced evenly in log frequency."""
    n, length = waves.shape
    frames = waves.float().reshape(n, length // hop, hop)
    window = torch.hann_window(hop, periodic=False, device=waves.device)
    power = torch.fft.rfft(frames * window, dim=-1).abs().square()
    freqs = torch.fft.rfftfreq(hop, 1 / rate).to(waves.device)
    edges = torch.logspace(math.log10(LOWEST), math.log10(rate / 2), bands, device=waves.device)[:-1]
    band = torch.bucketize(freqs, edges, right=True)
    energy = torch.zeros(n, frames.shape[1], bands, device=waves.device).index_add_(-1, band, power)
    return torch.log(energy + 1e-6)


@CONDITIONERS.register("audio", "a waveform per example (footsteps under a motion), heard as band energies per grid "
                       "frame: one condition token per frame (model.text=aligned); a learned null sound for guidance")
class AudioConditioner(Conditioner):
    """Values ``(B, frames * hop + 1)``: the waveform and a flag (1 given, 0 null) -> ``frames`` tokens."""

    gives_tokens = True
    reads = "audio"

    def __init__(self, width: int, frames: int, hop: int, rate: int, mean: list[float] | None = None,
                 std: list[float] | None = None):
        super().__init__()
        if frames < 1 or hop < 2 or rate < 2 * LOWEST:
            raise ConfigError(f"an audio condition needs frames >= 1, hop >= 2 and a rate above {2 * LOWEST:g} Hz, "
                              f"got frames={frames}, hop={hop}, rate={rate}")
        self.frames, self.hop, self.rate = int(frames), int(hop), int(rate)
        self.embed = nn.Sequential(nn.Conv1d(BANDS, width, 3, padding=1), nn.SiLU(), nn.Conv1d(width, width, 1))
        self.null_token = nn.Parameter(torch.zeros(width))
        self.pool = nn.Linear(width, width)
        self.register_buffer("pos", sincos_1d(width, torch.arange(self.frames)).float(), persistent=False)
        self.register_buffer("mean", torch.tensor(mean or [0.0] * BANDS), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0] * BANDS), persistent=False)

    @property
    def samples(self) -> int:
        """Waveform samples of one value."""
        return self.frames * self.hop

    def value_spec(self) -> tuple[tuple[int, ...], torch.dtype]:
        return (self.samples + 1,), torch.float32

    @classmethod
    def build(cls, width: int, num_classes: int, frames: int = 0, hop: int = 0, rate: int = 0,
              mean: list[float] | None = None, std: list[float] | None = None, **options: Any
              ) -> AudioConditioner | None:
        if not frames:
            return None
        return cls(width, frames, hop, rate, mean, std)

    @classmethod
    def data_options(cls, dataset: Any, settings: Any, saved: dict[str, Any] | None) -> dict[str, Any]:
        if saved and saved.get("frames"):
            return {k: saved[k] for k in ("frames", "hop", "rate", "mean", "std")}
        sounds = getattr(dataset, "sounds", None)
        if sounds is None:
            raise ConfigError(f"model.condition=audio needs data with a sound per example, and "
                              f"{getattr(dataset, 'name', 'this dataset')} has none: use data.name=footsteps (motion "
                              "with its footstep sounds)")
        hop, rate = int(dataset.sound_hop), int(dataset.sound_rate)
        heard = frame_bands(sounds, hop, rate)
        return {"frames": int(sounds.shape[1] // hop), "hop": hop, "rate": rate,
                "mean": heard.mean((0, 1)).tolist(), "std": heard.std((0, 1)).clamp_min(1e-3).tolist()}

    def values(self, dataset: Any) -> torch.Tensor:
        return self.given(dataset.sounds)

    def initialize(self) -> None:
        for layer in (self.embed[0], self.embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, value: torch.Tensor) -> Condition:
        if value.dim() != 2 or value.shape[1] != self.samples + 1 or not value.is_floating_point():
            raise ConfigError(f"an audio condition is float (B, {self.samples + 1}): {self.samples} samples at "
                              f"{self.rate} Hz and a flag; got {tuple(value.shape)} {value.dtype}: make it with the "
                              "conditioner's given()")
        wave, flag = value[:, :-1], value[:, -1:, None].float()
        heard = (frame_bands(wave, self.hop, self.rate) - self.mean) / self.std  # (B, L, BANDS)
        tokens = self.embed(heard.transpose(1, 2)).transpose(1, 2)
        tokens = flag * tokens + (1 - flag) * self.null_token + self.pos
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Condition(self.pool(tokens.mean(1)), tokens, mask)

    def null(self, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(value)

    def given(self, waves: torch.Tensor) -> torch.Tensor:
        """Condition values of waveforms ``(B, samples)`` at the model's rate."""
        if waves.dim() != 2 or waves.shape[1] != self.samples:
            raise ConfigError(f"this model hears {self.samples} samples at {self.rate} Hz ({self.frames} frames), got "
                              f"waveforms {tuple(waves.shape)}")
        return flagged(waves)
