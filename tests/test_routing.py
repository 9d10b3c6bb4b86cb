"""TREAD token routing: routed tokens skip the middle blocks and re-enter unchanged; nothing is dropped."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL, perturbed
from maskdit.checkpoint import latest_checkpoint
from maskdit.config import load_config
from maskdit.errors import ConfigError
from maskdit.masks import random_keep_indices
from maskdit.model import DiT
from maskdit.objectives import FlowMatching, denoising_loss
from maskdit.recipes import build_recipe, default_route
from maskdit.train import Trainer, train


def model_and_batch(depth=4, given=False):
    model = perturbed(DiT((8, 8), 1, 2, 32, depth, 2, num_classes=3, task_conditioning=given))
    g = torch.Generator().manual_seed(0)
    return model, (torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g),
                   torch.rand(4, generator=g), torch.randn(4, 1, 8, 8, generator=g))


def test_default_route_follows_the_paper_scaled_to_depth():
    assert default_route(28) == (2, 24) and default_route(12) == (1, 10) and default_route(6) == (1, 5)


def test_nothing_routed_is_the_plain_loss_bit_for_bit(tmp_path):
    model, (x0, y, t, noise) = model_and_batch()
    tread, _ = build_recipe("tread", model, route=[1, 3]).loss(model, FlowMatching(), x0, y, t, noise, None)
    assert torch.equal(tread, denoising_loss(model, FlowMatching(), x0, y, t, noise))
    base = [*SMALL, "model.depth=3", "batch_size=16", "steps=3"]
    train(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'plain'}"]), progress=False)
    train(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'tread'}", "mask.recipe=tread",
                                           "mask.ratio=0"]), progress=False)
    a, b = (load_file(latest_checkpoint(tmp_path / r) / "model.safetensors") for r in ("plain", "tread"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_routed_tokens_skip_the_route_and_re_enter_unchanged():
    model, (x0, y, t, noise) = model_and_batch(depth=4)
    recipe = build_recipe("tread", model, route=[1, 3])
    seen = {}
    def record(i):
        def hook(module, args):
            if i not in seen:  # the first call: the training step's
                seen[i] = (args[0].detach(), args[2])
        return hook

    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(record(i))
    keep = random_keep_indices(4, 16, 0.5, torch.Generator().manual_seed(2))
    recipe.loss(model, FlowMatching(), x0, y, t, noise, keep)
    assert seen[0][0].shape == (4, 16, 32) and seen[0][1] is None  # before the route: every token
    assert seen[1][0].shape == (4, 8, 32) and torch.equal(seen[1][1], keep)  # in the route: the kept half
    assert seen[2][0].shape == (4, 8, 32)
    routed = torch.ones(4, 16, dtype=torch.bool).scatter(1, keep, False)
    entering = seen[3][0]  # block 3's input: every token again
    assert entering.shape == (4, 16, 32) and seen[3][1] is None
    block0_out = model.blocks[0](seen[0][0], model.condition(t, y))
    assert torch.equal(entering[routed], block0_out[routed])  # routed tokens re-enter exactly as they left
    assert not torch.allclose(entering[~routed], block0_out[~routed])  # the others went through blocks 1-2


def test_routing_keeps_every_token_in_the_loss_and_the_gradient():
    model, (x0, y, t, noise) = model_and_batch()
    keep = random_keep_indices(4, 16, 0.75, torch.Generator().manual_seed(1))
    x0.requires_grad_(True)
    loss, _ = build_recipe("tread", model, route=[1, 3]).loss(model, FlowMatching(), x0, y, t, noise, keep)
    loss.backward()
    per_token = x0.grad.abs().reshape(4, 1, 4, 2, 4, 2).sum(dim=(1, 3, 5)).reshape(4, 16)
    assert torch.all(per_token > 0)  # routed tokens are still predicted and trained, unlike dropping


def test_routing_with_condition_masks_covers_generated_tokens_only():
    model, (x0, y, t, noise) = model_and_batch(given=True)
    given = torch.zeros(4, 16, dtype=torch.bool)
    given[:, :8] = True
    keep = random_keep_indices(4, 16, 0.5, torch.Generator().manual_seed(3))
    recipe = build_recipe("tread", model, route=[1, 3])
    loss, _ = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep, given)
    noise2 = noise.clone()
    noise2[..., :4, :] = 5.0  # rows 0-3 are tokens 0-7, all given: their input is the clean context and
    loss2, _ = recipe.loss(model, FlowMatching(), x0, y, t, noise2, keep, given)
    assert torch.equal(loss, loss2)  # their targets do not count
    noise2[..., 4:, :] = 5.0  # generated tokens do count
    loss3, _ = recipe.loss(model, FlowMatching(), x0, y, t, noise2, keep, given)
    assert not torch.equal(loss, loss3)


def test_route_and_combinations_are_validated_before_training(tmp_path):
    with pytest.raises(ConfigError, match="mask.route"):
        load_config("digits", overrides=["mask.recipe=tread", "mask.route=[3,2]"])
    with pytest.raises(ConfigError, match="ends after the last block"):
        load_config("digits", overrides=["mask.recipe=tread", "mask.route=[1,9]"])
    with pytest.raises(ConfigError, match="model.mixer_depth=0"):
        Trainer(load_config("digits", overrides=[*SMALL, "model.depth=3", f"run_dir={tmp_path}", "mask.recipe=tread",
                                                 "mask.ratio=0.5", "model.mixer_depth=1"]), progress=False)
    with pytest.raises(ConfigError, match="too shallow"):
        Trainer(load_config("digits", overrides=[*SMALL, f"run_dir={tmp_path}", "mask.recipe=tread",
                                                 "mask.ratio=0.5"]), progress=False)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_tread_trains_with_tasks_on_video(tmp_path):
    cfg = load_config("bouncing-digits", overrides=[
        "model.depth=3", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "data.num=16",
        "data.frames=4", "data.size=8", "warmup_steps=1", "steps=2", "model.attention=full", "mask.recipe=tread",
        "mask.ratio=0.5", "mask.route=[1,2]", f"run_dir={tmp_path}"])
    train(cfg, progress=False)
    assert latest_checkpoint(tmp_path).name == "step_000002"


@pytest.mark.parametrize("recipe,shape", [("drop", "tube"), ("tread", "frame"), ("sprint", "tube"),
                                          ("maskdit", "frame")])
def test_factorised_video_trains_with_grid_drop_shapes_and_refuses_others(tmp_path, recipe, shape):
    base = ["model.depth=3", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "data.num=16",
            "data.frames=4", "data.size=8", "warmup_steps=1", "steps=2", "model.attention=factorised",
            f"mask.recipe={recipe}", "mask.ratio=0.5", "mask.route=[1,2]", "mask.decoder_depth=1"]
    with pytest.raises(ConfigError, match="mask.shape=tube"):
        load_config("bouncing-digits", overrides=base)  # random tokens: no frames x positions grid
    with pytest.raises(ConfigError, match="needs video"):
        Trainer(load_config("digits", overrides=[*SMALL, "mask.shape=tube", "mask.ratio=0.5",
                                                 f"run_dir={tmp_path / 'img'}"]), progress=False)
    cfg = load_config("bouncing-digits", overrides=[*base, f"mask.shape={shape}", f"run_dir={tmp_path / 'vid'}"])
    trainer = Trainer(cfg, progress=False)
    ratio, keep = trainer.keep_indices(0)
    # 8x8 frames at patch 4: 2x2 positions. tube: 4 frames x 2 positions; frame: 2 frames x 4 positions
    assert ratio == 0.5 and keep.shape == ((8, 4, 2) if shape == "tube" else (8, 2, 4))
    trainer.run()
    assert latest_checkpoint(tmp_path / "vid").name == "step_000002"
