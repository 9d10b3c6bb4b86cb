"""Embedded synthetic video datasets and GIF / MP4 output."""

import numpy as np
import pytest
import torch

from maskdit.data.media import save_video, side_by_side
from maskdit.data.video import VIDEO_DATASETS, bouncing_balls, bouncing_digits, load_video_dataset
from maskdit.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    return bouncing_digits(16, frames=10, size=32, seed=0)


def test_shapes_labels_and_model_space(digits):
    assert digits.frames.shape == (16, 1, 10, 32, 32) and digits.frames.dtype == torch.uint8
    assert digits.shape == (1, 10, 32, 32) and digits.num_classes == 10
    assert digits.labels.shape == (16,) and 0 <= int(digits.labels.min()) <= int(digits.labels.max()) <= 9
    x, y = digits.batch(torch.tensor([0, 3]))
    assert x.shape == (2, 1, 10, 32, 32) and x.min() >= -1 and x.max() <= 1 and torch.equal(y, digits.labels[[0, 3]])
    two = bouncing_digits(3, frames=4, size=32, digits_per_clip=2)
    assert two.labels.shape == (3, 2) and two.num_classes == 0


@pytest.mark.parametrize("name", list(VIDEO_DATASETS))
def test_generators_are_deterministic_per_seed_and_splits_differ(name):
    a = load_video_dataset(name, "train", 6, seed=1, frames=6, size=16)
    b = load_video_dataset(name, "train", 6, seed=1, frames=6, size=16)
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, load_video_dataset(name, "train", 6, seed=2, frames=6, size=16).frames)
    test = load_video_dataset(name, "test", 6, seed=1, frames=6, size=16)
    assert not torch.equal(a.frames, test.frames)
    assert a.frames.shape == (6, 1, 6, 16, 16)


def test_digits_stay_whole_inside_the_canvas_and_move(digits):
    frames = digits.frames[:, 0].float()  # (N, T, H, W)
    totals = frames.sum(dim=(2, 3))
    assert (totals > 0).all()
    # a single sprite is never cut by the border: every frame shows the whole sprite (same total intensity)
    assert torch.equal(totals, totals[:, :1].expand_as(totals))
    corners = digits.positions[:, 0] - 8  # centre -> top-left of the 16x16 sprite
    assert corners.min() >= 0 and corners.max() <= 32 - 16
    assert (digits.positions[:, 0, 1:] != digits.positions[:, 0, :-1]).any(-1).all()  # moves every frame
    # the rendered mass sits inside the sprite's box at its recorded position
    for i in range(4):
        for t in range(10):
            y, x = corners[i, t].long().tolist()
            assert frames[i, t, y : y + 16, x : x + 16].sum() == totals[i, t]


def test_digit_sprites_bounce_off_walls():
    clips = bouncing_digits(8, frames=16, size=16, seed=3)  # 8x8 sprites, 8 pixels of room: must bounce
    vel = clips.positions[:, 0, 1:] - clips.positions[:, 0, :-1]
    flips = (vel[:, 1:] * vel[:, :-1] < 0).any(-1).any(-1)
    assert flips.all()


def test_balls_stay_inside_never_vanish_and_fall():
    clips = bouncing_balls(8, frames=12, size=32, balls=2, seed=0)
    frames = clips.frames[:, 0].float()
    assert clips.labels is None and clips.frames.shape == (8, 1, 12, 32, 32)
    assert (frames.sum(dim=(2, 3)) > 0).all()
    # every ball disc lies inside: centres at least a radius (size/12) from every wall
    pos = clips.positions
    assert pos.min() >= 32 / 12 - 1e-4 and pos.max() <= 32 - 32 / 12 + 1e-4
    # started at rest at the top, a single ball falls: its rendered centre of mass moves down, faster and faster
    rest = bouncing_balls(4, frames=5, size=32, balls=1, seed=1, at_rest=True)
    img = rest.frames[:, 0].float()
    rows = torch.arange(32).float()[None, None, :, None] + 0.5
    com_y = (img * rows).sum(dim=(2, 3)) / img.sum(dim=(2, 3))  # (N, T)
    drop = com_y[:, 1:] - com_y[:, :-1]
    assert (drop > 0).all() and (drop[:, 1:] > drop[:, :-1]).all()
    assert torch.allclose(com_y, rest.positions[:, 0, :, 0], atol=0.3)  # rendering matches the track
    # under gravity, between bounces the vertical speed grows by g = size/64 per frame
    d2 = rest.positions[:, 0, 2:, 0] - 2 * rest.positions[:, 0, 1:-1, 0] + rest.positions[:, 0, :-2, 0]
    assert torch.allclose(d2, torch.full_like(d2, 0.5), atol=1e-4)


