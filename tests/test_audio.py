"""Audio: digits spoken by eSpeak NG through ctypes, the held-out voices, the store a run trains on, the .wav /
spectrogram / .npz views and a tiny audio run end to end (class-conditional sampling to .wav, in-betweening a
waveform)."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch
from conftest import TINY

from maskdit.cli.app import main
from maskdit.data import audio as A


def test_speech_is_synthesised_with_the_length_the_rate_asks():
    slow, fast = A.speak("seven", "en", rate=120), A.speak("seven", "en", rate=240)
    assert slow.dtype == np.float32 and np.abs(slow).max() > 0.05
    assert 0.2 < len(fast) / A.SYNTH_RATE < len(slow) / A.SYNTH_RATE < 2.0  # half the rate: a longer word
    # eSpeak NG varies a little from call to call (why sets are synthesised once into a store), not by much
    again = A.speak("seven", "en", rate=120)
    assert abs(len(again) - len(slow)) < 0.01 * len(slow)
    assert not np.allclose(A.speak("seven", "en+f3", rate=120)[:1000], slow[:1000])  # another voice


def test_clips_are_one_second_centred_and_normalised():
    clip = A.to_clip(A.speak("two"))
    assert clip.shape == (A.RATE,) and np.abs(clip).max() == pytest.approx(0.9, abs=1e-5)
    loud = np.nonzero(np.abs(clip) > 0.01)[0]
    assert abs((loud[0] + loud[-1]) / 2 - A.RATE / 2) < A.RATE * 0.05


def test_spoken_digit_splits_use_disjoint_voices_and_cycle_the_digits():
    waves, labels, voices = A.spoken_digits("train", 20)
    test_waves, _, test_voices = A.spoken_digits("test", 20)
    assert waves.shape == (20, 1, A.RATE) and labels.tolist() == list(range(10)) * 2
    assert not set(voices) & set(test_voices) and len(set(voices)) == 2
    assert len(A.voices()) > 100  # eSpeak's English variants: four fifths train, one fifth test
    assert not np.allclose(waves[:10], test_waves[:10])


def test_wav_and_npz_views_hold_the_waveforms(tmp_path):
    waves = torch.from_numpy(A.spoken_digits("test", 3)[0])
    view = A.AudioView()
    view.save(tmp_path / "a.wav", waves)
    with wave.open(str(tmp_path / "a.wav")) as f:
        assert f.getframerate() == A.RATE and f.getsampwidth() == 2
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    gap = int(0.25 * A.RATE)
    assert len(pcm) == 3 * (A.RATE + gap)
    assert np.abs(pcm[: A.RATE] / 32767 - waves[0, 0].numpy()).max() < 1e-4
    view.save(tmp_path / "a.npz", waves)
    assert torch.allclose(view.load(tmp_path / "a.npz", (1, A.RATE)), waves)
    view.save(tmp_path / "a.png", waves)
    from PIL import Image

    with Image.open(tmp_path / "a.png") as im:
        assert np.asarray(im).min() < 128  # the spectrograms show energy


@pytest.fixture(scope="module")
def audio_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "digits.npz"
    assert main(["data", "spoken-digits", "--split", "train", "--num", "20", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def audio_run(run_factory, audio_store):
    return run_factory(*TINY, "data.name=audio", f"data.path={audio_store}", "model.patch_size=80",
                       "task.names=[unconditional,inbetween]", "model.token_time=true")


def test_a_store_is_read_back_exactly_with_its_labels_and_class_names(audio_store):
    data = A.load_store(audio_store)
    stored = np.load(audio_store)
    assert data.shape == (1, A.RATE) and len(data) == 20 and data.class_names == list(A.WORDS)
    assert torch.equal(data.audio[:, 0], torch.from_numpy(stored["audio"][..., 0]))
    assert data.labels.tolist() == list(range(10)) * 2 and len(set(stored["voices"].tolist())) == 2
    x, y = data.batch(torch.tensor([3, 4]))
    assert torch.allclose(x * A.AUDIO_SCALE, data.audio[[3, 4]]) and y.tolist() == [3, 4]


def test_audio_run_samples_wav_and_inpaints_a_waveform(audio_run, tmp_path):
    out = tmp_path / "s.wav"
    assert main(["sample", str(audio_run), "--num", "2", "--classes", "3", "--steps", "2", "--out", str(out)]) == 0
    with wave.open(str(out)) as f:
        assert f.getnframes() == 2 * (A.RATE + int(0.25 * A.RATE))
    ctx = tmp_path / "ctx.npz"
    assert main(["data", "spoken-digits", "--num", "2", "--out", str(ctx)]) == 0
    done = tmp_path / "done.npz"
    assert main(["sample", str(audio_run), "--task", "inbetween", "--context", str(ctx), "--steps", "2",
                 "--out", str(done)]) == 0
    before, after = np.load(ctx)["audio"][..., 0], np.load(done)["audio"][..., 0]
    quarter = A.RATE // 4  # 100 tokens of 80 samples: the first and last 25 given
    assert np.array_equal(after[:, :quarter], before[:, :quarter])
    assert np.array_equal(after[:, -quarter:], before[:, -quarter:])
    assert not np.allclose(after[:, quarter:-quarter], before[:, quarter:-quarter])
