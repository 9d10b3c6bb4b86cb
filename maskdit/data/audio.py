"""Audio: spoken digits made by an offline speech synthesiser, stored once as a file of 1-D waveform grids.

No recorded speech ships in a package, so the digits "zero" to "nine" are spoken by eSpeak NG (the
``espeakng-loader`` wheel carries its library and voice data; it is driven through ``ctypes``). It is
synthetic speech and said so: every utterance is one of eSpeak's English voice variants at a drawn rate and
pitch. A fifth of the variants (every fifth, sorted by name) speak only in the test split, so test
utterances come from voices training never hears. Waveforms are resampled to :data:`RATE` and centred in one
second: a float grid ``(1, RATE)`` in ``[-1, 1]``, a rank-1 grid whose axis 0 is time (so the frame tasks,
such as ``inbetween``, inpaint audio).

eSpeak NG varies its output slightly from call to call (no seed makes it repeat), so a set is synthesised
once, ``maskdit data spoken-digits --out FILE.npz``, and training reads that file (``data.name=audio
data.path=FILE.npz``): every process and every resume then sees the same waveforms.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.data.codec import CODECS, StandardCodec
from maskdit.data.datasets import DATASETS
from maskdit.data.media import grid_png
from maskdit.data.modalities import MODALITIES, load_array, save_array
from maskdit.errors import ConfigError, DataError
from maskdit.files import atomic_file

RATE = 8000  #: samples per second of the stored waveforms
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYNTH_RATE = 22050  #: eSpeak NG's output rate


@lru_cache(maxsize=1)
def _engine() -> tuple[Any, list[np.ndarray], Any]:
    """eSpeak NG initialised once per process for synchronous synthesis, with a callback collecting samples."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise DataError("spoken digits are synthesised by eSpeak NG: pip install 'maskdit[modalities]' "
                        "(or espeakng-loader)") from e
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    if lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0) != SYNTH_RATE:  # 2: synchronous
        raise DataError("eSpeak NG did not start at 22,050 Hz: reinstall espeakng-loader")
    chunks: list[np.ndarray] = []

    def collect(wav: Any, count: int, events: Any) -> int:
        if count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)(collect)
    lib.espeak_SetSynthCallback(callback)
    return lib, chunks, callback  # the callback is returned so it outlives this call


def voices() -> list[str]:
    """eSpeak's English voice variants, ``en+NAME``, sorted."""
    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(f"en+{p.name}" for p in folder.iterdir() if p.is_file() and " " not in p.name)


