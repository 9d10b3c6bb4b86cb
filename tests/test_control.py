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


def test_noise_adds_a_fixed_draw_of_the_given_deviation_and_clips():
    grey = torch.zeros(64, 1, 8, 8)
    noisy = compute_signal("noise:0.1", grey)
    assert torch.equal(noisy, compute_signal("noise:0.1", grey))  # one fixed draw: the same map every time
    assert abs(noisy.std().item() - 0.1) < 0.005 and abs(noisy.mean().item()) < 0.005
    assert compute_signal("noise:5", grey).abs().max() <= 1.0


@pytest.mark.parametrize("spec,message", [
    ("canny", "choose one of"), ("lowres", "needs its factor"), ("lowres:1", "whole number of at least 2"),
    ("lowres:2.5", "whole number"), ("blur", "needs its sigma"), ("blur:0", "positive number"),
    ("blur:x", "positive number"), ("edges:-1", "positive number"), ("noise", "needs its sigma"),
    ("image:2", "takes no parameter"), ("mask:1", r"a number in \[-1, 1\)"),
])
def test_bad_signal_specs_are_refused_by_name(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_signal(spec)
    assert parse_signal("lowres:4") == ("lowres", 4.0) and parse_signal("edges") == ("edges", None)
    assert set(CONTROL_SIGNALS.names()) == {"edges", "mask", "lowres", "blur", "noise", "image"}


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


def test_a_controlled_model_refuses_video_and_kinds_that_do_not_fit():
    with pytest.raises(ConfigError, match="2-D images"):
        DiT(input_size=(2, 8, 8), in_channels=1, patch_size=(1, 2, 2), hidden_size=32, depth=1, num_heads=2,
            control="edges")
    with pytest.raises(ConfigError, match="model.text=joint blocks attend jointly"):
        DiT((8, 8), 3, 2, 32, 2, 2, condition="text", text="joint", control="edges", control_kind="tokens",
            condition_options={"vocab": ["a", "red"], "length": 2, "depth": 1})
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
    assert perfect["source_ssim"] == pytest.approx(1.0) and lowres_scores["control_ssim"] == pytest.approx(1.0)
    half = image.clone()
    half[..., 4:6, 2:6] = -1.0  # half the square left: IoU 8 / 16
    assert adherence(half, image, "mask")["mask_iou"] == pytest.approx(0.5)
    noisy = (image + 0.5 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert adherence(noisy, image, "lowres:2")["source_ssim"] < 0.9  # structure lost: SSIM falls


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
    maps = np.where(np.random.default_rng(0).random((3, 8, 8)) > 0.7, 1.0, -1.0).astype(np.float32)
    np.savez(tmp_path / "maps.npz", maps=maps, labels=np.array([1, 2, 3]))  # user-made edge maps, no images
    r = cli("sample", run, "--control", tmp_path / "maps.npz", "--num", 3, "--steps", 2, "--out", tmp_path / "m.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "m.npz")["labels"].tolist() == [1, 2, 3]
    r = cli("eval", run, "--num", 3, "--steps", 2, "--metrics", "control", "--control", tmp_path / "maps.npz")
    assert r.returncode == 2 and "holds ready-made maps" in r.stderr
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


def trained_base(depth=3) -> DiT:
    torch.manual_seed(1)
    return perturbed(DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=depth, num_heads=2,
                         num_classes=10))


def from_base(base: DiT, kind: str, **options) -> DiT:
    torch.manual_seed(0)
    model = DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=base.depth, num_heads=2,
                num_classes=10, control="edges", control_kind=kind, control_options=options)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert all(key.startswith("control.") for key in missing) and not unexpected
    model.control.start_from_base(model)
    return model


def controlled_inputs(model: DiT, n: int = 3):
    torch.manual_seed(2)
    x, t, labels = torch.randn(n, 1, 8, 8), torch.rand(n), torch.arange(n) % 10
    images = torch.rand(n, 1, 8, 8) * 2 - 1
    return x, t, labels, model.conditioner.pack(labels, compute_signal("edges", images))


def test_a_controlnet_branch_copies_the_base_starts_at_nothing_and_adds_residuals_by_grid_index():
    base = trained_base()
    model = from_base(base, "controlnet", blocks=2)
    assert len(model.control.blocks) == 2
    for copied, block in zip(model.control.blocks, model.blocks):
        assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), block.state_dict().values()))
    x, t, labels, y = controlled_inputs(model)
    assert torch.equal(model(x, t, y), base(x, t, labels))  # zero projections: exactly the base
    with torch.no_grad():
        for out in model.control.outs:
            out.weight.normal_(0, 0.1)
        model.control.embed.weight.normal_(0, 0.1)
    full = model(x, t, y)
    assert not torch.allclose(full, base(x, t, labels))
    # the residuals are a function of the whole grid: kept tokens get theirs by index, so keeping every token in
    # a shuffled order gives the same prediction, reordered
    order = torch.stack([torch.randperm(16) for _ in range(3)])
    tokens = model(x, t, y, keep_idx=order)
    from maskdit.grid import patchify
    expected = patchify(full, model.patch_size).gather(1, order[..., None].expand(-1, -1, 4))
    assert torch.allclose(tokens, expected, atol=1e-5)
    model.control.scale = 0.0
    assert torch.allclose(model(x, t, y), base(x, t, labels), atol=1e-6)


