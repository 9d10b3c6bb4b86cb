"""Sampling accelerators: block caching keeps every sampling guarantee and is exact when it caches nothing."""

import pytest
import torch
from conftest import perturbed, shape_sensitive_kernels

from maskdit.diffusion.accel import parse_accel
from maskdit.diffusion.objectives import FlowMatching
from maskdit.diffusion.samplers import generate
from maskdit.errors import ConfigError
from maskdit.model import DiT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturbed(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=3,
                         task_conditioning=True)).eval()


def draw(model, num=6, **kw):
    labels = torch.arange(num) % 3
    return generate(model, FlowMatching(), num, labels, sampler="heun", steps=5, guidance_scale=2.0, **kw)


def within_rounding(a, b):
    """Batch sizes change kernels and so rounding, nothing more: agreement to 1e-4 of the values' scale."""
    return (a - b).abs().max() <= 1e-4 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("accel", [None, "cache:every=2", "ras:ratio=0.5", "int8:groups=2,calib=8",
                                   "int8+ras:ratio=0.5"])
def test_a_sample_depends_only_on_seed_index_and_batch_size_even_with_shape_sensitive_kernels(model, accel,
                                                                                             monkeypatch):
    shape_sensitive_kernels(monkeypatch)
    rows = []
    handle = model.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    few = draw(model, 5, batch_size=4, accel=accel)  # batches of 4: samples 0-3, then 4 and three copies of it
    many = draw(model, 11, batch_size=4, accel=accel)
    handle.remove()
    assert set(rows) == {8}  # every call: the batch of 4 twice (guidance's two branches), whatever num is
    assert torch.equal(few, many[:5])  # sample i sits in row i % 4 of a call of one shape, beside any others
    # the kernels really do depend on the shape: a batch size of 5 changes the floats, within rounding (int8:
    # a code can round to its neighbour, and RAS then pick another token, so within a few quanta)
    other = draw(model, 5, batch_size=5, accel=accel)
    assert not torch.equal(other, few)
    assert within_rounding(other, few) if "int8" not in (accel or "") else (other - few).abs().max() < 0.05


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


def test_cached_samples_agree_across_batch_sizes_and_given_tokens_stay_exact(model):
    a = draw(model, accel="cache:every=2", batch_size=6)
    b = draw(model, accel="cache:every=2", batch_size=4)
    assert within_rounding(a, b)
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
    assert within_rounding(draw(model, accel="ras:ratio=0.5", batch_size=4), draw(model, accel="ras:ratio=0.5"))
    context = torch.rand(6, 1, 8, 8) * 2 - 1
    given = torch.zeros(6, 16, dtype=torch.bool)
    given[:, 8:] = True
    out = draw(model, accel="ras:ratio=0.5", given=given, context=context)
    assert torch.equal(out[:, :, 4:], context[:, :, 4:])
    with pytest.raises(ConfigError, match="ratio"):
        draw(model, accel="ras:ratio=0")


