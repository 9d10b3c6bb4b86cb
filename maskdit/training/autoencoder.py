"""A small 1-D autoencoder trained in-project: the latent path for audio (after EzAudio's 1-D latent VAE).

Diffusion on raw 8 kHz waveforms spends its capacity on sample-level phase. This autoencoder reads a clip's
log-magnitude spectrogram as a 1-D sequence of frames (channels: the STFT's frequency bins) and squeezes it into a
short sequence of latent frames (with the defaults, 63 frames of 16 channels for one second: 1,008 values for 8,000
samples). It is a convolutional VAE with a light KL term, so the latent space is smooth, trained with an L1 loss
on log magnitudes. Waveforms come back through fast Griffin-Lim (Perraudin et al. 2013): phase is re-estimated
from the decoded magnitudes, which keeps speech intelligible (the digit classifier recognises Griffin-Lim
resyntheses of the held-out clips 100% of the time) without training a vocoder. Why not a waveform autoencoder: a
1-D conv waveform VAE trained for 15 CPU minutes reconstructed clips the classifier recognised 23% of the time
(docs/modalities.md)::

    maskdit autoencoder train STORE.npz --out DIR     # an audio store (maskdit data spoken-digits)
    maskdit train data.name=audio data.path=STORE.npz data.autoencoder=DIR ...

``DIR`` holds ``autoencoder.json`` (kind, constructor arguments, the latents' per-channel mean and std on the
training store, training facts) and ``autoencoder.safetensors``. Training a diffusion model on it encodes the
store once and standardises the latent means with those statistics; samples decode back to waveforms.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from maskdit.checkpoint import save_trained
from maskdit.errors import CheckpointError, ConfigError, DataError
from maskdit.files import check_parents, read_json
from maskdit.training.schedule import warmup_cosine

AE_KIND = "maskdit-audio-vae"
RETRAIN = "train one again with maskdit autoencoder train STORE.npz --out DIR"


class ResUnit(nn.Module):
    """``x + conv1x1(gelu(conv7(gelu(x))))``, dilated: the receptive field grows without striding."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 7, padding=3 * dilation, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.gelu(self.conv(F.gelu(x))))


LOG_FLOOR = 1e-3  #: added to STFT magnitudes before the log (about -60 dB below loud speech)


