import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed

from maskdit.errors import ConfigError
from maskdit.grid import patchify
from maskdit.model import DiT, attention, build_model


@pytest.mark.parametrize("input_size, patch", [((16,), 4), ((8, 8), 2), ((4, 8, 8), (2, 4, 4))])
def test_fresh_model_outputs_exact_zero(input_size, patch):
    model = DiT(input_size, in_channels=3, patch_size=patch, hidden_size=48, depth=2, num_heads=4, num_classes=5)
    x = torch.randn(3, 3, *input_size)
    out = model(x, torch.rand(3), torch.tensor([0, 4, 5]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))


def _count(name: str) -> int:
    with torch.device("meta"):
        model = build_model(name, (32, 32), 4, num_classes=1000)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", [("DiT-XL/2", 675e6), ("DiT-S/2", 33e6), ("DiT-B/2", 130e6)])
def test_preset_parameter_counts_match_dit(name, expected):
    assert abs(_count(name) - expected) / expected < 0.02


def _trained_like(model: DiT) -> DiT:
    return perturbed(model)


def test_keep_all_tokens_matches_full_forward():
    model = _trained_like(DiT((8, 8), 2, 2, 32, 2, 4, num_classes=3))
    x, t, y = torch.randn(2, 2, 8, 8), torch.rand(2), torch.tensor([0, 2])
    full = patchify(model(x, t, y), model.patch_size)
    keep = torch.arange(model.num_tokens).expand(2, -1)
    assert torch.allclose(model(x, t, y, keep_idx=keep), full, atol=1e-5)


def test_kept_tokens_are_returned_in_given_order_and_count():
    model = _trained_like(DiT((8, 8), 1, 2, 32, 2, 4))
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    keep = torch.tensor([[0, 5, 9], [1, 2, 15]])
    out = model(x, t, keep_idx=keep)
    assert out.shape == (2, 3, model.patch_dim)
    order = torch.tensor([[2, 0, 1], [1, 2, 0]])  # the same kept sets, listed in another order
    shuffled = model(x, t, keep_idx=keep.gather(1, order))
    assert torch.allclose(shuffled, out.gather(1, order.unsqueeze(-1).expand(-1, -1, model.patch_dim)), atol=1e-5)
    other = model(x, t, keep_idx=torch.tensor([[0, 5, 10], [1, 2, 15]]))  # token 9 -> 10 changes sample 0 only
    assert not torch.allclose(other[0], out[0]) and torch.allclose(other[1], out[1], atol=1e-6)


def test_conditional_model_needs_labels_and_uses_them():
    model = _trained_like(DiT((8,), 1, 2, 32, 1, 4, num_classes=4))
    x, t = torch.randn(2, 1, 8), torch.rand(2)
    with pytest.raises(ConfigError, match="labels"):
        model(x, t)
    assert not torch.allclose(model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1])))
    assert model.null_label == 4


def test_bad_shapes_are_refused():
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        DiT((8, 8), 1, 2, 30, 1, 4)
    model = DiT((8, 8), 1, 2, 32, 1, 4)
    assert model(torch.randn(1, 1, 8, 6), torch.rand(1)).shape == (1, 1, 8, 6)  # a smaller grid: the corner
    for shape in ((1, 1, 8, 10), (1, 2, 8, 8), (1, 1, 8, 7)):
        with pytest.raises(ConfigError, match=r"expects input \(B, 1, 8, 8\)"):
            model(torch.randn(*shape), torch.rand(1))


def test_config_round_trip():
    model = DiT((4, 8, 8), 3, (1, 2, 2), 32, 2, 4, num_classes=7)
    again = DiT.from_config(model.config)
    assert again.config == model.config


@pytest.mark.parametrize("length", [8, 64, attention.EXPLICIT_MAX_LEN + 88])
def test_attend_in_bf16_on_cpu_agrees_with_fp32_sdpa_and_takes_the_explicit_path_for_short_sequences(
        length, monkeypatch):
    """Short bf16 sequences on a CPU skip SDPA (its CPU flash kernel is slow there), long ones use it; either
    way output and gradients agree with fp32 SDPA to bf16 rounding, with an additive bias too. In fp32 the
    result is SDPA's, bit for bit."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, length, 16, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, length, length)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.equal(attention.attend(q, k, v, bias), ref)

    sdpa, calls = F.scaled_dot_product_attention, []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    out = attention.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias.bfloat16())
    assert out.dtype == torch.bfloat16
    assert bool(calls) == (length > attention.EXPLICIT_MAX_LEN)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    assert (out.float() - ref).abs().max().item() < 0.05
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max().item() < 0.05 * r.abs().max().item()
