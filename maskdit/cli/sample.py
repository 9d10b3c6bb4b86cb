"""``maskdit sample``: write samples from a trained run; with ``--task``, generate what a task leaves open in
given clips or images (``--context``)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from maskdit.cli.args import check_out, grid_size, non_negative_ints, positive_int, ratio, strength, unit_float
from maskdit.cli.options import (
    add_control_options,
    add_overwrite,
    add_prompt_options,
    add_sampling_options,
    condition_values,
    draw,
    from_noise,
    load,
    sampling_settings,
)
from maskdit.errors import ConfigError
from maskdit.model.attention import ROPE_SCALINGS


def add_arguments(p: argparse.ArgumentParser) -> None:
    from maskdit.masks import TASKS

    add_sampling_options(p)
    add_prompt_options(p)
    add_control_options(p)
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("--num", type=positive_int, help="number of samples (default 100; with --context: all clips)")
    p.add_argument("--out", required=True,
                   help="FILE.png (a grid, one row per class) or FILE.npz; with --task also FILE.gif / FILE.mp4; "
                   "FILE.txt for a text model")
    p.add_argument("--size", type=grid_size, metavar="HxW",
                   help="sample at another size in multiples of the patch: smaller (any model; a run trained with "
                   "data.sizes has seen them), or larger (models trained with model.pos=rope)")
    p.add_argument("--rope-scaling", choices=ROPE_SCALINGS.names(), default="none",
                   help="with --size: how rotary positions adapt to a larger grid (none: extrapolate; pi: "
                   "interpolate; ntk; yarn)")
    p.add_argument("--tiled", action="store_true",
                   help="with a --size beyond training: sample at the training size, upsample, re-noise to "
                   "--tile-strength and refine by overlapping tiles of the training size pulled towards that structure "
                   "(any flow model)")
    p.add_argument("--tile-strength", type=strength, default=0.5, metavar="T",
                   help="--tiled: the time the upsampled structure is re-noised to (0, 1]")
    p.add_argument("--structure", type=unit_float, default=1.0, metavar="W",
                   help="--tiled: the pull towards the upsampled structure at the start, fading to 0 [0, 1]")
    p.add_argument("--tile-overlap", type=ratio, default=0.5, metavar="F",
                   help="--tiled: the share of a tile its neighbour overlaps [0, 1)")
    p.add_argument("--entropy-scale", action="store_true",
                   help="with --size: scale full attention's logits by sqrt(log_n N) (Jin et al.'s attention-entropy "
                   "factor, n and N the training and sampled tokens)")
    p.add_argument("--from-noise", metavar="NOISE.npz",
                   help="start from this noise (maskdit invert) instead of seeded noise; its labels, sampler, "
                   "steps and guidance are the defaults; with --task inpaint --mask: edit real images")
    add_overwrite(p)
    t = p.add_argument_group("tasks (models trained with task.names)")
    t.add_argument("--task", choices=TASKS.names(), help="generate what this task leaves open in --context")
    t.add_argument("--context",
                   help="clips .npz (frames N x T x H x W x C uint8) or images .npz (images N x H x W x C)")
    t.add_argument("--given-frames", type=positive_int,
                   help="predict/backward/complete: frames given; animate: the given frame's index + 1")
    t.add_argument("--stride", type=positive_int, help="interpolate: every STRIDE-th frame is given")
    t.add_argument("--columns", type=non_negative_ints, metavar="I,J,...",
                   help="parts: the token columns of axis 1 generated in every frame (motion: joints, e.g. 4,5,6 "
                   "for the right leg)")
    t.add_argument("--mask", help="image inpainting: PNG the size of the images, white = generate")


def run(args: argparse.Namespace) -> int:
    from maskdit.data.media import clips_as_rows, save_samples, save_texts, save_video
    from maskdit.data.modalities import MODALITIES, modality_of

    known = tuple(dict.fromkeys((".png", ".npz", ".gif", ".mp4", ".txt", *(s for _, m in MODALITIES.items()
                                                                            for s in m.suffixes))))
    if not args.out.lower().endswith(known):
        raise ConfigError(f"--out {args.out}: the file name must end in {', '.join(known)}")
    check_out(args.out, args.overwrite)
    if args.task or args.context or args.mask:
        if not args.task:
            raise ConfigError("--context/--mask need --task NAME")
        return run_task(args, load(args))
    for option in ("given_frames", "stride", "columns"):
        if getattr(args, option) is not None:
            raise ConfigError(f"--{option.replace('_', '-')} applies with --task only")
    loaded = load(args)
    noise = from_noise(args, loaded)
    if noise:
        if args.num is not None and args.num != len(noise["noise"]):
            raise ConfigError(f"--num {args.num}: --from-noise {args.from_noise} holds {len(noise['noise'])} starts; "
                              "leave --num out")
        args.num = len(noise["noise"])
    args.num = args.num or 100
    video = len(loaded.model.input_size) == 3
    text = getattr(loaded.codec, "decodes_text", False)
    modality = modality_of(loaded.dataset["name"])
    allowed = modality.suffixes if modality else (".txt",) if text else (".png", ".npz", ".gif", ".mp4") if video \
        else (".png", ".npz")
    if not args.out.lower().endswith(allowed):
        raise ConfigError(f"--out {args.out}: the file name must end in {', '.join(allowed)}")
    start = time.time()
    images, labels, kwargs, prompts = draw(args, loaded, args.num, noise)
    if modality:
        path = modality.save(args.out, images)
    elif text:
        path = save_texts(args.out, images)
    elif video and not args.out.lower().endswith(".png"):
        path = save_video(args.out, images.permute(0, 2, 3, 4, 1).numpy())
    elif video:
        path = save_samples(args.out, *clips_as_rows(images))
    else:
        path = save_samples(args.out, images, labels, None if prompts is None else [prompts[i] for i in labels])
    print(f"wrote {len(images)} samples to {path} ({time.time() - start:.1f}s, step {loaded.step}, "
          + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")")
    for row, prompt in enumerate(prompts or []):
        print(f"  row {row + 1}: {prompt}")
    return 0


def task_options(args: argparse.Namespace, model: Any, timed: bool | None = None) -> dict[str, Any]:
    """--given-frames / --stride / --columns as the options the task's builder takes (by option name, so a newly
    registered task with a ``k``, ``frame``, ``stride`` or ``columns`` option needs no change here), checked
    against the model's token-grid frames so a value out of range names its option. ``timed``: whether the
    grid's axis 0 is time (None: only a video's is)."""
    from maskdit.masks import task_options

    takes = task_options(args.task)
    options: dict[str, Any] = {}
    timed = len(model.token_grid) == 3 if timed is None else timed
    frames = model.token_grid[0] if timed else None
    if args.columns is not None:
        if "columns" not in takes:
            raise ConfigError(f"--columns does not apply to --task {args.task}")
        width = model.token_grid[1] if len(model.token_grid) > 1 else 0
        if any(c >= width for c in args.columns):
            raise ConfigError(f"--columns {','.join(map(str, args.columns))}: this model's grid has {width} token "
                              f"columns on axis 1, so give columns in 0-{width - 1}")
        options["columns"] = tuple(args.columns)
    if args.given_frames is not None:
        if args.task == "inbetween":  # k frames given at each end: at least one left between them
            options["k"], top = args.given_frames, ((frames or 0) - 1) // 2
        elif "k" in takes:  # k frames given: at most all but one
            options["k"], top = args.given_frames, (frames or 0) - 1
        elif "frame" in takes:  # the given frame's index + 1
            options["frame"], top = args.given_frames - 1, frames or 0
        else:
            raise ConfigError(f"--given-frames does not apply to --task {args.task}")
        if frames is not None and args.given_frames > top:
            all_given = " leaves nothing to generate" if args.given_frames == frames and "k" in takes else ""
            raise ConfigError(f"--given-frames {args.given_frames}{all_given}: this model's clips have {frames} "
                              f"(token) frames, so --task {args.task} takes "
                              + (f"1-{top}" if top >= 1 else "no --given-frames"))
    if args.stride is not None:
        if "stride" not in takes:
            raise ConfigError(f"--stride does not apply to --task {args.task}")
        if frames is not None and not 2 <= args.stride <= frames:
            all_given = " leaves nothing to generate" if args.stride == 1 else ""
            raise ConfigError(f"--stride {args.stride}{all_given}: this model's clips have {frames} (token) frames, so "
                              f"--task {args.task} takes " + (f"2-{frames}" if frames >= 2 else "no --stride"))
        options["stride"] = args.stride
    return options


def run_task(args: argparse.Namespace, run: Any) -> int:
    """``--task``: complete each ``--context`` input where the task (or ``--mask``) leaves it open."""
    import torch

    from maskdit.data.datasets import timed_data
    from maskdit.data.media import save_samples, save_video
    from maskdit.data.modalities import modality_of
    from maskdit.diffusion.tasks import comparison_frames, complete, given_for, load_context, mask_from_png, pixel_mask

    if not args.context:
        raise ConfigError("--task needs --context FILE.npz with the clips (or images) to condition on")
    if args.size is not None:
        raise ConfigError(f"--size {'x'.join(map(str, args.size))} does not apply with --task: the --context inputs "
                          "fix the size; leave --size out")
    modality = modality_of(run.dataset["name"])
    timed = timed_data(run.dataset["name"])
    if modality and not args.out.lower().endswith(modality.suffixes):
        raise ConfigError(f"--out {args.out}: the file name must end in {', '.join(modality.suffixes)}")
    if modality:
        shape = (run.model.in_channels, *run.model.input_size)
        context = modality.load(args.context, getattr(run.codec, "stored_shape", lambda s: s)(shape))
    else:
        context = load_context(args.context, run.model)
    if args.num is not None and args.num > len(context):
        raise ConfigError(f"--num {args.num}: --context {args.context} holds {len(context)} inputs, one result each; "
                          f"give at most {len(context)} or leave --num out")
    if args.num is not None:
        context = context[: args.num]
    options = task_options(args, run.model, timed)
    noise = from_noise(args, run)
    if noise and len(noise["noise"]) != len(context):
        raise ConfigError(f"--from-noise {args.from_noise} holds {len(noise['noise'])} starts for {len(context)} "
                          "--context inputs: invert the same inputs")
    if args.mask:
        if args.task not in ("inpaint", "outpaint"):
            raise ConfigError("--mask applies to --task inpaint or outpaint")
        grid = mask_from_png(args.mask, run.model)
    else:
        grid = given_for(args.task, run.model, options, torch.Generator().manual_seed(args.seed), timed)
    if bool(grid.all()):
        raise ConfigError(f"--task {args.task}: the mask leaves nothing to generate")
    labels = condition_values(args, run, len(context))[0]
    if noise.get("labels") is not None and not args.classes:
        labels = noise["labels"]
    kwargs = sampling_settings(args, run, noise)
    start = time.time()
    out = complete(run, context, grid, labels, batch_size=args.batch_size, progress=True,
                   **({"start": noise["noise"]} if noise else {}), **kwargs)
    video = out.dim() == 5
    if modality:
        given = pixel_mask(grid.reshape(1, -1).expand(len(out), -1), run.model)
        path = modality.save(args.out, out, truth=context, given=given)
    elif video and args.out.lower().endswith((".gif", ".mp4")):
        path = save_video(args.out, comparison_frames(context, out, grid, run.model))
    elif video and args.out.lower().endswith(".npz"):
        path = save_video(args.out, out.permute(0, 2, 3, 4, 1).numpy())
    elif not video and args.out.lower().endswith((".png", ".npz")):
        path = save_samples(args.out, out, labels)
    else:
        raise ConfigError(f"--out {args.out}: use .npz, .gif or .mp4 for clips and .png or .npz for images")
    given_share = grid.float().mean().item()
    print(f"wrote {len(out)} {args.task} results to {path} ({time.time() - start:.1f}s, {given_share:.0%} of tokens "
          f"given, step {run.step}, " + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")")
    return 0
