import pytest
import torch

from maskdit.errors import ConfigError
from maskdit.grid import patchify, sincos_pos_embed, unpatchify
from maskdit.masks import gather_tokens, num_kept, random_keep_indices


@pytest.mark.parametrize(
    "spatial, patch",
    [((12,), (3,)), ((8, 6), (2, 3)), ((4, 6, 8), (1, 2, 4)), ((6, 4, 10), (3, 4, 5)), ((16, 16), (4, 4))],
)
def test_patchify_round_trip_any_rank(spatial, patch):
    x = torch.randn(2, 3, *spatial)
    tokens = patchify(x, patch)
    n = 1
    for s, p in zip(spatial, patch):
        n *= s // p
    assert tokens.shape == (2, n, 3 * torch.tensor(patch).prod().item())
    assert torch.equal(unpatchify(tokens, patch, spatial, 3), x)


def test_token_order_is_row_major_over_patches_channel_fastest():
    x = torch.arange(2 * 4 * 6).float().reshape(1, 2, 4, 6)  # C=2, H=4, W=6
    tokens = patchify(x, (2, 3))
    assert tokens.shape == (1, 4, 12)
    # token 1 is the patch at row 0, column 1: pixels (0..1, 3..5)
    expected = x[0, :, 0:2, 3:6].permute(1, 2, 0).reshape(-1)
    assert torch.equal(tokens[0, 1], expected)


def test_patch_that_does_not_divide_is_refused():
    with pytest.raises(ConfigError, match="not divisible"):
        patchify(torch.zeros(1, 1, 7, 8), (2, 2))


def test_positions_distinct_and_temporal_part_follows_frame_index():
    pos = sincos_pos_embed(64, (3, 2, 2))
    assert pos.shape == (12, 64)
    assert len({tuple(r.tolist()) for r in pos}) == 12
    # tokens at the same (h, w) in frames 0 and 1 differ only in the first (temporal) block
    f0, f1 = pos[0], pos[4]
    width_t = 64 - 2 * ((64 // 3) // 2 * 2)
    assert not torch.allclose(f0[:width_t], f1[:width_t])
    assert torch.equal(f0[width_t:], f1[width_t:])


def test_keep_indices_count_and_gather():
    for ratio in (0.0, 0.25, 0.5, 0.75, 0.99):
        idx = random_keep_indices(5, 64, ratio, torch.Generator().manual_seed(0))
        assert idx.shape == (5, num_kept(64, ratio))
        assert all(len(set(row.tolist())) == idx.shape[1] for row in idx)
    tokens = torch.randn(5, 64, 3)
    idx = random_keep_indices(5, 64, 0.5, torch.Generator().manual_seed(1))
    kept = gather_tokens(tokens, idx)
    assert torch.equal(kept[2, 7], tokens[2, idx[2, 7]])
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        num_kept(64, 1.0)
