"""Given (condition) masks per task, and the factorised space-time attention of the DiT."""

import pytest
import torch

from maskdit.errors import ConfigError
from maskdit.grid import patchify, sincos_pos_embed
from maskdit.masks import TASKS, mix_task_masks, task_mask, tube_keep_indices
from maskdit.model import DiT
from maskdit.model.blocks import FactorisedDiTBlock

GRID = (8, 3, 4)  # T', H', W'
PER_FRAME = 3 * 4


def _given_frames(mask: torch.Tensor) -> list[int]:
    """Frames whose tokens are all given; asserts every frame is all-or-nothing."""
    per = mask.reshape(mask.shape[0], -1)
    assert torch.equal(per.all(1), per.any(1)), "frame task gave part of a frame"
    return per.all(1).nonzero().flatten().tolist()


def test_unconditional_gives_nothing_on_every_rank():
    for grid in ((5,), (4, 4), GRID):
        mask = task_mask("unconditional", grid)
        assert mask.shape == grid and mask.dtype == torch.bool and not mask.any()


@pytest.mark.parametrize(
    "name, options, frames",
    [
        ("predict", {"k": 4}, [0, 1, 2, 3]),
        ("predict", {}, [0, 1, 2, 3]),
        ("backward", {"k": 3}, [5, 6, 7]),
        ("interpolate", {"stride": 3}, [0, 3, 6, 7]),
        ("interpolate", {"stride": 2, "include_last": False}, [0, 2, 4, 6]),
        ("animate", {}, [0]),
        ("animate", {"frame": 5}, [5]),
    ],
)
def test_frame_tasks_give_exactly_the_documented_frames(name, options, frames):
    mask = task_mask(name, GRID, **options)
    assert mask.shape == GRID
    assert int(mask.sum()) == len(frames) * PER_FRAME
    assert _given_frames(mask) == frames


def test_complete_gives_k_random_frames_reproducibly():
    a = task_mask("complete", GRID, torch.Generator().manual_seed(3), k=5)
    b = task_mask("complete", GRID, torch.Generator().manual_seed(3), k=5)
    assert torch.equal(a, b) and int(a.sum()) == 5 * PER_FRAME and len(_given_frames(a)) == 5
    drawn = {tuple(_given_frames(task_mask("complete", GRID, torch.Generator().manual_seed(s)))) for s in range(20)}
    assert len(drawn) > 5  # random subsets, random sizes
    assert all(1 <= len(f) <= GRID[0] - 1 for f in drawn)


def test_inpaint_box_is_generated_and_the_rest_given():
    mask = task_mask("inpaint", GRID, box=(1, 3, 0, 2))  # spatial box, every frame
    assert int((~mask).sum()) == GRID[0] * 2 * 2
    assert not mask[:, 1:3, 0:2].any() and mask[:, 0].all() and mask[:, :, 2:].all()
    st = task_mask("inpaint", GRID, box=(2, 5, 0, 3, 1, 4))  # spatial-temporal box
    assert int((~st).sum()) == 3 * 3 * 3 and not st[2:5, :, 1:4].any() and st[:2].all() and st[5:].all()
    image = task_mask("inpaint", (6, 6), box=(0, 2, 4, 6))
    assert image.shape == (6, 6) and int((~image).sum()) == 4 and not image[0:2, 4:6].any()
    rand = task_mask("inpaint", (8, 8), torch.Generator().manual_seed(0), share=0.5)
    assert int((~rand).sum()) == 16  # a 4x4 box somewhere


def test_outpaint_generates_the_border_and_gives_the_centre():
    mask = task_mask("outpaint", (8, 8), border=2)
    assert int(mask.sum()) == 16 and mask[2:6, 2:6].all()
    assert not mask[:2].any() and not mask[:, 6:].any()
    video = task_mask("outpaint", (3, 8, 8))
    assert int(video.sum()) == 3 * 16


