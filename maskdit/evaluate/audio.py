"""Scoring generated spoken digits: the share a separately trained digit classifier recognises as the digit asked for.

The classifier never sees the run's store. It is trained on its own eSpeak NG utterances of the training
voices (a different seed from any store), and its accuracy on utterances of the *test* voices is reported
beside every recognition rate, so a reader knows how far to trust it. It reads log-mel spectrograms
normalised to their loudest bin, so gain does not matter, and it is trained with time shifts and added noise
so that slightly imperfect speech is still judged by what is said. Weights are cached under
``$MASKDIT_CACHE`` (:func:`maskdit.evaluate.classifier.cached_classifier`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from maskdit.data.audio import RATE, WORDS, spoken_digits
from maskdit.evaluate.classifier import Classifier, cached_classifier

N_FFT, HOP, MELS = 256, 128, 40
VERSION = 1  #: bump when the classifier, its data or its features change (the cache key)


@lru_cache(maxsize=4)
def mel_filters(n_fft: int = N_FFT, rate: int = RATE, bins: int = MELS, low: float = 60.0) -> torch.Tensor:
    """Triangular mel filters ``(bins, n_fft // 2 + 1)`` spaced evenly on the mel scale from ``low`` Hz to Nyquist."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(low), mel(rate / 2), bins + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(waves: torch.Tensor, floor_db: float = 80.0) -> torch.Tensor:
    """Waveforms ``(N, 1, L)`` -> log-mel spectrograms ``(N, 1, MELS, frames)`` in ``[-1, 1]``: 0 dB at each
    example's loudest bin, ``floor_db`` below it at -1."""
    spec = torch.stft(waves[:, 0].float(), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = mel_filters() @ spec.abs().square()
    db = 10 * torch.log10(power + 1e-10)
    db = db - db.amax(dim=(1, 2), keepdim=True)
    return (db.clamp_min(-floor_db) / (floor_db / 2) + 1)[:, None]


class SpeechNet(nn.Module):
    """A small CNN over log-mel spectrograms: three conv stages, global pooling, a linear head."""

    def __init__(self, num_classes: int = len(WORDS), width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(4, width), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.GroupNorm(4, 4 * width), nn.GELU(),
            nn.AdaptiveAvgPool2d((2, 4)), nn.Flatten(), nn.Dropout(0.2),
        )
        self.head = nn.Linear(32 * width, num_classes)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(log_mel(waves)))


class DigitRecogniser(Classifier):
    """A trained :class:`SpeechNet` (``predict`` takes waveforms ``(N, 1, RATE)`` in ``[-1, 1]``) and its accuracy
    on held-out voices, in percent."""

    def recognition(self, waves: torch.Tensor, labels: torch.Tensor) -> float:
        """The share (%) of ``waves`` recognised as their ``labels``."""
        return float((self.predict(waves) == labels.cpu()).float().mean()) * 100


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each clip shifted by up to 0.1 s, scaled in loudness and with white noise up to 0.02 added."""
    n, length = len(x), x.shape[-1]
    shifts = torch.randint(-length // 10, length // 10 + 1, (n,), generator=gen)
    idx = (torch.arange(length)[None] - shifts[:, None])
    x = torch.where((idx >= 0) & (idx < length), x[:, 0].gather(1, idx.clamp(0, length - 1)), 0.0)[:, None]
    gain = torch.empty(n, 1, 1).uniform_(0.3, 1.0, generator=gen)
    return x * gain + torch.rand(n, 1, 1, generator=gen) * 0.02 * torch.randn(x.shape, generator=gen)


def train_recogniser(train: int = 4000, test: int = 1000, steps: int = 1500, seed: int = 1,
                     progress: bool = True) -> DigitRecogniser:
    """A :class:`SpeechNet` trained on ``train`` utterances of the training voices, scored on ``test`` of the test
    voices (both synthesised now with ``seed``, about 15 s)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = spoken_digits("train", train, seed)
    xt, yt, _ = spoken_digits("test", test, seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    net = SpeechNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in tqdm(range(steps), desc="digit classifier", disable=not progress, leave=False):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            loss = F.cross_entropy(net(_augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    clf = DigitRecogniser(net, 0.0)
    clf.holdout_accuracy = clf.recognition(torch.from_numpy(xt), torch.from_numpy(yt))
    return clf


def load_recogniser(progress: bool = True) -> DigitRecogniser:
    """The spoken-digit classifier, from the cache or trained now (a few CPU minutes, once)."""
    return cached_classifier(f"spoken-digits-v{VERSION}", SpeechNet(), lambda: train_recogniser(progress=progress),
                             DigitRecogniser, version=VERSION)


def scorable(dataset: Any) -> str | None:
    """Why an audio run cannot be scored (None when it can): the recogniser knows the ten spoken digits at 8 kHz."""
    if list(getattr(dataset, "class_names", [])) != list(WORDS):
        return "the digit classifier scores runs trained on spoken digits (class names zero..nine)"
    if getattr(dataset, "wave_length", RATE) != RATE:
        return f"the digit classifier reads one-second clips of {RATE} samples"
    return None


def training_eval(model: torch.nn.Module, objective: Any, dataset: Any, cfg: Any) -> dict[str, Any]:
    """What ``eval_every`` and ``maskdit eval`` report for an audio run: ``cfg.eval_num`` class-conditional
    samples (digits in turn) and the share recognised as the digit asked for, beside the classifier's own
    accuracy on held-out voices."""
    from maskdit.diffusion.samplers import default_sampler, generate

    why = scorable(dataset)
    if why is None and getattr(model, "num_classes", 0) != len(WORDS):
        why = "recognition is scored for class-conditional runs (model.num_classes=10)"
    if why:
        return {"num": 0, "skipped": why}
    clf = load_recogniser(progress=False)
    num = cfg.eval_num
    labels = torch.arange(num) % len(WORDS)
    s = cfg.sample
    device = next(model.parameters()).device
    x = generate(model, objective, num, labels.to(device), sampler=s.sampler or default_sampler(objective),
                 steps=s.steps, guidance_scale=s.guidance_scale, seed=cfg.seed)
    waves = dataset.codec.decode(x.cpu()).clamp(-1, 1)
    return {"num": num, "recognised": clf.recognition(waves, labels),
            "classifier_holdout": clf.holdout_accuracy}
