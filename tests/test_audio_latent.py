"""Audio's latent path and score: the 1-D waveform autoencoder (training, the directory it writes, the codec that
trains on its latents), the span task of masked-span pretraining, class-conditional finetuning from an unlabelled
run, and the digit classifier that scores generated speech."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import torch
from conftest import TINY

from maskdit.cli.app import main
from maskdit.data import audio as A
from maskdit.masks import task_mask
from maskdit.training.autoencoder import AudioVAE, load_autoencoder

LENGTH = 480  #: short clips keep the tiny autoencoder fast: 32 STFT frames of hop 16, 16 latent frames


def tones(n: int = 24, length: int = LENGTH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sine tones of two pitches (label 0 low, 1 high) with drawn phase and loudness, as (n, 1, length)."""
    gen = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    t = np.arange(length) / 8000
    freq = np.where(labels == 0, 300.0, 1200.0)[:, None]
    waves = gen.uniform(0.3, 0.8, (n, 1)) * np.sin(2 * np.pi * freq * t + gen.uniform(0, 6, (n, 1)))
    return waves[:, None].astype(np.float32), labels


@pytest.fixture(scope="module")
def tone_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tones") / "tones.npz"
    waves, labels = tones()
    A.write_store(path, waves, labels, ["low", "high"])
    return path


