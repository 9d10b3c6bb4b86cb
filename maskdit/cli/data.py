"""``maskdit data``: export clips of an embedded video dataset (.npz, .gif or .mp4), captioned shape scenes
(``shapes``: images, captions, kinds and scenes in one .npz), motion windows (``motion``: .npz, or stick
figures as .gif / .mp4; ``footsteps``: the same with their footstep sounds, also as .wav), voxelised shapes
(``voxels``: .npz, .ply, .obj or .png), spoken digits (``spoken-digits``: .npz, .wav or spectrograms .png) or an
expert's action chunks (``hopper``: .npz or curves .png)."""

from __future__ import annotations

import argparse

from maskdit.cli.args import check_out, positive_int, seed_value
from maskdit.cli.options import add_overwrite
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.data.video import SPLITS, VIDEO_DATASETS

    p.add_argument("name", choices=[*VIDEO_DATASETS, "shapes", "motion", "footsteps", "voxels", "spoken-digits",
                                    "hopper"])
    p.add_argument("--split", choices=list(SPLITS),
                   help="default: test for videos, motion, voxels and spoken digits, train for shapes")
    p.add_argument("--num", type=positive_int, default=16)
    p.add_argument("--frames", type=positive_int, help="frames per clip (default 8; motion: 32)")
    p.add_argument("--size", type=positive_int, help="canvas pixels (default 16); voxels: voxels a side (default 32)")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", required=True, help="clips.npz (frames N x T x H x W x C uint8), .gif or .mp4; "
                   "shapes: FILE.npz; motion: FILE.npz (motion N x T x J x 4 float32), .gif or .mp4; footsteps: "
                   "the same, the .npz with sounds N x S float32, or the sounds as .wav; voxels: FILE.npz "
                   "(voxels N x S x S x S x 1 float32), .ply, .obj or .png; spoken-digits: FILE.npz (audio "
                   "N x 8000 x 1 float32, labels), .wav or .png (spectrograms); hopper: FILE.npz (observations N x D, "
                   "actions N x T x A of --num expert episodes) or curves .png")
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    if args.name == "shapes":
        return run_shapes(args)
    if args.name in ("motion", "footsteps"):
        return run_motion(args)
    if args.name == "voxels":
        return run_voxels(args)
    if args.name == "spoken-digits":
        return run_spoken_digits(args)
    if args.name == "hopper":
        return run_actions(args)
    args.frames, args.size = args.frames or 8, args.size or 16
    from maskdit.data.media import save_video
    from maskdit.data.video import load_video_dataset

    args.split = args.split or "test"

    if not args.out.lower().endswith((".npz", ".gif", ".mp4")):
        raise ConfigError(f"--out {args.out}: the file name must end in .npz, .gif or .mp4")
    check_out(args.out, args.overwrite)
    data = load_video_dataset(args.name, args.split, args.num, args.seed, frames=args.frames, size=args.size)
    frames = data.frames.permute(0, 2, 3, 4, 1).numpy()  # N x T x H x W x C
    save_video(args.out, frames)
    shape = "x".join(map(str, frames.shape[1:]))
    print(f"wrote {len(frames)} {args.split} clips of {args.name} ({shape}) to {args.out}")
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    """``maskdit data shapes --num N --out FILE.npz [--split train|test] [--seed S]``."""
    import numpy as np

    from maskdit.data.shapes import shapes_dataset
    from maskdit.files import atomic_file

    if not args.out.lower().endswith(".npz"):
        raise ConfigError(f"--out {args.out}: shapes are written as one .npz (images, captions, kinds, scenes): "
                          "name the file FILE.npz")
    check_out(args.out, args.overwrite)
    split = args.split or "train"
    data = shapes_dataset(args.num, split, args.seed)
    with atomic_file(args.out, "--out") as tmp:
        np.savez(tmp, **data)
    print(f"wrote {args.num} {split} shape scenes with captions to {args.out}")
    return 0


