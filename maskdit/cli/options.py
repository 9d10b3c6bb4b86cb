"""What several commands share: the sampling options (``maskdit sample`` and ``maskdit eval``), ``--overwrite``, and
the helpers that read them: the run to load, the class labels, the sampling settings and ``--from-noise``."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from maskdit.cli.args import (
    class_list,
    guidance_scale_value,
    interval,
    lora_spec,
    non_negative_float,
    positive_float,
    positive_int,
    seed_value,
    unit_float,
)
from maskdit.errors import ConfigError, DataError


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The ``sampling`` option group: sampler, steps, guidance, seed, labels, weights, batch size and device."""
    from maskdit.diffusion.guidance import GUIDANCES
    from maskdit.diffusion.samplers import BATCH_SIZE, SAMPLERS

    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", choices=SAMPLERS.names(),
                   help="default: the run's sample.sampler (" + "; ".join(f"{n}: {d}" for n, d in SAMPLERS.describe())
                   + ")")
    g.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's sample.steps)")
    g.add_argument("--guidance-scale", type=guidance_scale_value, help="classifier-free guidance; 1 = off")
    g.add_argument("--guidance-interval", type=interval, metavar="LOW,HIGH", help="guide only for t in [LOW, HIGH]")
    g.add_argument("--guidance", choices=GUIDANCES.names(),
                   help="unconditional branch (default: the run's sample.guidance; "
                   + "; ".join(f"{n}: {d}" for n, d in GUIDANCES.describe()) + ")")
    g.add_argument("--guidance-channels", type=positive_int, metavar="N",
                   help="guide only the first N output channels, the rest from the conditional branch (DiT: 3)")
    g.add_argument("--guidance-power", type=positive_float, metavar="P",
                   help="MDT's power-cosine guidance schedule: scale 1 at t=1 rising to the full scale at t=0 "
                   "(MDT: 0.01; default: the run's sample.guidance_power, null = constant)")
    g.add_argument("--eta", type=unit_float, help="DDIM eta in [0, 1] (0 deterministic, 1 ancestral)")
    g.add_argument("--temperature", type=positive_float,
                   help="masked models: temperature of the categorical draws (default: the run's, else 1)")
    g.add_argument("--choice-temperature", type=non_negative_float, metavar="T",
                   help="the maskgit sampler: Gumbel noise on its confidences, annealed to 0 (default 4.5)")
    g.add_argument("--accel", metavar="NAME[:key=value,...][+NAME...]",
                   help="sampling accelerators (docs/inference.md): cache:every=3 (reuse the middle blocks' "
                   "residual), ras:ratio=0.5 (recompute half the tokens), int8 (calibrated int8 linear layers); "
                   "join with +, e.g. int8+ras:ratio=0.5")
    g.add_argument("--seed", type=seed_value, default=0, help="noise seed (default 0)")
    g.add_argument("--classes", type=class_list, help="comma-separated labels to cycle through (default: all)")
    g.add_argument("--observations", metavar="FILE.npz",
                   help="a policy (model.condition=vector): the observations to act on, cycled (observations N x D; "
                   "maskdit data hopper --out FILE.npz writes some)")
    g.add_argument("--audio", metavar="FILE.wav|FILE.npz",
                   help="an audio-driven model (model.condition=audio): the sound to follow, a .wav cut into windows "
                   "of the model's length, or an .npz with sounds N x S (maskdit data footsteps writes one); cycled")
    g.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights (default ema)")
    g.add_argument("--lora", type=lora_spec, action="append", metavar="RUN[:SCALE]",
                   help="merge a LoRA run's updates (trained on this run's weights, lora.rank) times SCALE "
                   "(default 1) into the model; repeat to combine adapters")
    g.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help=f"samples per network call, the last call padded (default {BATCH_SIZE}); sample i depends "
                   "only on --seed, i and this")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: what :func:`maskdit.cli.args.check_out` needs to replace an existing ``--out``."""
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")


def load(args: argparse.Namespace) -> Any:
    """The run ``RUN_DIR`` names, with ``--weights`` on ``--device`` and the ``--lora`` adapters merged in."""
    from maskdit.runs import add_adapters, load_run
    from maskdit.training.trainer import pick_device

    run = load_run(args.run_dir, ema=args.weights == "ema", device=pick_device(args.device))
    add_adapters(run, getattr(args, "lora", None) or [])  # (invert has no --lora)
    return run


def float_rows(flag: str, path: str, key: str, width: int, fix: str, unit: str = "") -> Any:
    """The array ``key`` of the ``.npz`` a flag names, refused unless it is floats ``N x width`` (N >= 1); ``unit``
    says what a row is in the error line, ``fix`` how to make a good file."""
    from pathlib import Path

    from maskdit.data.datasets import read_npz

    rows = read_npz(Path(path), flag, fix).get(key)
    if rows is None or rows.dtype.kind != "f" or rows.ndim != 2 or rows.shape[1] != width or not len(rows):
        got = f"no '{key}' array" if rows is None else f"{rows.dtype} {rows.shape}"
        raise ConfigError(f"{flag} {path} must hold '{key}' as floats N x {width}{unit}, got {got}: {fix}")
    return rows


def cycled_rows(flag: str, path: str, rows: Any, num: int, fix: str) -> Any:
    """``num`` rows of a float array ``(N, D)``, cycled, as a float32 tensor; refused when not finite."""
    import numpy as np
    import torch

    if not np.isfinite(rows).all():
        raise ConfigError(f"{flag} {path} holds NaN or infinite values: {fix}")
    return torch.from_numpy(np.ascontiguousarray(rows, np.float32))[torch.arange(num) % len(rows)]


def observation_values(args: argparse.Namespace, run: Any, num: int) -> Any:
    """A policy's condition values for ``num`` samples: ``--observations`` (``observations`` ``N x D`` float),
    cycled; refused when missing, mis-shaped or not finite."""
    dim = run.model.conditioner.dim
    if not getattr(args, "observations", None):
        raise ConfigError(f"this model is a policy conditioned on observations of {dim} numbers: pass --observations "
                          "FILE.npz (observations N x D; maskdit data hopper --out FILE.npz writes some)")
    fix = "write them with maskdit data hopper --out FILE.npz"
    obs = float_rows("--observations", args.observations, "observations", dim, fix)
    return run.model.conditioner.given(cycled_rows("--observations", args.observations, obs, num, fix))


def audio_values(args: argparse.Namespace, run: Any, num: int) -> Any:
    """An audio-driven model's condition values for ``num`` samples from ``--audio``: a ``.wav`` (resampled to the
    model's rate and cut into consecutive windows of the model's length, the last padded with silence) or an
    ``.npz`` with ``sounds`` ``N x S`` at the model's rate (``maskdit data footsteps`` writes one); cycled."""
    from pathlib import Path

    import numpy as np

    from maskdit.data.audio import read_wav

    c = run.model.conditioner
    heard = f"{c.samples} samples at {c.rate} Hz"
    if not getattr(args, "audio", None):
        raise ConfigError(f"this model is conditioned on sound ({heard} per sample): pass --audio FILE.wav, or "
                          "FILE.npz with sounds N x S (maskdit data footsteps --out FILE.npz writes some)")
    suffix = Path(args.audio).suffix.lower()
    fix = "give a clean .wav, or write an .npz with maskdit data footsteps --out FILE.npz"
    if suffix == ".wav":
        wave = read_wav(args.audio, c.rate)
        pad = -len(wave) % c.samples
        sounds = np.concatenate([wave, np.zeros(pad, np.float32)]).reshape(-1, c.samples)
    elif suffix == ".npz":
        sounds = float_rows("--audio", args.audio, "sounds", c.samples, fix, f" ({heard})")
    else:
        raise ConfigError(f"--audio {args.audio}: give a .wav file, or an .npz with sounds N x {c.samples}")
    return c.given(cycled_rows("--audio", args.audio, sounds, num, fix))


