"""The modern block options: RMSNorm, QK-norm, SwiGLU and axial rotary positions, under dropping too."""

import pytest
import torch
from conftest import SMALL, TINY, perturbed

from maskdit.checkpoint import latest_checkpoint
from maskdit.cli.app import main
from maskdit.grid import patchify
from maskdit.masks import random_keep_indices, tube_keep_indices
from maskdit.model import DiT
from maskdit.model.attention import Attention, AxialRoPE
from maskdit.runs import load_run

OPTIONS = ["model.moe.experts=4", "model.moe.shared=1", "model.moe.top_k=2", "model.pos=rope", "model.qk_norm=true",
           "model.norm=rmsnorm", "model.mlp=swiglu"]


def test_rope_attention_depends_only_on_relative_positions():
    """Tokens at grid places P and at P + (2, 3) give the same attention output: rotary positions are
    exactly relative (float64, so what remains is rounding)."""
    torch.manual_seed(0)
    rope = AxialRoPE(head_dim=8, token_grid=(6, 6))
    attn = Attention(16, 2, qk_norm=True, rope=rope).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    places = [(r, c) for r in range(3) for c in range(3)]
    ids = torch.tensor([[r * 6 + c for r, c in places]])
    shifted = torch.tensor([[(r + 2) * 6 + c + 3 for r, c in places]])
    a, b = attn(x, ids), attn(x, shifted)
    assert (a - b).abs().max().item() <= 1e-12
    moved = torch.tensor([[(r + 2) * 6 + c for r, c in places[::-1]]])  # not a shift: the output changes
    assert (attn(x, moved) - a).abs().max().item() > 1e-3
    # a 3-D grid splits each head's pairs over time, rows and columns
    rope3 = AxialRoPE(head_dim=12, token_grid=(4, 3, 3))
    assert rope3.cos.shape == (36, 6)


@pytest.mark.parametrize("attention", ["full", "factorised"])
def test_rope_and_block_options_give_dropped_tokens_exactly_zero_gradient(attention):
    torch.manual_seed(0)
    video = attention == "factorised"
    grid = (4, 8, 8) if video else (8, 8)
    model = perturbed(DiT(input_size=grid, in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                          num_classes=3, attention=attention, pos="rope", qk_norm=True, norm="rmsnorm",
                          mlp="swiglu"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, *grid, generator=g, requires_grad=True)
    keep = (tube_keep_indices(2, model.token_grid, 0.5, g) if video
            else random_keep_indices(2, model.num_tokens, 0.5, g))
    out = model(x, torch.rand(2, generator=g), torch.tensor([0, 2]), keep_idx=keep)
    out.square().sum().backward()
    per_token = patchify(x.grad, model.patch_size).abs().sum(-1)  # (B, N)
    kept = torch.zeros_like(per_token, dtype=torch.bool).scatter_(1, keep.reshape(2, -1), True)
    assert per_token[~kept].abs().max().item() == 0.0 and per_token[kept].min().item() > 0


def test_options_change_the_function_not_the_budget():
    torch.manual_seed(0)
    base = DiT(input_size=(8, 8), in_channels=1, hidden_size=48, depth=2, num_heads=2, num_classes=3)
    swiglu = DiT(input_size=(8, 8), in_channels=1, hidden_size=48, depth=2, num_heads=2, num_classes=3,
                 mlp="swiglu")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(swiglu) - count(base)) <= 0.01 * count(base)  # 2/3 width: the same parameters
    rope = DiT(input_size=(8, 8), in_channels=1, hidden_size=48, depth=2, num_heads=2, num_classes=3, pos="rope")
    assert rope.pos_embed.abs().max() == 0 and rope.config["pos"] == "rope"
    qk = DiT(input_size=(8, 8), in_channels=1, hidden_size=48, depth=2, num_heads=2, num_classes=3, qk_norm=True)
    assert "blocks.0.attn.q_norm.weight" in qk.state_dict() and DiT.from_config(qk.config).block_options.qk_norm
    # rmsnorm vs layernorm: the same weights, another function
    rms = DiT(**{**base.config, "norm": "rmsnorm"})
    rms.load_state_dict(perturbed(base).state_dict())
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1])
    assert (rms(x, t, y) - base(x, t, y)).abs().max() > 1e-4


