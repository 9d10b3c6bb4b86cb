"""3-D shapes: the thousand random object meshes that ship inside ``pybullet_data``, as solid voxel grids.

Each object (``random_urdfs/NNN/NNN.obj``, a union of convex pieces) is centred, scaled so its longest side
spans the grid less a margin of over a voxel, its surface sampled densely and the enclosed space filled: an
occupancy grid ``uint8 (1, S, S, S)`` (255 = inside), a rank-3 token grid without a time axis. Objects
000-899 are the training split and 900-999 the test split (object 168 ships with NaN vertices and is left
out). Samples go out as point clouds (``.ply``, the centres of occupied surface voxels), as meshes
(``.obj``, the voxels' outer faces) or as rendered views (``.png``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.data.codec import PIXELS, Codec
from maskdit.data.datasets import DATASETS
from maskdit.data.media import grid_png
from maskdit.data.modalities import MODALITIES, load_array
from maskdit.errors import ConfigError, DataError
from maskdit.files import atomic_file

NUM_OBJECTS, TEST_FROM = 1000, 900
MIN_SIZE, MAX_SIZE = 8, 64


def objects_dir() -> Path:
    """Where ``pybullet_data`` keeps its random object meshes (the ``pybullet`` package installs it)."""
    try:
        import pybullet_data
    except ImportError as e:
        raise DataError("the voxel shapes are pybullet_data's meshes: pip install 'maskdit[modalities]' (or pybullet)"
                        ) from e
    return Path(pybullet_data.getDataPath()) / "random_urdfs"


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` and triangles ``(F, 3)`` (0-based) of a Wavefront ``.obj``; polygons become fans."""
    vertices, faces = [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DataError(f"cannot read mesh {path}: {e}") from e
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            vertices.append([float(v) for v in parts[1:4]])
        elif parts[0] == "f":
            ids = [int(p.split("/")[0]) for p in parts[1:]]
            ids = [i - 1 if i > 0 else len(vertices) + i for i in ids]
            faces += [[ids[0], ids[k], ids[k + 1]] for k in range(1, len(ids) - 1)]
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    if len(v) < 3 or len(f) < 1 or f.min() < 0 or f.max() >= len(v) or not np.isfinite(v).all():
        raise DataError(f"mesh {path} holds no usable triangles (or non-finite vertices)")
    return v, f


def voxelize(vertices: np.ndarray, faces: np.ndarray, size: int = 32) -> np.ndarray:
    """A solid occupancy grid ``bool (size, size, size)`` (axes z, y, x) of a closed mesh: centred, the
    longest side scaled to ``size - 2.5`` voxels (over a voxel of margin each side), every triangle sampled
    on a lattice finer than 0.4 voxel (so the surface has no gap to leak through) and the enclosed space
    filled."""
    from scipy import ndimage

    lo, hi = vertices.min(0), vertices.max(0)
    scale = (size - 2.5) / max(float((hi - lo).max()), 1e-9)
    v = (vertices - (lo + hi) / 2) * scale + size / 2
    corners = v[faces]  # (F, 3, 3)
    edge = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).max(1)
    splits = np.maximum(1, np.ceil(edge / 0.4)).astype(np.int64)  # lattice spacing under 0.4 voxel: no gaps
    points = []
    for n in np.unique(splits):
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        weights = np.stack([n - i[keep] - j[keep], i[keep], j[keep]], 1) / n  # barycentric (K, 3)
        points.append(np.einsum("kc,fcd->fkd", weights, corners[splits == n]).reshape(-1, 3))
    idx = np.clip(np.floor(np.concatenate(points)).astype(np.int64), 0, size - 1)
    grid = np.zeros((size, size, size), dtype=bool)
    grid[idx[:, 2], idx[:, 1], idx[:, 0]] = True
    return ndimage.binary_fill_holes(grid)