@pytest.mark.parametrize("kernel", ["onednn", "fbgemm"])
def test_int8_linear_is_within_a_quantum_of_float_and_each_row_is_its_own(kernel, monkeypatch):
    import maskdit.diffusion.quant as quant
    from maskdit.diffusion.quant import Int8Linear, TimeGroup

    if kernel == "onednn" and not quant.onednn_available():
        pytest.skip("this PyTorch has no oneDNN int8 linear")
    monkeypatch.setattr(quant, "onednn_available", lambda: kernel == "onednn")
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    group = TimeGroup(2)
    q = Int8Linear(linear, torch.tensor([3.0, 0.5]), group)
    x = torch.randn(40, 64).clamp(-3, 3)
    with torch.no_grad():
        ref = linear(x)
        out = q(x)
        # the error bound: weight quantum x |x|_1 + input quantum x |w|_1, per output
        w_q = linear.weight.abs().amax(dim=1) / 127
        bound = (w_q * x.abs().sum(dim=1, keepdim=True) + (2 * 3.0 / 255) * linear.weight.abs().sum(dim=1)) / 2
        assert ((out - ref).abs() <= bound * 1.01 + 1e-5).all()
        assert (out - ref).abs().max() / ref.abs().max() < 0.02
        # in a call of the same shape, a row's result does not depend on the rows beside it (kernels may
        # change with the shape, so only equal shapes are compared); outliers beside it are clipped, not
        # allowed to stretch the scale
        others = torch.cat([x[:5], torch.randn(35, 64).clamp(-3, 3)])
        assert torch.equal(q(others)[:5], out[:5])
        wild = torch.cat([x[:5], 100 * torch.randn(35, 64)])
        assert torch.equal(q(wild)[:5], out[:5])
        # the CUDA kernel's arithmetic (torch._int_mm, symmetric int8) agrees with fbgemm's to the bound too
        assert ((q._cuda(x, 3.0) - ref).abs() <= bound * 1.01 + 1e-5).all()
        group.index = 1  # the other time group: inputs clip to its range of 0.5
        assert torch.allclose(q(x), linear(x.clamp(-0.5, 0.5)), atol=float(bound.max()))


def test_int8_feed_forward_runs_gelu_inside_the_kernel_within_the_quantization_error():
    import torch.nn.functional as F

    from maskdit.diffusion.quant import Int8Mlp, TimeGroup, onednn_available
    from maskdit.model.blocks import Mlp

    torch.manual_seed(0)
    mlp = Mlp(64, 256)
    x = torch.randn(40, 64).clamp(-3, 3)
    with torch.no_grad():
        hidden = F.gelu(mlp.fc1(x), approximate="tanh")
        q = Int8Mlp(mlp, torch.tensor([3.0]), torch.tensor([float(hidden.abs().max())]), TimeGroup(1))
        ref, out = mlp(x), q(x)
        assert (out - ref).abs().max() / ref.abs().max() < 0.03
        # rows stay independent in a call of the same shape; outliers are clipped, in the input and in the
        # hidden codes
        assert torch.equal(q(torch.cat([x[:5], torch.randn(35, 64).clamp(-3, 3)]))[:5], out[:5])
        assert torch.equal(q(torch.cat([x[:5], 100 * torch.randn(35, 64)]))[:5], out[:5])
        # the unfused path (float GELU between two int8 layers: CUDA, or no oneDNN) agrees to the same error
        unfused = q.fc2(F.gelu(q.fc1(x), approximate="tanh"))
        assert (unfused - ref).abs().max() / ref.abs().max() < 0.03
        if onednn_available():
            assert not torch.equal(out, unfused)  # the fused kernel really ran
            # the hidden codes span [GELU_MIN, range]: half the step of a symmetric range, so less error
            assert q.hidden_scale()[0] < 2 * float(hidden.abs().max()) / 255


def test_int8_sampling_calibrates_once_per_setting_and_keeps_the_guarantees(model):
    import maskdit.diffusion.quant as quant

    plain = draw(model)
    calibrations = []
    original = quant.calibrate
    quant.calibrate = lambda *a, **k: calibrations.append(1) or original(*a, **k)
    try:
        int8 = draw(model, accel="int8:groups=3,calib=8")
        assert len(calibrations) == 1 and torch.equal(draw(model, accel="int8:groups=3,calib=8"), int8)
        assert len(calibrations) == 1  # cached for the same settings
        assert not torch.equal(int8, plain) and (int8 - plain).abs().max() < 0.1
        # another batch size: calibration and kernels see other shapes, so the int8 codes may round apart
        assert (draw(model, accel="int8:groups=3,calib=8", batch_size=4) - int8).abs().max() < 0.05
        context = torch.rand(6, 1, 8, 8) * 2 - 1
        given = torch.zeros(6, 16, dtype=torch.bool)
        given[:, :8] = True
        out = draw(model, accel="int8:groups=3,calib=8+ras:ratio=0.5", given=given, context=context)
        assert torch.equal(out[:, :, :4], context[:, :, :4])
        with torch.no_grad():  # new weights: calibrate again
            model.blocks[0].mlp.fc1.weight.mul_(1.0)
        draw(model, accel="int8:groups=3,calib=8")
        assert len(calibrations) == 2
    finally:
        quant.calibrate = original
    quantized = model.__dict__["_int8_cache"].popitem()[1]
    layers = [m for m in quantized.modules() if isinstance(m, quant.Int8Linear)]
    assert len(layers) == 4 * 4  # qkv, proj, fc1, fc2 of each of 4 blocks; adaLN stays float
    assert sum(isinstance(m, quant.Int8Mlp) for m in quantized.modules()) == 4  # fc1 + GELU + fc2 as one
    assert all(len(layer.ranges) == 3 for layer in layers)
    assert not any(isinstance(m, quant.Int8Linear) for m in model.modules())  # the float model is untouched


