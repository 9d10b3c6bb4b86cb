"""Inversion: the deterministic samplers run backwards find noise that samples back into real digits, and
``sample --from-noise`` with a condition mask edits a real image inside the mask only."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskdit.cli.app import main
from maskdit.diffusion.samplers import generate, invert
from maskdit.errors import ConfigError
from maskdit.runs import load_run

TRAIN = ["model.depth=2", "model.hidden_size=64", "model.num_heads=2", "steps=300", "warmup_steps=20",
         "ckpt_every=300", "keep_checkpoints=1"]


@pytest.fixture(scope="module")
def runs(run_factory) -> dict[str, Path]:
    """The two runs the tests read (and write nothing into): flow with inpainting, and DDPM."""
    return {"flow": run_factory(*TRAIN, "task.names=[inpaint]"), "ddpm": run_factory(*TRAIN, "objective.name=ddpm")}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images[:24] * (255 / 16)).round().astype(np.uint8)).unsqueeze(1)
    return images, torch.from_numpy(d.target[:24]).long()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize("name,sampler,steps", [("flow", "heun", 10), ("flow", "euler", 40), ("ddpm", "ddim", 100)])
def test_inversion_then_sampling_reconstructs_real_digits(runs, digits, name, sampler, steps):
    run = load_run(runs[name])
    images, labels = digits
    noise = invert(run.model, run.objective, run.codec.encode(images), labels, sampler, steps)
    assert noise.shape == (24, 1, 8, 8)
    assert 0.6 < float(noise.std()) < 1.4  # it looks like the Gaussian noise the sampler starts from
    back = run.codec.decode(generate(run.model, run.objective, 24, labels, sampler, steps, start=noise))
    assert psnr(back, images) >= 30
    fresh = run.codec.decode(generate(run.model, run.objective, 24, labels, sampler, steps))
    assert psnr(fresh, images) < 15  # seeded noise draws other digits: the reconstruction is the inversion's


def test_stochastic_samplers_and_mismatched_starts_are_refused(runs, digits):
    run = load_run(runs["ddpm"])
    images, labels = digits
    with pytest.raises(ConfigError, match="stochastic.*ddim"):
        invert(run.model, run.objective, run.codec.encode(images), labels, "ddpm", 10)
    with pytest.raises(ConfigError, match="starting noise"):
        generate(run.model, run.objective, 3, labels[:3], "ddim", 5, start=torch.zeros(2, 1, 8, 8))


def test_cli_inverts_reconstructs_and_edits_inside_the_mask_only(runs, digits, tmp_path, capsys):
    images, labels = digits
    np.savez(tmp_path / "x.npz", images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255  # the centre 2x2 tokens are generated
    Image.fromarray(mask).save(tmp_path / "m.png")
    flow = str(runs["flow"])
    assert main(["invert", flow, "--images", str(tmp_path / "x.npz"), "--out", str(tmp_path / "n.npz"),
                 "--steps", "20"]) == 0
    assert "sampling it back:" in capsys.readouterr().out
    saved = np.load(tmp_path / "n.npz")
    assert saved["noise"].shape == (24, 1, 8, 8) and saved["labels"].tolist() == labels.tolist()
    assert str(saved["sampler"]) == "heun" and int(saved["steps"]) == 20
    # sample --from-noise takes the file's labels and settings: the inputs come back
    assert main(["sample", flow, "--from-noise", str(tmp_path / "n.npz"), "--out", str(tmp_path / "back.npz")]) == 0
    back = np.load(tmp_path / "back.npz")["images"]
    assert psnr(torch.from_numpy(back), images.permute(0, 2, 3, 1)) >= 30
    # editing: inpaint the centre from the inverted noise; outside the mask the input stays exact
    edits = {}
    for name, extra in [("inverted", ["--from-noise", str(tmp_path / "n.npz")]), ("fresh", ["--steps", "20"])]:
        out = tmp_path / f"{name}.npz"
        assert main(["sample", flow, "--task", "inpaint", "--context", str(tmp_path / "x.npz"), "--mask",
                     str(tmp_path / "m.png"), "--out", str(out), *extra]) == 0
        edits[name] = torch.from_numpy(np.load(out)["images"]).permute(0, 3, 1, 2)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    for edit in edits.values():
        assert torch.equal(edit[..., ~inside], images[..., ~inside])
    # starting from the input's own noise keeps far more of what was inside than fresh noise does
    assert psnr(edits["inverted"][..., inside], images[..., inside]) > psnr(edits["fresh"][..., inside],
                                                                          images[..., inside]) + 6
