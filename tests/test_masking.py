import json

import pytest
import torch
from conftest import perturbed
from safetensors.torch import load_file

from maskdit.checkpoint import latest_checkpoint
from maskdit.config import load_config
from maskdit.diffusion.objectives import FlowMatching, denoising_loss
from maskdit.diffusion.samplers import generate
from maskdit.errors import ConfigError
from maskdit.grid import patchify
from maskdit.masks import drop_tokens, mask_ratio, num_kept, random_keep_indices
from maskdit.model import DiT
from maskdit.runs import load_run
from maskdit.training.recipes import build_recipe
from maskdit.training.trainer import Trainer, train

SMALL = ["model.depth=3", "model.hidden_size=32", "model.num_heads=2", "batch_size=16", "warmup_steps=1",
         "log_every=1", "ckpt_every=2"]


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g),
            torch.rand(n, generator=g), torch.randn(n, 1, 8, 8, generator=g))


def input_grad_per_token(recipe, model, keep_idx):
    x0, y, t, noise = batch()
    x0.requires_grad_(True)
    loss, _ = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep_idx)
    loss.backward()
    return patchify(x0.grad, model.patch_size).abs().sum(-1)  # (B, N)


def test_plain_dropping_gives_exactly_zero_gradient_to_dropped_tokens():
    model = perturbed(DiT((8, 8), 1, 2, 32, 3, 2, num_classes=3))
    keep_idx = random_keep_indices(4, 16, 0.5, torch.Generator().manual_seed(1))
    grad = input_grad_per_token(build_recipe("drop", model), model, keep_idx)
    kept = torch.zeros(4, 16, dtype=torch.bool).scatter(1, keep_idx, True)
    assert torch.all(grad[~kept] == 0)
    assert torch.all(grad[kept] > 0)


def test_patch_mixer_lets_dropped_tokens_inform_kept_ones():
    model = perturbed(DiT((8, 8), 1, 2, 32, 3, 2, num_classes=3, mixer_depth=1))
    keep_idx = random_keep_indices(4, 16, 0.5, torch.Generator().manual_seed(1))
    grad = input_grad_per_token(build_recipe("drop", model), model, keep_idx)
    kept = torch.zeros(4, 16, dtype=torch.bool).scatter(1, keep_idx, True)
    assert torch.all(grad[~kept] > 0)


def test_mae_auxiliary_loss_touches_only_dropped_tokens():
    model = perturbed(DiT((8, 8), 1, 2, 32, 3, 2, num_classes=3))
    recipe = perturbed(build_recipe("mae", model, aux_weight=1.0))
    captured = {}

    def keep_output(module, args, out):
        out.retain_grad()
        captured["out"] = out

    recipe.decoder.register_forward_hook(keep_output)
    keep_idx = random_keep_indices(4, 16, 0.75, torch.Generator().manual_seed(2))
    x0, y, t, noise = batch()
    loss, parts = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep_idx)
    loss.backward()
    grad = captured["out"].grad.abs().sum(-1)  # (B, N) gradient of the loss w.r.t. decoder output
    kept = torch.zeros(4, 16, dtype=torch.bool).scatter(1, keep_idx, True)
    assert torch.all(grad[kept] == 0) and torch.all(grad[~kept] > 0)
    assert parts["loss_aux"] > 0 and parts["loss_denoise"] > 0


@pytest.mark.parametrize("name", ["drop", "mae", "mdt"])
def test_no_drop_reduces_to_plain_loss_and_touches_every_parameter(name):
    model = perturbed(DiT((8, 8), 1, 2, 32, 3, 2, num_classes=3))
    recipe = build_recipe(name, model)
    x0, y, t, noise = batch()
    loss, _ = recipe.loss(model, FlowMatching(), x0, y, t, noise, None)
    plain = denoising_loss(model, FlowMatching(), x0, y, t, noise)
    assert torch.equal(loss, plain)  # MDT: the masked pass is skipped when nothing is dropped
    loss.backward()
    assert all(p.grad is not None for p in [*model.parameters(), *recipe.parameters()])