def test_calibration_records_each_time_groups_largest_input():
    from maskdit.diffusion.quant import calibrate

    torch.manual_seed(0)
    net = DiT(input_size=(4, 4), in_channels=1, hidden_size=16, depth=2, num_heads=2, num_classes=0)
    seen = {0: 0.0, 1: 0.0}
    state = {}
    hook = net.blocks[1].mlp.fc2.register_forward_pre_hook(
        lambda m, a: seen.__setitem__(state["g"], max(seen[state["g"]], float(a[0].abs().max()))))

    def run():
        for t, scale in [(0.2, 1.0), (0.3, 5.0), (0.8, 0.1)]:
            state["g"] = int(t * 2)
            net(scale * torch.randn(3, 1, 4, 4), torch.full((3,), t))

    with torch.no_grad():
        ranges = calibrate(net, 2, run)
    hook.remove()
    assert ranges["1.mlp.fc2"].tolist() == pytest.approx([seen[0], seen[1]])
    assert seen[0] > 0 and seen[1] > 0


def test_composed_accelerator_specs_are_checked():
    from maskdit.diffusion.accel import parse_accels

    assert parse_accels("int8+ras:ratio=0.5") == [("int8", {}), ("ras", {"ratio": 0.5})]
    for spec, words in [("int8+", "empty part"), ("int8+int8", "once"), ("cache+ras", "choose one"),
                        ("int8:bits=4", "not an option")]:
        with pytest.raises(ConfigError, match=words):
            parse_accels(spec)
    for spec in ["int8:groups=0", "int8:calib=2.5"]:
        with pytest.raises(ConfigError, match="whole number"):
            draw(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=3, num_heads=2, num_classes=3),
                 accel=spec)


def test_ras_on_factorised_video_attention_recomputes_whole_tubes():
    torch.manual_seed(0)
    video = perturbed(DiT(input_size=(4, 8, 8), in_channels=1, patch_size=(1, 4, 4), hidden_size=32, depth=2,
                          num_heads=2, attention="factorised", task_conditioning=True)).eval()

    def clips(**kw):
        return generate(video, FlowMatching(), 4, None, sampler="euler", steps=6, **kw)

    seen = []
    handle = video.blocks[0].register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[1:2])))
    thin = clips(accel="ras:ratio=0.5,every=10")
    handle.remove()
    assert (8,) in seen and (16,) in seen  # 4 frames x 2 of the 4 places, or all 16 tokens
    assert torch.isfinite(thin).all() and not torch.equal(thin, clips())
    # another batch size agrees up to float rounding (kernels chosen by shape)
    assert within_rounding(clips(accel="ras:ratio=0.5", batch_size=3), clips(accel="ras:ratio=0.5"))
    context = torch.rand(4, 1, 4, 8, 8) * 2 - 1
    given = torch.zeros(4, 16, dtype=torch.bool)
    given[:, :8] = True  # the first two frames are given
    out = clips(accel="ras:ratio=0.5", given=given, context=context)
    assert torch.equal(out[:, :, :2], context[:, :, :2])