def class_labels(args: argparse.Namespace, run: Any, num: int) -> Any:
    """``num`` labels cycling through ``--classes`` (default: all the model's classes); None for an
    unconditional model, which refuses ``--classes``."""
    from maskdit.data.datasets import cycled_labels

    n_classes = run.model.num_classes
    if n_classes == 0:
        if args.classes:
            raise ConfigError("--classes: this model is unconditional and takes no class labels")
        return None
    classes = args.classes or list(range(n_classes))
    if max(classes) >= n_classes:
        raise ConfigError(f"--classes: class {max(classes)} is out of range: this model has classes 0-{n_classes - 1}")
    return cycled_labels(classes, num)


def add_prompt_options(p: argparse.ArgumentParser) -> None:
    """``--prompt``, ``--prompts`` and ``--negative-prompt``: what a text model draws."""
    g = p.add_argument_group("text (models trained with model.condition=text)")
    g.add_argument("--prompt", action="append", metavar="TEXT",
                   help="a caption to draw (repeat for several; samples cycle through them, a grid row each)")
    g.add_argument("--prompts", metavar="FILE.txt", help="captions to draw, one per line")
    g.add_argument("--negative-prompt", metavar="TEXT",
                   help="guidance steers away from this caption instead of the null caption")


def add_control_options(p: argparse.ArgumentParser) -> None:
    """``--control`` and ``--control-scale``: what a controlled model follows."""
    g = p.add_argument_group("control (models trained with control.signal)")
    g.add_argument("--control", "--image-prompt", metavar="FILE.npz", dest="control",
                   help="images (an 'images' array like a dataset's, optional 'labels') whose control maps (the "
                   "run's control.signal: edges, a low-resolution or blurred copy; with control.signal=image the "
                   "images themselves: image prompts) the samples follow, in turn")
    g.add_argument("--control-scale", type=non_negative_float, default=1.0,
                   help="weight of what the control adds (default 1 = as trained; 0 ignores it)")