def load_objects(split: str, size: int = 32, num: int | None = None) -> np.ndarray:
    """uint8 grids ``(N, 1, size, size, size)`` of the ``train`` (objects 0-899) or ``test`` (900-999) split,
    the first ``num`` of it. A mesh the package ships broken (object 168's vertices are NaN) is left out."""
    if split not in ("train", "test"):
        raise ConfigError(f"voxel split must be train or test, got {split!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"data.size={size}: voxel grids take {MIN_SIZE} to {MAX_SIZE} voxels a side")
    ids = range(0, TEST_FROM) if split == "train" else range(TEST_FROM, NUM_OBJECTS)
    root = objects_dir()
    grids = []
    for i in ids:
        if num is not None and len(grids) == num:
            break
        try:
            mesh = read_obj(root / f"{i:03d}" / f"{i:03d}.obj")
        except DataError:
            continue
        grids.append(voxelize(*mesh, size).astype(np.uint8) * np.uint8(255))
    return np.stack(grids)[:, None]


@dataclass
class VoxelDataset:
    """Occupancy grids ``uint8 (N, 1, S, S, S)`` (255 = inside) in pixel model space ``[-1, 1]``."""

    voxels: torch.Tensor
    name: str = "voxels"
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    codec: Codec = PIXELS

    def __len__(self) -> int:
        return len(self.voxels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.voxels.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.codec.encode(self.voxels[idx]), None


def load_voxels(cfg: Any, split: str) -> VoxelDataset:
    """``data.name=voxels``: the split's objects at ``data.size`` voxels a side (``data.num`` caps the count)."""
    return VoxelDataset(torch.from_numpy(load_objects(split, cfg.size, min(cfg.num, TEST_FROM))))


# -- how a person looks at shapes ----------------------------------------------------------------------
def surface_points(grid: np.ndarray) -> np.ndarray:
    """Centres ``(P, 3)`` (x, y, z in voxels) of the occupied voxels with an empty neighbour."""
    from scipy import ndimage

    solid = grid > 127 if grid.dtype == np.uint8 else grid > 0
    shell = solid & ~ndimage.binary_erosion(solid)
    z, y, x = np.nonzero(shell)
    return np.stack([x, y, z], 1).astype(np.float32) + 0.5


def write_ply(path: str | Path, points: np.ndarray) -> None:
    """An ASCII ``.ply`` point cloud."""
    with open(path, "w") as f:
        f.write(f"ply\nformat ascii 1.0\nelement vertex {len(points)}\nproperty float x\nproperty float y\n"
                "property float z\nend_header\n")
        np.savetxt(f, points, fmt="%.2f")


def write_obj(path: str | Path, grid: np.ndarray, offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
    """The outer faces of a solid voxel grid (``bool (Z, Y, X)``) as a quad mesh, shifted by ``offset``."""
    solid = np.pad(grid, 1)
    verts: dict[tuple[int, int, int], int] = {}
    quads = []
    corners = {  # axis, side -> the face's four corners (x, y, z offsets from the voxel's low corner)
        (0, 1): [(1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1)], (0, -1): [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)],
        (1, 1): [(0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0)], (1, -1): [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)],
        (2, 1): [(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)], (2, -1): [(0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)],
    }
    z, y, x = np.nonzero(solid)
    for axis, side in corners:
        step = [0, 0, 0]
        step[axis] = side
        open_ = ~solid[z + step[2], y + step[1], x + step[0]]
        for xi, yi, zi in zip(x[open_], y[open_], z[open_]):
            quad = []
            for dx, dy, dz in corners[(axis, side)]:
                key = (xi + dx - 1, yi + dy - 1, zi + dz - 1)
                quad.append(verts.setdefault(key, len(verts) + 1))
            quads.append(quad)
    with open(path, "w") as f:
        for (vx, vy, vz) in verts:
            f.write(f"v {vx + offset[0]} {vy + offset[1]} {vz + offset[2]}\n")
        for q in quads:
            f.write(f"f {q[0]} {q[1]} {q[2]} {q[3]}\n")


def render(grids: np.ndarray, size: int = 96) -> np.ndarray:
    """Shaded views ``uint8 (N, size, size, 3)`` of occupancy grids ``(N, 1, S, S, S)``, looking down the
    diagonal: each pixel shows the nearest occupied voxel, nearer brighter, faces lit by their normal."""
    n, s = len(grids), grids.shape[-1]
    out = np.full((n, size, size, 3), 255, dtype=np.uint8)
    axis = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)  # the camera looks along -axis from far away
    up = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
    up /= np.linalg.norm(up)
    right = np.cross(up, axis)
    for k in range(n):
        pts = surface_points(grids[k, 0]) - s / 2
        if not len(pts):
            continue
        depth = pts @ axis
        u = (pts @ right) * (size / (s * 1.45)) + size / 2
        v = -(pts @ up) * (size / (s * 1.45)) + size / 2
        order = np.argsort(depth)  # far to near: nearer points overwrite
        shade = (0.35 + 0.65 * (depth[order] - depth.min()) / max(float(np.ptp(depth)), 1e-6))
        col = np.stack([60 + 120 * shade, 90 + 130 * shade, 160 + 90 * shade], 1).clip(0, 255).astype(np.uint8)
        ui, vi = u[order].astype(int), v[order].astype(int)
        r = max(1, size // (s + s // 2))
        for du in range(-r, r + 1):
            for dv in range(-r, r + 1):
                ok = (ui + du >= 0) & (ui + du < size) & (vi + dv >= 0) & (vi + dv < size)
                out[k, vi[ok] + dv, ui[ok] + du] = col[ok]
    return out


class VoxelView:
    """Voxel files: ``.npz`` (``voxels``: float32 ``N x S x S x S x 1``, 1 = inside), a point cloud ``.ply`` or
    a mesh ``.obj`` of all samples side by side, or rendered views ``.png``."""

    key = "voxels"
    suffixes = (".npz", ".ply", ".obj", ".png")

    def save(self, path: str | Path, values: torch.Tensor, truth: torch.Tensor | None = None,
             given: torch.Tensor | None = None) -> Path:
        path = Path(path)
        grids = self._u8(values)
        with atomic_file(path, "--out") as tmp:
            suffix = path.suffix.lower()
            if suffix == ".npz":
                np.savez(tmp, voxels=np.moveaxis(grids, 1, -1).astype(np.float32) / 255.0)
            elif suffix == ".png":  # with a task's inputs: a row of inputs above a row of results
                shown = grids if truth is None else np.concatenate([self._u8(truth), grids])
                rows = None if truth is None else torch.arange(len(shown)) // len(grids)
                Path(tmp).write_bytes(grid_png(torch.from_numpy(render(shown)).permute(0, 3, 1, 2), rows))
            elif suffix == ".ply":
                s = grids.shape[-1]
                clouds = [surface_points(g[0]) + np.array([i * (s + 4), 0, 0], np.float32)
                          for i, g in enumerate(grids)]
                write_ply(tmp, np.concatenate(clouds) if clouds else np.zeros((0, 3), np.float32))
            else:
                solid = np.concatenate([np.pad(g[0] > 127, ((0, 0), (0, 0), (0, 4))) for g in grids], axis=2)
                write_obj(tmp, solid)
        return path

    @staticmethod
    def _u8(values: torch.Tensor) -> np.ndarray:
        """Stored grids (uint8, 255 = inside; or floats, 1 = inside) as uint8."""
        return values.numpy() if values.dtype == torch.uint8 else (values.float().clamp(0, 1) * 255).round().to(
            torch.uint8).numpy()

    def preview(self, values: torch.Tensor) -> bytes:
        return grid_png(torch.from_numpy(render(self._u8(values[:16]))).permute(0, 3, 1, 2))

    def load(self, path: str | Path, shape: tuple[int, ...], flag: str = "--context") -> torch.Tensor:
        values = load_array(path, self.key, shape, flag)
        if values.min() < 0 or values.max() > 1:
            raise DataError(f"{flag} {path}: 'voxels' must hold occupancy in [0, 1] (1 = inside), got values in "
                            f"[{float(values.min()):g}, {float(values.max()):g}]: divide 0-255 grids by 255")
        return (values * 255).round().to(torch.uint8)


MODALITIES.add("voxels", VoxelView(), "solid occupancy grids: .npz, a point cloud .ply, a mesh .obj or views .png")
DATASETS.add("voxels", load_voxels, "pybullet_data's random object meshes as solid S^3 occupancy grids (data.size "
             "voxels a side, default 32 here; objects 900-999 held out for test)", needs_path=False, rank=3,
             timed=False, modality="voxels")