@pytest.mark.parametrize(
    "name, options",
    [("predict", {"k": 8}), ("backward", {"k": 8}), ("interpolate", {"stride": 1}), ("complete", {"k": 8})],
)
def test_masks_that_leave_nothing_to_generate_are_refused(name, options):
    with pytest.raises(ConfigError, match=f"task {name} leaves nothing to generate: "):
        task_mask(name, GRID, **options)


def test_bad_tasks_and_options_are_refused_clearly():
    with pytest.raises(ConfigError, match="whose axis 0 is time.*inpaint or outpaint"):
        task_mask("predict", (4, 4), k=1)
    with pytest.raises(ConfigError, match="unknown task 'paint'"):
        task_mask("paint", GRID)
    with pytest.raises(ConfigError, match="takes options k; got stride"):
        task_mask("predict", GRID, stride=2)
    with pytest.raises(ConfigError, match="k must be in"):
        task_mask("predict", GRID, k=0)
    with pytest.raises(ConfigError, match="does not fit the token grid"):
        task_mask("inpaint", (4, 4), box=(0, 5, 0, 1))
    with pytest.raises(ConfigError, match="leaves no centre"):
        task_mask("outpaint", (4, 4), border=2)


def test_mix_respects_weights_and_flattens_in_patchify_order():
    g = torch.Generator().manual_seed(0)
    masks, names = mix_task_masks(64, GRID, {"predict": 1.0, "animate": 3.0, "backward": 0.0}, g)
    assert masks.shape == (64, 8 * PER_FRAME) and masks.dtype == torch.bool
    assert "backward" not in names and {"predict", "animate"} == set(names)
    assert names.count("animate") > names.count("predict")
    only, names = mix_task_masks(5, GRID, {"predict": 1.0}, g, options={"predict": {"k": 2}})
    expected = task_mask("predict", GRID, k=2).reshape(-1)
    assert names == ["predict"] * 5 and all(torch.equal(row, expected) for row in only)
    # row-major flattening is patchify's token order: token n of frame t is given iff frame t is
    video = torch.arange(8.0)[None, None, :, None, None].expand(1, 1, 8, 6, 8)  # pixel value = frame
    tokens = patchify(video, (1, 2, 2))
    assert torch.equal(tokens[0, :, 0] < 2, expected)
    with pytest.raises(ConfigError, match="not all zero"):
        mix_task_masks(2, GRID, {"predict": 0.0}, g)
    with pytest.raises(ConfigError, match="unknown task"):
        mix_task_masks(2, GRID, {"forecast": 1.0}, g)
    assert set(TASKS) >= {"unconditional", "predict", "backward", "interpolate", "animate", "complete",
                          "inpaint", "outpaint"}


# --- factorised attention -------------------------------------------------------------------------------


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("grid", [(4, 6), (3, 2, 4)])
def test_factorised_block_runs_on_ranks_2_and_3_and_starts_as_identity(grid):
    block = FactorisedDiTBlock(32, 4, 2.0, grid)
    n = 1
    for s in grid:
        n *= s
    x, c = torch.randn(2, n, 32), torch.randn(2, 32)
    torch.nn.init.zeros_(block.adaLN_modulation[-1].weight)
    torch.nn.init.zeros_(block.adaLN_modulation[-1].bias)
    assert torch.equal(block(x, c), x)
    _perturbed(block)
    out = block(x, c)
    assert out.shape == x.shape and not torch.allclose(out, x)


