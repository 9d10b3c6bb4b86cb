"""Human motion: the DeepMimic humanoid clips that ship inside ``pybullet_data``, as ``(T, J)`` grids.

A frame of a DeepMimic clip holds the root position and 13 joint rotations (quaternions ``w, x, y, z``;
the knees and elbows are hinges about their z axis, stored as an angle). maskdit resamples every clip to
:data:`FPS`, repeats looping clips, cuts windows of ``T`` frames and stores each as a float grid
``(4, T, J)``: channel = quaternion component, axis 0 = time, axis 1 = :data:`JOINTS`. Column 0 holds the
root position ``(x, y, z, 0)`` in metres, with x and z relative to the window's first frame; hinge angles
become quaternions about z, so every column is the same kind of 4-vector. The grid's time axis makes the
frame tasks (``predict``, ``inbetween``, ...) apply, and its joint axis the ``parts`` task.

Whole clips are held out for the test split (:data:`HELD_OUT`), each one a relative of a training clip
(run ~ walk, dance_b ~ dance_a, getup_faceup ~ getup_facedown). Training windows are also mirrored left to
right, which doubles the data and keeps it physically plausible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.data.codec import StandardCodec
from maskdit.data.datasets import DATASETS
from maskdit.data.modalities import MODALITIES, load_array, save_array
from maskdit.errors import ConfigError, DataError

FPS = 30
MIN_FRAMES, MAX_FRAMES = 4, 900  #: window lengths: looping clips repeat up to 30 s
JOINTS = ("root_position", "root", "chest", "neck", "right_hip", "right_knee", "right_ankle", "right_shoulder",
          "right_elbow", "left_hip", "left_knee", "left_ankle", "left_shoulder", "left_elbow")
HINGES = ("right_knee", "right_elbow", "left_knee", "left_elbow")
#: Body parts as joint columns, for the ``parts`` task and for readers of the grid.
PARTS = {"torso": (1, 2, 3), "right_leg": (4, 5, 6), "right_arm": (7, 8), "left_leg": (9, 10, 11),
         "left_arm": (12, 13)}
HELD_OUT = ("run", "dance_b", "getup_faceup")
#: Playback speeds of the training clips (augmentation): a clip played faster or slower is still a motion.
SPEEDS = (0.7, 0.85, 1.0, 1.2, 1.4)
#: What each clip shows, for text-driven motion (``model.condition=text``); a window's caption is its clip's.
CAPTIONS = {
    "backflip": "a person does a backflip", "cartwheel": "a person does a cartwheel",
    "crawl": "a person crawls on hands and knees", "dance_a": "a person dances", "dance_b": "a person dances",
    "getup_facedown": "a person lying face down gets up", "getup_faceup": "a person lying face up gets up",
    "jump": "a person jumps forward", "kick": "a person kicks", "punch": "a person punches",
    "roll": "a person rolls forward", "run": "a person runs forward", "spin": "a person spins around",
    "spinkick": "a person does a spinning kick", "walk": "a person walks forward",
}
#: Bone offsets of DeepMimic's humanoid in metres (pybullet_data's humanoid.urdf is the same body at 4x).
_SCALE = 0.25
_OFFSETS = {
    "chest": (0.0, 0.944604, 0.0), "neck": (0.0, 0.895576, 0.0), "head": (0.0, 0.9, 0.0),
    "right_hip": (0.0, 0.0, 0.339548), "right_knee": (0.0, -1.686184, 0.0), "right_ankle": (0.0, -1.63948, 0.0),
    "right_shoulder": (-0.0962, 0.974, 0.73244), "right_elbow": (0.0, -1.099152, 0.0),
    "right_wrist": (0.0, -1.035788, 0.0),
}
for _k, _v in list(_OFFSETS.items()):
    if _k.startswith("right_"):
        _OFFSETS["left_" + _k[6:]] = (_v[0], _v[1], -_v[2])
#: Skeleton points (child, parent joint whose rotation places it, point it hangs from).
_POINTS = (
    ("chest", "root", "root"), ("neck", "chest", "chest"), ("head", "neck", "neck"),
    *((f"{s}_hip", "root", "root") for s in ("right", "left")),
    *((f"{s}_knee", f"{s}_hip", f"{s}_hip") for s in ("right", "left")),
    *((f"{s}_ankle", f"{s}_knee", f"{s}_knee") for s in ("right", "left")),
    *((f"{s}_shoulder", "chest", "chest") for s in ("right", "left")),
    *((f"{s}_elbow", f"{s}_shoulder", f"{s}_shoulder") for s in ("right", "left")),
    *((f"{s}_wrist", f"{s}_elbow", f"{s}_elbow") for s in ("right", "left")),
)
POINTS = ("root", *(p[0] for p in _POINTS))
#: Lines of the stick figure, as pairs of :data:`POINTS`.
BONES = tuple((POINTS.index(parent), POINTS.index(child)) for child, _, parent in _POINTS)


# -- quaternions (w, x, y, z) on the last axis -------------------------------------------------------
def qmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def qrotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors ``v (..., 3)`` by unit quaternions ``q (..., 4)``."""
    w, u = q[..., :1], q[..., 1:]
    t = 2 * torch.cross(u, v, dim=-1)
    return v + w * t + torch.cross(u, t, dim=-1)


