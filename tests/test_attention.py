"""The attention kinds of maskdit.model.attention against dense references in float64: each kind is the softmax
(or kernel) attention its paper defines over the tokens it keeps, on their grid places, for every grid rank, with
dropped tokens, memory keys and rotary positions; and inside a DiT with every block path."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskdit.errors import ConfigError
from maskdit.model import DiT
from maskdit.model.attention import ATTENTIONS, Attention, Memory, TokenLayout, attention_spec


def coords(grid):
    return torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, len(grid))


def build(kind, grid, dim=24, heads=3, rope=None, **settings):
    torch.manual_seed(0)
    spec = attention_spec(kind, TokenLayout(grid), **settings)
    module = ATTENTIONS[kind](dim, heads, rope=rope, spec=spec).double()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.4)  # sharp attention, and the zero-initialised parts on
    return module


def kept(batch, grid, count, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(grid)
    return torch.stack([torch.randperm(n, generator=g)[:count] for _ in range(batch)])


def softmax_reference(module, x, pos, allowed, memory=None, extra_keys=None):
    """``proj(softmax(q k^T / sqrt(d) + mask) v)`` with ``allowed`` ``(B, L, L)``; memory keys (weighted) and
    ``extra_keys`` ``(k, v, held (B, M))`` join every query's keys."""
    b, n, dim = x.shape
    q, k, v = module.heads(x, pos)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    values, joined = v, [] if extra_keys is None else [extra_keys]
    if memory is not None:
        joined.append((memory.k, memory.v, torch.full((b, memory.k.shape[2]), math.log(memory.weight))))
    for keys, vals, bias in joined:
        more = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
        more = more + (bias if bias.dtype != torch.bool else torch.where(bias, 0.0, float("-inf")))[:, None, None]
        logits = torch.cat([logits, more], -1)
        values = torch.cat([values, vals], 2)
    out = torch.softmax(logits, -1) @ values
    return module.proj(out.transpose(1, 2).reshape(b, n, dim))


def in_window(grid, radius, pos):
    c = coords(grid).double()[pos]  # (B, L, rank)
    delta = c[:, :, None] - c[:, None, :]
    r = torch.tensor(radius, dtype=torch.float64)
    inside = (delta / r.clamp_min(1e-9)).square().sum(-1) <= 1 + 1e-9
    return inside & ((delta == 0) | (r > 0)).all(-1)


CASES = [((12,), (3,)), ((7, 9), (2,)), ((8, 8), (3, 1)), ((6, 5), (0, 2)), ((3, 5, 4), (1, 2, 2))]