def test_condition_tokens_attend_only_to_themselves_scale_zero_is_the_base_and_the_cache_changes_nothing():
    base = trained_base()
    model = from_base(base, "tokens", rank=4)
    assert torch.equal(model.control.embed.weight, base.patch_embed.weight)  # the map reads like an image
    with torch.no_grad():
        for lora in model.control.lora:
            lora.up.weight.normal_(0, 0.1)
    x, t, labels, y = controlled_inputs(model)
    out = model(x, t, y)
    assert not torch.allclose(out, base(x, t, labels))
    order = torch.stack([torch.randperm(16) for _ in range(3)])  # kept tokens (any order) still see every key
    from maskdit.grid import patchify
    expected = patchify(out, model.patch_size).gather(1, order[..., None].expand(-1, -1, 4))
    assert torch.allclose(model(x, t, y, keep_idx=order), expected, atol=1e-5)
    # the condition tokens' keys and values depend on the map and label only: not on the noisy image or its time
    control = model.context(t, y).control
    memory = model.control.memory(model, control)
    other = model.context(torch.rand(3), y).control
    assert all(torch.equal(a[0], b[0]) for a, b in zip(memory, model.control.memory(model, other)))
    assert len(memory) == model.depth and memory[0][0].shape == (3, 2, 16, 16)
    model.control.scale = 0.0
    assert torch.allclose(model(x, t, y), base(x, t, labels), atol=1e-6)  # no attention paid: the base
    model.control.scale = 1.0
    from maskdit.diffusion.objectives import FlowMatching
    from maskdit.diffusion.samplers import generate

    objective = FlowMatching()
    calls = []
    plain = model.control.memory
    model.control.memory = lambda *a: calls.append(1) or plain(*a)
    cached = generate(model, objective, 3, y, steps=4, batch_size=3)
    computed_once = len(calls)
    model.control.caching = False
    recomputed = generate(model, objective, 3, y, steps=4, batch_size=3)
    assert computed_once == 1 and len(calls) - computed_once == 8  # heun: 2 calls a step, once per call
    assert torch.allclose(cached, recomputed, atol=1e-6)
    assert model.control.cache is None  # kept only while sampling a batch


@pytest.mark.parametrize("kind,options,trainable", [
    ("controlnet", ["control.blocks=1"], "control.blocks.0"), ("tokens", ["control.rank=2"], "control.lora.0"),
])
def test_a_frozen_base_kind_trains_only_its_own_layers(tmp_path, kind, options, trainable):
    from safetensors.torch import load_file

    base = tmp_path / "base"
    train(load_config("digits", overrides=[*SMALL, "steps=2", f"run_dir={base}"]), progress=False)
    with pytest.raises(ConfigError, match=f"control.kind={kind} trains control layers beside a frozen"):
        load_config("digits", overrides=["control.signal=edges", f"control.kind={kind}"])
    run = tmp_path / kind
    train(load_config("digits", overrides=[*SMALL, "steps=3", "control.signal=edges", f"control.kind={kind}",
                                           *options, "lr=1e-2", f"init_from={base}", f"run_dir={run}"]),
          progress=False)
    before = load_file(latest_checkpoint(base) / "ema.safetensors")
    after = load_file(latest_checkpoint(run) / "model.safetensors")
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the base: its EMA weights, untouched
    changed = [k for k in after if k.startswith("control.") and k not in before]
    assert any(k.startswith(trainable) for k in changed)
    r = cli("sample", run, "--control", tmp_path / "none.npz", "--num", 2)
    assert r.returncode == 2