def qnormalize(q: torch.Tensor) -> torch.Tensor:
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def qangle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in radians between the rotations of unit quaternions ``a`` and ``b``."""
    dot = (qnormalize(a) * qnormalize(b)).sum(-1).abs().clamp(max=1.0)
    return 2 * torch.acos(dot)


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (w = 0) to ``b`` (w = 1) along the shorter arc; ``w`` broadcasts."""
    a, b = qnormalize(a), qnormalize(b)
    dot = (a * b).sum(-1, keepdim=True)
    b = torch.where(dot < 0, -b, b)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    near = sin < 1e-6
    wa = torch.where(near, 1 - w, torch.sin((1 - w) * theta) / sin.clamp_min(1e-6))
    wb = torch.where(near, w, torch.sin(w * theta) / sin.clamp_min(1e-6))
    return qnormalize(wa * a + wb * b)


def _hinge(angle: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(angle)
    return torch.stack([torch.cos(angle / 2), zero, zero, torch.sin(angle / 2)], -1)


def _continuous(q: torch.Tensor) -> torch.Tensor:
    """Flip signs along axis 0 (time) so consecutive quaternions lie in the same hemisphere."""
    q = q.clone()
    for i in range(1, len(q)):
        flip = (q[i] * q[i - 1]).sum(-1) < 0
        q[i][flip] = -q[i][flip]
    return q


# -- clips --------------------------------------------------------------------------------------------
@dataclass
class Clip:
    """One motion at :data:`FPS`: root positions ``(F, 3)`` and rotations ``(F, 13, 4)`` (``JOINTS[1:]``)."""

    name: str
    positions: torch.Tensor
    rotations: torch.Tensor
    loop: bool = False


def motions_dir() -> Path:
    """Where ``pybullet_data`` keeps DeepMimic's motion clips (the ``pybullet`` package installs it)."""
    try:
        import pybullet_data
    except ImportError as e:
        raise DataError("the motion data ships with pybullet_data: pip install 'maskdit[modalities]' (or pybullet)"
                        ) from e
    return Path(pybullet_data.getDataPath()) / "data" / "motions"


def clip_names() -> list[str]:
    """The humanoid clips available, e.g. ``walk``, ``backflip``."""
    return sorted(p.stem[len("humanoid3d_"):] for p in motions_dir().glob("humanoid3d_*.txt"))


def read_clip(path: str | Path, speed: float = 1.0) -> Clip:
    """A DeepMimic humanoid motion file, resampled to :data:`FPS` (played ``speed`` times as fast)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        frames = np.asarray(data["Frames"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read motion clip {path}: {e}") from e
    if frames.ndim != 2 or frames.shape[1] != 44 or len(frames) < 2:
        raise DataError(f"motion clip {path}: expected frames of 44 numbers (DeepMimic humanoid), got "
                        f"{frames.shape}")
    t = torch.from_numpy(frames)
    rotations, col = [t[:, 4:8]], 8
    for joint in JOINTS[2:]:
        if joint in HINGES:
            rotations.append(_hinge(t[:, col]))
            col += 1
        else:
            rotations.append(t[:, col : col + 4])
            col += 4
    rot = _continuous(qnormalize(torch.stack(rotations, 1)))
    times = torch.cat([torch.zeros(1, dtype=t.dtype), torch.cumsum(t[:-1, 0], 0)])
    steps = torch.arange(0, float(times[-1]) + 1e-9, speed / FPS, dtype=t.dtype)
    hi = torch.searchsorted(times, steps, right=True).clamp(1, len(times) - 1)
    lo = hi - 1
    w = ((steps - times[lo]) / (times[hi] - times[lo]).clamp_min(1e-9)).clamp(0, 1)
    positions = t[lo, 1:4] + w[:, None] * (t[hi, 1:4] - t[lo, 1:4])
    rotations_out = slerp(rot[lo], rot[hi], w[:, None, None])
    name = path.stem.removeprefix("humanoid3d_")
    return Clip(name, positions.float(), _continuous(rotations_out).float(), data.get("Loop") == "wrap")


def repeat(clip: Clip, frames: int) -> Clip:
    """A looping clip repeated until it holds at least ``frames`` frames; each cycle continues from where
    the last ended (the root moves on and turns by the cycle's displacement)."""
    if not clip.loop or len(clip.positions) >= frames:
        return clip
    pos, rot = [clip.positions], [clip.rotations]
    turn = heading(qmul(clip.rotations[-1, 0], _conjugate(clip.rotations[0, 0])))  # about the vertical only
    total = len(clip.positions)
    while total < frames:
        last_pos, last_rot = pos[-1], rot[-1]
        origin = last_pos[-1]
        offset = qrotate(turn.expand(len(last_pos), 4), last_pos - last_pos[0]) + origin
        new_rot = last_rot.clone()
        new_rot[:, 0] = qmul(turn.expand(len(last_rot), 4), last_rot[:, 0])
        pos.append(offset[1:])
        rot.append(new_rot[1:])
        total += len(last_pos) - 1
    return Clip(clip.name, torch.cat(pos), _continuous(torch.cat(rot)), clip.loop)


def _conjugate(q: torch.Tensor) -> torch.Tensor:
    return q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def heading(q: torch.Tensor) -> torch.Tensor:
    """The rotation about the vertical (y) axis in unit quaternions ``q``: the twist of a swing-twist split."""
    twist = q * torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=q.dtype)
    return torch.where(twist.norm(dim=-1, keepdim=True) > 1e-6, qnormalize(twist),
                       torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=q.dtype))