@pytest.mark.parametrize("grid,radius", CASES)
@pytest.mark.parametrize("drop", [False, True])
def test_window_attention_is_softmax_over_each_tokens_neighbourhood_on_the_grid(grid, radius, drop):
    """CLEAR's local attention: every query meets exactly the keys within its ellipse of per-axis radii (radius 0:
    that axis's own place), by grid place, whatever order and subset of tokens passes (dropped tokens are absent)."""
    module = build("window", grid, window=radius)
    n = math.prod(grid)
    pos = kept(2, grid, max(2, n // 2)) if drop else None
    ids = pos if drop else torch.arange(n).expand(2, n)
    x = torch.randn(2, ids.shape[1], 24, dtype=torch.float64)
    memory = Memory(torch.randn(2, 3, 4, 8, dtype=torch.float64), torch.randn(2, 3, 4, 8, dtype=torch.float64), 0.5)
    for mem in (None, memory):
        out = module(x, pos, mem)
        per_axis = radius if len(radius) == len(grid) else radius * len(grid)
        ref = softmax_reference(module, x, pos, in_window(grid, per_axis, ids), mem)
        assert torch.allclose(out, ref, atol=1e-10), (out - ref).abs().max()


def test_a_window_wider_than_the_grid_is_full_attention_with_the_same_weights():
    """Weight inheritance: the window kind has full attention's parameters under the same names, and with a radius
    that covers the grid it computes what full attention computes (rotary positions included)."""
    from maskdit.model.attention import AxialRoPE

    grid = (6, 7)
    rope = AxialRoPE(8, grid).double()
    window = build("window", grid, rope=rope, window=20)
    full = Attention(24, 3, rope=rope).double()
    full.load_state_dict(window.state_dict())
    x = torch.randn(2, 20, 24, dtype=torch.float64)
    pos = kept(2, grid, 20)
    assert torch.allclose(window(x, pos), full(x, pos), atol=1e-10)
    every = torch.randn(1, 42, 24, dtype=torch.float64)
    assert torch.allclose(window(every), full(every), atol=1e-10)


def proxy_reference(module, x, pos, grid, cell):
    """PT-DiT's attention by its definition: window attention, plus (times the per-head gate) attention to the cell
    means of the kept tokens after their self-attention (over held cells) and the block's key/value projections."""
    b, n, dim = x.shape
    ids = pos if pos is not None else torch.arange(n).expand(b, n)
    cells = tuple(-(-g // cell) for g in grid)
    which = (coords(grid)[ids] // cell)  # (B, L, rank)
    flat = torch.zeros(b, n, dtype=torch.long)
    for a, c in enumerate(cells):
        flat = flat * c + which[..., a]
    count = math.prod(cells)
    proxies = torch.zeros(b, count, dim, dtype=x.dtype)
    held = torch.zeros(b, count, dtype=torch.bool)
    for i in range(b):
        for p in range(count):
            members = flat[i] == p
            if members.any():
                proxies[i, p] = x[i, members].mean(0)
                held[i, p] = True
    pq, pk, pv = module.proxies.heads(proxies)
    logits = (pq @ pk.transpose(-2, -1) / math.sqrt(pq.shape[-1])).masked_fill(~held[:, None, None], float("-inf"))
    mixed = (torch.softmax(logits, -1) @ pv).transpose(1, 2).reshape(b, count, dim)
    _, k, v = module.heads(proxies + module.proxies.proj(mixed), rotate=False)
    q, _, _ = module.heads(x, pos)
    logits = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~held[:, None, None], float("-inf"))
    glob = module.gate * (torch.softmax(logits, -1) @ v)
    radius = module.radius * len(grid) if len(module.radius) == 1 else module.radius
    local = softmax_reference(module, x, pos, in_window(grid, radius, ids))
    return local + module.proj(glob.transpose(1, 2).reshape(b, n, dim)) - module.proj.bias


@pytest.mark.parametrize("grid,cell", [((8, 8), 4), ((7, 10), 3), ((16,), 5), ((4, 4, 6), 2)])
@pytest.mark.parametrize("drop", [False, True])
def test_proxy_attention_is_window_attention_plus_gated_attention_to_the_cells_mixed_means(grid, cell, drop):
    module = build("proxy", grid, window=1, proxy=cell)
    n = math.prod(grid)
    pos = kept(2, grid, n // 3) if drop else None  # a third kept: some cells are empty
    x = torch.randn(2, n // 3 if drop else n, 24, dtype=torch.float64)
    ref = proxy_reference(module, x, pos, grid, cell)
    assert torch.allclose(module(x, pos), ref, atol=1e-10)


@pytest.mark.parametrize("grid", [(10,), (5, 6), (3, 4, 4)])
@pytest.mark.parametrize("drop", [False, True])
def test_linear_attention_is_the_relu_kernel_form_plus_a_depthwise_convolution_of_the_values(grid, drop):
    """LiT's form: ``phi(q) (phi(k)^T v) / (phi(q) . sum phi(k))`` over the kept tokens (rotary positions in the
    numerator), plus the depthwise convolution of the values with absent tokens as zeros."""
    from maskdit.model.attention import AxialRoPE

    rope = AxialRoPE(8, grid).double()
    module = build("linear", grid, rope=rope, conv=3)
    n = math.prod(grid)
    pos = kept(2, grid, n // 2) if drop else None
    ids = pos if drop else torch.arange(n).expand(2, n)
    b, length = 2, ids.shape[1]
    x = torch.randn(b, length, 24, dtype=torch.float64)
    q, k, v = module.heads(x, pos, rotate=False)
    fq, fk = F.relu(q), F.relu(k)
    scores = module.rotate(fq, pos) @ module.rotate(fk, pos).transpose(-2, -1)
    norm = fq @ fk.sum(2, keepdim=True).transpose(-2, -1)
    attn = scores @ v / (norm + 1e-6)
    image = torch.zeros(b, 24, n, dtype=torch.float64)
    image.scatter_(2, ids[:, None].expand(-1, 24, -1), v.permute(0, 1, 3, 2).reshape(b, 24, length))
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(grid) - 1](image.reshape(b, 24, *grid), module.conv.weight,
                                                         module.conv.bias, padding=1, groups=24)
    local = conv.reshape(b, 24, n).gather(2, ids[:, None].expand(-1, 24, -1)).reshape(b, 3, 8, length)
    ref = module.proj((attn + local.transpose(-2, -1)).transpose(1, 2).reshape(b, length, 24))
    assert torch.allclose(module(x, pos), ref, atol=1e-9)


@pytest.mark.parametrize("first", [0, 1, 2])
@pytest.mark.parametrize("drop", [False, True])
def test_tile_attention_keeps_the_diagonal_frame_tiles_and_the_global_frames_rows_and_columns(first, drop):
    """Efficient-vDiT's k:(T-k) mask: tile (i, j) of the frame-to-frame attention map is kept when i == j or either
    frame is one of the first k."""
    grid = (5, 3, 2)
    module = build("tile", grid, global_frames=first)
    n = math.prod(grid)
    pos = kept(2, grid, 17) if drop else None
    ids = pos if drop else torch.arange(n).expand(2, n)
    frame = coords(grid)[ids][..., 0]
    allowed = (frame[:, :, None] == frame[:, None, :]) | (frame[:, :, None] < first) | (frame[:, None, :] < first)
    x = torch.randn(2, ids.shape[1], 24, dtype=torch.float64)
    memory = Memory(torch.randn(2, 3, 4, 8, dtype=torch.float64), torch.randn(2, 3, 4, 8, dtype=torch.float64), 2.0)
    for mem in (None, memory):
        assert torch.allclose(module(x, pos, mem), softmax_reference(module, x, pos, allowed, mem), atol=1e-10)


def test_settings_that_cannot_build_are_refused_naming_the_key():
    layout = TokenLayout((4, 4))
    for kwargs, key in [({"window": -1}, "model.window"), ({"window": 0}, "model.window"),
                        ({"window": [1, 2, 3]}, "model.window"), ({"proxy": 0}, "model.proxy_size"),
                        ({"conv": 4}, "model.linear_conv"), ({"global_frames": -1}, "model.tile_global")]:
        with pytest.raises(ConfigError, match=key):
            attention_spec("window", layout, **kwargs)
    with pytest.raises(ConfigError, match="video grid"):
        DiT((8, 8), 1, 2, 32, 1, 4, attention="tile")


def test_linear_attention_folds_memory_keys_into_its_sums_with_their_weight():
    """Memory keys (condition tokens) join the kernel sums, weighted: ``w phi(q) phi(m)^T`` per memory key."""
    grid = (4, 4)
    module = build("linear", grid, conv=0)
    x = torch.randn(2, 16, 24, dtype=torch.float64)
    mk, mv = torch.randn(2, 3, 5, 8, dtype=torch.float64), torch.randn(2, 3, 5, 8, dtype=torch.float64)
    q, k, v = module.heads(x)
    fq, fk, fm = F.relu(q), F.relu(k), 0.25 * F.relu(mk)
    num = fq @ (fk.transpose(-2, -1) @ v + fm.transpose(-2, -1) @ mv)
    den = fq @ (fk.sum(2, keepdim=True) + fm.sum(2, keepdim=True)).transpose(-2, -1)
    ref = module.proj((num / (den + 1e-6)).transpose(1, 2).reshape(2, 16, 24))
    assert torch.allclose(module(x, None, Memory(mk, mv, 0.25)), ref, atol=1e-10)


KINDS = ["linear", "window", "proxy"]


@pytest.mark.parametrize("kind", ["window", "proxy"])
def test_inside_a_dit_dropped_tokens_keep_their_grid_places(kind):
    """A one-block model on kept tokens in shuffled order: with window attention a kept token's output moves when a
    kept token inside its window changes and stays put for one outside it (nothing else mixes tokens); with proxies,
    whose one cell spans the grid, every kept token reaches every other."""
    from conftest import perturbed

    model = perturbed(DiT((8, 8), 1, 1, 24, 1, 3, attention=kind, window=1, proxy_size=8), 0.3).double()
    x, t = torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.rand(1, dtype=torch.float64)
    place = lambda r, c: r * 8 + c  # noqa: E731
    keep = torch.tensor([[place(5, 5), place(0, 0), place(4, 5), place(5, 7), place(2, 2), place(6, 6)]])
    out = model(x, t, keep_idx=keep)
    for neighbour, inside in ((place(4, 5), True), (place(5, 7), False), (place(6, 6), False)):
        moved = x.clone()
        moved[0, 0, neighbour // 8, neighbour % 8] += 1.0
        changed = not torch.allclose(model(moved, t, keep_idx=keep)[0, 0], out[0, 0], atol=1e-12)
        assert changed == (inside or kind == "proxy"), (neighbour, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("recipe", [["mask.recipe=drop", "mask.ratio=0.5"],
                                    ["mask.recipe=tread", "mask.ratio=0.5", "mask.route=[1,2]"],
                                    ["mask.recipe=sprint", "mask.ratio=0.5", "mask.route=[1,2]", "model.depth=3"],
                                    ["mask.recipe=mdt", "mask.ratio=0.5", "mask.decoder_depth=1"],
                                    ["mask.recipe=maskdit", "mask.ratio=0.5", "model.depth=3", "mask.decoder_depth=1"],
                                    ["task.names=[inpaint,outpaint]", "model.token_time=true"]],
                         ids=["drop", "tread", "sprint", "mdt", "maskdit", "tasks"])
def test_every_linear_cost_kind_trains_with_each_recipe(tmp_path, kind, recipe):
    """Each kind in every masked-training layout, end to end on the digits at patch 1 (64 tokens): the loss is
    finite and falls, and the kind's own layers (the convolution, the proxies' attention) learn."""
    import json

    from maskdit.config import load_config
    from maskdit.runs import load_run
    from maskdit.training.trainer import train

    cfg = load_config("digits", overrides=[
        "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.patch_size=1", f"model.attention={kind}",
        "model.window=2", "batch_size=16", "warmup_steps=2", "log_every=1", "ckpt_every=100", "steps=30", "lr=3e-3",
        f"run_dir={tmp_path}", "precision=fp32", *recipe])
    train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])
    model = load_run(tmp_path).model
    own = {"linear": "attn.conv.weight", "proxy": "attn.proxies.proj.weight", "window": "attn.qkv.weight"}[kind]
    assert any(own in name and p.abs().sum() > 0 for name, p in model.named_parameters())


def test_init_from_a_full_attention_run_converts_it_to_another_kind_with_its_weights_and_moments(tmp_path):
    """LiT's weight inheritance through ``init_from``: every layer the kinds share (projections, MLPs, embeddings)
    starts from the full-attention run, the new kind's own layers from their neutral start (the convolution and the
    proxies' output at zero), and Adam's moments follow each parameter by name although the new layers shift the
    indices; the converted model's layers then train."""
    from maskdit.checkpoint import load_tensors, optimizer_state
    from maskdit.config import load_config
    from maskdit.files import read_json
    from maskdit.training.trainer import Trainer, train

    base = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.patch_size=1", "batch_size=8",
            "warmup_steps=1", "ckpt_every=4", "steps=4", "precision=fp32", "model.window=2"]
    train(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'full'}"]), progress=False)
    ckpt = tmp_path / "full" / "checkpoints" / "step_000004"
    source = load_tensors(ckpt / "model.safetensors")
    moments = optimizer_state(ckpt, read_json(ckpt / "state.json")["optimizer"])
    names = [n for n, _ in Trainer(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'x'}"]),
                                   progress=False).model.named_parameters()]
    for kind, own in (("linear", "conv"), ("proxy", "proxies.proj"), ("window", None)):  # (and the proxies' gate)
        cfg = load_config("digits", overrides=[*base, f"run_dir={tmp_path / kind}", f"model.attention={kind}",
                                               f"init_from={tmp_path / 'full'}"])
        trainer = Trainer(cfg, progress=False)
        params = dict(trainer.model.named_parameters())
        for name, value in source.items():
            if name in params:
                assert torch.equal(params[name].detach(), value), name
        if own is not None:
            assert all(params[f"blocks.{i}.attn.{own}.weight"].abs().sum() == 0 for i in range(2))
        for index, name in enumerate(names):
            slots = trainer.optimizer.state[params[name]]
            assert torch.equal(slots["exp_avg_sq"], moments[index]["exp_avg_sq"]), name
        train(cfg, progress=False)
    from maskdit.runs import load_run

    assert load_run(tmp_path / "linear").model.blocks[0].attn.conv.weight.abs().sum() > 0


def test_attention_output_distillation_reports_each_blocks_gap_to_the_teachers_attention(tmp_path):
    """CLEAR's layer loss (``distill.attention``): inside a training step the term is the weight times the mean over
    blocks of the squared gap between the student's and the teacher's attention outputs on the same input, whichever
    of the two runs first; outside a step nothing is reported; a student of another depth or a dropping recipe is
    refused; and training on the term alone shrinks it."""
    from conftest import perturbed

    from maskdit.config import load_config
    from maskdit.model.aux import collect_aux_losses
    from maskdit.training.distill import Distillation
    from maskdit.training.trainer import train

    teacher = perturbed(DiT((8, 8), 1, 1, 32, 2, 2, num_classes=10), 0.2)
    student = DiT((8, 8), 1, 1, 32, 2, 2, num_classes=10, attention="linear", linear_conv=3)
    student.load_state_dict(teacher.state_dict(), strict=False)
    seen = {}
    for role, model in (("teacher", teacher), ("student", student)):
        for i, block in enumerate(model.blocks):
            block.attn.register_forward_hook(lambda m, a, out, key=(role, i): seen.__setitem__(key, out.detach()))
    distil = Distillation(teacher, 1.0, attention=3.0, student=student)
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 3, 5, 7])
    for order in ((student, teacher), (teacher, student)):
        with collect_aux_losses() as bag:
            for model in order:
                model(x, t, y)
        want = 3.0 * sum((seen[("student", i)] - seen[("teacher", i)]).square().mean() for i in range(2)) / 2
        assert [name for name, _, adds in bag] == ["distill_attention"] * 2 and all(adds for _, _, adds in bag)
        assert torch.allclose(sum(v for _, v, _ in bag), want, rtol=1e-5) and want > 0
    with torch.no_grad():
        student(x, t, y), teacher(x, t, y)  # no step collects: nothing is kept or reported
    assert not distil._outputs
    with pytest.raises(ConfigError, match="distill.attention needs a student with the teacher's blocks"):
        Distillation(teacher, 1.0, attention=1.0, student=DiT((8, 8), 1, 1, 32, 1, 2, num_classes=10))

    base = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.patch_size=1", "batch_size=8",
            "warmup_steps=1", "steps=4", "ckpt_every=4", "precision=fp32"]
    train(load_config("digits", overrides=[*base, f"run_dir={tmp_path / 'full'}"]), progress=False)
    full = tmp_path / "full"
    convert = [*base, "model.attention=linear", f"init_from={full}", f"distill.teacher={full}", "distill.attention=100",
               "distill.weight=1", "lr=3e-3", "steps=30", "log_every=1", "ckpt_every=30"]
    with pytest.raises(ConfigError, match="mask.recipe=drop with mask.ratio=0.5 runs the student otherwise"):
        train(load_config("digits", overrides=[*convert, "mask.ratio=0.5", f"run_dir={tmp_path / 'x'}"]),
              progress=False)
    train(load_config("digits", overrides=[*convert, f"run_dir={tmp_path / 'linear'}"]), progress=False)
    import json

    gaps = [json.loads(line)["distill_attention"] for line in (tmp_path / "linear" / "metrics.jsonl").open()
            if "distill_attention" in line]
    assert len(gaps) >= 20 and sum(gaps[-5:]) < 0.5 * sum(gaps[:5])


# -- other sizes -------------------------------------------------------------------------------------------------

def test_rope_scalings_follow_their_definitions_at_a_grid_twice_the_training_one():
    """PI halves every frequency (the token at 2i sits where i sat); NTK keeps the highest frequency and divides the
    lowest by s; YaRN keeps frequencies that turn 32+ times over the training length, interpolates those under one
    turn and sharpens by (0.1 ln s + 1) on cos and sin; an axis no longer than in training is untouched."""
    from maskdit.model.attention import AxialRoPE

    rope = AxialRoPE(16, (6, 5), theta=100.0)  # 4 frequencies per axis
    train_cos, train_sin = rope.tables((6, 5))
    cos, sin = rope.tables((12, 5), "pi")
    ids = torch.tensor([r * 5 + c for r in range(6) for c in range(5)])
    ids2 = torch.tensor([2 * r * 5 + c for r in range(6) for c in range(5)])
    assert torch.allclose(cos[ids2], train_cos[ids]) and torch.allclose(sin[ids2], train_sin[ids])
    freqs = 100.0 ** (-torch.arange(4, dtype=torch.float64) / 4)

    def axis_freqs(scaling):  # the row axis's frequencies, read back from the angles of row 1, column 0
        c, s = rope.tables((12, 5), scaling)
        gain = c[0, 0]
        return torch.atan2(s[5, :4] / gain, c[5, :4] / gain), gain, c, s

    ntk, gain, _, _ = axis_freqs("ntk")
    assert gain == 1.0 and torch.isclose(ntk[0], freqs[0]) and torch.isclose(ntk[3], freqs[3] / 2)
    yarn, gain, c, s = axis_freqs("yarn")
    turns = 6 * freqs / (2 * math.pi)
    assert math.isclose(float(gain), 0.1 * math.log(2) + 1)
    ramp = ((turns - 1) / 31).clamp(0, 1)
    assert torch.allclose(yarn, (1 - ramp) * freqs / 2 + ramp * freqs)
    plain_cos = rope.tables((12, 5))[0]
    assert torch.allclose(c[:, 4:], gain * plain_cos[:, 4:])  # the columns (5 -> 5) keep the training frequencies


def test_the_entropy_scale_multiplies_full_attentions_logits_by_sqrt_log_n_of_the_keys():
    """Jin et al.: at N tokens instead of the training n, logits times sqrt(ln N / ln n); 1 at the training grid,
    when off, and for the window kinds (a window's key count does not grow with the grid)."""
    layout = TokenLayout((4, 4))
    full = build("full", (4, 4))
    full.layout = layout
    x = torch.randn(1, 64, 24, dtype=torch.float64)
    q, k, v = full.heads(x)
    with layout.at((8, 8)), layout.sizing(entropy=True):
        assert math.isclose(layout.logit_scale(64), math.sqrt(math.log(64) / math.log(16)))
        out = full(x)
    scale = math.sqrt(math.log(64) / math.log(16))
    ref = torch.softmax(scale * q @ k.transpose(-2, -1) / math.sqrt(8), -1) @ v
    assert torch.allclose(out, full.proj(ref.transpose(1, 2).reshape(1, 64, 24)), atol=1e-10)
    with layout.at((8, 8)):
        assert layout.logit_scale(64) == 1.0
    with layout.sizing(entropy=True):
        assert layout.logit_scale(16) == 1.0
    with pytest.raises(ConfigError, match="rope scaling"):
        with layout.sizing("linear"):
            pass


@pytest.mark.parametrize("kind", ["full", "linear", "window", "proxy"])
def test_a_rotary_model_of_every_kind_samples_at_another_size_with_each_scaling(kind):
    """``--size`` with each rope scaling and the entropy scale: the local kinds tile the larger grid, the output has
    its shape, and at the training size the sizing changes nothing."""
    from conftest import perturbed

    from maskdit.model.attention import ROPE_SCALINGS

    model = perturbed(DiT((8, 8), 1, 1, 32, 2, 4, num_classes=3, attention=kind, window=2, pos="rope"), 0.2)
    t, y = torch.rand(2), torch.tensor([0, 2])
    small, big = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 16, 12)
    plain = model(small, t, y)
    outs = {}
    for scaling in ROPE_SCALINGS.names():
        with model.layout.sizing(scaling, entropy=True):
            assert torch.equal(model(small, t, y), plain)
            outs[scaling] = model(big, t, y)
        assert outs[scaling].shape == big.shape and torch.isfinite(outs[scaling]).all()
    if kind in ("full", "window"):  # positions reach the logits: each scaling gives its own result
        assert not torch.allclose(outs["none"], outs["pi"]) and not torch.allclose(outs["ntk"], outs["yarn"])


