"""Representation alignment (REPA) and the self-trained MAE encoder it aligns with."""

import json

import pytest
import torch

from conftest import SMALL, perturbed
from maskdit.align import Alignment
from maskdit.checkpoint import latest_checkpoint
from maskdit.cli import main
from maskdit.encoder import ViTEncoder
from maskdit.masks import random_keep_indices
from maskdit.model import DiT
from maskdit.model.aux import collect_aux_losses


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
    from maskdit.train import Trainer

    with pytest.raises(ConfigError, match="align.encoder"):
        Trainer(load_config("digits", overrides=[*SMALL, "align.weight=1", "align.block=1", f"align.encoder={tmp_path}",
                                                 f"run_dir={tmp_path / 'r'}"]), progress=False)