def read_control(args: argparse.Namespace, run: Any, maps_ok: bool = False) -> tuple[Any, Any, bool]:
    """``--control``'s images in model space (or, where ``maps_ok``, the ready-made control maps of a file with a
    ``maps`` array instead), their labels (``None`` when the file has none) and whether they are maps, checked
    against the model: the size, and labels inside its classes unless ``--classes`` chooses them."""
    from pathlib import Path

    import numpy as np
    import torch

    from maskdit.data.datasets import load_npz, read_npz

    model, path = run.model, args.control
    arrays = read_npz(Path(path), "--control file", "pass an .npz with an 'images' array (or 'maps')")
    if "maps" in arrays and "images" not in arrays:
        if not maps_ok:
            raise ConfigError(f"--control {path} holds ready-made maps, but this command scores samples against the "
                              "images the maps come from: pass those images ('images' array)")
        maps, labels, want = arrays["maps"], arrays.get("labels"), model.control_shape
        if maps.ndim == len(want) and want[0] == 1:
            maps = maps[:, None]
        if maps.dtype.kind != "f" or tuple(maps.shape[1:]) != tuple(want) or not len(maps):
            raise ConfigError(f"--control {path}: 'maps' must be floats (N, {', '.join(map(str, want))}) in [-1, 1] "
                              f"like control.signal={model.control_signal} makes, got {maps.dtype} "
                              f"{tuple(maps.shape)}")
        if not np.isfinite(maps).all() or np.abs(maps).max() > 1 + 1e-6:
            raise ConfigError(f"--control {path}: 'maps' must be finite and in [-1, 1] (model space)")
        images = torch.from_numpy(maps.astype(np.float32))
        labels = None if labels is None else torch.from_numpy(np.asarray(labels).astype(np.int64))
        is_maps = True
    else:
        given = load_npz(path)
        images, labels, is_maps = run.codec.encode(given.images), given.labels, False
        want = (model.in_channels, *model.input_size)
        if tuple(images.shape[1:]) != want:
            raise ConfigError(f"--control {path}: its images are {'x'.join(map(str, images.shape[1:]))} (C x H x "
                              f"W), but this model takes {'x'.join(map(str, want))}")
    classes = model.num_classes
    if labels is not None and classes and not args.classes and (int(labels.min()) < 0 or
                                                                int(labels.max()) >= classes):
        raise ConfigError(f"--control {path}: its labels fall outside this model's classes 0-{classes - 1}; "
                          "pass --classes to choose them")
    return images, labels, is_maps