# -- smaller sizes and mixed-size training -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["full", "linear", "window", "proxy"])
@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_a_smaller_grid_is_the_training_grids_corner_with_the_rest_left_out(kind, pos):
    """FiT's padded canvas without the padding: a 6x4 input runs as the 6x4 corner of the 8x8 grid, exactly what
    the model computes on a canvas from which only that corner's tokens are kept (positions, windows and
    convolution on the canvas's places), whatever the canvas holds elsewhere."""
    from conftest import perturbed

    from maskdit.grid import region_indices

    model = perturbed(DiT((8, 8), 1, 1, 32, 2, 4, num_classes=3, attention=kind, window=2, pos=pos), 0.2).double()
    small = torch.randn(2, 1, 6, 4, dtype=torch.float64)
    canvas = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    canvas[:, :, :6, :4] = small
    t, y = torch.rand(2, dtype=torch.float64), torch.tensor([1, 2])
    corner = region_indices((6, 4), (8, 8)).expand(2, -1)
    kept = model(canvas, t, y, keep_idx=corner)  # (B, 24, C) in the corner's order
    out = model(small, t, y)
    assert out.shape == small.shape
    assert torch.allclose(out.reshape(2, 1, 24).transpose(1, 2), kept, atol=1e-10)
    dropped = model(small, t, y, keep_idx=torch.tensor([[0, 5, 23], [7, 2, 11]]))  # dropping inside the corner
    assert torch.allclose(dropped, model(canvas, t, y, keep_idx=corner.gather(1, torch.tensor([[0, 5, 23],
                                                                                                [7, 2, 11]]))))


