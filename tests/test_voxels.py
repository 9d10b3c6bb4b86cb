"""3-D shapes: meshes read from pybullet_data, voxelised solid; the point-cloud, mesh and view exports; 1-NNA
with the Chamfer distance; a tiny voxel run end to end (sampling, shape completion, the training eval)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

from maskdit.cli.app import main
from maskdit.data import voxels as V
from maskdit.evaluate.voxels import chamfer_matrix, one_nna, point_clouds


def _box_mesh(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x, y, z] for x in (lo, hi) for y in (lo, hi) for z in (lo, hi)], dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return v, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])


def test_a_box_voxelises_to_a_solid_block_filling_the_grid():
    grid = V.voxelize(*_box_mesh(-1.0, 1.0), size=16)
    # scaled to size - 2.5 voxels, from 1.25 to 14.75: voxels 1-14 on every axis, nothing else
    assert grid[1:15, 1:15, 1:15].all() and grid.sum() == 14 ** 3


def test_obj_reader_triangulates_polygons(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("o q\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1 2/2 3/3 4/4\nf -4 -3 -2\n")
    v, f = V.read_obj(path)
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 2]]


def test_packaged_objects_are_solid_and_the_splits_disjoint():
    train = V.load_objects("train", 16, 3)
    test = V.load_objects("test", 16, 3)
    assert train.shape == (3, 1, 16, 16, 16) and train.dtype == np.uint8
    fill = (train > 0).mean(axis=(1, 2, 3, 4))
    assert ((fill > 0.02) & (fill < 0.9)).all()
    # solid: no enclosed empty voxel survives (the fill leaves no hole a flood from outside cannot reach)
    from scipy import ndimage

    assert all(np.array_equal(ndimage.binary_fill_holes(g[0] > 0), g[0] > 0) for g in train)
    assert not any(np.array_equal(a, b) for a in train for b in test)


def test_exports_hold_the_shape(tmp_path):
    grid = torch.zeros(2, 1, 8, 8, 8, dtype=torch.uint8)
    grid[0, 0, 2:5, 2:5, 2:5] = 255  # a 3x3x3 cube: 26 surface voxels, 54 outer faces
    grid[1, 0, 4, 4, 4] = 255
    view = V.VoxelView()
    view.save(tmp_path / "s.npz", grid)
    stored = np.load(tmp_path / "s.npz")["voxels"]
    assert stored.shape == (2, 8, 8, 8, 1) and np.array_equal(stored[..., 0] > 0.5, grid[:, 0].numpy() > 0)
    assert torch.equal(view.load(tmp_path / "s.npz", (1, 8, 8, 8)), grid)
    view.save(tmp_path / "s.ply", grid)
    text = (tmp_path / "s.ply").read_text().splitlines()
    assert "element vertex 27" in text  # 26 + 1 surface voxels
    view.save(tmp_path / "s.obj", grid[:1])
    faces = [line for line in (tmp_path / "s.obj").read_text().splitlines() if line.startswith("f ")]
    verts = [line for line in (tmp_path / "s.obj").read_text().splitlines() if line.startswith("v ")]
    assert len(faces) == 54 and len(verts) == 56  # a 3x3x3 block's outer grid points: 4^3 - 2^3
    view.save(tmp_path / "s.png", grid)
    from PIL import Image

    with Image.open(tmp_path / "s.png") as im:
        assert np.asarray(im.convert("L")).min() < 200  # something was drawn


def test_chamfer_and_one_nna_behave():
    a = torch.rand(3, 64, 3, generator=torch.Generator().manual_seed(0))
    d = chamfer_matrix(a, a)
    assert torch.allclose(d.diagonal(), torch.zeros(3), atol=1e-6) and torch.allclose(d, d.T, atol=1e-6)
    shifted = a + torch.tensor([0.1, 0.0, 0.0])
    assert chamfer_matrix(a[:1], shifted[:1])[0, 0] == pytest.approx(2 * 0.01, rel=0.3)
    shapes = V.load_objects("train", 16, 12)
    same = one_nna(shapes[:6], shapes[:6])  # identical sets: every cloud's twin is in the other set
    assert same["1nna_cd"] == pytest.approx(0.0) and same["coverage_cd"] == pytest.approx(100.0)
    blobs = np.zeros_like(shapes[:6])
    blobs[:, :, 6:10, 6:10, 6:10] = 255  # six identical cubes against six real shapes: told apart entirely
    assert one_nna(blobs, shapes[6:])["1nna_cd"] == pytest.approx(100.0)
    assert point_clouds(np.zeros((1, 1, 8, 8, 8), np.uint8), 16).eq(0.5).all()


VOX = ["data.size=16", "data.num=24", "model.patch_size=4", "compile=false"]


@pytest.fixture(scope="module")
def voxel_run(run_factory):
    return run_factory(*TINY, *VOX, "task.names=[unconditional,inpaint]", "model.token_time=true", preset="voxels")


def test_voxel_run_samples_and_completes_shapes(voxel_run, tmp_path):
    out = tmp_path / "s.ply"
    assert main(["sample", str(voxel_run), "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    assert out.read_text().startswith("ply")
    ctx = tmp_path / "ctx.npz"
    V.VoxelView().save(ctx, torch.from_numpy(V.load_objects("test", 16, 2)))
    done = tmp_path / "done.npz"
    assert main(["sample", str(voxel_run), "--task", "inpaint", "--context", str(ctx), "--steps", "2",
                 "--out", str(done)]) == 0
    before, after = np.load(ctx)["voxels"], np.load(done)["voxels"]
    from maskdit.diffusion.tasks import given_for, pixel_mask
    from maskdit.runs import load_run

    run = load_run(voxel_run)
    grid = given_for("inpaint", run.model, {}, torch.Generator().manual_seed(0), timed=False)
    kept = pixel_mask(grid.reshape(1, -1).expand(2, -1), run.model)[:, 0].numpy()
    assert np.array_equal(after[..., 0][kept], before[..., 0][kept]) and not kept.all()


def test_voxel_training_eval_scores_one_nna(voxel_run):
    from maskdit.data.datasets import dataset_from_config
    from maskdit.evaluate.suite import training_eval
    from maskdit.runs import load_run

    run = load_run(voxel_run)
    cfg = run.config
    cfg.eval_num = 4
    scores = training_eval(run.model, run.objective, dataset_from_config(cfg.data), cfg)
    assert scores["num"] == 4 and 0.0 <= scores["1nna_cd"] <= 100.0 and scores["mmd_cd"] > 0


def test_maskdit_eval_scores_a_voxel_run_by_one_nna(voxel_run, capsys):
    import json

    assert main(["eval", str(voxel_run), "--num", "3", "--steps", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["modality"] == "voxels" and result["num"] == 3 and 0.0 <= result["1nna_cd"] <= 100.0