def control_inputs(args: argparse.Namespace, run: Any, num: int) -> tuple[Any, Any] | None:
    """The control maps ``num`` samples follow and their images' labels (``None`` where there are none), cycling
    through ``--control``'s images or ready-made maps (or ``args.control_images``, set by ``eval`` from its real
    data); sets ``--control-scale``. ``None`` for a model without control, which refuses ``--control``."""
    import torch

    model, path = run.model, getattr(args, "control", None)
    if model.control is None:
        if path is not None or getattr(args, "control_scale", 1.0) != 1.0:
            raise ConfigError("--control/--control-scale: this model was trained without control.signal and follows "
                              "no control map")
        return None
    images, labels = getattr(args, "control_images", None), getattr(args, "control_labels", None)
    is_maps = False
    if images is None:
        if path is None:
            raise ConfigError(f"this model follows a control map (control.signal={model.control_signal}): pass "
                              "--control FILE.npz with the images to compute it from (or the maps themselves)")
        images, labels, is_maps = read_control(args, run, maps_ok=True)
    rows = torch.arange(num) % len(images)
    model.control.scale = float(getattr(args, "control_scale", 1.0))
    maps = images[rows] if is_maps else model.conditioner.maps(images[rows])
    return maps, None if labels is None else torch.as_tensor(labels)[rows]


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The captions of ``--prompt`` and ``--prompts`` (empty when neither is given); an unreadable or empty file
    and an empty prompt are refused."""
    from pathlib import Path

    prompts = list(getattr(args, "prompt", None) or [])
    path = getattr(args, "prompts", None)
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--prompts {path}: no such file; give a text file with one caption per line")
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--prompts {path}: cannot read it as UTF-8 text ({e})") from e
        found = [line.strip() for line in lines if line.strip()]
        if not found:
            raise ConfigError(f"--prompts {path} holds no captions: write one per line")
        prompts += found
    for prompt in prompts:
        if not prompt.strip():
            raise ConfigError("--prompt '': give a caption (an empty one is the model's null text; use "
                              "--guidance-scale 1 for unguided samples)")
    return prompts


def condition_values(args: argparse.Namespace, run: Any, num: int) -> tuple[Any, Any, list[str] | None]:
    """What ``num`` samples are conditioned on: ``(values, grid rows, prompts)``. A text model cycles through the
    prompts (token ids; rows by prompt); a class model through ``--classes`` (labels, rows by class)."""
    import torch

    prompts = read_prompts(args)
    conditioner = run.model.conditioner
    reads = getattr(conditioner, "reads", None)
    readers = {"observations": observation_values, "audio": audio_values}
    for flag, model_kind in (("observations", "a policy (model.condition=vector)"),
                             ("audio", "audio-driven models (model.condition=audio)")):
        if getattr(args, flag, None) and reads != flag:
            takes = {"labels": "--classes", "text": "--prompt"}.get(reads, "no condition")
            raise ConfigError(f"--{flag} applies to {model_kind}; this model takes {takes}")
    if reads in readers:
        if prompts or getattr(args, "negative_prompt", None) or args.classes:
            raise ConfigError(f"--classes/--prompt: this model is conditioned on {reads}: pass --{reads}")
        return readers[reads](args, run, num), None, None
    if run.model.text is None:
        if prompts or getattr(args, "negative_prompt", None):
            raise ConfigError("--prompt/--prompts/--negative-prompt: this model is not conditioned on text (it takes "
                              "--classes)" if conditioner is not None else "--prompt: this model is unconditional")
        control = control_inputs(args, run, num)
        if control is not None and control[1] is not None and not args.classes and run.model.num_classes:
            labels = control[1]  # each control image's own class
        else:
            labels = class_labels(args, run, num)
        if control is None:
            return labels, labels, None
        rows = labels if labels is not None else torch.zeros(num, dtype=torch.long)
        return conditioner.pack(labels, control[0]), rows, None
    if args.classes:
        raise ConfigError("--classes: this model is conditioned on text: pass --prompt TEXT or --prompts FILE.txt")
    if not prompts:
        raise ConfigError("this model is conditioned on text: pass --prompt TEXT (repeatable) or --prompts FILE.txt")
    rows = torch.arange(num) % len(prompts)
    values = conditioner.parse(prompts)[rows]
    control = control_inputs(args, run, num)  # a controlled text model: each prompt with the maps, in turn
    return (values if control is None else conditioner.pack(values, control[0])), rows, prompts


def negative_values(args: argparse.Namespace, run: Any, num: int, values: Any = None) -> Any:
    """``--negative-prompt`` as condition values for ``num`` samples (a controlled model's packed with the maps of
    ``values``, the samples' own), or ``None``."""
    text = getattr(args, "negative_prompt", None)
    if text is None:
        return None
    if not text.strip():
        raise ConfigError("--negative-prompt '': give a caption, or leave it out to guide away from the null text")
    conditioner = run.model.conditioner
    negative = conditioner.parse([text])
    negative = negative.expand(num, *negative.shape[1:])
    return negative if run.model.control is None else conditioner.with_condition(values, negative)


def sampling_settings(args: argparse.Namespace, run: Any, noise: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampling settings: each option given, else the ``--from-noise`` file's setting (``noise``, as
    :func:`from_noise` checked it), else the run's ``sample.*``; refuses options that do not fit the model."""
    from maskdit.diffusion.guidance import GUIDANCES
    from maskdit.diffusion.samplers import SAMPLERS, default_sampler
    from maskdit.registry import one_of

    noise = noise or {}
    fitting = SAMPLERS.names(objectives=run.objective.name)
    if args.sampler and args.sampler not in fitting:
        raise ConfigError(f"--sampler {args.sampler} does not fit this run's {run.objective.name} objective: "
                          f"use {one_of(fitting)}")
    model = run.model
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(run.config.sample)}
    s = run.config.sample.merged(given, noise)
    guidance, scale = s["guidance"], s["guidance_scale"]
    from_file = args.guidance_scale is None and noise.get("guidance_scale") is not None
    # asked for, not the run's defaults: a guidance needing labels on an unconditional model would sample unguided
    if (args.guidance_scale is not None or from_file or args.guidance) and scale != 1 and model.conditioner is None \
            and GUIDANCES.entry(guidance).facts["labels"]:
        source = ("--guidance-scale" if args.guidance_scale is not None
                  else f"the guidance_scale of --from-noise {args.from_noise}" if from_file
                  else f"--guidance {guidance} with the run's sample.guidance_scale")
        raise ConfigError(f"guidance scale {scale:g} ({source}): {guidance} guidance contrasts class labels and this "
                          "model is unconditional, so it would sample unguided: pass --guidance-scale 1"
                          + (", or use --guidance context with --task" if model.task_conditioning else ""))
    for key in ("temperature", "choice_temperature"):
        if getattr(args, key, None) is not None and run.objective.name != "masked":
            raise ConfigError(f"--{key.replace('_', '-')} sets a masked model's draws; this run's "
                              f"{run.objective.name} objective integrates real values: leave it out")
    channels = s["guidance_channels"]
    if channels is not None and channels > model.in_channels:
        where = "--guidance-channels" if args.guidance_channels else "the run's sample.guidance_channels"
        fits = "1" if model.in_channels == 1 else f"1-{model.in_channels}"
        raise ConfigError(f"{where} {channels}: this model predicts {model.in_channels} channel(s), so at most "
                          f"{model.in_channels} can be guided: pass --guidance-channels {fits} (or leave it out)")
    return {
        "sampler": s["sampler"] or default_sampler(run.objective),
        "steps": s["steps"],
        "guidance_scale": scale,
        "guidance_interval": s["guidance_interval"],
        "guidance": guidance,
        "guidance_channels": channels,
        "guidance_power": s["guidance_power"],
        "eta": s["eta"],
        "seed": args.seed,
        **{k: s[k] for k in ("temperature", "choice_temperature") if s[k] is not None},
        **({} if not getattr(args, "accel", None) else {"accel": _checked_accel(args.accel)}),
    }