def test_all_options_train_resume_and_sample_through_the_cli(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--no-progress", *SMALL, "model.depth=2", "steps=4", "ckpt_every=2", *OPTIONS, "mask.ratio=0.5",
            f"run_dir={run}"]
    assert main([*args[:-1], "steps=2", f"run_dir={run}"]) == 0
    assert main([*args, "--resume"]) == 0
    assert main([*args[:-1], f"run_dir={tmp_path / 'straight'}"]) == 0
    from safetensors.torch import load_file

    a = load_file(latest_checkpoint(run) / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "straight") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # resume is exact with every option on
    model = load_run(run).model
    assert (model.pos, model.block_options.norm, model.block_options.mlp) == ("rope", "rmsnorm", "swiglu")
    assert model.moe.experts == 4 and model.moe.shared == 1
    import json

    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss_balance"] > 0 and sum(last[f"expert_load_{e}"] for e in range(4)) == pytest.approx(4.0)
    assert main(["sample", str(run), "--num", "4", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0


# -- mixture of experts --------------------------------------------------------------------------------
def test_one_expert_without_shared_experts_is_the_dense_block():
    torch.manual_seed(0)
    kw = dict(input_size=(8, 8), in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=3)
    dense = perturbed(DiT(**kw))
    moe = DiT(**kw, moe={"experts": 1, "shared": 0, "top_k": 1})
    weights = {k.replace(".mlp.fc", ".mlp.experts.0.fc"): v for k, v in dense.state_dict().items()}
    weights.update({k: v for k, v in moe.state_dict().items() if "router" in k})
    moe.load_state_dict(weights)
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(moe(x, t, y), dense(x, t, y))


def test_balance_loss_is_one_for_uniform_routing_and_grows_when_it_concentrates():
    from maskdit.model.aux import collect_aux_losses
    from maskdit.model.blocks import Mlp
    from maskdit.model.moe import MoEMlp, MoESpec

    torch.manual_seed(0)
    layer = MoEMlp(16, MoESpec(experts=4, top_k=2, balance=1.0), lambda: Mlp(16, 32))
    x = torch.randn(64, 16) + 1.0

    def balance_and_loads():
        with collect_aux_losses() as bag:
            layer(x)
        values = {name: float(v) for name, v, _ in bag}
        return values["loss_balance"], [values[f"expert_load_{e}"] for e in range(4)]

    with torch.no_grad():
        layer.router.weight.zero_()
        uniform, _ = balance_and_loads()  # equal probabilities: sum_e f_e / E * E = 1
        layer.router.weight.normal_(std=1e-3)
        near, loads = balance_and_loads()
        layer.router.weight.zero_()
        layer.router.weight[0] = 1.0  # every token prefers expert 0, then expert 1
        layer.router.weight[1] = 0.5
        skewed, skewed_loads = balance_and_loads()
    assert uniform == pytest.approx(1.0) and near == pytest.approx(1.0, abs=0.05)
    assert skewed > 1.8 and skewed_loads[0] == pytest.approx(2.0) and skewed_loads[2] == 0.0
    assert sum(loads) == pytest.approx(4.0)  # the loads are shares times E: they sum to E


def test_moe_routing_is_deterministic_and_dropped_tokens_get_no_gradient():
    torch.manual_seed(0)
    model = perturbed(DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                          num_classes=3, moe={"experts": 4, "shared": 1, "top_k": 2, "capacity": 1.0},
                          pos="rope"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g, requires_grad=True)
    keep = random_keep_indices(2, model.num_tokens, 0.5, g)
    t, y = torch.rand(2, generator=g), torch.tensor([0, 2])
    out = model(x, t, y, keep_idx=keep)
    assert torch.equal(out, model(x, t, y, keep_idx=keep))
    out.square().sum().backward()
    per_token = patchify(x.grad, model.patch_size).abs().sum(-1)
    kept = torch.zeros_like(per_token, dtype=torch.bool).scatter_(1, keep, True)
    assert per_token[~kept].abs().max().item() == 0.0 and per_token[kept].min().item() > 0


def test_expert_choice_routing_is_per_sample_and_balanced():
    from maskdit.model.aux import collect_aux_losses
    from maskdit.model.blocks import Mlp
    from maskdit.model.moe import MoEMlp, MoESpec

    torch.manual_seed(0)
    layer = MoEMlp(16, MoESpec(experts=4, top_k=1, capacity=1.0, routing="expert"), lambda: Mlp(16, 32))
    torch.nn.init.normal_(layer.router.weight)
    x = torch.randn(3, 12, 16)
    with torch.no_grad(), collect_aux_losses() as bag:
        both = layer(x)
        alone = layer(x[1:2])
    assert torch.allclose(both[1:2], alone, atol=1e-6)  # a sample's routing does not depend on its batch
    names = {name for name, _, _ in bag}
    assert "loss_balance" not in names  # balanced by construction
    loads = [float(v) for name, v, _ in bag if name.startswith("expert_load_")][:4]
    assert loads == pytest.approx([1.0] * 4)


def test_time_gated_routing_follows_the_conditioning():
    from maskdit.model.blocks import Mlp
    from maskdit.model.moe import MoEMlp, MoESpec

    torch.manual_seed(0)
    layer = MoEMlp(16, MoESpec(experts=4, top_k=1, time_gate=True), lambda: Mlp(16, 32))
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        torch.nn.init.zeros_(layer.gate_cond.weight)  # a silent gate: routing by the tokens alone
        c = torch.randn(2, 16)
        assert torch.equal(layer.logits(x, c), layer.logits(x, None))
        torch.nn.init.normal_(layer.gate_cond.weight, std=5.0)
        early, late = layer.logits(x, c).argmax(-1), layer.logits(x, -c).argmax(-1)
    assert not torch.equal(early, late)  # another time (conditioning): other experts
    model = DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=2,
                moe={"experts": 2, "top_k": 1, "time_gate": True, "routing": "token"})
    assert model.blocks[0].mlp.gate_cond is not None and model.config["moe"]["time_gate"] is True


def test_a_rope_model_samples_at_another_size_and_a_table_model_refuses(tmp_path, trained, capsys):
    torch.manual_seed(0)
    model = perturbed(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=2,
                          pos="rope"))
    t, y = torch.rand(2), torch.tensor([0, 1])
    big = model(torch.randn(2, 1, 16, 12), t, y)
    assert big.shape == (2, 1, 16, 12) and torch.isfinite(big).all()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x, t, y), model(x, t, y))  # the training size is untouched by the other one
    table = DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=2)
    with pytest.raises(Exception, match="only a model.pos=rope model"):
        table(torch.randn(1, 1, 16, 16), t[:1], y[:1])
    run = tmp_path / "run"
    assert main(["train", "--no-progress", *SMALL, "steps=2", "model.pos=rope", f"run_dir={run}"]) == 0
    assert main(["sample", str(run), "--num", "4", "--steps", "2", "--size", "16x16",
                 "--out", str(tmp_path / "big.npz")]) == 0
    import numpy as np

    assert np.load(tmp_path / "big.npz")["images"].shape == (4, 16, 16, 1)
    plain = trained(*TINY)  # a position-table model
    assert main(["sample", str(plain), "--num", "4", "--size", "16x16", "--out", str(tmp_path / "x.png")]) == 2
    assert "only a model.pos=rope model" in capsys.readouterr().err