def test_mdt_masked_pass_uses_interpolater_and_runs_decoder_on_all_tokens():
    model = perturbed(DiT((8, 8), 1, 2, 32, 4, 2, num_classes=3))
    recipe = perturbed(build_recipe("mdt", model, decoder_depth=1))
    x0, y, t, noise = batch()
    keep_idx = random_keep_indices(4, 16, 0.5, torch.Generator().manual_seed(3))
    loss, parts = recipe.loss(model, FlowMatching(), x0, y, t, noise, keep_idx)
    loss.backward()
    assert parts["loss_masked"] > 0 and recipe.interpolater.mask_token.grad.abs().sum() > 0


def test_ratio_zero_training_reproduces_unmasked_training_exactly(tmp_path):
    # no clipping: the decoder's zero gradients would join the global norm's sum and change its rounding
    run = [*SMALL, "steps=3", "grad_clip=0"]
    train(load_config("digits", overrides=[*run, f"run_dir={tmp_path / 'plain'}"]), progress=False)
    train(load_config("digits", overrides=[*run, f"run_dir={tmp_path / 'mae0'}", "mask.recipe=mae",
                                           "mask.ratio=0"]), progress=False)
    a = load_file(latest_checkpoint(tmp_path / "plain") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "mae0") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedules_give_documented_values():
    assert mask_ratio("constant", 0.5, 70, 100) == 0.5
    assert mask_ratio("linear_decay", 0.8, 25, 100) == pytest.approx(0.6)
    assert mask_ratio("linear_decay", 0.8, 100, 100) == 0.0
    assert mask_ratio("cosine_decay", 0.8, 50, 100) == pytest.approx(0.4)
    assert mask_ratio("cosine_decay", 0.8, 0, 100) == pytest.approx(0.8)
    assert mask_ratio("increasing", 0.75, 0, 100, ratio_min=0.25) == pytest.approx(0.25)
    assert mask_ratio("increasing", 0.75, 50, 100, ratio_min=0.25) == pytest.approx(0.5)
    g = torch.Generator().manual_seed(0)
    draws = [mask_ratio("random", 0.6, s, 100, ratio_min=0.2, generator=g) for s in range(200)]
    assert 0.2 <= min(draws) < 0.25 and 0.55 < max(draws) <= 0.6
    with pytest.raises(ConfigError, match="mask.schedule"):
        mask_ratio("zigzag", 0.5, 0, 10)


@pytest.mark.parametrize("ratio, kept", [(0.0, 16), (0.25, 12), (0.5, 8), (0.75, 4), (0.9, 2), (0.99, 1)])
def test_kept_token_count_at_every_ratio(ratio, kept):
    assert num_kept(16, ratio) == kept
    assert random_keep_indices(3, 16, ratio).shape == (3, kept)
    dropped = drop_tokens(3, 16, ratio)
    assert dropped is None if kept == 16 else dropped.shape == (3, kept)


def test_trainer_keep_indices_follow_schedule(tmp_path):
    cfg = load_config("digits", overrides=[*SMALL, "steps=10", f"run_dir={tmp_path}", "mask.ratio=0.75",
                                           "mask.schedule=linear_decay"])
    trainer = Trainer(cfg, progress=False)
    ratio, idx = trainer.keep_indices(0)
    assert ratio == 0.75 and idx.shape == (16, 4)
    ratio, idx = trainer.keep_indices(10)
    assert ratio == 0.0 and idx is None


