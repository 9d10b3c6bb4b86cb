"""LoRA: low-rank updates on a frozen base, saved alone, merged at sampling (``lora.*``, ``--lora``, ``lora merge``)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import SMALL, perturbed
from safetensors.torch import load_file, save_file

from maskdit.checkpoint import latest_checkpoint
from maskdit.config import load_config
from maskdit.errors import CheckpointError, ConfigError
from maskdit.model import DiT
from maskdit.model.lora import LORA_TARGETS, LoraConfig, LoRALinear, add_lora, is_adapter_key, merge, targets
from maskdit.runs import load_run
from maskdit.training.trainer import Trainer, train

BASE = [*SMALL, "steps=4", "ckpt_every=4"]


def lora_args(base, *extra):
    return [*SMALL, "steps=6", "ckpt_every=3", f"init_from={base}", "lora.rank=4", "lora.targets=[all]", "lr=5e-2",
            "ema_decay=0", *extra]


def tiny_model(depth: int = 2, **kw) -> DiT:
    torch.manual_seed(0)
    return perturbed(DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=depth, num_heads=2,
                         num_classes=10, **kw))


def test_a_fresh_update_computes_exactly_what_the_base_computes():
    base = torch.nn.Linear(16, 24)
    x = torch.randn(5, 16)
    adapted = LoRALinear(base, rank=4, scale=2.0)
    assert torch.equal(adapted(x), base(x))  # lora_up starts at zero: x W^T + b + 0
    assert adapted.weight is base.weight and adapted.bias is base.bias


@pytest.mark.parametrize("names,expected", [
    (["attention"], {"attn.qkv", "attn.proj"}),
    (["mlp"], {"mlp.fc1", "mlp.fc2"}),
    (["adaln"], {"adaLN_modulation.1"}),
    (["all"], {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"}),
])
def test_targets_select_the_named_layers_of_every_block(names, expected):
    model = tiny_model()
    found = {name.split(".", 2)[2] for name, *_ in targets(model, names)}
    assert found == expected
    assert len(list(targets(model, names))) == len(expected) * len(model.blocks)


def test_targets_reach_cross_attention_of_a_text_model():
    from maskdit.config import load_config
    from maskdit.data.datasets import load_dataset
    from maskdit.training.trainer import condition_options, model_for

    cfg = load_config("shapes-text", overrides=["data.num=40", "model.depth=1", "model.hidden_size=32",
                                                "model.num_heads=2"])
    data = load_dataset("shapes", num=40)
    model = model_for(cfg, data.shape, data.num_classes, condition_options(cfg, data, None))
    names = {name.split(".", 2)[2] for name, *_ in targets(model, ["attention"])}
    assert {"context.q", "context.kv", "context.proj"} <= names


def test_add_lora_freezes_the_base_and_trains_only_the_updates():
    model = tiny_model()
    count = add_lora(model, LoraConfig(rank=2, targets=["attention", "mlp"]))
    assert count == 4 * len(model.blocks)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_key(k) for k in trainable)
    assert len(trainable) == 2 * count
    # the base's state dict still fits (its keys kept their names)
    assert {k for k in model.state_dict() if not is_adapter_key(k)} == set(tiny_model().state_dict())


@pytest.mark.parametrize("rank,affine", [(3, False), (0, True), (3, True)])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_merging_an_update_matches_the_adapted_layers(rank, affine, strength):
    """Merged weights compute what the adapted layers compute; at strength 0.5 what layers whose updates moved
    half-way from the identity compute (the low-rank part halved, the gain and shift half-way from 1 and 0)."""
    adapted, plain = tiny_model(), tiny_model()
    add_lora(adapted, LoraConfig(rank=rank, alpha=6.0, targets=["all"], affine=affine))
    with torch.no_grad():
        for k, p in adapted.named_parameters():
            if is_adapter_key(k):
                p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.clone() for k, v in adapted.state_dict().items() if is_adapter_key(k)}
    assert {k.rsplit(".", 2)[-2] if k.endswith("weight") else k.rsplit(".", 1)[-1] for k in state} == \
        ({"lora_down", "lora_up"} if rank else set()) | ({"lora_gain", "lora_shift"} if affine else set())
    merge(plain, state, scale=LoraConfig(rank=rank, alpha=6.0).scale, strength=strength, source="test")
    with torch.no_grad():  # the adapted model at that strength
        for k, p in adapted.named_parameters():
            if k.endswith("lora_up.weight") or k.endswith("lora_shift"):
                p.mul_(strength)
            elif k.endswith("lora_gain"):
                p.copy_(1 + strength * (p - 1))
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 3])
    with torch.no_grad():
        a, b = adapted(x, t, y), plain(x, t, y)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert (a - tiny_model()(x, t, y)).abs().max() > 1e-3  # the update changed what the model computes


def test_merge_refuses_an_adapter_of_another_model():
    adapted = tiny_model()
    add_lora(adapted, LoraConfig(rank=2))
    state = {k: v for k, v in adapted.state_dict().items() if is_adapter_key(k)}
    other = DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        merge(other, state, 1.0, 1.0, "adapter.safetensors")


def test_config_refuses_lora_without_a_base_and_unknown_targets():
    with pytest.raises(ConfigError, match="lora.rank=4 adapts a trained model: set init_from"):
        load_config("digits", overrides=["lora.rank=4"])
    with pytest.raises(ConfigError, match="lora.targets"):
        load_config("digits", overrides=["lora.rank=4", "init_from=x", "lora.targets=[convs]"])
    assert set(LORA_TARGETS.names()) == {"attention", "mlp", "adaln", "all"}


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A base run and a LoRA run trained on it (6 steps, checkpoints at 3 and 6)."""
    root = tmp_path_factory.mktemp("lora")
    base = root / "base"
    train(load_config("digits", overrides=[*BASE, f"run_dir={base}"]), progress=False)
    run = root / "adapter"
    train(load_config("digits", overrides=[*lora_args(base), f"run_dir={run}"]), progress=False)
    return base, run