def test_data_sizes_trains_one_drawn_size_per_step_and_the_run_samples_at_them(tmp_path):
    """``data.sizes``: each step resizes the batch to one drawn size (its own seeded stream: the times and noise are
    those of the same run without sizes), the loss is finite and falls, and the run samples at a trained smaller
    size through ``--size``."""
    import json

    from maskdit.cli.app import main
    from maskdit.config import load_config
    from maskdit.training.step import StepSampler
    from maskdit.training.trainer import Trainer

    base = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=16", "warmup_steps=2",
            "log_every=1", "ckpt_every=40", "steps=40", "lr=3e-3", "precision=fp32", f"run_dir={tmp_path / 'run'}"]
    cfg = load_config("digits", overrides=[*base, "data.sizes=[4x4,6x8,8x8]", "mask.ratio=0.25"])
    trainer = Trainer(cfg, progress=False)
    plain = StepSampler(0, 1797, 16, (1, 8, 8), trainer.objective, 0.1, 16, (4, 4), cfg.mask, 40)
    drawn = [trainer.inputs.draw(k) for k in range(30)]
    assert {d.size for d in drawn} == {(4, 4), (6, 8), (8, 8)}
    for k, d in enumerate(drawn):
        same = plain.draw(k)
        assert torch.equal(d.t, same.t) and torch.equal(d.noise, same.noise)
        tokens = (d.size[0] // 2) * (d.size[1] // 2)
        assert d.keep_idx.shape == (16, tokens - round(0.25 * tokens)) and int(d.keep_idx.max()) < tokens
    trainer.run()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for v in losses) and sum(losses[-5:]) < sum(losses[:5])
    assert main(["sample", str(tmp_path / "run"), "--num", "4", "--steps", "2", "--size", "6x8",
                 "--out", str(tmp_path / "s.npz")]) == 0
    import numpy as np

    assert np.load(tmp_path / "s.npz")["images"].shape[1:3] == (6, 8)