@pytest.mark.parametrize("attention", ["full", "factorised"])
@pytest.mark.parametrize("input_size, patch", [((8, 8), 2), ((4, 8, 8), (1, 4, 4))])
def test_both_attentions_run_on_ranks_2_and_3_and_start_at_zero(attention, input_size, patch):
    model = DiT(input_size, 1, patch, 32, 2, 4, num_classes=3, attention=attention)
    x = torch.randn(2, 1, *input_size)
    out = model(x, torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    out = _perturbed(model)(x, torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == x.shape and out.abs().sum() > 0


def test_factorised_dit_mixes_across_frames_and_within_a_frame():
    model = _perturbed(DiT((4, 8, 8), 1, (1, 4, 4), 32, 2, 4, attention="factorised"))
    x, t = torch.randn(1, 1, 4, 8, 8), torch.rand(1)
    base = model(x, t)
    later = x.clone()
    later[:, :, 0] += 1.0  # change frame 0 only
    moved = model(later, t)
    assert (moved[:, :, 3] - base[:, :, 3]).abs().max() > 1e-4  # temporal attention reached frame 3
    corner = x.clone()
    corner[:, :, 2, :4, :4] += 1.0  # change one patch (token) of frame 2
    moved = model(corner, t)
    assert (moved[:, :, 2, 4:, 4:] - base[:, :, 2, 4:, 4:]).abs().max() > 1e-4  # spatial attention within frame
    # swapping two frames is not just swapping the outputs: the model knows which frame is which
    swapped = x[:, :, [1, 0, 2, 3]]
    assert not torch.allclose(model(swapped, t)[:, :, [1, 0, 2, 3]], base, atol=1e-5)


def test_factorised_model_with_full_blocks_runs_on_kept_tubes_and_round_trips():
    """Blocks named in full_blocks attend over all tokens; under tube dropping they take the kept grid index
    like the factorised ones, and keeping every tube equals the full pass."""
    x, t = torch.randn(1, 1, 4, 8, 8), torch.rand(1)
    model = _perturbed(DiT((4, 8, 8), 1, (1, 4, 4), 32, 3, 4, attention="factorised", full_blocks=[1]))
    assert [type(b).__name__ for b in model.blocks] == ["FactorisedDiTBlock", "DiTBlock", "FactorisedDiTBlock"]
    assert DiT.from_config(model.config).full_blocks == (1,)
    every = DiT((4, 8, 8), 1, (1, 4, 4), 32, 6, 4, attention="factorised", full_every=3)
    assert every.full_blocks == (2, 5) and DiT.from_config(every.config).full_blocks == (2, 5)
    every_tube = torch.arange(16).reshape(1, 4, 4)  # (B, T', S'): all 4 places of all 4 frames, in order
    assert torch.allclose(model(x, t, keep_idx=every_tube), patchify(model(x, t), (1, 4, 4)), atol=1e-5)
    with pytest.raises(ConfigError, match="full_blocks"):
        DiT((4, 8, 8), 1, (1, 4, 4), 32, 2, 4, attention="factorised", full_blocks=[2])
    assert DiT((4, 8, 8), 1, (1, 4, 4), 32, 2, 4, full_every=1).full_blocks == ()  # full attention: all blocks are


def test_temporal_embedding_changes_with_frame_index():
    model = DiT((3, 4, 4), 1, (1, 2, 2), 32, 1, 4, attention="factorised")
    pos = model.pos_embed[0].reshape(3, 2, 2, 32)  # (t, h, w, D) in token order
    assert torch.equal(model.pos_embed[0], sincos_pos_embed(32, (3, 2, 2)))
    for h in range(2):
        for w in range(2):
            assert not torch.allclose(pos[0, h, w], pos[1, h, w])
            assert not torch.allclose(pos[1, h, w], pos[2, h, w])


def test_attention_round_trips_through_config_and_bad_values_are_refused():
    model = DiT((4, 8, 8), 1, (1, 4, 4), 32, 2, 4, attention="factorised")
    again = DiT.from_config(model.config)
    assert model.config["attention"] == "factorised" and again.config == model.config
    assert isinstance(again.blocks[0], FactorisedDiTBlock)
    assert DiT((8, 8), 1, 2, 32, 1, 4).config["attention"] == "full"
    with pytest.raises(ConfigError, match="attention must be one of full, factorised"):
        DiT((8, 8), 1, 2, 32, 1, 4, attention="axial")


def test_tube_dropping_keeps_whole_columns_for_factorised_attention():
    grid = (4, 2, 2)  # 4 frames of 2x2 token positions
    keep = tube_keep_indices(3, grid, 0.5, torch.Generator().manual_seed(0))
    assert keep.shape == (3, 4, 2)  # the kept grid: 4 frames x 2 positions
    per_frame = keep
    positions = per_frame % 4
    assert torch.equal(positions, positions[:, :1].expand(-1, 4, -1))  # the same positions in every frame
    assert torch.equal(per_frame // 4, torch.arange(4)[None, :, None].expand(3, -1, 2))  # frame-major
    assert tube_keep_indices(3, grid, 0.0) is None

    model = _perturbed(DiT((4, 8, 8), 1, (1, 4, 4), 32, 2, 4, attention="factorised"))
    x, t = torch.randn(3, 1, 4, 8, 8, requires_grad=True), torch.rand(3)
    out = model(x, t, keep_idx=keep)
    assert out.shape == (3, 8, model.patch_dim)
    out.square().sum().backward()
    grad = patchify(x.grad.abs(), model.patch_size).sum(-1)  # (3, 16) per token
    kept = torch.zeros(3, 16, dtype=torch.bool).scatter(1, keep.flatten(1), True)
    assert torch.all(grad[kept] > 0) and torch.all(grad[~kept] == 0)
    keep_all = torch.arange(16).expand(2, -1)
    x2 = torch.randn(2, 1, 4, 8, 8)
    assert torch.allclose(model(x2, t[:2], keep_idx=keep_all), patchify(model(x2, t[:2]), model.patch_size),
                          atol=1e-5)
    with pytest.raises(ValueError, match="frames x positions grid"):
        model(x2, t[:2], keep_idx=torch.arange(7).expand(2, -1))


def test_frame_dropping_under_factorised_attention_is_a_shorter_clip():
    """With whole frames dropped, a factorised model computes exactly what a model on the kept frames alone
    computes (same weights, the kept frames' positions): temporal attention runs across the kept frames
    and spatial attention over every position of each — the layout comes from the kept grid's shape."""
    from maskdit.masks import frame_keep_indices

    model = _perturbed(DiT((4, 8, 8), 1, (1, 4, 4), 32, 2, 4, attention="factorised")).eval()
    keep = frame_keep_indices(3, model.token_grid, 0.5, torch.Generator().manual_seed(2))  # (3, 2, 4)
    assert keep.shape == (3, 2, 4)
    x, t = torch.randn(3, 1, 4, 8, 8), torch.rand(3)
    out = model(x, t, keep_idx=keep)  # (3, 8, P): 2 kept frames x 4 positions
    short = DiT((2, 8, 8), 1, (1, 4, 4), 32, 2, 4, attention="factorised").eval()
    short.load_state_dict(model.state_dict())
    for i in range(3):
        frames = (keep[i, :, 0] // 4).tolist()
        short.pos_embed = model.pos_embed[:, keep[i].flatten()]
        ref = patchify(short(x[i:i + 1, :, frames], t[i:i + 1]), model.patch_size)
        assert torch.allclose(out[i:i + 1], ref, atol=1e-5)
    # the same number of tokens laid out as a tube (4 frames x 2 positions) is a different computation
    tube = torch.tensor([[0, 1], [4, 5], [8, 9], [12, 13]]).expand(3, -1, -1)
    flat = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]).expand(3, -1, -1)  # frames 0, 1: same tokens as a frame drop
    assert not torch.allclose(model(x, t, keep_idx=flat), model(x, t, keep_idx=flat.reshape(3, 4, 2)), atol=1e-4)
    assert model(x, t, keep_idx=tube).shape == (3, 8, model.patch_dim)
