"""TREAD token routing: routed tokens skip the middle blocks and re-enter unchanged; nothing is dropped."""

import pytest
import torch
from conftest import SMALL, perturbed
from safetensors.torch import load_file

from maskdit.checkpoint import latest_checkpoint
from maskdit.config import load_config
from maskdit.diffusion.objectives import FlowMatching, denoising_loss
from maskdit.errors import ConfigError
from maskdit.masks import random_keep_indices
from maskdit.model import DiT
from maskdit.training.recipes import build_recipe, default_route
from maskdit.training.trainer import Trainer, train


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
        "compile=false", "model.depth=3", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "data.num=16",
        "data.frames=4", "data.size=8", "warmup_steps=1", "steps=2", "model.attention=full", "mask.recipe=tread",
        "mask.ratio=0.5", "mask.route=[1,2]", f"run_dir={tmp_path}"])
    train(cfg, progress=False)
    assert latest_checkpoint(tmp_path).name == "step_000002"


@pytest.mark.parametrize("recipe,shape", [("drop", "tube"), ("tread", "frame"), ("sprint", "tube"),
                                          ("maskdit", "frame")])
def test_factorised_video_trains_with_grid_drop_shapes_and_refuses_others(tmp_path, recipe, shape):
    base = ["compile=false", "model.depth=3", "model.hidden_size=32", "model.num_heads=2", "batch_size=8",
            "data.num=16", "data.frames=4", "data.size=8", "warmup_steps=1", "steps=2", "model.attention=factorised",
            "model.patch_size=[1,4,4]",
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


# -- route-contrast guidance (TREAD) -------------------------------------------------------------------
def test_routed_forward_returns_the_grid_and_routing_every_token_is_the_plain_model():
    model, (x, y, t, _) = model_and_batch()
    everyone = torch.arange(model.num_tokens).expand(4, -1)
    assert torch.allclose(model(x, t, y, keep_idx=everyone, route=(1, 3)), model(x, t, y), atol=1e-6)
    keep = random_keep_indices(4, model.num_tokens, 0.5, torch.Generator().manual_seed(0))
    routed = model(x, t, y, keep_idx=keep, route=(1, 3))
    assert routed.shape == x.shape and not torch.allclose(routed, model(x, t, y), atol=1e-4)
    with pytest.raises(ConfigError, match="mask.route"):
        model(x, t, y, keep_idx=keep, route=(3, 9))


def test_route_contrast_guidance_contrasts_two_routing_ratios_and_keeps_samples_independent():
    from maskdit.diffusion.guidance import ROUTE_CONTRAST, guided
    from maskdit.diffusion.samplers import generate

    model, (x, y, t, _) = model_and_batch()
    model.tread_route = (1, 3)
    with torch.no_grad():
        assert torch.equal(guided(model, y, 1.0, guidance="route-contrast")(x, 0.5), model(x, torch.full((4,), 0.5), y))
        out = guided(model, y, 2.5, guidance="route-contrast")(x, 0.5)
        gen = torch.Generator().manual_seed(500000)  # the routes of time 0.5, the same for every sample
        strong, weak = (model(x, torch.full((4,), 0.5), y, route=(1, 3),
                              keep_idx=random_keep_indices(1, model.num_tokens, r, gen).expand(4, -1))
                        for r in ROUTE_CONTRAST)
        assert torch.allclose(out, weak + 2.5 * (strong - weak), atol=1e-5)
        four = generate(model, FlowMatching(), 4, torch.tensor([0, 1, 2, 0]), "euler", 3, 2.0,
                        guidance="route-contrast", seed=5)
        two = generate(model, FlowMatching(), 2, torch.tensor([0, 1]), "euler", 3, 2.0, guidance="route-contrast",
                       seed=5)
        ones = generate(model, FlowMatching(), 2, torch.tensor([0, 1]), "euler", 3, 2.0,
                        guidance="route-contrast", seed=5, batch_size=1)
    assert torch.equal(four[:2], two)  # sample i depends on (seed, i) and the batch size only
    assert (ones - two).abs().max() <= 1e-4 * max(1.0, two.abs().max().item())  # other kernels: rounding
    with pytest.raises(ConfigError, match="mask.recipe=tread"):
        guided(model_and_batch()[0], y, 2.0, guidance="route-contrast")


def test_route_contrast_guides_unconditional_models_and_is_checked_in_config(tmp_path):
    from maskdit.diffusion.guidance import guided
    from maskdit.runs import load_run

    plain = perturbed(DiT((8, 8), 1, 2, 32, 4, 2, route=(1, 3)))  # unconditional, trained with TREAD
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(guided(plain, None, 2.0, guidance="route-contrast")(x, 0.5),
                                  plain(x, torch.full((3,), 0.5)), atol=1e-4)
        assert torch.equal(guided(plain, None, 2.0, guidance="cfg")(x, 0.5), plain(x, torch.full((3,), 0.5)))
    with pytest.raises(ConfigError, match="sample.guidance=route-contrast"):
        load_config("digits", overrides=["sample.guidance=route-contrast"])
    train(load_config("digits", overrides=[*SMALL, "model.depth=3", "steps=2", "mask.recipe=tread", "mask.ratio=0.5",
                                           "mask.route=[1,2]", "sample.guidance=route-contrast",
                                           "sample.guidance_scale=1.5", f"run_dir={tmp_path}"]), progress=False)
    assert load_run(tmp_path).model.tread_route == (1, 2)  # the route travels in the model config