@pytest.fixture(scope="module")
def autoencoder(tone_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae"
    assert main(["autoencoder", "train", str(tone_store), "--out", str(out), "--steps", "150", "--batch", "8",
                 "--lr", "3e-3", "--channels", "4", "--width", "16", "--strides", "2", "--n-fft", "64", "--hop", "16",
                 "--no-progress"]) == 0
    return out


def test_the_autoencoder_pads_to_whole_latent_frames_and_decodes_the_same_length():
    vae = AudioVAE(latent_channels=4, width=8, strides=(2,), n_fft=64, hop=16)
    assert vae.frames(LENGTH) == 32 and vae.frames(LENGTH + 16) == 32 and vae.frames(LENGTH + 17) == 34
    mean, logvar = vae.encode(torch.zeros(3, 1, LENGTH))
    assert mean.shape == logvar.shape == (3, 4, 16)
    assert vae.decode(mean).shape == (3, 33, 32) and vae.waves(vae.decode(mean), LENGTH).shape == (3, 1, LENGTH)


def test_griffin_lim_finds_a_phase_that_matches_the_magnitudes():
    vae = AudioVAE(n_fft=64, hop=16)
    x = torch.from_numpy(tones(4)[0])
    target = vae.spectrogram(x)
    loud = target > target.amax() - 4  # within about 35 dB of the loudest bin
    errors = [float((vae.spectrogram(vae.waves(target, LENGTH, iters=i)) - target)[loud].abs().mean())
              for i in (0, 32)]
    assert errors[1] < errors[0] / 2  # 32 rounds bring the magnitudes far closer than random phases
    a, b = vae.waves(target, LENGTH, iters=4), vae.waves(target, LENGTH, iters=4)
    assert torch.equal(a, b)  # seeded: decoding repeats


def test_training_learns_the_tones_and_writes_a_directory_that_loads(autoencoder, tone_store):
    facts = json.loads((autoencoder / "autoencoder.json").read_text())
    assert facts["final_loss"] < 0.5 * facts["first_loss"]
    vae, loaded = load_autoencoder(autoencoder)
    assert loaded["config"] == {"latent_channels": 4, "width": 16, "strides": [2], "n_fft": 64, "hop": 16}
    store = A.load_store(tone_store, str(autoencoder))
    codec = store.codec
    assert store.shape == (4, 16) and codec.stored_shape(store.shape) == (1, LENGTH)
    # model space is standardised on the training store: per-channel mean 0, std 1
    assert store.values.mean(dim=(0, 2)).abs().max() < 1e-3
    assert (store.values.std(dim=(0, 2)) - 1).abs().max() < 1e-2
    back = codec.decode(store.values)
    assert back.shape == store.audio.shape and back.abs().max() <= 1
    with torch.no_grad():
        direct = vae.waves(vae.decode(vae.encode(store.audio)[0]), LENGTH).clamp(-1, 1)
    assert torch.allclose(back, direct, atol=1e-2 * float(direct.abs().max()))  # Griffin-Lim amplifies rounding


def test_a_new_autoencoder_never_replaces_a_directory(autoencoder, tone_store):
    before = sorted(p.name for p in autoencoder.iterdir())
    assert main(["autoencoder", "train", str(tone_store), "--out", str(autoencoder), "--steps", "1"]) == 2
    assert sorted(p.name for p in autoencoder.iterdir()) == before


def test_a_hop_beyond_the_window_is_refused_before_training(tone_store, tmp_path, capsys):
    assert main(["autoencoder", "train", str(tone_store), "--out", str(tmp_path / "a"), "--n-fft", "64",
                 "--hop", "128"]) == 2
    assert "--hop 128" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_span_masks_one_contiguous_run_of_most_frames():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = task_mask("span", (25,), gen, timed=True)
        hidden = torch.nonzero(~mask)[:, 0]
        assert 0.68 <= len(hidden) / 25 <= 1.0
        assert torch.equal(hidden, torch.arange(int(hidden[0]), int(hidden[-1]) + 1))  # one span
    assert int((~task_mask("span", (10, 3), gen, timed=True, share=0.5)).sum()) == 15  # whole frames


@pytest.fixture(scope="module")
def latent_runs(run_factory, tone_store, autoencoder):
    """An unlabelled span-pretrained run, and a class-conditional run started from it."""
    common = [*TINY, "data.name=audio", f"data.path={tone_store}", f"data.autoencoder={autoencoder}",
              "model.patch_size=2", "model.token_time=true"]
    pre = run_factory(*common, "model.conditional=false", "task.names=[span,unconditional]")
    fine = run_factory(*common, f"init_from={pre}", "task.names=[unconditional,inbetween]")
    return pre, fine


def test_conditional_training_starts_from_an_unlabelled_run_with_a_fresh_class_table(latent_runs):
    from safetensors.torch import load_file

    pre, fine = latent_runs
    assert json.loads((pre / "config.json").read_text())["model"]["num_classes"] == 0
    assert json.loads((fine / "config.json").read_text())["model"]["num_classes"] == 2
    a, b = (load_file(sorted((run / "checkpoints").glob("step_*"))[-1] / "ema.safetensors") for run in (pre, fine))
    assert set(b) - set(a) == {"y_embedder.table.weight"} and set(a) <= set(b)


def test_a_latent_audio_run_samples_waveforms_and_inpaints_through_the_autoencoder(latent_runs, tmp_path):
    _, fine = latent_runs
    out = tmp_path / "s.wav"
    assert main(["sample", str(fine), "--num", "2", "--classes", "1", "--steps", "2", "--out", str(out)]) == 0
    with wave.open(str(out)) as f:
        assert f.getnframes() == 2 * (LENGTH + int(0.25 * A.RATE))
    ctx = tmp_path / "ctx.npz"
    A.AudioView().save(ctx, torch.from_numpy(tones(2, seed=5)[0]))
    done = tmp_path / "done.npz"
    assert main(["sample", str(fine), "--task", "inbetween", "--context", str(ctx), "--steps", "2",
                 "--out", str(done)]) == 0
    before, after = np.load(ctx)["audio"][..., 0], np.load(done)["audio"][..., 0]
    quarter = LENGTH // 4  # 16 latent frames, patch 2: 8 tokens, the first and last 2 given = a quarter each
    assert np.array_equal(after[:, :quarter], before[:, :quarter])
    assert np.array_equal(after[:, -quarter:], before[:, -quarter:])
    assert not np.allclose(after[:, quarter:-quarter], before[:, quarter:-quarter])


def test_eval_refuses_an_audio_run_that_is_not_spoken_digits(latent_runs, capsys):
    assert main(["eval", str(latent_runs[1]), "--num", "2"]) == 2
    assert "spoken digits" in capsys.readouterr().err


# -- the digit classifier -------------------------------------------------------------------------------------
def test_log_mel_is_gain_free_and_mel_filters_cover_the_band():
    from maskdit.evaluate.audio import MELS, log_mel, mel_filters

    filters = mel_filters()
    assert filters.shape == (MELS, 129) and bool((filters.sum(1) > 0).all())
    x = torch.from_numpy(A.spoken_digits("test", 2)[0])
    a, b = log_mel(x), log_mel(0.25 * x)
    assert a.amax(dim=(1, 2, 3)).tolist() == pytest.approx([1.0, 1.0]) and a.min() >= -1
    assert torch.allclose(a, b, atol=1e-3)


def test_a_briefly_trained_classifier_recognises_held_out_voices_far_above_chance():
    from maskdit.evaluate.audio import train_recogniser

    clf = train_recogniser(train=300, test=100, steps=120, progress=False)
    assert clf.holdout_accuracy > 40  # chance is 10%
    waves, labels, _ = A.spoken_digits("test", 100, seed=1)
    right = clf.recognition(torch.from_numpy(waves), torch.from_numpy(labels))
    wrong = clf.recognition(torch.from_numpy(waves), torch.from_numpy((labels + 1) % 10))
    assert right > 40 and wrong < right / 2  # eSpeak varies call to call, so not exactly the held-out figure
