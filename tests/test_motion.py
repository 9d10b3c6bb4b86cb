"""Motion: DeepMimic clips read from pybullet_data, the (T, J) grid, mirroring, forward kinematics, the slerp
baseline, the motion tasks on a timed rank-2 grid, and a tiny motion run end to end through the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY

from maskdit.cli.app import main
from maskdit.data import motion as M
from maskdit.errors import ConfigError
from maskdit.masks import task_mask


def _windows(split: str = "test", frames: int = 32) -> torch.Tensor:
    return M.motion_windows(split, frames, mirrored=False)[0]


def test_clips_are_resampled_to_30_fps_with_unit_rotations():
    path = M.motions_dir() / "humanoid3d_walk.txt"
    import json

    raw = json.loads(path.read_text())["Frames"]
    duration = sum(f[0] for f in raw[:-1])
    clip = M.read_clip(path)
    assert len(clip.positions) == math.floor(duration * M.FPS + 1e-6) + 1
    assert torch.allclose(clip.rotations.norm(dim=-1), torch.ones(()), atol=1e-5)
    # the first frame is the file's own first frame (root position, root rotation up to sign)
    assert torch.allclose(clip.positions[0], torch.tensor(raw[0][1:4]).float(), atol=1e-6)
    assert torch.allclose(clip.rotations[0, 0].abs(), torch.tensor(raw[0][4:8]).float().abs(), atol=1e-5)
    # consecutive frames never flip hemisphere
    assert bool(((clip.rotations[1:] * clip.rotations[:-1]).sum(-1) > 0).all())


def test_held_out_clips_never_reach_the_training_split():
    _, train = M.motion_windows("train", 32)
    _, test = M.motion_windows("test", 32)
    assert {c.split(" ")[0] for c in test} == set(M.HELD_OUT)
    assert not {c.split(" ")[0] for c in train} & set(M.HELD_OUT)


def test_mirror_reflects_the_skeleton_and_is_an_involution():
    grids = _windows()[:8]
    assert torch.equal(M.mirror(M.mirror(grids)), grids)
    points, mirrored = M.forward_kinematics(grids), M.forward_kinematics(M.mirror(grids))
    swap = [M.POINTS.index(p.replace("right_", "@").replace("left_", "right_").replace("@", "left_"))
            for p in M.POINTS]
    reflected = mirrored[..., swap, :] * torch.tensor([1.0, 1.0, -1.0])
    assert torch.allclose(reflected, points, atol=1e-5)


def test_forward_kinematics_keeps_bone_lengths():
    points = M.forward_kinematics(_windows()[:4])
    knee, ankle = M.POINTS.index("left_knee"), M.POINTS.index("left_ankle")
    shin = (points[..., knee, :] - points[..., ankle, :]).norm(dim=-1)
    assert torch.allclose(shin, torch.full_like(shin, 1.63948 * 0.25), atol=1e-5)
    # the feet of a walking character stay near the floor, the head well above it
    walk = M.forward_kinematics(M.windows(M.read_clip(M.motions_dir() / "humanoid3d_walk.txt"), 32, 8))
    assert walk[..., M.POINTS.index("head"), 1].min() > 1.2
    assert walk[..., M.POINTS.index("left_ankle"), 1].min() < 0.2


def test_grid_round_trips_through_the_codec():
    train = M.motion_windows("train", 16)[0]
    codec = M.StandardCodec.fit(train)
    x = codec.encode(train)
    assert abs(float(x.mean())) < 0.05 and torch.allclose(codec.decode(x), train, atol=1e-5)
    rebuilt = M.StandardCodec(**{k: v for k, v in codec.config.items() if k != "name"})
    assert torch.equal(rebuilt.encode(train), x)


def _rotating_grid(frames: int = 16) -> torch.Tensor:
    """A body whose every joint turns at a constant rate about a fixed axis (slerp is exact on it)."""
    axis = torch.nn.functional.normalize(torch.tensor([0.3, 0.8, -0.5]), dim=0)
    angle = torch.linspace(0, 1.2, frames)
    q = torch.cat([torch.cos(angle / 2)[:, None], torch.sin(angle / 2)[:, None] * axis], -1)  # (T, 4)
    rot = q[:, None].expand(frames, 13, 4)
    pos = torch.stack([torch.linspace(0, 1, frames), torch.full((frames,), 0.9), torch.zeros(frames)], -1)
    grid = M.to_grid(pos, rot)
    hinge = [M.JOINTS.index(j) for j in M.HINGES]
    grid[:, :, hinge] = torch.stack([torch.cos(angle / 2), 0 * angle, 0 * angle, torch.sin(angle / 2)])[..., None]
    return grid[None]


def test_slerp_baseline_is_exact_on_constant_rotation_and_keeps_given_frames():
    grid = _rotating_grid()
    given = torch.zeros(16, dtype=torch.bool)
    given[:4] = given[12:] = True
    filled = M.inbetween_slerp(grid, given)
    assert torch.equal(filled[..., given, :], grid[..., given, :])
    errors = M.motion_errors(filled, grid, ~given)
    assert errors["rotation_deg"] < 0.05 and errors["position_cm"] < 0.05
    # and it is not exact on real motion, where the joints do not turn at a constant rate
    real = _windows()[:8, :, :16]
    assert M.motion_errors(M.inbetween_slerp(real, given), real, ~given)["rotation_deg"] > 2.0


def test_motion_errors_measure_a_known_rotation():
    grid = _rotating_grid()
    turned = grid.clone()
    turn = torch.tensor([math.cos(math.radians(5)), math.sin(math.radians(5)), 0.0, 0.0])  # 10 deg about x
    joint = M.JOINTS.index("chest")
    turned[0, :, :, joint] = M.qmul(grid[0, :, :, joint].T, turn.expand(16, 4)).T
    frames = torch.ones(16, dtype=torch.bool)
    assert M.motion_errors(turned, grid, frames)["rotation_deg"] == pytest.approx(10.0 / 13, rel=1e-3)


def test_frame_tasks_need_a_timed_grid_and_parts_generate_columns():
    grid = (8, 14)
    with pytest.raises(ConfigError, match="axis 0 is time"):
        task_mask("predict", grid)  # an image grid: no time axis
    mask = task_mask("inbetween", grid, timed=True)
    assert mask[:2].all() and mask[6:].all() and not mask[2:6].any()
    mask = task_mask("inbetween", grid, timed=True, k=3)
    assert mask[:3].all() and mask[5:].all() and not mask[3:5].any()
    with pytest.raises(ConfigError, match="k must be in"):
        task_mask("inbetween", grid, timed=True, k=4)  # nothing left between the ends
    mask = task_mask("parts", grid, timed=True, columns=(4, 5, 6))
    assert not mask[:, 4:7].any() and mask[:, :4].all() and mask[:, 7:].all()
    random = task_mask("parts", grid, torch.Generator().manual_seed(1), timed=True)
    generated = ~random[0]
    assert torch.equal(random, random[:1].expand(8, 14)) and 2 <= int(generated.sum()) <= 9
    with pytest.raises(ConfigError, match="columns"):
        task_mask("parts", grid, timed=True, columns=(14,))
    assert task_mask("predict", (8,), timed=True)[:4].all()  # a timed sequence of rank 1


MOTION = ["data.frames=16", "model.patch_size=[4,1]", "compile=false"]


@pytest.fixture(scope="module")
def motion_run(run_factory):
    return run_factory(*TINY, *MOTION, preset="motion")


def test_motion_run_in_betweens_through_the_cli(motion_run, tmp_path, capsys):
    ctx = tmp_path / "ctx.npz"
    assert main(["data", "motion", "--frames", "16", "--num", "3", "--out", str(ctx)]) == 0
    stored = np.load(ctx)["motion"]
    assert stored.shape == (3, 16, 14, 4) and stored.dtype == np.float32
    out = tmp_path / "out.npz"
    assert main(["sample", str(motion_run), "--task", "inbetween", "--context", str(ctx), "--steps", "2",
                 "--out", str(out)]) == 0
    result = np.load(out)["motion"]
    assert result.shape == stored.shape
    # 16 frames, temporal patch 4: the first and last 4 frames are given and held exactly
    assert np.array_equal(result[:, :4], stored[:, :4]) and np.array_equal(result[:, 12:], stored[:, 12:])
    assert not np.allclose(result[:, 4:12], stored[:, 4:12])
    gif = tmp_path / "parts.gif"
    assert main(["sample", str(motion_run), "--task", "parts", "--columns", "4,5,6", "--context", str(ctx),
                 "--steps", "2", "--out", str(gif)]) == 0
    import imageio.v3 as iio

    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 16 and frames.ndim == 4
    plain = tmp_path / "plain.npz"
    assert main(["sample", str(motion_run), "--num", "2", "--steps", "2", "--out", str(plain)]) == 0
    assert np.load(plain)["motion"].shape == (2, 16, 14, 4)


def test_score_task_compares_the_model_with_its_baseline(motion_run):
    from maskdit.evaluate.motion import score_task
    from maskdit.runs import load_run

    run = load_run(motion_run)
    grids = _windows(frames=16)[:4]
    row = score_task(run, grids, "inbetween", steps=2)
    frames = torch.zeros(16, dtype=torch.bool)
    frames[:4] = frames[12:] = True
    assert row["given"] == pytest.approx(0.5)
    assert row["baseline"] == pytest.approx(M.motion_errors(M.inbetween_slerp(grids, frames), grids, ~frames))
    assert row["model"] == pytest.approx(M.motion_errors(row["samples"], grids, ~frames))


def test_refining_the_slerp_fill_spans_the_model_and_the_baseline(motion_run):
    from maskdit.diffusion.tasks import complete
    from maskdit.evaluate.motion import refine_slerp, task_given
    from maskdit.runs import load_run

    run = load_run(motion_run)
    grids = _windows(frames=16)[:4]
    frames = torch.zeros(16, dtype=torch.bool)
    frames[:4] = frames[12:] = True
    own = complete(run, grids, task_given(run, "inbetween")[0], sampler="euler", steps=2, seed=3)
    whole = refine_slerp(run, grids, 1.0, seed=3, steps=2)  # from pure noise: the model's own in-betweening
    assert torch.allclose(whole, own, atol=1e-4 * float(own.abs().max()))
    assert torch.equal(whole[:, :, frames], grids[:, :, frames])  # the given frames held exactly
    slerp = M.inbetween_slerp(grids, frames)
    near = refine_slerp(run, grids, 1e-3, seed=3, steps=2)  # barely noised: slerp's fill, one tiny step
    assert (near - slerp).abs().max() < 0.05 * (own - slerp).abs().max()


def test_training_eval_of_a_motion_run_scores_in_betweening(motion_run):
    from maskdit.data.datasets import dataset_from_config
    from maskdit.evaluate.suite import training_eval
    from maskdit.runs import load_run

    run = load_run(motion_run)
    cfg = run.config
    cfg.eval_num = 5
    scores = training_eval(run.model, run.objective, dataset_from_config(cfg.data), cfg)
    assert scores["num"] == 5
    grids = _windows(frames=16)
    grids = grids[torch.linspace(0, len(grids) - 1, 5).round().long()]
    frames = torch.zeros(16, dtype=torch.bool)
    frames[:4] = frames[12:] = True
    slerp = M.motion_errors(M.inbetween_slerp(grids, frames), grids, ~frames)
    assert scores["slerp_rotation_deg"] == pytest.approx(slerp["rotation_deg"])
    assert scores["inbetween_rotation_deg"] > 0 and math.isfinite(scores["inbetween_position_cm"])


def test_motion_conditions_on_clip_classes_and_captions():
    data = M.load_motion(type("Cfg", (), {"frames": 16})(), "train")
    assert data.num_classes == len(M.clip_names()) - len(M.HELD_OUT)
    walk = data.class_names.index("walk")
    picked = [i for i, c in enumerate(data.clips) if c.startswith("walk")]
    assert picked and all(int(data.labels[i]) == walk for i in picked)
    assert all(data.captions[i] == "a person walks forward" for i in picked)
    x, y = data.batch(torch.tensor(picked[:3]))
    assert torch.equal(y, torch.full((3,), walk)) and x.shape == (3, 4, 16, 14)
    test = M.load_motion(type("Cfg", (), {"frames": 16})(), "test")
    assert test.labels is None and test.num_classes == data.num_classes  # held-out clips are no training class