class AudioVAE(nn.Module):
    """Waveforms ``(N, 1, L)`` <-> latents ``(N, latent_channels, frames / prod(strides))`` via log-magnitude
    spectrograms ``(N, n_fft / 2 + 1, frames)``.

    The encoder alternates strided convolutions over frames with residual units; the decoder mirrors it with
    transposed convolutions back to log magnitudes; :meth:`waves` inverts them with Griffin-Lim. Clips are padded
    with silence to a whole number of latent frames (:meth:`frames`) and cut back after.
    """

    def __init__(self, latent_channels: int = 16, width: int = 128, strides: tuple[int, ...] | list[int] = (2,),
                 n_fft: int = 256, hop: int = 64):
        super().__init__()
        self.latent_channels, self.width, self.strides = int(latent_channels), int(width), [int(s) for s in strides]
        self.n_fft, self.hop = int(n_fft), int(hop)
        bins = self.n_fft // 2 + 1
        enc: list[nn.Module] = [nn.Conv1d(bins, width, 3, padding=1), ResUnit(width), ResUnit(width, 3)]
        for s in self.strides:
            enc += [nn.GELU(), nn.Conv1d(width, width, 2 * s, stride=s, padding=s // 2), ResUnit(width)]
        enc += [nn.GELU(), nn.Conv1d(width, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(latent_channels, width, 3, padding=1)]
        for s in reversed(self.strides):
            dec += [ResUnit(width), nn.GELU(), nn.ConvTranspose1d(width, width, 2 * s, stride=s, padding=s // 2)]
        dec += [ResUnit(width), ResUnit(width, 3), nn.GELU(), nn.Conv1d(width, bins, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    @property
    def config(self) -> dict[str, Any]:
        return {"latent_channels": self.latent_channels, "width": self.width, "strides": self.strides,
                "n_fft": self.n_fft, "hop": self.hop}

    @property
    def stride(self) -> int:
        return math.prod(self.strides)

    def frames(self, length: int) -> int:
        """STFT frames of a clip of ``length`` samples padded to a whole number of latent frames."""
        return math.ceil((math.ceil(length / self.hop) + 1) / self.stride) * self.stride

    def spectrogram(self, waves: torch.Tensor) -> torch.Tensor:
        """Log-magnitude spectrograms ``(N, bins, frames)`` of waveforms ``(N, 1, L)``, padded as :meth:`frames`."""
        padded = F.pad(waves[:, 0].float(), (0, (self.frames(waves.shape[-1]) - 1) * self.hop - waves.shape[-1]))
        spec = torch.stft(padded, self.n_fft, self.hop, window=self.window, return_complex=True)
        return torch.log(spec.abs() + LOG_FLOOR)

    def encode(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent distribution of waveforms: mean and log-variance ``(N, latent_channels, frames / stride)``."""
        return self.encode_spectrogram(self.spectrogram(waves))

    def encode_spectrogram(self, log_magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent distribution of log-magnitude spectrograms (:meth:`spectrogram`'s)."""
        mean, logvar = self.encoder(log_magnitude).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Log magnitudes ``(N, bins, frames)`` of latents."""
        return self.decoder(z)

    def waves(self, log_magnitude: torch.Tensor, length: int, iters: int = 32, momentum: float = 0.99,
              seed: int = 0) -> torch.Tensor:
        """Waveforms ``(N, 1, length)`` whose magnitudes match ``log_magnitude``: fast Griffin-Lim, ``iters``
        rounds of projecting onto consistent spectrograms and back onto the given magnitudes, with momentum,
        from seeded random phases (so decoding is repeatable)."""
        mag = (log_magnitude.float().exp() - LOG_FLOOR).clamp_min(0)
        padded = (mag.shape[-1] - 1) * self.hop
        gen = torch.Generator().manual_seed(seed)
        spec = mag * torch.exp(2j * math.pi * torch.rand(mag.shape, generator=gen)).to(mag.device)
        last = torch.zeros_like(spec)
        for _ in range(iters):
            wave = torch.istft(spec, self.n_fft, self.hop, window=self.window, length=padded)
            rebuilt = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)
            spec, last = rebuilt + momentum * (rebuilt - last), rebuilt
            spec = mag * spec / (spec.abs() + 1e-8)
        wave = torch.istft(spec, self.n_fft, self.hop, window=self.window, length=padded)
        return wave[:, None, :length]


@torch.no_grad()
def encode_waves(vae: AudioVAE, waves: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The latent means of waveforms ``(N, 1, L)``, in batches."""
    return torch.cat([vae.encode(waves[i : i + batch_size].float())[0] for i in range(0, len(waves), batch_size)])


def latent_stats(vae: AudioVAE, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(latent_channels, 1)`` of the latent means of ``waves``."""
    z = encode_waves(vae, waves)
    return z.mean(dim=(0, 2))[:, None], z.std(dim=(0, 2))[:, None].clamp_min(1e-4)


def train_autoencoder(waves: torch.Tensor, out: str | Path, steps: int = 3000, batch_size: int = 32,
                      latent_channels: int = 16, width: int = 128, strides: tuple[int, ...] = (2,),
                      n_fft: int = 256, hop: int = 64, kl_weight: float = 1e-4, lr: float = 1e-3, seed: int = 0,
                      progress: bool = True, source: str = "") -> dict[str, Any]:
    """Fit an :class:`AudioVAE` on waveforms ``(N, 1, L)`` in ``[-1, 1]`` and save it to ``out`` (which must not
    exist; it appears whole or not at all). Returns the facts written to ``autoencoder.json``."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new directory for the autoencoder")
    check_parents(out, "--out")
    if not 16 <= n_fft <= waves.shape[-1] or not 1 <= hop <= n_fft:
        raise ConfigError(f"--n-fft {n_fft} / --hop {hop}: the window must be 16 to {waves.shape[-1]} samples (the "
                          "clip length) and the hop at most the window, e.g. --n-fft 256 --hop 64")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae = AudioVAE(latent_channels, width, strides, n_fft, hop)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    start, losses = time.time(), []
    for step in tqdm(range(steps), desc="autoencoder", disable=not progress):
        x = waves[torch.randint(0, len(waves), (batch_size,), generator=gen)].float()
        target = vae.spectrogram(x)
        mean, logvar = vae.encode_spectrogram(target)
        z = mean + torch.randn(mean.shape, generator=gen) * (0.5 * logvar).exp()
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
        loss = F.l1_loss(vae.decode(z), target) + kl_weight * kl
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise DataError(f"autoencoder training stopped at step {step}: the loss is {losses[-1]}; nothing was "
                            "written: check the store's waveforms, or lower --lr")
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(lr, step, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
    vae.eval()
    mean, std = latent_stats(vae, waves)
    with torch.no_grad():
        check = waves[:256].float()
        error = float(F.l1_loss(vae.decode(encode_waves(vae, check)), vae.spectrogram(check)))
    facts = {"kind": AE_KIND, "config": vae.config, "latent_mean": mean[:, 0].tolist(),
             "latent_std": std[:, 0].tolist(), "steps": steps, "batch_size": batch_size, "kl_weight": kl_weight,
             "first_loss": losses[0], "final_loss": sum(losses[-50:]) / len(losses[-50:]),
             "log_magnitude_error": error, "seconds": round(time.time() - start, 1), "data": source}
    save_trained(out, "autoencoder", vae, facts, "autoencoder")
    return facts


def _positive_ints(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                           for v in value)


def load_autoencoder(path: str | Path, source: str = "data.autoencoder") -> tuple[AudioVAE, dict[str, Any]]:
    """The autoencoder ``maskdit autoencoder train`` wrote to ``path`` and its facts, checked: a damaged or
    mismatched directory is refused naming the file and key, never half built."""
    from maskdit.checkpoint import load_weights

    root = Path(path)
    where = root / "autoencoder.json"
    if not root.is_dir() or not where.is_file():
        raise ConfigError(f"{source} {path} is not an autoencoder directory (no autoencoder.json): make one with "
                          "maskdit autoencoder train STORE.npz --out DIR")
    facts = read_json(where, ("config", "latent_mean", "latent_std"), RETRAIN)
    config, keys = facts["config"], ("latent_channels", "width", "strides", "n_fft", "hop")
    if facts.get("kind") != AE_KIND or not isinstance(config, dict) or set(config) != set(keys):
        raise CheckpointError(f"{source} {where} does not describe a maskdit audio autoencoder (kind {AE_KIND!r}, "
                              f"config with {', '.join(keys)}): {RETRAIN}")
    if not (_positive_ints([config[k] for k in keys if k != "strides"]) and _positive_ints(config["strides"])
            and config["hop"] <= config["n_fft"]):
        raise CheckpointError(f"{source} {where}: config values must be positive integers, hop at most n_fft: "
                              f"{RETRAIN}")
    channels = config["latent_channels"]
    for key in ("latent_mean", "latent_std"):
        values = facts[key]
        if not (isinstance(values, list) and len(values) == channels and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise CheckpointError(f"{source} {where} key {key} must list {channels} finite numbers (one per latent "
                                  f"channel): {RETRAIN}")
    if min(facts["latent_std"]) <= 0:
        raise CheckpointError(f"{source} {where} key latent_std must be positive: {RETRAIN}")
    vae = AudioVAE(**config)
    try:
        load_weights(vae, root / "autoencoder.safetensors")
    except CheckpointError as e:
        raise CheckpointError(f"{source} {path}: {e}") from None
    if not all(torch.isfinite(p).all() for p in vae.parameters()):
        raise CheckpointError(f"{source} {path}: autoencoder.safetensors holds non-finite weights: {RETRAIN}")
    return vae.eval().requires_grad_(False), facts