def test_tiles_cover_the_grid_and_average_where_they_overlap():
    """MultiDiffusion's tiles: starts on the patch grid, the last flush with the end; a per-place function of the
    input comes back unchanged through the tiles, and a function that sees its tile's position is averaged."""
    from maskdit.diffusion.sizes import tile_starts, tiled

    assert tile_starts(32, 16, 0.5, 2) == [0, 8, 16]
    assert tile_starts(20, 16, 0.5, 2) == [0, 4]
    assert tile_starts(16, 16, 0.5, 2) == [0]
    x = torch.randn(2, 1, 20, 24)
    assert torch.allclose(tiled(lambda v, t: 3 * v + t, (16, 16), 0.5, (2, 2))(x, 0.5), 3 * x + 0.5)
    ones = tiled(lambda v, t: torch.ones_like(v) * v.shape[-1], (16, 8), 0.25, (1, 1))(x, 0.0)
    assert torch.allclose(ones, torch.full_like(x, 8.0))


def test_tiled_sampling_holds_the_structure_and_refines_it(tmp_path):
    """The structure pull solves its ODE: with tiles that predict nothing, ``dx/dt = w(t) (x - up) / t`` with ``w =
    t / strength`` decays the start's distance to the structure by ``e^-1`` (structure 1) and leaves it (structure
    0); and ``maskdit sample --size ... --tiled`` writes samples beyond the training size for a model without rotary
    positions."""
    import numpy as np

    from maskdit.cli.app import main
    from maskdit.diffusion.sizes import refine

    up, noise = torch.randn(2, 1, 12, 12, dtype=torch.float64), torch.randn(2, 1, 12, 12, dtype=torch.float64)
    start = 0.4 * up + 0.6 * noise
    still = refine(lambda v, t: torch.zeros_like(v), up, noise, 50, 0.6, 0.0, (8, 8), 0.5, (2, 2))
    assert torch.allclose(still, start)
    pulled = refine(lambda v, t: torch.zeros_like(v), up, noise, 400, 0.6, 1.0, (8, 8), 0.5, (2, 2))
    assert torch.allclose(pulled - up, math.exp(-1) * (start - up), atol=1e-5)
    assert main(["train", "--no-progress", "model.depth=1", "model.hidden_size=32", "model.num_heads=2", "steps=2",
                 "batch_size=8", "warmup_steps=1", f"run_dir={tmp_path / 'run'}"]) == 0
    assert main(["sample", str(tmp_path / "run"), "--num", "3", "--steps", "2", "--size", "16x12", "--tiled",
                 "--out", str(tmp_path / "big.npz")]) == 0
    assert np.load(tmp_path / "big.npz")["images"].shape[1:3] == (16, 12)


