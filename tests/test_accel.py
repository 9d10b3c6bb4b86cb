"""Sampling accelerators: block caching keeps every sampling guarantee and is exact when it caches nothing."""

import pytest
import torch

from conftest import perturbed
from maskdit.accel import parse_accel
from maskdit.errors import ConfigError
from maskdit.model import DiT
from maskdit.objectives import FlowMatching
from maskdit.samplers import generate


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturbed(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=3,
                         task_conditioning=True)).eval()


def draw(model, **kw):
    labels = torch.arange(6) % 3
    return generate(model, FlowMatching(), 6, labels, sampler="heun", steps=5, guidance_scale=2.0, **kw)


def test_cache_every_1_is_exactly_uncached_and_every_3_runs_the_middle_blocks_less(model):
    plain = draw(model)
    assert torch.equal(draw(model, accel="cache:every=1"), plain)
    calls = []
    handle = model.blocks[1].register_forward_hook(lambda m, a, out: calls.append(1))
    cached = draw(model, accel="cache:every=3,tail=0")
    handle.remove()
    assert len(calls) == 4  # 10 model calls (5 Heun steps x 2): the middle ran on calls 0, 3, 6, 9
    assert not torch.equal(cached, plain) and (cached - plain).abs().max() < 0.5
    assert "run_blocks" not in model.__dict__  # the model is restored


def test_cached_samples_do_not_depend_on_the_batch_and_given_tokens_stay_exact(model):
    a = draw(model, accel="cache:every=2", batch_size=6)
    b = draw(model, accel="cache:every=2", batch_size=4)
    assert torch.equal(a, b)
    context = torch.rand(6, 1, 8, 8) * 2 - 1
    given = torch.zeros(6, 16, dtype=torch.bool)
    given[:, :8] = True  # the top half of the token grid is given
    out = draw(model, accel="cache:every=2", given=given, context=context)
    assert torch.equal(out[:, :, :4], context[:, :, :4])


def test_bad_accelerator_specs_are_refused():
    assert parse_accel("cache:every=3,tail=0.1") == ("cache", {"every": 3.0, "tail": 0.1})
    for spec, words in [("warp", "unknown accelerator"), ("cache:evry=2", "not an option"),
                        ("cache:every=two", "must be a number")]:
        with pytest.raises(ConfigError, match=words):
            parse_accel(spec)
    with pytest.raises(ConfigError, match="whole number"):
        draw(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=3, num_heads=2, num_classes=3),
             accel="cache:every=0.5")


def test_ras_ratio_1_is_exactly_uncached_and_a_share_keeps_the_guarantees(model):
    plain = draw(model)
    assert torch.equal(draw(model, accel="ras:ratio=1"), plain)
    seen = []
    handle = model.blocks[0].register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    half = draw(model, accel="ras:ratio=0.5,every=4")
    handle.remove()
    assert 8 in seen and 16 in seen  # thinned calls ran on half of the 16 tokens, full calls on all
    assert not torch.equal(half, plain) and torch.isfinite(half).all()
    assert torch.equal(draw(model, accel="ras:ratio=0.5", batch_size=4), draw(model, accel="ras:ratio=0.5"))
    context = torch.rand(6, 1, 8, 8) * 2 - 1
    given = torch.zeros(6, 16, dtype=torch.bool)
    given[:, 8:] = True
    out = draw(model, accel="ras:ratio=0.5", given=given, context=context)
    assert torch.equal(out[:, :, 4:], context[:, :, 4:])
    with pytest.raises(ConfigError, match="ratio"):
        draw(model, accel="ras:ratio=0")