def test_a_lora_run_saves_only_its_updates_and_leaves_the_base_untouched(adapted):
    base, run = adapted
    ckpt = latest_checkpoint(run)
    for name in ("model.safetensors", "ema.safetensors"):
        keys = set(load_file(ckpt / name))
        assert keys and all(is_adapter_key(k) for k in keys)
    base_ema = load_file(latest_checkpoint(base) / "ema.safetensors")
    info = json.loads((ckpt / "config.json").read_text())["lora"]
    assert info["rank"] == 4 and info["layers"] == 5 and info["base"] == str(latest_checkpoint(base).resolve())
    # Adam's moments exist for the updates alone: the optimizer file is a few tensors, not the model
    opt = load_file(ckpt / "optimizer.safetensors")
    adapter_numel = sum(v.numel() for v in load_file(ckpt / "model.safetensors").values())
    assert sum(v.numel() for v in opt.values() if v.dim()) == 2 * adapter_numel  # exp_avg, exp_avg_sq
    # the loaded run is the base plus the trained updates: it differs from the base, its non-adapted weights equal it
    loaded = load_run(run).model.state_dict()
    assert torch.equal(loaded["patch_embed.weight"], base_ema["patch_embed.weight"])
    assert not torch.equal(loaded["blocks.0.attn.qkv.weight"], base_ema["blocks.0.attn.qkv.weight"])


def test_an_affine_only_adapter_trains_saves_and_loads(adapted, tmp_path):
    """Diffscaler's per-channel gain and shift alone (lora.rank=0): a task's adapter of a few hundred numbers."""
    base, _ = adapted
    cfg = load_config("digits", overrides=[*SMALL, "steps=3", f"init_from={base}", "lora.affine=true", "lr=5e-2",
                                           "ema_decay=0", f"run_dir={tmp_path / 'affine'}"])
    train(cfg, progress=False)
    saved = load_file(latest_checkpoint(tmp_path / "affine") / "ema.safetensors")
    assert {k.rsplit(".", 1)[1] for k in saved} == {"lora_gain", "lora_shift"}
    assert any(not torch.equal(v, torch.ones_like(v)) for k, v in saved.items() if k.endswith("gain"))
    info = json.loads((latest_checkpoint(tmp_path / "affine") / "config.json").read_text())["lora"]
    assert info["affine"] is True and info["rank"] == 0
    merged, plain = load_run(tmp_path / "affine").model.state_dict(), load_run(base).model.state_dict()
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], plain["blocks.0.attn.qkv.weight"])