def test_a_placed_branch_copies_the_named_blocks_and_skipping_a_layer_removes_only_its_residual():
    base = trained_base(depth=4)
    model = from_base(base, "controlnet", blocks=[1, 3])
    assert model.control.places == (1, 3)
    assert torch.equal(model.control.blocks[1].attn.qkv.weight, base.blocks[3].attn.qkv.weight)
    with torch.no_grad():
        for out in model.control.outs:
            out.weight.normal_(0, 0.1)
        model.control.embed.weight.normal_(0, 0.1)
    x, t, labels, y = controlled_inputs(model)
    c = model.inputs(x, t, y)[1]
    assert [r is None for r in c.residuals] == [True, False, True, False]
    full = model(x, t, y)
    model.control.skip = {1, 3}
    assert torch.allclose(model(x, t, y), base(x, t, labels), atol=1e-6)  # every control layer skipped: the base
    model.control.skip = {3}
    assert not torch.allclose(model(x, t, y), full) and not torch.allclose(model(x, t, y), base(x, t, labels))
    for bad in (0, 5, [], [1, 1], [4], [-1], [1.5], True):
        with pytest.raises(ConfigError, match="config key control.blocks="):
            from_base(base, "controlnet", blocks=bad)


def test_a_restoration_chain_starts_at_the_degraded_image_in_training_and_sampling():
    from maskdit.diffusion.objectives import FlowMatching, chain_start
    from maskdit.diffusion.samplers import generate

    model = controlled("lowres:2")
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    y = model.conditioner.value(torch.arange(4), images)
    noise = torch.randn(4, 1, 8, 8)
    plain, shifted = FlowMatching(), FlowMatching(source="control", kappa=0.25)
    assert torch.equal(chain_start(plain, noise, model.conditioner, y), noise)
    start = chain_start(shifted, noise, model.conditioner, y)
    assert torch.allclose(start, lowres(images, 2) + 0.25 * noise)
    # an untrained model predicts zero velocity: the sampled chain stays where it started
    out = generate(model, shifted, 4, y, sampler="euler", steps=3, seed=5)
    expected = lowres(images, 2) + 0.25 * torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="--eta 0"):
        generate(model, shifted, 4, y, sampler="euler", steps=3, eta=0.5)
    with pytest.raises(ConfigError, match="objective.source=control starts the chain at the control map: it needs"):
        load_config("digits", overrides=["objective.source=control", "control.signal=edges"])
    with pytest.raises(ConfigError, match="objective.source"):
        load_config("digits", overrides=["objective.source=control", "objective.name=ddpm", "control.signal=lowres:2"])
    cfg = load_config("digits", overrides=["objective.source=control", "objective.kappa=0.5",
                                           "control.signal=lowres:2"])
    assert cfg.objective.kappa == 0.5