def _checked_accel(spec: str) -> str:
    from maskdit.diffusion.accel import parse_accels

    parse_accels(spec)  # refuse a bad spec before any sampling starts
    return spec


def from_noise(args: argparse.Namespace, run: Any) -> dict[str, Any]:
    """``--from-noise``: the starting noise, and its labels and settings as defaults of the options left out
    (:func:`sampling_settings` takes them). A setting read from the file passes the checks of the option it
    stands for (``maskdit invert``'s ``--sampler``, ``--steps`` and ``--guidance-scale``), so a file cannot
    set what the command line would refuse."""
    from maskdit.data.media import load_noise
    from maskdit.diffusion.samplers import INVERSIONS, SAMPLERS
    from maskdit.registry import one_of

    if not getattr(args, "from_noise", None):
        return {}
    if getattr(args, "size", None) is not None:
        raise ConfigError("--size does not apply with --from-noise (the noise fixes the size)")
    found = load_noise(args.from_noise, (run.model.in_channels, *run.model.input_size), run.model.num_classes)
    fix = "write it again with maskdit invert on this run"
    for key, option, parse in (("steps", "--steps", positive_int),
                               ("guidance_scale", "--guidance-scale", guidance_scale_value)):
        value = found.get(key)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            found[key] = parse(str(value) if number else "")  # exactly the option's own check
            continue
        except argparse.ArgumentTypeError as e:
            wanted = str(e).partition(", got")[0].removeprefix("must be ")
        raise DataError(f"--from-noise {args.from_noise}: its {key} {value!r} is refused: like {option}, it must be "
                        f"{wanted}; {fix}")
    sampler = found.get("sampler")
    if sampler is not None:
        fitting = [n for n in INVERSIONS.names() if n in SAMPLERS.names(objectives=run.objective.name)]
        if sampler not in fitting:
            raise DataError(f"--from-noise {args.from_noise}: its sampler {sampler!r} is not one that inverts "
                            f"this run's {run.objective.name} objective ({one_of(fitting)}): the noise was "
                            f"inverted with another run; {fix}")
    return found


