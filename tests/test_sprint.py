"""SPRINT (sparse-dense residual fusion, path-drop guidance), MaskDiT as published, and the drop-mask shapes."""

import numpy as np
import pytest
import torch
from conftest import SMALL, perturbed

from maskdit.checkpoint import latest_checkpoint
from maskdit.cli.app import main
from maskdit.config import load_config
from maskdit.diffusion.guidance import guided
from maskdit.diffusion.objectives import FlowMatching, patchify, token_mse
from maskdit.diffusion.samplers import generate
from maskdit.errors import ConfigError
from maskdit.masks import DROP_SHAPES, frame_keep_indices, structured_keep_indices
from maskdit.model import DiT
from maskdit.runs import load_run
from maskdit.training.recipes import build_recipe
from maskdit.training.trainer import Trainer, train


def sprint_model(depth=5, route=(2, 3)):
    return perturbed(DiT((8, 8), 1, 2, 32, depth, 2, num_classes=3, fusion=route))


def batch(n=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g), torch.rand(n, generator=g),
            torch.randn(n, 1, 8, 8, generator=g))


# -- drop-mask shapes -----------------------------------------------------------------------------------
def test_structured_mask_keeps_the_same_share_of_every_2x2_group_at_random_places():
    keep = structured_keep_indices(64, (4, 6), 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (64, 6)
    rows, cols = keep // 6, keep % 6
    groups = (rows // 2) * 3 + cols // 2
    assert all(sorted(g.tolist()) == list(range(6)) for g in groups)  # one kept token in each of the 6 groups
    assert len({tuple(k.tolist()) for k in keep}) > 32  # the place inside each group is random per sample
    offsets = (rows % 2) * 2 + cols % 2
    assert set(offsets.flatten().tolist()) == {0, 1, 2, 3}
    assert structured_keep_indices(2, (4, 4), 0.5).shape == (2, 8)
    assert structured_keep_indices(2, (4, 4), 0.0) is None
    video = structured_keep_indices(2, (2, 4, 4), 0.75)  # 2x2x2 groups keep 2 of 8
    assert video.shape == (2, 8)
    with pytest.raises(ConfigError, match="even token grid"):
        structured_keep_indices(2, (3, 4), 0.75)


def test_frame_dropping_keeps_whole_frames():
    keep = frame_keep_indices(8, (4, 2, 3), 0.5, torch.Generator().manual_seed(1))
    assert keep.shape == (8, 2, 6)  # the kept grid: 2 frames x every one of the 6 positions
    frames = keep // 6
    assert (frames == frames[:, :, :1]).all()  # each row of 6 is one frame's every position
    assert torch.equal(keep % 6, torch.arange(6).expand(8, 2, 6))
    assert frame_keep_indices(2, (4, 2, 3), 0.1) is None  # round(4 * 0.9) = 4 frames: nothing dropped


def test_drop_shapes_are_checked_against_the_data_before_training(tmp_path):
    np.savez(tmp_path / "six.npz", images=np.zeros((40, 6, 6), np.uint8))  # 6x6 at patch 2: a 3x3 token grid
    with pytest.raises(ConfigError, match="even token grid"):
        Trainer(load_config("digits", overrides=[*SMALL, "data.name=npz", f"data.path={tmp_path / 'six.npz'}",
                                                 "mask.shape=structured", "mask.ratio=0.75",
                                                 f"run_dir={tmp_path / 'a'}"]), progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="mask.shape=frame"):
        Trainer(load_config("digits", overrides=[*SMALL, "mask.shape=frame", "mask.ratio=0.5",
                                                 f"run_dir={tmp_path / 'b'}"]), progress=False)
    assert set(DROP_SHAPES) == {"random", "tube", "frame", "structured"}


# -- SPRINT ---------------------------------------------------------------------------------------------
def test_sprint_deep_path_sees_only_kept_tokens():
    model = sprint_model()
    x0, y, t, noise = batch()
    keep = structured_keep_indices(4, model.token_grid, 0.75, torch.Generator().manual_seed(3))
    seen, shallow = {}, {}

    def record(i):
        def hook(module, args):
            seen[i] = (args[0].shape, args[2])
        return hook

    def keep_shallow(module, args, out):  # the dense shallow path's output, made a leaf we can differentiate to
        out = out.detach().requires_grad_(True)
        shallow["out"] = out
        return out

    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(record(i))
    model.blocks[1].register_forward_hook(keep_shallow)
    deep_out = {}
    model.blocks[2].register_forward_hook(lambda m, a, out: deep_out.setdefault("out", out))
    build_recipe("sprint", model).loss(model, FlowMatching(), x0, y, t, noise, keep)
    assert seen[0] == ((4, 16, 32), None) and seen[1] == ((4, 16, 32), None)  # dense shallow blocks
    assert seen[2][0] == (4, 4, 32) and torch.equal(seen[2][1], keep)  # the sparse deep path: kept tokens only
    assert seen[3] == ((4, 16, 32), None) and seen[4] == ((4, 16, 32), None)  # dense blocks after the fusion
    (grad,) = torch.autograd.grad(deep_out["out"].sum(), shallow["out"])
    dropped = torch.ones(4, 16, dtype=torch.bool).scatter(1, keep, False)
    assert grad[dropped].abs().max() == 0  # nothing of a dropped token reaches the deep path...
    assert (grad[~dropped].abs().sum(-1) > 0).all()  # ...every kept one does


def test_sprint_loss_covers_every_token_and_matches_the_sampling_path_without_dropping():
    model = sprint_model()
    x0, y, t, noise = batch()
    recipe = build_recipe("sprint", model)
    loss, _ = recipe.loss(model, FlowMatching(), x0, y, t, noise, None)
    obj = FlowMatching()
    expected = token_mse(patchify(model(obj.noisy(x0, noise, t), t, y), (2, 2)),
                         patchify(obj.target(x0, noise, t), (2, 2)))
    assert torch.equal(loss, expected)
    keep = structured_keep_indices(4, model.token_grid, 0.75, torch.Generator().manual_seed(0))
    x_t = obj.noisy(x0, noise, t)
    x_t.requires_grad_(True)
    out = model(x_t, t, y, keep)
    assert out.shape == x0.shape  # a SPRINT model predicts every token even when its deep path is sparse
    (g,) = torch.autograd.grad(out.sum(), x_t)
    assert (patchify(g, (2, 2)).abs().sum(-1) > 0).all()


def test_path_drop_replaces_the_deep_path_by_mask_tokens():
    model = sprint_model()
    x0, y, t, _ = batch()
    calls = []
    model.blocks[2].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    skipped = model(x0, t, y, path_drop=True)
    assert calls == []  # the deep blocks do not run at all
    per_sample = model(x0, t, y, path_drop=torch.tensor([True, False, True, False]))
    full = model(x0, t, y)
    assert torch.allclose(per_sample[[0, 2]], skipped[[0, 2]], atol=1e-6)
    assert torch.allclose(per_sample[[1, 3]], full[[1, 3]], atol=1e-6)
    assert not torch.allclose(skipped, full, atol=1e-3)
    plain = DiT((8, 8), 1, 2, 32, 5, 2, num_classes=3)
    with pytest.raises(ConfigError, match="SPRINT"):
        plain(x0, t, y, path_drop=True)


def test_path_drop_guidance_at_scale_1_is_the_conditional_pass_and_contrasts_the_shallow_path():
    model = sprint_model().eval()
    x0, y, t, _ = batch()
    with torch.no_grad():
        cond = model(x0, torch.full((4,), 0.5), y)
        assert torch.equal(guided(model, y, 1.0, guidance="path-drop")(x0, 0.5), cond)
        uncond = model(x0, torch.full((4,), 0.5), torch.full_like(y, 3), path_drop=True)
        out = guided(model, y, 3.0, guidance="path-drop")(x0, 0.5)
        assert torch.allclose(out, uncond + 3.0 * (cond - uncond), atol=1e-5)
        assert not torch.allclose(out, guided(model, y, 3.0)(x0, 0.5), atol=1e-3)  # differs from plain CFG
    with pytest.raises(ConfigError, match="SPRINT"):
        guided(DiT((8, 8), 1, 2, 32, 5, 2, num_classes=3), y, 2.0, guidance="path-drop")


def test_sprint_trains_resumes_exactly_finetunes_and_samples_with_path_drop(tmp_path, capsys):
    base = ["model.depth=4", "model.hidden_size=32", "model.num_heads=2", "batch_size=16", "warmup_steps=2",
            "sample.steps=3", "model.patch_size=2", "mask.recipe=sprint", "mask.ratio=0.75",
            "mask.shape=structured", "mask.path_drop=0.5", "steps=4"]
    train(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'full'}"]), progress=False)
    cfg = load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'split'}"])
    train(cfg, progress=False, stop_after=2)
    train(cfg, resume=True, progress=False)
    a, b = (load_run(latest_checkpoint(tmp_path / r)) for r in ("full", "split"))
    assert a.model.config["fusion"] == [1, 3]  # the default split at depth 4
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    inputs = Trainer(cfg, resume=True, progress=False).inputs.draw(0)
    assert inputs.path_drop is not None and inputs.keep_idx.shape == (16, 4)
    # the finetune stage: the same recipe at ratio 0 from the pretrained weights
    train(load_config("digits", overrides=[*base, "mask.ratio=0", "steps=2", f"init_from={tmp_path / 'full'}",
                                           f"run_dir={tmp_path / 'ft'}"]), progress=False)
    out = tmp_path / "pdg.npz"
    assert main(["sample", str(tmp_path / "ft"), "--num", "6", "--guidance", "path-drop", "--guidance-scale", "2",
                 "--out", str(out)]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "ft"), "--num", "2", "--guidance", "nope", "--out",
                 str(tmp_path / "x.npz")]) == 2