def speak(text: str, voice: str = "en", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by eSpeak NG: float32 samples in ``[-1, 1]`` at :data:`SYNTH_RATE`."""
    lib, chunks, _ = _engine()
    chunks.clear()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ConfigError(f"eSpeak NG has no voice {voice!r}")
    lib.espeak_SetParameter(1, int(rate), 0)  # 1: words per minute
    lib.espeak_SetParameter(3, int(pitch), 0)  # 3: base pitch, 0-100
    data = text.encode()
    lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return samples.astype(np.float32) / 32768.0


def to_clip(samples: np.ndarray, length: int = RATE) -> np.ndarray:
    """Synthesiser output resampled to :data:`RATE`, leading and trailing silence trimmed, centred in
    ``length`` samples (cut at the end when longer), peak-normalised to 0.9."""
    from scipy.signal import resample_poly

    wave = resample_poly(samples, RATE, SYNTH_RATE).astype(np.float32)
    loud = np.nonzero(np.abs(wave) > 0.01 * max(float(np.abs(wave).max()), 1e-6))[0]
    wave = wave[loud[0] : loud[-1] + 1] if len(loud) else wave
    wave = wave[:length]
    out = np.zeros(length, np.float32)
    start = (length - len(wave)) // 2
    out[start : start + len(wave)] = wave
    return out * (0.9 / max(float(np.abs(out).max()), 1e-6))


def spoken_digits(split: str, num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``num`` utterances of the ``split``'s voices: waveforms ``(num, 1, RATE)``, digit labels and the voice of
    each. Digits and voices go round in turn; rate (130-230 words per minute) and pitch (25-75) are drawn."""
    if split not in ("train", "test"):
        raise ConfigError(f"spoken-digits split must be train or test, got {split!r}")
    if num < 1:
        raise ConfigError(f"data.num={num}: ask for at least one utterance")
    every = voices()
    pool = [v for i, v in enumerate(every) if (i % 5 == 4) == (split == "test")]
    gen = np.random.default_rng([seed, 0 if split == "train" else 1])
    waves = np.zeros((num, 1, RATE), np.float32)
    labels = np.arange(num) % len(WORDS)
    spoken = []
    for i in range(num):
        voice = pool[(i // len(WORDS)) % len(pool)]
        rate, pitch = int(gen.integers(130, 231)), int(gen.integers(25, 76))
        waves[i, 0] = to_clip(speak(WORDS[labels[i]], voice, rate, pitch))
        spoken.append(voice)
    return waves, labels.astype(np.int64), spoken


@dataclass
class AudioDataset:
    """Waveforms ``float32 (N, 1, L)`` with digit labels; ``values`` is the model space (the codec's ``encode`` of
    every waveform, computed once: a scale, or an autoencoder's latents)."""

    audio: torch.Tensor
    labels: torch.Tensor | None
    codec: Any
    name: str = "audio"
    class_names: list[str] = field(default_factory=lambda: list(WORDS))
    voices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.values = torch.cat([self.codec.encode(part) for part in self.audio.split(256)])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def wave_length(self) -> int:
        return int(self.audio.shape[-1])

    def __len__(self) -> int:
        return len(self.audio)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.values[idx], None if self.labels is None else self.labels[idx]


#: Model space is the waveform divided by this (about the spoken digits' standard deviation, 0.114).
AUDIO_SCALE = 0.12


def write_store(path: str | Path, waves: np.ndarray, labels: np.ndarray | None, class_names: list[str],
                voices: list[str] | None = None) -> None:
    """An audio store: ``audio`` float32 ``N x L x 1``, optional ``labels``, ``class_names`` and ``voices``."""
    arrays: dict[str, np.ndarray] = {"audio": np.ascontiguousarray(np.moveaxis(waves.astype(np.float32), 1, -1)),
                                     "class_names": np.array(class_names)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    if voices is not None:
        arrays["voices"] = np.array(voices)
    with atomic_file(path, "--out") as tmp:
        np.savez(tmp, **arrays)


def load_store(path: str | Path, autoencoder: str | None = None, flag: str = "data.path") -> AudioDataset:
    """``data.name=audio``: the store at ``data.path`` (what :func:`write_store` writes), checked: float
    waveforms ``N x L x 1`` in ``[-1, 1]``, integer labels in range of its class names. With ``autoencoder``
    (``data.autoencoder``: a directory from ``maskdit autoencoder train``) the model space is its latents."""
    from maskdit.data.datasets import check_labels, read_npz

    path = Path(path)
    fix = "make one with maskdit data spoken-digits --out FILE.npz"
    arrays = read_npz(path, flag, fix)
    audio = arrays.get("audio")
    if audio is None:
        raise DataError(f"{flag} {path} holds no 'audio' array (found: {', '.join(arrays) or 'nothing'}): {fix}")
    if audio.dtype.kind != "f" or audio.ndim != 3 or audio.shape[-1] != 1 or not len(audio):
        raise DataError(f"{flag} {path}: 'audio' must be floats N x L x 1 with N >= 1, got {audio.dtype} "
                        f"{audio.shape}")
    if not np.isfinite(audio).all() or np.abs(audio).max() > 1:
        raise DataError(f"{flag} {path}: 'audio' must hold finite samples in [-1, 1]: divide 16-bit samples by "
                        "32768")
    names = [str(n) for n in arrays.get("class_names", np.array([]))]
    labels = arrays.get("labels")
    if labels is not None:
        check_labels(labels, len(audio), f"{flag} {path}", len(names) or None, "fix the store")
        names = names or [str(i) for i in range(int(labels.max()) + 1)]
    codec = StandardCodec([[0.0]], [[AUDIO_SCALE]]) if autoencoder is None else WaveLatentCodec(autoencoder,
                                                                                                 audio.shape[1])
    return AudioDataset(torch.from_numpy(np.moveaxis(audio.astype(np.float32), -1, 1).copy()),
                        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
                        codec, name="audio", class_names=names if labels is not None else [])


@CODECS.register("audio-vae", "audio latents <-> waveforms through a 1-D autoencoder trained by maskdit autoencoder")
class WaveLatentCodec:
    """Waveforms ``(N, 1, length)`` <-> the autoencoder's latent means, standardised per channel by the statistics
    it measured on its training store; decoding ends in Griffin-Lim. The autoencoder is loaded from its directory."""

    name = "audio-vae"
    stores_pixels = False
    value_range = (-4.0, 4.0)

    def __init__(self, autoencoder: str, length: int):
        from maskdit.training.autoencoder import load_autoencoder

        self.autoencoder, self.length = str(Path(autoencoder).resolve()), int(length)
        self.vae, facts = load_autoencoder(autoencoder)
        self.mean = torch.tensor(facts["latent_mean"], dtype=torch.float32)[:, None]
        self.std = torch.tensor(facts["latent_std"], dtype=torch.float32)[:, None]

    @torch.no_grad()
    def encode(self, stored: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(stored.float())[0] - self.mean) / self.std

    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        z = x.float().cpu() * self.std + self.mean
        return torch.cat([self.vae.waves(self.vae.decode(part), self.length)
                          for part in z.split(batch_size)]).clamp(-1, 1)

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The waveform shape ``(1, length)`` behind a model-space shape."""
        return (1, self.length)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "autoencoder": self.autoencoder, "length": self.length}


# -- how a person listens to it -----------------------------------------------------------------------
def write_wav(path: str | Path, waves: np.ndarray, gap: float = 0.25, rate: int = RATE) -> None:
    """Waveforms ``(N, L)`` in ``[-1, 1]`` at ``rate`` Hz one after another with ``gap`` seconds of silence, as
    16-bit PCM."""
    import wave

    pause = np.zeros(int(gap * rate), np.float32)
    joined = np.concatenate([np.concatenate([w, pause]) for w in waves])
    pcm = (np.clip(joined, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def read_wav(path: str | Path, rate: int, flag: str = "--audio") -> np.ndarray:
    """A mono 8- or 16-bit PCM ``.wav`` (channels averaged) as float32 samples in ``[-1, 1]`` at ``rate`` Hz
    (resampled when it was recorded at another rate)."""
    import wave
    from math import gcd

    from scipy.signal import resample_poly

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} {path} does not exist: give a .wav file")
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, source, count = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(count)
    except (wave.Error, EOFError) as e:
        raise DataError(f"cannot read {flag} {path} as a .wav ({e}): write it as 8- or 16-bit PCM") from e
    if width not in (1, 2) or not count:
        raise DataError(f"{flag} {path} holds {'no samples' if not count else f'{8 * width}-bit samples'}: write it "
                        "as 8- or 16-bit PCM with some sound in it")
    pcm = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128 if width == 1 else \
        np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    mono = pcm.reshape(-1, channels).mean(1)
    if source != rate:
        g = gcd(source, rate)
        mono = resample_poly(mono, rate // g, source // g).astype(np.float32)
    return mono


def spectrogram(wave: np.ndarray, size: int = 64) -> np.ndarray:
    """A log-magnitude spectrogram of one waveform as a uint8 image ``(size, size)``, low frequencies at the
    bottom."""
    from scipy.signal import stft

    _, _, z = stft(wave, fs=RATE, nperseg=256, noverlap=256 - len(wave) // size)
    mag = np.log1p(np.abs(z[: size * 2 : 2, :size]) * 50)
    mag = mag / max(float(mag.max()), 1e-6)
    return (255 - mag[::-1] * 255).astype(np.uint8)


def spectrograms(values: torch.Tensor) -> torch.Tensor:
    """:func:`spectrogram` of each waveform ``(N, 1, L)`` as uint8 images ``(N, 1, 64, 64)``."""
    return torch.from_numpy(np.stack([spectrogram(w[0].numpy()) for w in values.float()]))[:, None]


class AudioView:
    """Audio files: ``.npz`` (``audio``: float32 ``N x L x 1``), ``.wav`` (all clips in turn, 8 kHz) or spectrograms
    ``.png``."""

    key = "audio"
    suffixes = (".npz", ".wav", ".png")

    def save(self, path: str | Path, values: torch.Tensor, truth: torch.Tensor | None = None,
             given: torch.Tensor | None = None) -> Path:
        path = Path(path)
        waves = values.float().clamp(-1, 1)
        if str(path).lower().endswith(".npz"):
            return save_array(path, self.key, waves)
        with atomic_file(path, "--out") as tmp:
            if path.suffix.lower() == ".wav":
                write_wav(tmp, waves[:, 0].numpy())
            else:  # with a task's inputs: a row of inputs above a row of results
                shown = waves if truth is None else torch.cat([truth.float(), waves])
                rows = None if truth is None else torch.arange(len(shown)) // len(waves)
                Path(tmp).write_bytes(grid_png(spectrograms(shown), rows))
        return path

    def load(self, path: str | Path, shape: tuple[int, ...], flag: str = "--context") -> torch.Tensor:
        values = load_array(path, self.key, shape, flag)
        if values.abs().max() > 1:
            raise DataError(f"{flag} {path}: 'audio' must hold samples in [-1, 1], got a peak of "
                            f"{float(values.abs().max()):g}: divide 16-bit samples by 32768")
        return values

    def preview(self, values: torch.Tensor) -> bytes:
        return grid_png(spectrograms(values[:16]))


MODALITIES.add("audio", AudioView(), "waveforms as rank-1 grids: .npz, .wav or spectrograms .png")
DATASETS.add("audio", lambda cfg, split: load_store(cfg.path, cfg.autoencoder), "data.path=FILE.npz: an audio "
             "store (audio N x L x 1 float32 in [-1, 1], optional labels and class_names), e.g. spoken digits from "
             "maskdit data spoken-digits; data.autoencoder=DIR trains on its latents", needs_path=True, rank=1,
             timed=True, modality="audio")
