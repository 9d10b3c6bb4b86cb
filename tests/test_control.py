"""Control signals: the maps (edges, lowres, blur), the packed condition value, the zero-initialised ``concat``
embedding, training from a base, sampling with ``--control`` and the adherence scores."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SMALL, perturbed

from maskdit.checkpoint import latest_checkpoint
from maskdit.conditions.control import (
    CONTROL_SIGNALS,
    Controlled,
    blur,
    compute_signal,
    edges,
    lowres,
    parse_signal,
    signal_channels,
)
from maskdit.config import load_config
from maskdit.errors import ConfigError
from maskdit.evaluate.control import adherence, edge_scores, psnr
from maskdit.model import DiT
from maskdit.training.trainer import train


def test_edges_mark_both_sides_of_a_step_and_nothing_on_flat_ground():
    image = -torch.ones(1, 1, 8, 8)
    image[..., 4:] = 1.0  # a vertical step between columns 3 and 4
    found = edges(image) > 0
    assert found[0, 0, :, 3:5].all() and not found[0, 0, :, :3].any() and not found[0, 0, :, 5:].any()
    assert (edges(torch.zeros(2, 3, 8, 8)) == -1).all()
    assert signal_channels("edges", 3) == 1 and signal_channels("blur:1", 3) == 3


def test_lowres_is_the_cell_means_repeated():
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    got = lowres(image, 4)
    means = image.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5))
    assert torch.allclose(got[..., ::4, ::4], means, atol=1e-6)
    assert torch.equal(got[..., 0:4, 0:4], got[..., 0:1, 0:1].expand(2, 3, 4, 4))


def test_blur_keeps_flat_images_and_spreads_a_point_as_a_gaussian():
    flat = torch.full((1, 2, 9, 9), 0.3)
    assert torch.allclose(blur(flat, 1.5), flat, atol=1e-6)
    point = torch.zeros(1, 1, 15, 15)
    point[..., 7, 7] = 1.0
    spread = blur(point, 1.0)
    assert spread.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (spread[0, 0, 7, 8] / spread[0, 0, 7, 7]).item() == pytest.approx(math.exp(-0.5), rel=1e-4)
    assert torch.allclose(spread, spread.transpose(-1, -2), atol=1e-7)


@pytest.mark.parametrize("spec,message", [
    ("canny", "choose one of"), ("lowres", "needs its factor"), ("lowres:1", "whole number of at least 2"),
    ("lowres:2.5", "whole number"), ("blur", "needs its sigma"), ("blur:0", "positive number"),
    ("blur:x", "positive number"), ("edges:-1", "positive number"),
])
def test_bad_signal_specs_are_refused_by_name(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_signal(spec)
    assert parse_signal("lowres:4") == ("lowres", 4.0) and parse_signal("edges") == ("edges", None)
    assert set(CONTROL_SIGNALS.names()) == {"edges", "lowres", "blur"}


def controlled(signal="lowres:2", num_classes=10, **kw) -> DiT:
    torch.manual_seed(0)
    return DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2,
               num_classes=num_classes, control=signal, **kw)


def test_packed_values_split_back_and_guidance_nulls_the_label_only():
    model = controlled()
    conditioner = model.conditioner
    assert isinstance(conditioner, Controlled)
    labels, maps = torch.tensor([3, 7]), torch.rand(2, 1, 8, 8)
    value = conditioner.pack(labels, maps)
    got_labels, got_maps = conditioner.split(value)
    assert torch.equal(got_labels, labels) and torch.equal(got_maps, maps)
    null_labels, null_maps = conditioner.split(conditioner.null(value))
    assert (null_labels == 10).all() and torch.equal(null_maps, maps)
    dropped_labels, _ = conditioner.split(conditioner.drop(value, torch.tensor([True, False])))
    assert dropped_labels.tolist() == [10, 7]
    with pytest.raises(ConfigError, match=r"float tensor \(B, 65\)"):
        conditioner.split(labels)
    bare = controlled(num_classes=0).conditioner
    assert torch.equal(bare.split(bare.pack(None, maps))[1], maps) and bare.null(bare.pack(None, maps)).shape == (2, 64)


def test_a_fresh_control_embedding_leaves_the_base_exact_and_learns():
    base = perturbed(DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                         num_classes=10))
    model = controlled()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert set(missing) == {"control.proj.weight", "control.proj.bias"} and not unexpected
    x, t, labels = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 3])
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    y = model.conditioner.pack(labels, compute_signal("lowres:2", images))
    assert torch.equal(model(x, t, y), base(x, t, labels))  # the embedding starts at zero: exactly the base
    model(x, t, y).square().mean().backward()
    assert model.control.proj.weight.grad.abs().sum() > 0  # and the loss reaches it
    with torch.no_grad():
        model.control.proj.weight.normal_(0, 0.1)
    other = model.conditioner.pack(labels, compute_signal("lowres:2", -images))
    assert not torch.allclose(model(x, t, y), model(x, t, other))  # then the map steers the prediction
    model.control.scale = 0.0
    assert torch.allclose(model(x, t, y), model(x, t, other))  # --control-scale 0 ignores it


def test_a_controlled_model_refuses_captions_and_video():
    with pytest.raises(ConfigError, match="2-D images"):
        DiT(input_size=(2, 8, 8), in_channels=1, patch_size=(1, 2, 2), hidden_size=32, depth=1, num_heads=2,
            control="edges")
    with pytest.raises(ConfigError, match="control.signal=edges: a control map beside captions"):
        load_config("shapes-text", overrides=["control.signal=edges"])
    with pytest.raises(ConfigError, match="data.flip=true"):
        load_config("digits", overrides=["control.signal=edges", "data.flip=true"])


def test_adherence_scores_what_they_say():
    image = -torch.ones(4, 1, 8, 8)
    image[..., 2:6, 2:6] = 1.0
    perfect = adherence(image, image, "edges")
    assert perfect["edge_f1"] == 1.0 and perfect["source_psnr"] > 90
    blank = adherence(-torch.ones(4, 1, 8, 8), image, "edges")
    assert blank["edge_f1"] == 0.0 and blank["edge_recall"] == 0.0
    scores = edge_scores(torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False]))
    assert scores == {"edge_f1": 0.5, "edge_precision": 0.5, "edge_recall": 0.5}
    a, b = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.2)  # 0.1 apart in [0, 1] pixels: 20 dB
    assert psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)
    lowres_scores = adherence(image, image, "lowres:2")
    assert lowres_scores["control_psnr"] > 90 and "edge_f1" not in lowres_scores


@pytest.fixture(scope="module")
def controlled_run(tmp_path_factory):
    """A digits base and an edge-controlled model finetuned from it (a few steps), plus control images."""
    root = tmp_path_factory.mktemp("control")
    train(load_config("digits", overrides=[*SMALL, "steps=3", f"run_dir={root / 'base'}"]), progress=False)
    train(load_config("digits", overrides=[*SMALL, "steps=4", "control.signal=edges", f"init_from={root / 'base'}",
                                           "lr=1e-2", "eval_every=4", "eval_num=8", f"run_dir={root / 'run'}"]),
          progress=False)
    from maskdit.data.datasets import load_digits

    digits = load_digits()
    np.savez(root / "controls.npz", images=digits.images[:6, 0].numpy(), labels=np.arange(6))
    return root


def cli(*args):
    return subprocess.run([sys.executable, "-m", "maskdit", *map(str, args)], capture_output=True, text=True)


def test_training_from_a_base_learns_the_embedding_and_scores_adherence(controlled_run):
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(controlled_run / "run")
    weights = load_file(ckpt / "ema.safetensors")
    assert weights["control.proj.weight"].abs().sum() > 0  # trained from zero
    info = json.loads((ckpt / "config.json").read_text())
    assert info["model"]["control"] == "edges" and info["config"]["control"]["signal"] == "edges"
    records = [json.loads(line) for line in (controlled_run / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals and 0.0 <= evals[-1]["edge_f1"] <= 1.0 and "source_psnr" in evals[-1]


def test_sample_follows_control_images_and_eval_scores_them(controlled_run, tmp_path):
    run = controlled_run / "run"
    out = tmp_path / "s.npz"
    r = cli("sample", run, "--control", controlled_run / "controls.npz", "--num", 6, "--steps", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    assert np.load(out)["images"].shape[0] == 6 and np.load(out)["labels"].tolist() == list(range(6))
    r = cli("eval", run, "--num", 8, "--steps", 2, "--metrics", "control")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["control"]["edge_f1"] <= 1.0 and result["control"]["signal"] == "edges"
    assert "control adherence (edges): edge F1" in r.stdout
    r = cli("eval", run, "--num", 6, "--steps", 2, "--metrics", "control,class", "--control",
            controlled_run / "controls.npz")  # the maps of given images, each sample labelled as its image
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["num"] == 6 and 0.0 <= result["control"]["edge_f1"] <= 1.0


def test_the_report_and_info_describe_a_controlled_run(controlled_run, tmp_path):
    r = cli("info", controlled_run / "run")
    assert r.returncode == 0, r.stderr
    assert "a control map (edges, concat)" in r.stdout
    r = cli("report", controlled_run / "run", "--per-class", 1, "--out", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr
    assert "<img" in (tmp_path / "r.html").read_text()


def test_export_refuses_a_controlled_run(controlled_run, tmp_path):
    r = cli("export", controlled_run / "run", "--format", "diffusers", "--out", tmp_path / "x")
    assert r.returncode == 2 and "control.signal=edges" in r.stderr and not (tmp_path / "x").exists()