def draw(args: argparse.Namespace, run: Any, num: int, noise: dict[str, Any] | None = None
         ) -> tuple[Any, Any, dict, list[str] | None]:
    """Sample ``num`` inputs with the sampling options (from ``noise`` when given): ``(decoded samples, grid rows
    (labels, or each sample's prompt index), settings, prompts)``."""
    from maskdit.diffusion.samplers import generate
    from maskdit.diffusion.tasks import check_finite

    noise = noise or {}
    if args.guidance == "context":
        raise ConfigError("--guidance context contrasts given and open tokens: it needs --task and --context; "
                          "sample without a task with --guidance cfg")
    if noise.get("labels") is not None and not args.classes:
        labels, rows, prompts = noise["labels"], noise["labels"], None
    else:
        labels, rows, prompts = condition_values(args, run, num)
    negative = negative_values(args, run, num, labels)
    kwargs = sampling_settings(args, run, noise)
    size, tiled = getattr(args, "size", None), getattr(args, "tiled", False)
    scaling, entropy = getattr(args, "rope_scaling", "none"), getattr(args, "entropy_scale", False)
    if size is None and (scaling != "none" or entropy or tiled):
        flag = "tiled" if tiled else "rope-scaling" if scaling != "none" else "entropy-scale"
        raise ConfigError(f"--{flag} adapts a model to another size: give --size HxW too")
    if tiled and (scaling != "none" or entropy or noise.get("noise") is not None or negative is not None):
        raise ConfigError("--tiled runs the model at its training size, tile by tile: it takes no --rope-scaling, "
                          "--entropy-scale, --from-noise or negative prompt")
    if size is not None and not tiled:
        import torch

        try:  # the model's own rule: a smaller size (the corner of its grid), or any size with rotary positions
            run.model.grid_of(torch.empty(1, run.model.in_channels, *size, device="meta"))
        except ConfigError as e:
            raise ConfigError(f"--size {'x'.join(map(str, size))}: {e}; or sample beyond it by tiles (--tiled)") from e
    if tiled:
        from maskdit.diffusion.sizes import generate_large

        x = generate_large(run.model, run.objective, num, labels, size, strength=args.tile_strength,
                           structure=args.structure, overlap=args.tile_overlap, batch_size=args.batch_size,
                           progress=True, **kwargs)
    else:
        with run.model.layout.sizing(scaling, entropy):
            x = generate(run.model, run.objective, num, labels, batch_size=args.batch_size, progress=True, size=size,
                         start=noise.get("noise"), negative=negative, **kwargs)
    check_finite(x, kwargs)
    return run.codec.decode(x), rows, kwargs, prompts