@pytest.mark.parametrize("kind", ["linear", "window", "proxy"])
@pytest.mark.parametrize("control", ["concat", "controlnet", "tokens", "adapter"])
def test_every_kind_takes_every_control_kind(kind, control):
    """Control maps (condition tokens reach attention as memory keys; a ControlNet branch copies the kind's blocks)
    run with each kind, and the control changes the output (an image-prompt adapter needs an encoder: skipped)."""
    from conftest import perturbed

    torch.manual_seed(0)
    options = {"encoder": None} if control == "adapter" else {}
    try:
        model = DiT((8, 8), 1, 1, 32, 2, 2, num_classes=3, attention=kind, window=2, control="lowres:2",
                    control_kind=control, control_options=options or None)
    except ConfigError as e:  # a kind that needs a file (an image encoder) is out of a unit test's reach
        pytest.skip(str(e))
    model = perturbed(model, 0.2)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    maps = torch.rand(2, 1, 8, 8)
    value = model.conditioner.pack(torch.tensor([0, 2]), maps)
    out = model(x, t, value)
    other = model(x, t, model.conditioner.pack(torch.tensor([0, 2]), torch.rand(2, 1, 8, 8)))
    assert out.shape == x.shape and torch.isfinite(out).all() and not torch.allclose(out, other)
    out.square().mean().backward()