def run_motion(args: argparse.Namespace) -> int:
    """``maskdit data motion|footsteps --out FILE.npz|.gif|.mp4 [--split test|train] [--num N] [--frames T]``:
    evenly spaced windows of the DeepMimic clips (the test split holds the clips no training run sees);
    ``footsteps`` adds the footstep sounds of each window (in the .npz, or alone as ``.wav``)."""
    import numpy as np
    import torch

    from maskdit.data.motion import FPS, MAX_FRAMES, MIN_FRAMES, MotionView, motion_windows
    from maskdit.files import atomic_file

    view, sounds = MotionView(), args.name == "footsteps"
    frames = args.frames or 32
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise ConfigError(f"--frames {frames}: motion windows take {MIN_FRAMES} to {MAX_FRAMES} frames ({FPS} fps)")
    suffixes = (*view.suffixes, ".wav") if sounds else view.suffixes
    if not args.out.lower().endswith(suffixes):
        also = ", their sounds as FILE.wav," if sounds else ""
        raise ConfigError(f"--out {args.out}: motion is written as FILE.npz (motion N x T x J x 4){also} or as stick "
                          "figures in FILE.gif / FILE.mp4")
    check_out(args.out, args.overwrite)
    split = args.split or "test"
    grids, clips = motion_windows(split, frames, mirrored=False)
    pick = torch.linspace(0, len(grids) - 1, min(args.num, len(grids))).round().long().unique()
    grids, clips = grids[pick], [clips[i] for i in pick.tolist()]
    arrays = {"motion": np.ascontiguousarray(grids.permute(0, 2, 3, 1).numpy()), "clips": np.array(clips)}
    if sounds:
        from maskdit.data.footsteps import RATE, footstep_sounds

        arrays["sounds"] = footstep_sounds(grids).numpy()
    if args.out.lower().endswith(".npz"):
        with atomic_file(args.out, "--out") as tmp:
            np.savez(tmp, **arrays)
    elif args.out.lower().endswith(".wav"):
        from maskdit.data.audio import write_wav

        with atomic_file(args.out, "--out") as tmp:
            write_wav(tmp, arrays["sounds"], rate=RATE)
    else:
        view.save(args.out, grids)
    shape = "x".join(map(str, grids.permute(0, 2, 3, 1).shape[1:]))
    what = " with their footstep sounds" if sounds else ""
    print(f"wrote {len(grids)} {split} motion windows ({shape}){what} from {', '.join(sorted(set(clips)))} to "
          f"{args.out}")
    return 0


def run_voxels(args: argparse.Namespace) -> int:
    """``maskdit data voxels --out FILE.npz|.ply|.obj|.png [--split test|train] [--num N] [--size S]``: the first
    shapes of a split, voxelised (the test split holds the objects no training run sees)."""
    import torch

    from maskdit.data.voxels import MAX_SIZE, MIN_SIZE, VoxelView, load_objects

    view = VoxelView()
    if not args.out.lower().endswith(view.suffixes):
        raise ConfigError(f"--out {args.out}: shapes are written as FILE.npz (voxels N x S x S x S x 1), a point cloud "
                          "FILE.ply, a mesh FILE.obj or views FILE.png")
    size = args.size or 32
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"--size {size}: voxel grids take {MIN_SIZE} to {MAX_SIZE} voxels a side")
    check_out(args.out, args.overwrite)
    split = args.split or "test"
    grids = torch.from_numpy(load_objects(split, size, args.num))
    view.save(args.out, grids)
    print(f"wrote {len(grids)} {split} shapes ({size}^3 voxels) to {args.out}")
    return 0


def run_spoken_digits(args: argparse.Namespace) -> int:
    """``maskdit data spoken-digits --out FILE.npz|.wav|.png [--split test|train] [--num N] [--seed S]``: digits
    spoken by eSpeak NG (the test split's voices are never heard in training); the .npz is an audio store
    that ``data.name=audio data.path=FILE.npz`` trains on."""
    import torch

    from maskdit.data.audio import WORDS, AudioView, spoken_digits, write_store

    view = AudioView()
    if not args.out.lower().endswith(view.suffixes):
        raise ConfigError(f"--out {args.out}: spoken digits are written as FILE.npz (audio N x 8000 x 1, labels), "
                          "FILE.wav or spectrograms FILE.png")
    check_out(args.out, args.overwrite)
    split = args.split or "test"
    waves, labels, voices = spoken_digits(split, args.num, args.seed)
    if args.out.lower().endswith(".npz"):
        write_store(args.out, waves, labels, list(WORDS), voices)
    else:
        view.save(args.out, torch.from_numpy(waves))
    print(f"wrote {len(waves)} {split} spoken digits (1 s at 8 kHz, {len(set(voices))} voices) to {args.out}")
    return 0


def run_actions(args: argparse.Namespace) -> int:
    """``maskdit data hopper --out FILE.npz|.png [--split test|train] [--num EPISODES] [--frames T]``: the expert's
    action chunks with the observations they start from; the .npz feeds ``maskdit sample --observations``."""
    import numpy as np
    import torch

    from maskdit.data.actions import MAX_EPISODES, ActionView, chunks, demonstrations

    view = ActionView()
    if not args.out.lower().endswith(view.suffixes):
        raise ConfigError(f"--out {args.out}: action chunks are written as FILE.npz (observations, actions) or "
                          "curves FILE.png")
    if args.num > MAX_EPISODES:
        raise ConfigError(f"--num {args.num} counts expert episodes (about 0.4 s each): choose at most {MAX_EPISODES}")
    frames = args.frames or 16
    check_out(args.out, args.overwrite)
    split = args.split or "test"
    demos = demonstrations(args.name, split, args.num)
    actions, observations = chunks(demos, frames)
    if args.out.lower().endswith(".npz"):
        from maskdit.files import atomic_file

        with atomic_file(args.out, "--out") as tmp:
            np.savez(tmp, observations=observations.numpy(), actions=actions.permute(0, 2, 1).numpy())
    else:
        view.save(args.out, actions[torch.linspace(0, len(actions) - 1, 16).long()])
    print(f"wrote {len(actions)} {split} chunks of {frames} actions from {args.num} expert episodes of {args.name} "
          f"(mean return {demos.returns.mean():.0f}) to {args.out}")
    return 0