def test_relaunched_balls_share_the_first_frame_and_keep_the_physics():
    real = bouncing_balls(32, frames=6, size=16, split="test")
    again = bouncing_balls(32, frames=6, size=16, split="test", velocity_seed=3)
    assert torch.equal(again.frames[:, :, 0], real.frames[:, :, 0])
    assert torch.equal(again.frames, bouncing_balls(32, frames=6, size=16, split="test", velocity_seed=3).frames)
    assert not torch.equal(again.frames, bouncing_balls(32, frames=6, size=16, split="test", velocity_seed=4).frames)
    # another future: nearly every clip's later frames differ from the real ones
    assert (again.frames[:, :, 1:] != real.frames[:, :, 1:]).flatten(1).any(1).float().mean() > 0.9
    # the same law: between bounces the vertical speed still grows by g = size/64 per frame
    y = again.positions[:, 0, :, 0]
    d2 = y[:, 2:] - 2 * y[:, 1:-1] + y[:, :-2]
    assert (torch.isclose(d2, torch.full_like(d2, 0.25), atol=1e-4).float().mean() > 0.5)
    with pytest.raises(ConfigError, match="at_rest=True has none"):
        bouncing_balls(2, at_rest=True, velocity_seed=1)


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="num must be at least 1"):
        bouncing_digits(0)
    with pytest.raises(ConfigError, match="frames must be at least 2"):
        bouncing_balls(2, frames=1)
    with pytest.raises(ConfigError, match="does not fit a 12x12 canvas"):
        bouncing_digits(2, size=12, sprite_scale=2)
    with pytest.raises(ConfigError, match="split must be one of train, test"):
        bouncing_balls(2, split="val")
    with pytest.raises(ConfigError, match="unknown video dataset"):
        load_video_dataset("moving-mnist")
    with pytest.raises(ConfigError, match="bouncing-balls"):
        load_video_dataset("bouncing-balls", num=2, digits_per_clip=2)


def test_gif_and_mp4_written_and_read_back(tmp_path):
    import imageio
    import imageio.v3 as iio

    clip = bouncing_balls(2, frames=7, size=16, seed=0).frames.permute(0, 2, 3, 4, 1).numpy()  # (N, T, H, W, C)
    gif = save_video(tmp_path / "one.gif", clip[0], fps=5)
    assert iio.imread(gif).shape[0] == 7
    mp4 = save_video(tmp_path / "two.mp4", clip, fps=5)
    frames = imageio.mimread(mp4)
    assert len(frames) == 7 and frames[0].shape[0] % 16 == 0 and frames[0].shape[1] % 16 == 0
    npz = save_video(tmp_path / "clips.npz", clip)
    with np.load(npz) as f:
        assert np.array_equal(f["frames"], clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips.npz", "one.gif", "two.mp4"]  # no temp files left
    with pytest.raises(ConfigError, match="must end in"):
        save_video(tmp_path / "x.avi", clip[0])


def test_side_by_side_greys_what_was_not_given():
    truth = np.full((4, 5, 6, 1), 200, dtype=np.uint8)
    generated = np.full_like(truth, 10)
    panel = side_by_side(truth, truth, generated, given=np.array([True, True, False, False]), gap=2)
    assert panel.shape == (4, 5, 3 * 6 + 2 * 2, 1)
    assert (panel[:2, :, :6] == 200).all() and (panel[2:, :, :6] < 200).all()  # context greyed after frame 1
    assert (panel[:, :, 6:8] == 255).all() and (panel[:, :, 8:14] == 200).all() and (panel[:, :, 16:] == 10).all()
    pixel = np.zeros((4, 5, 6), dtype=bool)
    pixel[:, :2] = True
    panel = side_by_side(truth, truth, generated, given=pixel)
    assert (panel[:, :2, :6] == 200).all() and (panel[:, 2:, :6] < 200).all()