def test_sprint_config_rules_are_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match="sample.guidance=path-drop"):
        load_config("digits", overrides=["sample.guidance=path-drop"])
    with pytest.raises(ConfigError, match="mixer_depth"):
        load_config("digits", overrides=["mask.recipe=sprint", "model.mixer_depth=1"])
    with pytest.raises(ConfigError, match="mask.route"):
        load_config("digits", overrides=["mask.recipe=sprint", "model.depth=4", "mask.route=[1,4]"])
    with pytest.raises(ConfigError, match="mask.path_drop"):
        load_config("digits", overrides=["mask.path_drop=1"])


# -- MaskDiT as published ----------------------------------------------------------------------------------
def test_maskdit_decodes_every_token_with_the_models_last_blocks_in_training_and_sampling():
    model = perturbed(DiT((8, 8), 1, 2, 32, 4, 2, num_classes=3))
    recipe = build_recipe("maskdit", model, decoder_depth=2)
    x0, y, t, noise = batch()
    seen = []
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: seen.append((i, a[0].shape[1])))
    keep = structured_keep_indices(4, model.token_grid, 0.5, torch.Generator().manual_seed(0))
    loss, parts = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep)
    assert seen == [(0, 8), (1, 8), (2, 16), (3, 16)]  # encoder on kept tokens, decoder on all
    loss.backward()
    assert recipe.mask_token.grad.abs().sum() > 0  # the mask token fills the dropped places
    assert set(parts) == {"loss_denoise", "loss_aux"} and parts["loss_aux"] > 0
    seen.clear()
    generate(model, FlowMatching(), 2, torch.tensor([0, 1]), "euler", 1)
    assert seen == [(0, 16), (1, 16), (2, 16), (3, 16)]  # sampling: the same encoder + decoder, every token


