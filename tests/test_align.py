"""Representation alignment (REPA) and the self-trained MAE encoder it aligns with."""

import json

import pytest
import torch
from conftest import SMALL, perturbed

from maskdit.checkpoint import latest_checkpoint
from maskdit.cli.app import main
from maskdit.masks import random_keep_indices
from maskdit.model import DiT
from maskdit.model.aux import collect_aux_losses
from maskdit.training.align import Alignment
from maskdit.training.encoder import ViTEncoder


def align_loss(model, alignment, x, keep=None):
    alignment.prepare(x)
    with collect_aux_losses() as bag:
        model(x, torch.rand(len(x)), torch.zeros(len(x), dtype=torch.long), keep_idx=keep)
    alignment.clear()
    (loss,) = [v for name, v, _ in bag if name == "loss_align"]
    return loss


def test_the_alignment_loss_reaches_only_the_blocks_up_to_its_own():
    torch.manual_seed(0)
    model = perturbed(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=3, num_heads=2, num_classes=2))
    encoder = ViTEncoder([8, 8], 1, patch_size=2, width=24, depth=1, num_heads=2).requires_grad_(False)
    alignment = Alignment(model, encoder, block=1, weight=0.5)
    loss = align_loss(model, alignment, torch.randn(4, 1, 8, 8))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["blocks.0.attn.qkv.weight"].abs().sum() > 0 and grads["patch_embed.weight"].abs().sum() > 0
    assert all(grads[n] is None for n in grads if n.startswith(("blocks.1.", "blocks.2.", "final_layer.")))
    assert all(p.grad is not None for p in alignment.projector.parameters())
    assert all(p.grad is None for p in encoder.parameters())
    assert -0.5 <= loss.item() <= 0.5  # -weight * cosine


def test_under_dropping_only_kept_tokens_align():
    torch.manual_seed(0)
    model = perturbed(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=2))
    encoder = ViTEncoder([8, 8], 1, patch_size=4, width=24, depth=1, num_heads=2)  # a 2x2 grid: resized to 4x4
    alignment = Alignment(model, encoder, block=1, weight=1.0)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    keep = random_keep_indices(2, model.num_tokens, 0.5, torch.Generator().manual_seed(1))
    captured = {}
    handle = model.blocks[0].register_forward_hook(lambda m, a, out: captured.update(tokens=out))
    loss = align_loss(model, alignment, x, keep)
    handle.remove()
    alignment.prepare(x.detach())
    targets = alignment._targets.gather(1, keep.unsqueeze(-1).expand(-1, -1, 24))
    expected = -torch.nn.functional.cosine_similarity(alignment.projector(captured["tokens"]), targets, dim=-1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert captured["tokens"].shape[1] == keep.shape[1]


def test_encoder_trains_and_alignment_trains_resumes_and_logs(tmp_path, capsys):
    enc = tmp_path / "enc"
    assert main(["encoder", "train", "digits", "--out", str(enc), "--steps", "30", "--batch", "32", "--width", "32",
                 "--depth", "1", "--no-progress"]) == 0
    facts = json.loads((enc / "encoder.json").read_text())
    assert facts["kind"] == "maskdit-mae" and facts["final_loss"] < facts["first_loss"]
    run = tmp_path / "run"
    args = ["train", "--no-progress", *SMALL, "model.depth=2", "steps=4", "ckpt_every=2", "align.weight=0.5",
            "align.block=1", f"align.encoder={enc}", "mask.ratio=0.5"]
    assert main([*args, "steps=2", f"run_dir={run}"]) == 0
    assert main([*args, "--resume", f"run_dir={run}"]) == 0
    assert main([*args, f"run_dir={tmp_path / 'straight'}"]) == 0
    from safetensors.torch import load_file

    for name in ("model", "align"):
        a = load_file(latest_checkpoint(run) / f"{name}.safetensors")
        b = load_file(latest_checkpoint(tmp_path / "straight") / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert -0.5 <= record["loss_align"] < 0


def test_alignment_refuses_a_missing_encoder(tmp_path):
    from maskdit.config import load_config
    from maskdit.errors import ConfigError
    from maskdit.training.trainer import Trainer

    with pytest.raises(ConfigError, match="align.encoder"):
        Trainer(load_config("digits", overrides=[*SMALL, "align.weight=1", "align.block=1", f"align.encoder={tmp_path}",
                                                 f"run_dir={tmp_path / 'r'}"]), progress=False)


def tiny_dino(path, **saved_stats):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=16, patch_size=4)).save_pretrained(path)
    if saved_stats:
        (path / "preprocessor_config.json").write_text(json.dumps(saved_stats))
    return path


def test_a_local_hugging_face_vision_model_is_an_alignment_encoder(tmp_path):
    from transformers import AutoModel

    from maskdit.training.align import load_encoder

    enc = load_encoder(tiny_dino(tmp_path / "dino", image_mean=[0.5] * 3, image_std=[0.25] * 3))
    assert enc.grid == (4, 4) and not any(p.requires_grad for p in enc.parameters())
    x = torch.rand(2, 1, 8, 8) * 2 - 1  # 1-channel model-space digits in [-1, 1]
    features = enc(x)
    # by hand: to [0, 1], grey to RGB, up to the model's 16x16, its preprocessor's statistics, patch tokens only
    rgb = torch.nn.functional.interpolate(((x + 1) / 2).expand(-1, 3, -1, -1), size=(16, 16), mode="bilinear",
                                          align_corners=False)
    reference = AutoModel.from_pretrained(tmp_path / "dino", local_files_only=True).eval()
    with torch.no_grad():
        expected = reference(pixel_values=(rgb - 0.5) / 0.25).last_hidden_state[:, 1:]
    assert features.shape == (2, 16, 32) and torch.allclose(features, expected, atol=1e-5)

    run = tmp_path / "run"  # a digits model with a 4x4 token grid aligns with it end to end
    assert main(["train", "--no-progress", *SMALL, "model.depth=2", "steps=3", "align.weight=0.5",
                 "align.block=1", f"align.encoder={tmp_path / 'dino'}", f"run_dir={run}"]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert -0.5 <= record["loss_align"] <= 0.5 and record["loss_align"] != 0  # -weight x cosine similarity


def test_a_hugging_face_model_that_is_not_a_vision_transformer_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    from maskdit.errors import ConfigError
    from maskdit.training.align import load_encoder

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="not a vision transformer"):
        load_encoder(tmp_path / "bert")