def test_the_loaded_run_samples_what_the_trained_adapted_model_computes(adapted):
    base, run = adapted
    cfg = load_config("digits", overrides=[*lora_args(base), f"run_dir={run}"])
    trainer = Trainer(cfg, resume=True, progress=False)  # the adapter as training holds it (LoRALinear layers)
    merged = load_run(run).model
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        a, b = trainer.ema.eval()(x, t, y), merged(x, t, y)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_resuming_a_lora_run_continues_it_exactly(adapted, tmp_path):
    base, run = adapted
    cfg = load_config("digits", overrides=[*lora_args(base), f"run_dir={tmp_path / 'r'}"])
    train(cfg, progress=False, stop_after=3)
    resumed = load_config("digits", overrides=[*lora_args(base), f"run_dir={tmp_path / 'r'}"])
    train(resumed, resume=True, progress=False)
    a = load_file(latest_checkpoint(run) / "ema.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "r") / "ema.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def test_an_adapter_whose_base_changed_or_went_away_is_refused(adapted, tmp_path):
    import shutil

    base, run = adapted
    copy_base, copy_run = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(base, copy_base)
    shutil.copytree(run, copy_run)
    for ckpt in (copy_run / "checkpoints").iterdir():  # point the copy at the copied base
        info = json.loads((ckpt / "config.json").read_text())
        info["lora"]["base"] = str(latest_checkpoint(copy_base).resolve())
        (ckpt / "config.json").write_text(json.dumps(info))
    load_run(copy_run)  # loads while the base is the one it was trained on
    weights = latest_checkpoint(copy_base) / "ema.safetensors"
    tensors = load_file(weights)
    tensors["blocks.0.attn.proj.bias"] += 1e-3
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="whose weights changed"):
        load_run(copy_run)
    shutil.rmtree(copy_base)
    with pytest.raises(CheckpointError, match="which is gone"):
        load_run(copy_run)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "maskdit", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_sample_with_lora_scales_merges_and_equals_the_lora_run(adapted, tmp_path):
    base, run = adapted
    common = ["--num", 8, "--steps", 3, "--seed", 1]
    out = {}
    for name, args in {"run": [run], "base+1": [base, "--lora", run], "base+0": [base, "--lora", f"{run}:0"],
                       "base": [base], "base+0.5x2": [base, "--lora", f"{run}:0.5", "--lora", f"{run}:0.5"]}.items():
        r = cli("sample", *args, *common, "--out", tmp_path / f"{name}.npz")
        assert r.returncode == 0, r.stderr
        out[name] = torch.from_numpy(__import__("numpy").load(tmp_path / f"{name}.npz")["images"]).float()
    assert (out["run"] - out["base+1"]).abs().max() <= 1  # the same weights, up to a uint8 step
    assert (out["base+0.5x2"] - out["base+1"]).abs().max() <= 1
    assert torch.equal(out["base+0"], out["base"])
    assert (out["run"] - out["base"]).abs().max() >= 3  # the adapter changes the samples, past rounding


def test_lora_merge_writes_a_plain_run_that_samples_like_the_adapter(adapted, tmp_path):
    base, run = adapted
    merged = tmp_path / "merged"
    r = cli("lora", "merge", run, "--out", merged)
    assert r.returncode == 0, r.stderr
    ckpt = latest_checkpoint(merged)
    info = json.loads((ckpt / "config.json").read_text())
    assert "lora" not in info and info["config"]["lora"]["rank"] == 0 and info["merged"]["lora"]["rank"] == 4
    assert set(load_file(ckpt / "ema.safetensors")) == set(load_file(latest_checkpoint(base) / "ema.safetensors"))
    a, b = load_run(merged).model.state_dict(), load_run(run).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a merged run trains on as a plain one
    cfg = load_config("digits", overrides=[*SMALL, "steps=1", f"init_from={merged}", f"run_dir={tmp_path / 'more'}"])
    train(cfg, progress=False)


@pytest.mark.parametrize("recipe", ["drop", "mae", "maskdit", "mdt", "tread", "sprint"])
def test_every_recipe_trains_the_updates_and_only_them(recipe):
    from maskdit.diffusion.objectives import FlowMatching
    from maskdit.masks import random_keep_indices
    from maskdit.training.recipes import build_recipe

    model = tiny_model(3, **({"fusion": (1, 2)} if recipe == "sprint" else {}))
    add_lora(model, LoraConfig(rank=2, targets=["all"]))
    with torch.no_grad():  # a trained update, so that both of its factors get gradients
        for k, p in model.named_parameters():
            if k.endswith("lora_up.weight"):
                p.normal_(0, 0.02)
    built = build_recipe(recipe, model, decoder_depth=1, **({"route": [1, 2]} if recipe == "tread" else {}))
    # (the recipes' own training-only layers, an MAE decoder or MDT's side block, train as in any run)
    x0, t, noise, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    keep = random_keep_indices(4, model.num_tokens, 0.5, torch.Generator().manual_seed(0))
    loss, _ = built.loss(model, FlowMatching(), x0, y, t, noise, keep)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}  # the backbone's only
    assert grads and all(is_adapter_key(k) for k in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())
    assert len(grads) == 2 * 5 * len(model.blocks)  # every update of every block reached the loss