def to_grid(positions: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Root positions ``(T, 3)`` and rotations ``(T, 13, 4)`` as a grid ``(4, T, J)``, seen from the first
    frame: the body turned so that frame's heading is zero, x and z relative to its root; each joint's
    quaternions in the first frame's w >= 0 hemisphere."""
    turn = _conjugate(heading(rotations[0, 0])).expand(len(positions), 4)
    pos = positions.clone()
    pos[:, [0, 2]] -= pos[0, [0, 2]]
    pos = qrotate(turn, pos)
    rotations = rotations.clone()
    rotations[:, 0] = qmul(turn, rotations[:, 0])
    rot = rotations * torch.where(rotations[:1, :, :1] < 0, -1.0, 1.0)
    root = torch.cat([pos, torch.zeros(len(pos), 1)], -1)[:, None]
    return torch.cat([root, rot], 1).permute(2, 0, 1).contiguous()


def windows(clip: Clip, length: int, stride: int) -> torch.Tensor:
    """Grids ``(N, 4, length, J)`` of every ``stride``-th window of ``length`` frames."""
    clip = repeat(clip, length + stride)
    starts = range(0, len(clip.positions) - length + 1, stride)
    return torch.stack([to_grid(clip.positions[s : s + length], clip.rotations[s : s + length]) for s in starts]) \
        if len(starts) else torch.empty(0, 4, length, len(JOINTS))


_SWAP = [JOINTS.index(j.replace("right_", "@").replace("left_", "right_").replace("@", "left_")) for j in JOINTS]


def mirror(grids: torch.Tensor) -> torch.Tensor:
    """Grids ``(..., 4, T, J)`` reflected through the character's sagittal plane (z -> -z): left and right
    swap, positions negate z, rotations negate their x and y components."""
    out = grids[..., _SWAP].clone()
    out[..., 2, :, 0] = -out[..., 2, :, 0]
    out[..., 1:3, :, 1:] = -out[..., 1:3, :, 1:]
    return out


def split_grids(grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids ``(..., 4, T, J)`` as root positions ``(..., T, 3)`` and unit rotations ``(..., T, J-1, 4)``;
    hinges keep only their rotation about z, as the body can bend them."""
    g = grids.movedim(-3, -1)  # (..., T, J, 4)
    rot = qnormalize(g[..., 1:, :])
    hinge = [JOINTS.index(j) - 1 for j in HINGES]
    angle = 2 * torch.atan2(rot[..., hinge, 3], rot[..., hinge, 0])
    rot = rot.clone()
    rot[..., hinge, :] = _hinge(angle)
    return g[..., 0, :3], rot


def forward_kinematics(grids: torch.Tensor) -> torch.Tensor:
    """World positions ``(..., T, P, 3)`` of the skeleton's :data:`POINTS` for grids ``(..., 4, T, J)``."""
    root, rot = split_grids(grids)
    local = {j: rot[..., i, :] for i, j in enumerate(JOINTS[1:])}
    world_rot: dict[str, torch.Tensor] = {"root": local["root"]}
    where: dict[str, torch.Tensor] = {"root": root}
    for child, rotated_by, parent in _POINTS:
        offset = torch.tensor(_OFFSETS[child], dtype=grids.dtype) * _SCALE
        where[child] = where[parent] + qrotate(world_rot[rotated_by], offset.expand_as(root))
        if child in local:
            world_rot[child] = qnormalize(qmul(world_rot[rotated_by], local[child]))
    return torch.stack([where[p] for p in POINTS], -2)


def inbetween_slerp(grids: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """The spherical-interpolation baseline: every frame not ``given`` (bool ``(T,)``) becomes the slerp of
    rotations (and the lerp of root positions) between the nearest given frames before and after it;
    frames past the last given one hold it (and those before the first, the first)."""
    known = torch.nonzero(given).flatten()
    if len(known) == 0:
        raise ConfigError("the slerp baseline needs at least one given frame")
    out = grids.clone()
    for f in torch.nonzero(~given).flatten().tolist():
        before, after = known[known < f], known[known > f]
        a = int(before[-1]) if len(before) else int(after[0])
        b = int(after[0]) if len(after) else a
        w = torch.tensor(0.0 if a == b else (f - a) / (b - a))
        ga, gb = grids[..., :, a, :].movedim(-2, -1), grids[..., :, b, :].movedim(-2, -1)  # (..., J, 4)
        rot = slerp(ga[..., 1:, :], gb[..., 1:, :], w)
        pos = ga[..., :1, :] + w * (gb[..., :1, :] - ga[..., :1, :])
        out[..., :, f, :] = torch.cat([pos, rot], -2).movedim(-1, -2)
    return out


def motion_errors(pred: torch.Tensor, truth: torch.Tensor, frames: torch.Tensor) -> dict[str, float]:
    """Mean joint-rotation error (degrees, geodesic, over the 13 rotations) and mean joint-position error
    (centimetres, over the skeleton's points, root included) on ``frames`` (bool ``(T,)``)."""
    _, rp = split_grids(pred[..., frames, :])
    _, rt = split_grids(truth[..., frames, :])
    angle = torch.rad2deg(qangle(rp, rt)).mean()
    dist = (forward_kinematics(pred)[..., frames, :, :] - forward_kinematics(truth)[..., frames, :, :]).norm(dim=-1)
    return {"rotation_deg": float(angle), "position_cm": float(dist.mean() * 100)}


# -- the dataset ----------------------------------------------------------------------------------------
@dataclass
class MotionDataset:
    """Motion windows ``float32 (N, 4, T, J)`` with the clip each came from (``clips``), in model space
    through a :class:`StandardCodec` fitted on the training split. The training clips are the classes
    (``labels``, for ``model.conditional``) and their :data:`CAPTIONS` the captions (``model.condition=text``);
    held-out windows carry captions but no labels, their clips being no training class."""

    motion: torch.Tensor
    clips: list[str]
    codec: StandardCodec
    name: str = "motion"
    class_names: list[str] = field(default_factory=lambda: [n for n in clip_names() if n not in HELD_OUT])
    labels: torch.Tensor | None = None
    captions: list[str] | None = None
    mirrored = True  #: the training split holds each window's left-right mirror (so data.flip is refused)

    def __post_init__(self) -> None:
        base = [c.split(" ")[0] for c in self.clips]
        self.captions = [CAPTIONS.get(b, "a person moves") for b in base]
        if all(b in self.class_names for b in base):
            self.labels = torch.tensor([self.class_names.index(b) for b in base])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.motion)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.motion.shape[1:])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.codec.encode(self.motion[idx]), None if self.labels is None else self.labels[idx]


def motion_windows(split: str, frames: int = 32, stride: int = 2, mirrored: bool | None = None,
                   speeds: tuple[float, ...] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Windows ``(N, 4, frames, J)`` of the ``train`` clips or the held-out ``test`` clips, and the clip name
    of each. The training split is augmented unless ``mirrored=False``: each window is also mirrored, and the
    clips are also played at each of :data:`SPEEDS` (``speeds`` overrides)."""
    if split not in ("train", "test"):
        raise ConfigError(f"motion split must be train or test, got {split!r}")
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise ConfigError(f"data.frames={frames}: motion windows take {MIN_FRAMES} to {MAX_FRAMES} frames "
                          f"({FPS} fps)")
    names = [n for n in clip_names() if (n in HELD_OUT) == (split == "test")]
    augment = mirrored if mirrored is not None else split == "train"
    speeds = speeds or (SPEEDS if augment else (1.0,))
    grids, owners = [], []
    for n in names:
        for speed in speeds:
            w = windows(read_clip(motions_dir() / f"humanoid3d_{n}.txt", speed), frames, stride)
            grids.append(w)
            owners += [n if speed == 1.0 else f"{n} (x{speed:g})"] * len(w)
    out = torch.cat(grids)
    if not len(out):
        longest = max(len(read_clip(motions_dir() / f"humanoid3d_{n}.txt").positions) for n in names)
        raise ConfigError(f"data.frames={frames}: no {split} clip is that long (the longest, looping ones repeated "
                          f"aside, has {longest} frames at {FPS} fps): use fewer frames")
    if augment:
        out, owners = torch.cat([out, mirror(out)]), owners + [f"{n} (mirrored)" for n in owners]
    return out, owners


def load_motion(cfg: Any, split: str) -> MotionDataset:
    """``data.name=motion``: DeepMimic windows of ``data.frames`` frames; the codec is fitted on the training
    windows whichever split is loaded, so both splits share model space."""
    train, train_clips = motion_windows("train", cfg.frames)
    codec = StandardCodec.fit(train)
    if split == "train":
        return MotionDataset(train, train_clips, codec)
    test, test_clips = motion_windows("test", cfg.frames)
    return MotionDataset(test, test_clips, codec)


# -- how a person looks at motion ---------------------------------------------------------------------
_COLOURS = {"right": (200, 40, 40), "left": (40, 80, 200), "": (30, 30, 30)}


def _side(name: str) -> str:
    return "right" if name.startswith("right") else "left" if name.startswith("left") else ""


def stick_figures(grids: torch.Tensor, size: int = 96, ghost: torch.Tensor | None = None,
                  generated: torch.Tensor | None = None) -> np.ndarray:
    """Side views (x forward, y up) of grids ``(N, 4, T, J)`` as uint8 frames ``(N, T, size, size, 3)``: the
    right limbs red, the left blue; ``ghost`` (grids like ``grids``) is drawn behind in grey, and frames
    flagged in ``generated`` (bool ``(N, T)``) get a pale yellow background. The camera follows each clip's
    mean root position, 2.4 m across."""
    from PIL import Image, ImageDraw

    pts = forward_kinematics(grids).numpy()
    behind = None if ghost is None else forward_kinematics(ghost).numpy()
    n, t = pts.shape[:2]
    scale = size / 2.4
    out = np.empty((n, t, size, size, 3), dtype=np.uint8)
    for i in range(n):
        centre = float(pts[i, :, 0, 0].mean())

        def xy(p: np.ndarray) -> tuple[float, float]:
            return (size / 2 + (float(p[0]) - centre) * scale, size - 8 - float(p[1]) * scale)

        for f in range(t):
            back = (255, 250, 215) if generated is not None and bool(generated[i, f]) else (255, 255, 255)
            im = Image.new("RGB", (size, size), back)
            draw = ImageDraw.Draw(im)
            draw.line([(0, size - 8), (size, size - 8)], fill=(170, 170, 170))
            layers = ([(behind[i, f], True)] if behind is not None else []) + [(pts[i, f], False)]
            for frame_pts, grey in layers:
                for a, b in BONES:
                    colour = (190, 190, 190) if grey else _COLOURS[_side(POINTS[b])]
                    draw.line([xy(frame_pts[a]), xy(frame_pts[b])], fill=colour, width=2)
                head = xy(frame_pts[POINTS.index("head")])
                draw.ellipse([head[0] - 3, head[1] - 3, head[0] + 3, head[1] + 3],
                             outline=(190, 190, 190) if grey else (30, 30, 30))
            out[i, f] = np.asarray(im)
    return out


class MotionView:
    """Motion files: ``.npz`` (``motion``: float32 ``N x T x J x 4``) or a stick-figure ``.gif`` / ``.mp4``."""

    key = "motion"
    suffixes = (".npz", ".gif", ".mp4")

    def load(self, path: str | Path, shape: tuple[int, ...], flag: str = "--context") -> torch.Tensor:
        return load_array(path, self.key, shape, flag)

    def preview(self, values: torch.Tensor) -> bytes:
        from maskdit.data.media import gif_bytes

        return gif_bytes(stick_figures(values[:16], size=64), fps=FPS / 2)

    def save(self, path: str | Path, values: torch.Tensor, truth: torch.Tensor | None = None,
             given: torch.Tensor | None = None) -> Path:
        from maskdit.data.media import save_video

        if str(path).lower().endswith(".npz"):
            return save_array(path, self.key, values)
        # (N, C, T, J) -> (N, T): a frame where only some joints were given shows as generated
        generated = None if given is None else ~given.all(-1).all(1)
        return save_video(path, stick_figures(values, ghost=truth, generated=generated), fps=FPS / 2)


MODALITIES.add("motion", MotionView(), "joint rotations as (T, J) grids: .npz, or stick figures as .gif/.mp4")
DATASETS.add("motion", load_motion, "DeepMimic humanoid clips from pybullet_data as (T, J) joint-rotation grids "
             "(data.frames frames at 30 fps; 3 clips held out for test)", needs_path=False, rank=2, timed=True,
             modality="motion")
