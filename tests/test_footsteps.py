"""Audio-driven motion: footstep sounds made from motion (contacts, steps, one pitch per foot), step matching, the
audio conditioner (frame-aligned tokens, a null sound), reading .wav files, and a tiny footsteps run end to end
(maskdit data footsteps, sample --audio from .npz and .wav, eval's step scores)."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import torch
from conftest import TINY

from maskdit.cli.app import main
from maskdit.conditions.audio import BANDS, LOWEST, AudioConditioner, frame_bands
from maskdit.data import footsteps as F
from maskdit.data.audio import read_wav
from maskdit.data.motion import POINTS, forward_kinematics, motion_windows
from maskdit.errors import ConfigError


@pytest.fixture(scope="module")
def walk() -> torch.Tensor:
    grids, clips = motion_windows("train", 32, mirrored=False, speeds=(1.0,))
    return grids[[i for i, c in enumerate(clips) if c == "walk"]]


def band_of(freq: float, rate: int = F.RATE) -> int:
    edges = np.logspace(np.log10(LOWEST), np.log10(rate / 2), BANDS)[:-1]
    return int(np.searchsorted(edges, freq, side="right"))


def test_a_step_is_an_ankle_coming_down_to_the_ground(walk):
    steps = F.foot_steps(walk)
    assert steps.sum() >= len(walk)  # a second of walking has steps
    assert not steps[:, 0].any()  # what came before the window is unknown
    height = forward_kinematics(walk)[..., [POINTS.index(f) for f in F.FEET], 1]
    for n, t, foot in torch.nonzero(steps).tolist():
        assert height[n, t, foot] < F.GROUND <= height[n, t - 1, foot]  # it came down in that frame
    for n in range(len(walk)):  # between two landings of a foot, it was lifted clear of the ground
        for foot in range(2):
            frames = torch.nonzero(steps[n, :, foot]).flatten().tolist()
            for a, b in zip(frames, frames[1:]):
                assert height[n, a:b, foot].max() > F.LIFT


def test_each_foot_sounds_at_its_own_pitch_in_the_frame_it_lands(walk):
    onsets = F.foot_steps(walk)
    sounds = F.footstep_sounds(walk)
    assert sounds.shape == (len(walk), 32 * F.HOP) and sounds.abs().max() <= 1
    assert torch.equal(sounds, F.footstep_sounds(walk))  # the same motion always sounds the same
    heard = frame_bands(sounds, F.HOP, F.RATE)
    low, high = band_of(F.TONES[0]), band_of(F.TONES[1])
    assert low != high
    for n, t, foot in torch.nonzero(onsets).tolist():
        if onsets[n, t, 1 - foot]:
            continue  # both feet at once
        louder, other = (low, high) if foot == 0 else (high, low)
        assert heard[n, t, louder] > heard[n, t, other] + 1
        if t > 3 and not onsets[n, t - 3:t].any():
            assert heard[n, t, louder] > heard[n, t - 1, louder] + 3  # silence before the step
    still = walk[:1, :, :1].expand(1, 4, 32, walk.shape[-1]).clone()  # one pose held: no steps, only the floor
    assert not F.foot_steps(still).any() and F.footstep_sounds(still).abs().max() < 0.02


def test_steps_match_per_foot_within_the_tolerance():
    truth = torch.zeros(1, 32, 2, dtype=torch.bool)
    truth[0, [5, 20], 0] = True
    made = torch.zeros_like(truth)
    made[0, 5 + F.TOLERANCE, 0] = True  # near enough
    made[0, 20 + F.TOLERANCE + 1, 0] = True  # too late
    made[0, 20, 1] = True  # the other foot
    s = F.match_steps(made, truth)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    twice = torch.zeros_like(truth)
    twice[0, [4, 6], 0] = True  # two steps cannot both claim one true step
    assert F.match_steps(twice, truth)["precision"] == 0.5
    assert F.match_steps(truth, truth)["f1"] == 1.0


def test_frame_bands_hear_each_frame_alone():
    hop, rate = F.HOP, F.RATE
    wave_ = torch.zeros(1, 6 * hop)
    t = torch.arange(hop) / rate
    wave_[0, 2 * hop:3 * hop] = torch.sin(2 * torch.pi * 600 * t)
    heard = frame_bands(wave_, hop, rate)
    assert heard.shape == (1, 6, BANDS)
    assert int(heard[0, 2].argmax()) == band_of(600)
    assert heard[0, 2].max() > heard[0, [0, 1, 3, 4, 5]].max() + 10


def test_the_audio_conditioner_gives_a_token_per_frame_that_hears_its_neighbours_only():
    torch.manual_seed(0)
    cond = AudioConditioner(16, frames=8, hop=F.HOP, rate=F.RATE)
    cond.initialize()
    with torch.no_grad():
        cond.null_token.normal_()
    sounds = torch.randn(2, 8 * F.HOP) * 0.1
    values = cond.given(sounds)
    assert values.shape == (2, 8 * F.HOP + 1) and values[:, -1].tolist() == [1.0, 1.0]
    out = cond(values)
    assert out.tokens.shape == (2, 8, 16) and out.mask.all() and out.pooled.shape == (2, 16)
    changed = sounds.clone()
    changed[:, 4 * F.HOP:5 * F.HOP] *= 5  # frame 4 louder
    moved = (cond(cond.given(changed)).tokens - out.tokens).abs().amax(dim=(0, 2))
    scale = float(out.tokens.detach().abs().max())  # other frames' tokens do not move (beyond kernel rounding)
    assert (moved[3:6] > 1e-4 * scale).all() and (moved[[0, 1, 2, 6, 7]] <= 1e-6 * scale).all()
    null = cond(cond.drop(values, torch.tensor([False, True])))
    assert torch.allclose(null.tokens[0], out.tokens[0], rtol=0, atol=1e-6 * scale)
    assert torch.allclose(null.tokens[1], cond.null_token + cond.pos)  # the null sound ignores the waveform
    with pytest.raises(ConfigError, match="float"):
        cond(torch.zeros(2, 10))
    with pytest.raises(ConfigError, match="hears"):
        cond.given(torch.zeros(2, 10))


def test_aligned_injection_adds_each_frames_condition_to_the_tokens_of_its_frames():
    from maskdit.model.blocks import Context
    from maskdit.model.text import AlignedInput

    torch.manual_seed(0)
    layer = AlignedInput(8, grid=(4, 3), patch=2)  # 4 token rows of 2 frames, 3 columns: 8 frames, 12 tokens
    layer.zero_init()
    x, cond = torch.randn(2, 12, 8), torch.randn(2, 8, 8)
    assert layer(x, Context(torch.zeros(2, 8), text=cond)).abs().max() == 0  # a fresh layer adds nothing
    torch.nn.init.normal_(layer.proj.weight)
    out = layer(x, Context(torch.zeros(2, 8), text=cond))
    changed = cond.clone()
    changed[:, 5] += 1  # frame 5 is in token row 2 (frames 4 and 5): tokens 6, 7, 8
    moved = (layer(x, Context(torch.zeros(2, 8), text=changed)) - out).abs().amax(dim=(0, 2))
    scale = float(out.detach().abs().max())
    assert (moved[6:9] > 1e-3 * scale).all() and (moved[[0, 1, 2, 3, 4, 5, 9, 10, 11]] <= 1e-6 * scale).all()
    with pytest.raises(ConfigError, match="one condition token per frame"):
        layer(x, Context(torch.zeros(2, 8), text=cond[:, :6]))
    with pytest.raises(ConfigError, match="whole training grid"):
        layer(x[:, :6], Context(torch.zeros(2, 8), text=cond))


def test_the_audio_condition_needs_data_with_sounds():
    from types import SimpleNamespace

    with pytest.raises(ConfigError, match="data.name=footsteps"):
        AudioConditioner.data_options(SimpleNamespace(name="motion"), None, None)


def _write_wav(path, samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    pcm = (samples * 127 + 128).astype(np.uint8) if width == 1 else (samples * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


@pytest.mark.parametrize("width,channels", [(2, 1), (1, 1), (2, 2)])
def test_a_wav_is_read_as_mono_at_the_rate_asked(tmp_path, width, channels):
    rate = 12000
    t = np.arange(rate // 2) / rate
    tone = 0.5 * np.sin(2 * np.pi * 300 * t)
    path = tmp_path / "tone.wav"
    _write_wav(path, np.repeat(tone, channels), rate, width, channels)  # channels interleaved
    got = read_wav(path, F.RATE)
    assert got.dtype == np.float32 and len(got) == len(tone) // 2
    spectrum = np.abs(np.fft.rfft(got))
    assert np.fft.rfftfreq(len(got), 1 / F.RATE)[spectrum.argmax()] == pytest.approx(300, abs=3)
    assert np.abs(got).max() == pytest.approx(0.5, abs=0.03)


FOOT = ["--preset", "footsteps", *TINY, "data.frames=16"]


@pytest.fixture(scope="module")
def footsteps_run(run_factory):
    return run_factory(*FOOT[2:], preset="footsteps")


def test_a_footsteps_run_samples_motion_from_sounds(footsteps_run, tmp_path, capsys):
    pairs, sound = tmp_path / "pairs.npz", tmp_path / "steps.wav"
    for out in (pairs, sound):
        assert main(["data", "footsteps", "--num", "3", "--frames", "16", "--out", str(out)]) == 0
    stored = np.load(pairs)
    assert stored["motion"].shape == (3, 16, 14, 4) and stored["sounds"].shape == (3, 16 * F.HOP)
    heard = read_wav(sound, F.RATE)  # the three sounds, each followed by a quarter second of silence
    first = heard[:16 * F.HOP]
    assert np.abs(first - stored["sounds"][0]).max() < 1e-4 and len(heard) == 3 * (16 * F.HOP + F.RATE // 4)

    out = tmp_path / "out.npz"
    assert main(["sample", str(footsteps_run), "--num", "3", "--audio", str(pairs), "--out", str(out)]) == 0
    made = np.load(out)["motion"]
    assert made.shape == (3, 16, 14, 4) and np.isfinite(made).all()
    quiet = tmp_path / "quiet.npz"
    np.savez(quiet, sounds=np.zeros_like(stored["sounds"]))
    other = tmp_path / "other.npz"
    assert main(["sample", str(footsteps_run), "--num", "3", "--audio", str(quiet), "--out", str(other)]) == 0
    assert not np.array_equal(np.load(other)["motion"], made)  # the sound reaches the model
    assert main(["sample", str(footsteps_run), "--num", "4", "--audio", str(sound), "--out",
                 str(tmp_path / "from_wav.gif")]) == 0
    assert main(["sample", str(footsteps_run), "--task", "inbetween", "--context", str(pairs), "--audio", str(pairs),
                 "--out", str(tmp_path / "inbetween.npz")]) == 0
    task = np.load(tmp_path / "inbetween.npz")["motion"]
    assert np.array_equal(task[:, :4], stored["motion"][:, :4])  # the given frames come back exactly
    capsys.readouterr()
    assert main(["eval", str(footsteps_run), "--num", "4"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["modality"] == "motion" and {"step_f1", "step_precision", "step_recall"} <= set(scores)
    assert 0 <= scores["step_f1"] <= 1


def test_a_wav_longer_than_the_model_hears_is_cut_into_windows(footsteps_run, tmp_path):
    from types import SimpleNamespace

    from maskdit.cli.options import audio_values
    from maskdit.runs import load_run

    run = load_run(footsteps_run)
    samples = run.model.conditioner.samples
    path = tmp_path / "long.wav"
    _write_wav(path, np.linspace(-0.5, 0.5, samples * 2 + 10), F.RATE)
    values = audio_values(SimpleNamespace(audio=str(path)), run, 5)
    assert values.shape == (5, samples + 1)
    assert torch.equal(values[3], values[0]) and not torch.equal(values[1], values[0])  # 3 windows, cycled
    assert (values[2, 10:samples] == 0).all() and values[2, -1] == 1  # the last, padded with silence