@pytest.mark.parametrize("kind", ["linear", "window", "proxy"])
def test_every_kind_takes_caption_cross_attention_and_refuses_joint_attention(kind):
    from conftest import perturbed

    options = {"vocab": ["a", "red", "blue", "circle"], "length": 4, "depth": 1}
    model = perturbed(DiT((8, 8), 3, 2, 32, 2, 2, condition="text", condition_options=options, attention=kind,
                          window=1), 0.2)
    ids = model.conditioner.parse(["a red circle", "a blue circle"])
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    out = model(x, t, ids)
    assert torch.isfinite(out).all() and not torch.allclose(out, model(x, t, ids.flip(0)))
    with pytest.raises(ConfigError, match="model.attention=full"):
        DiT((8, 8), 3, 2, 32, 2, 2, condition="text", condition_options=options, attention=kind, text="joint")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "window", "proxy"])
def test_compiled_blocks_of_every_kind_compute_what_the_eager_ones_do(kind):
    """``compile=true`` compiles each block (``torch.compile``); the local kinds' cached tilings and custom region
    copy must trace, or break the graph, without changing the forward or the gradients, dropped tokens included."""
    from conftest import perturbed

    torch.manual_seed(0)
    eager = perturbed(DiT((8, 8), 1, 1, 32, 2, 2, num_classes=10, attention=kind, window=2, linear_conv=3), 0.2)
    compiled = DiT((8, 8), 1, 1, 32, 2, 2, num_classes=10, attention=kind, window=2, linear_conv=3)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 4, 9])
    keep = kept(3, (8, 8), 40)
    outs = []
    for model in (eager, compiled):
        model.zero_grad()
        out = model(x, t, y, keep_idx=keep)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, grads_a), (b, grads_b) = outs
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    for ga, gb in zip(grads_a, grads_b):
        assert (ga - gb).abs().max() <= 1e-4 * ga.abs().max().clamp_min(1e-6)