@pytest.mark.parametrize("extra", [
    ["mask.recipe=drop", "mask.ratio=0.5"],
    ["mask.recipe=mae", "mask.ratio=0.75", "mask.decoder_width=16"],
    ["mask.recipe=mdt", "mask.ratio=0.5", "mask.decoder_depth=1"],
    ["mask.recipe=drop", "mask.ratio=0.75", "model.mixer_depth=1"],
    ["mask.recipe=mae", "mask.ratio=0.6", "mask.schedule=random", "mask.ratio_min=0.2"],
    ["mask.recipe=tread", "mask.ratio=0.5", "mask.route=[1,2]", "mask.schedule=random", "mask.ratio_min=0.25"],
])
def test_each_recipe_trains_and_resumes_exactly(tmp_path, extra):
    full = load_config("digits", overrides=[*SMALL, "steps=4", f"run_dir={tmp_path / 'full'}", *extra])
    train(full, progress=False)
    split = load_config("digits", overrides=[*SMALL, "steps=4", f"run_dir={tmp_path / 'split'}", *extra])
    train(split, progress=False, stop_after=2)
    train(split, resume=True, progress=False)
    ckpt_a, ckpt_b = latest_checkpoint(tmp_path / "full"), latest_checkpoint(tmp_path / "split")
    files = ["model.safetensors", "ema.safetensors"]
    if "mask.recipe=mae" in extra or "mask.recipe=mdt" in extra:  # recipes with training-only weights
        files.append("aux.safetensors")
    for f in files:
        a, b = load_file(ckpt_a / f), load_file(ckpt_b / f)
        assert all(torch.equal(a[k], b[k]) for k in a), f
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["loss"] < 10 for r in records) and records[0]["mask_ratio"] > 0


def test_unmasking_finetune_stage_starts_from_masked_weights_and_samples(tmp_path):
    masked = load_config("digits", overrides=[*SMALL, "steps=3", f"run_dir={tmp_path / 'masked'}",
                                              "mask.recipe=mae", "mask.ratio=0.5"])
    train(masked, progress=False)
    stage = load_config("digits", overrides=[*SMALL, "steps=2", f"run_dir={tmp_path / 'ft'}",
                                             f"init_from={tmp_path / 'masked'}", "lr=1e-4"])
    trainer = Trainer(stage, progress=False)
    source = load_file(latest_checkpoint(tmp_path / "masked") / "model.safetensors")
    assert all(torch.equal(v, source[k]) for k, v in trainer.model.state_dict().items())
    moments = [trainer.optimizer.state[p] for p in trainer.model.parameters()]
    assert all("exp_avg_sq" in m for m in moments) and len(list(trainer.recipe.parameters())) == 0
    trainer.run()
    run = load_run(tmp_path / "ft")
    assert run.step == 2 and run.config.mask.ratio == 0.0
    x = generate(run.model, run.objective, 4, torch.arange(4), steps=2)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize("override, message", [
    (["mask.ratio=1.0"], r"mask.ratio must be in \[0, 1\)"),
    (["mask.ratio=-0.1"], r"mask.ratio must be in \[0, 1\)"),
    (["mask.ratio=0.5", "mask.ratio_min=0.7"], r"mask.ratio_min must be in \[0, mask.ratio\]"),
    (["mask.recipe=mask_everything"], "mask.recipe must be one of drop, mae, mdt, tread, sprint or maskdit"),
])
def test_bad_mask_config_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits", overrides=override)


@pytest.mark.parametrize("override, message", [
    (["model.mixer_depth=3"], "model.mixer_depth must be below model.depth=3"),
    (["mask.recipe=mae", "mask.decoder_width=30"], "mask.decoder_width must be a multiple of 4"),
    (["mask.recipe=mdt", "mask.decoder_depth=3"], "does not fit a depth-3 model"),
    (["mask.recipe=mdt", "mask.decoder_depth=2", "model.mixer_depth=1"], "does not fit a depth-3 model"),
])
def test_impossible_masking_architecture_is_refused_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(load_config("digits", overrides=[*SMALL, f"run_dir={tmp_path}", *override]), progress=False)
    assert not (tmp_path / "checkpoints").exists()