def test_maskdit_losses_split_kept_and_dropped_tokens():
    model = perturbed(DiT((8, 8), 1, 2, 32, 3, 2, num_classes=3))
    recipe = build_recipe("maskdit", model, decoder_depth=1, aux_weight=0.0)
    x0, y, t, noise = batch()
    keep = structured_keep_indices(4, model.token_grid, 0.5, torch.Generator().manual_seed(0))
    out = {}
    model.final_layer.register_forward_hook(lambda m, a, o: out.setdefault("o", o))
    loss, parts = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep)
    (g,) = torch.autograd.grad(loss, out["o"])
    dropped = torch.ones(4, 16, dtype=torch.bool).scatter(1, keep, False)
    assert g[dropped].abs().max() == 0 and (g[~dropped].abs().sum(-1) > 0).all()  # denoising: kept tokens only
    recipe.aux_weight = 1.0
    out.clear()
    loss, parts = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep)
    aux = torch.autograd.grad(loss, out["o"])[0] - g  # what the MAE term adds
    assert aux[~dropped].abs().max() < 1e-7 and (aux[dropped].abs().sum(-1) > 0).all()  # MAE: dropped tokens only


def test_maskdit_recipe_trains_and_takes_tasks(tmp_path):
    train(load_config("digits", overrides=[*SMALL, "model.depth=3", "batch_size=16", "steps=2", "mask.recipe=maskdit",
                                           "mask.ratio=0.5", "mask.decoder_depth=1", f"run_dir={tmp_path}"]),
          progress=False)
    assert latest_checkpoint(tmp_path).name == "step_000002"
    # with a condition mask both losses cover generated tokens only: given ones get no gradient
    model = perturbed(DiT((8, 8), 1, 2, 32, 3, 2, num_classes=3, task_conditioning=True))
    recipe = build_recipe("maskdit", model, decoder_depth=1, aux_weight=1.0)
    x0, y, t, noise = batch()
    keep = structured_keep_indices(4, model.token_grid, 0.5, torch.Generator().manual_seed(0))
    given = torch.zeros(4, 16, dtype=torch.bool)
    given[:, :6] = True
    out = {}
    model.final_layer.register_forward_hook(lambda m, a, o: out.setdefault("o", o))
    loss, parts = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep, given)
    (g,) = torch.autograd.grad(loss, out["o"])
    assert g[given].abs().max() == 0 and (g[~given].abs().sum(-1) > 0).all()
    assert parts["loss_aux"] > 0 and parts["loss_denoise"] > 0