def test_image_prompts_read_a_frozen_fingerprinted_encoder_through_decoupled_attention(tmp_path):
    from maskdit.cli.app import main
    from maskdit.model.control import ImagePrompt

    enc = tmp_path / "enc"
    assert main(["encoder", "train", "digits", "--out", str(enc), "--steps", "5", "--batch", "16", "--width", "32",
                 "--depth", "1", "--no-progress"]) == 0
    base = trained_base()
    torch.manual_seed(0)
    model = DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=3, num_heads=2, num_classes=10,
                control="image", control_kind="adapter", control_options={"encoder": str(enc)})
    model.load_state_dict(base.state_dict(), strict=False)
    assert isinstance(model.control, ImagePrompt)
    assert not any(k.startswith("control.encoder") for k in model.state_dict())  # frozen, loaded, never saved
    assert model.config["control_options"]["encoder_sha256"]
    x, t, labels = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 3])
    prompts = torch.rand(3, 1, 8, 8) * 2 - 1
    y = model.conditioner.value(labels, prompts)
    assert torch.equal(model(x, t, y), base(x, t, labels))  # zero-initialised values: exactly the base
    model(x, t, y).square().mean().backward()
    assert all(kv.weight.grad.abs().sum() > 0 for kv in model.control.kv)
    with torch.no_grad():
        for kv in model.control.kv:
            kv.weight.normal_(0, 0.2)
    other = model.conditioner.value(labels, -prompts)
    assert not torch.allclose(model(x, t, y), model(x, t, other))  # the prompt steers the prediction
    model.control.scale = 0.0
    assert torch.allclose(model(x, t, y), base(x, t, labels), atol=1e-6)
    rebuilt = DiT.from_config(model.config)  # a saved run rebuilds with the same encoder...
    assert rebuilt.config["control_options"] == model.config["control_options"]
    assert main(["encoder", "train", "digits", "--out", str(tmp_path / "enc2"), "--steps", "5", "--batch", "16",
                 "--width", "32", "--depth", "1", "--no-progress", "--seed", "3"]) == 0
    import shutil

    shutil.rmtree(enc)
    shutil.copytree(tmp_path / "enc2", enc)
    with pytest.raises(ConfigError, match="is not the encoder this model was trained with"):
        DiT.from_config(model.config)  # ...and refuses another one in its place
    with pytest.raises(ConfigError, match="control.encoder=DIR"):
        DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=3, num_heads=2, num_classes=10,
            control="image", control_kind="adapter")


@pytest.mark.parametrize("kind", ["concat", "controlnet"])
def test_a_caption_model_follows_a_control_map_beside_its_prompt(tmp_path, kind):
    """Text and control together: the packed value carries the caption's token ids and the map; training, the
    in-training GenEval eval (with edge adherence), sampling with --prompt/--negative-prompt and --control, and the
    report all hand both on."""
    from test_text import TEXT_TINY

    from maskdit.cli.app import main
    from maskdit.data.shapes import shapes_dataset

    base, run = tmp_path / "base", tmp_path / "run"
    assert main(["train", "--no-progress", "--preset", "shapes-text", *TEXT_TINY, f"run_dir={base}"]) == 0
    assert main(["train", "--no-progress", "--preset", "shapes-text", *TEXT_TINY, "control.signal=edges",
                 f"control.kind={kind}", "control.blocks=1", f"init_from={base}", "eval_every=2", "eval_num=4",
                 f"run_dir={run}"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals and "geneval_overall" in evals[-1] and 0.0 <= evals[-1]["edge_f1"] <= 1.0
    from maskdit.runs import load_run

    model = load_run(run).model
    ids = model.conditioner.parse(["a red circle", "two blue squares"])
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    value = model.conditioner.value(ids, images)
    got_ids, got_maps = model.conditioner.split(value)
    assert torch.equal(got_ids, ids) and torch.equal(got_maps, compute_signal("edges", images))
    null_ids, null_maps = model.conditioner.split(model.conditioner.null(value))
    assert not torch.equal(null_ids, ids) and torch.equal(null_maps, got_maps)  # guidance nulls the caption only
    scenes = shapes_dataset(2, "test")
    np.savez(tmp_path / "c.npz", images=scenes["images"])
    out = tmp_path / "s.npz"
    r = cli("sample", run, "--prompt", "a red circle", "--negative-prompt", "a blue square", "--control",
            tmp_path / "c.npz", "--num", 2, "--steps", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    assert np.load(out)["images"].shape[0] == 2
    r = cli("report", run, "--per-class", 1, "--out", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr
    r = cli("eval", run, "--num", 4, "--steps", 2)  # GenEval's held-out captions, each with its scene's map
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert "overall" in result["geneval"] and 0.0 <= result["control"]["edge_f1"] <= 1.0
