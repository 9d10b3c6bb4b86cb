"""The VAE latent path end to end with a tiny randomly initialised AutoencoderKL saved locally:
encode -> train -> sample -> decode -> PNG."""

import json

import numpy as np
import pytest
import torch

from maskdit.cli.app import main
from maskdit.data.datasets import load_dataset

TINY = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.patch_size=2", "batch_size=8",
        "warmup_steps=1", "sample.steps=2"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    gen = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "shapes.npz"
    np.savez(path, images=gen.integers(0, 256, (24, 16, 16), dtype=np.uint8), labels=np.arange(24) % 3)
    return path


def test_latents_encode_train_sample_decode(tmp_path, vae_dir, images, capsys):
    from diffusers import AutoencoderKL

    store = tmp_path / "store"
    assert main(["latents", str(images), "--vae", str(vae_dir), "--out", str(store), "--no-progress"]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["scaling_factor"] == pytest.approx(0.18215)
    assert manifest["num"] == 24 and manifest["num_classes"] == 3 and manifest["image_shape"] == [1, 16, 16]
    # the stored means are the VAE's, scaled, of each image (gray repeated to RGB) and of its mirror
    vae = AutoencoderKL.from_pretrained(vae_dir)
    pixels = torch.from_numpy(np.load(images)["images"][:4]).float().div(127.5).sub(1)[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        plain = vae.encode(pixels).latent_dist.mean * 0.18215
        mirror = vae.encode(pixels.flip(-1)).latent_dist.mean * 0.18215
    mean = torch.from_numpy(np.load(store / "mean.npy")[:4].astype(np.float32))
    assert torch.allclose(mean[:, 0], plain, atol=2e-3) and torch.allclose(mean[:, 1], mirror, atol=2e-3)
    data = load_dataset("latents", str(store))
    x, y = data.batch(torch.tensor([1, 2]), mirrored=torch.tensor([False, True]))
    assert x.shape == (2, 4, 8, 8) and y.tolist() == [1, 2] and torch.allclose(x[1], mean[2, 1])

    run = tmp_path / "run"
    assert main(["train", "--no-progress", *TINY, "steps=3", "data.name=latents", f"data.path={store}",
                 "data.flip=true", f"run_dir={run}"]) == 0
    assert "4x8x8" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())["dataset"]["codec"]
    assert saved["name"] == "vae" and saved["channels"] == 1
    out = tmp_path / "samples.npz"
    assert main(["sample", str(run), "--num", "6", "--out", str(out)]) == 0
    decoded = np.load(out)["images"]
    assert decoded.shape == (6, 16, 16, 1) and decoded.dtype == np.uint8  # decoded through the VAE to pixels
    assert main(["sample", str(run), "--num", "6", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_latents_refuse_what_they_cannot_do(tmp_path, vae_dir, images, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["latents", str(images), "--vae", str(vae_dir), "--out", str(tmp_path / "taken")]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert main(["latents", str(images), "--vae", "stabilityai/sd-vae-ft-ema", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "never downloads" in err and err.count("\n") == 1 and not (tmp_path / "s").exists()
    assert main(["train", "--no-progress", *TINY, "data.name=latents", f"data.path={tmp_path}",
                 f"run_dir={tmp_path / 'r'}"]) == 2
    assert "not a latent store" in capsys.readouterr().err
