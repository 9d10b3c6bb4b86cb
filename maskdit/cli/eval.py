"""``maskdit eval``: score samples (drawn from a run, or given) against real images: FID/KID, domain FID,
precision/recall and class recognition; a motion or voxel run by its modality's own measure."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from maskdit.cli.args import positive_int
from maskdit.cli.options import add_control_options, add_sampling_options, draw, load
from maskdit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_options(p)
    add_control_options(p)
    p.add_argument("run_dir", nargs="?",
                   help="run or checkpoint directory (may be left out with --samples and --data)")
    p.add_argument("--num", type=positive_int, default=500, help="samples to draw (default 500)")
    p.add_argument("--samples", help="score these samples (.npz: images, optional labels) instead of drawing")
    p.add_argument("--data", help="real images to compare with: digits, FILE.npz, a directory with images.npy "
                   "or an image folder (default: the run's dataset)")
    p.add_argument("--metrics", help="comma-separated subset of fid,kid,domain_fid,pr,class,control,geneval "
                   "(default: all that apply; fid,kid need the extra maskdit[fid]; control: controlled models; "
                   "geneval: text models)")


def real_images(args: argparse.Namespace, run: Any) -> Any:
    """The real images to compare with: ``--data`` (see :func:`maskdit.data.datasets.images_from_spec`) or the
    run's dataset."""
    from maskdit.data.datasets import dataset_from_config, images_from_spec

    if args.data is None:
        dataset = dataset_from_config(run.config.data)
        if not hasattr(dataset, "images"):
            raise ConfigError(f"{args.run_dir} trains on {run.codec.name} ids, not images: score its decoded samples "
                              "against the images they came from (--data IMAGES)")
        return dataset
    return images_from_spec(args.data)


def text_prompts(args: argparse.Namespace, run: Any, dataset: Any, metrics: list[str], default: bool
                 ) -> list[str] | None:
    """A text model draws captions: with ``geneval`` the shapes test split's (held-out compositions; also added
    to the default metrics of a model trained on shapes), else the real dataset's in turn. Sets ``args.prompt``;
    returns each caption's kind (``None`` for a class or unconditional model, which ``geneval`` refuses)."""
    from maskdit.data.shapes import shapes_dataset

    if run.model.text is None:
        if "geneval" in metrics:
            raise ConfigError("--metrics geneval judges captioned samples: it needs a text model "
                              "(model.condition=text)")
        return None
    if default and run.config.data.name == "shapes" and "geneval" not in metrics:
        metrics.append("geneval")
    if "geneval" in metrics:
        test = shapes_dataset(args.num, "test")
        args.prompt, args.prompts = [str(c) for c in test["captions"]], None
        if run.model.control is not None and not args.control:  # each caption with its own test scene's map
            import torch

            from maskdit.data.codec import PIXELS

            args.control_images = PIXELS.encode(torch.as_tensor(test["images"]).permute(0, 3, 1, 2))
            args.control_labels = None
        return [str(k) for k in test["kinds"]]
    captions = dataset.captions or []
    if not captions:
        raise ConfigError(f"dataset {dataset.name} has no captions to draw this text model's samples from: score it "
                          "against captioned data (--data FILE.npz with a captions array)")
    args.prompt, args.prompts = [captions[i % len(captions)] for i in range(args.num)], None
    return None


def control_sources(args: argparse.Namespace, run: Any, dataset: Any, metrics: list[str], default: bool) -> Any:
    """A controlled model draws with the control maps of real images: ``--control``'s, else the real dataset's
    in turn (with their labels). Sets ``args.control_images``; returns those images (model space), or ``None``
    for a model without control, which ``--metrics control`` refuses."""
    import torch

    from maskdit.cli.options import read_control

    if run.model.control is None:
        if "control" in metrics:
            raise ConfigError("--metrics control scores how samples follow their control maps: it needs a model "
                              "trained with control.signal")
        return None
    if default and "control" not in metrics:
        metrics.append("control")
    if args.control:
        images, labels, _ = read_control(args, run)
        index = torch.arange(args.num) % len(images)
        images, labels = images[index], None if labels is None else torch.as_tensor(labels)[index]
    elif getattr(args, "control_images", None) is not None:  # set with the captions they go with (geneval)
        return args.control_images
    else:
        images, labels = dataset.batch(torch.arange(args.num) % len(dataset))
    args.control_images, args.control_labels = images, labels
    return images


def likelihood_bound(loaded: Any, dataset: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``--metrics nll``: a masked model's bound in bits per token on the real images (the run's data, or ``--data``),
    encoded as the run's token ids and paired with their labels; a model over a tokenizer's ids or text on its own
    data (a text run's test split)."""
    import torch

    from maskdit.data.datasets import dataset_from_config
    from maskdit.diffusion.masked import bits_per_token

    if loaded is None or loaded.objective.name != "masked":
        raise ConfigError("--metrics nll is the likelihood bound of a masked model over token ids: it needs a run "
                          "trained with objective.name=masked")
    if not loaded.codec.stores_pixels:
        own = dataset_from_config(loaded.config.data, "test")
        x0, labels = own.batch(torch.arange(len(own)))
        return bits_per_token(loaded.model, loaded.objective, x0, labels if loaded.model.conditioner else None,
                              batch_size=args.batch_size)
    labels = None
    if loaded.model.conditioner is not None:
        if loaded.model.text is not None or dataset.labels is None:
            raise ConfigError(f"--metrics nll scores a class-conditional model on labelled images, and {dataset.name} "
                              "has no labels (or the model reads captions): score it on labelled data (--data)")
        labels = dataset.labels
    return bits_per_token(loaded.model, loaded.objective, loaded.codec.encode(dataset.images), labels,
                          batch_size=args.batch_size)


def score_modality(args: argparse.Namespace, run: Any, modality: str, requested: list[str] | None) -> int:
    """A motion, voxel or audio run is scored by its modality's own measure (``MODALITY_EVALS``: in-betweening
    against slerp; 1-NNA with the Chamfer distance; spoken digits recognised), with ``--num`` examples and the
    sampling options."""
    from maskdit.data.datasets import dataset_from_config
    from maskdit.evaluate.suite import MODALITY_EVALS

    if modality not in MODALITY_EVALS:
        raise ConfigError(f"{args.run_dir} generates {modality}, which maskdit cannot score yet; look at its samples: "
                          "maskdit sample RUN --out FILE")
    summary = MODALITY_EVALS.entry(modality).summary
    if args.samples or args.data or requested is not None:
        raise ConfigError(f"{args.run_dir} generates {modality}: maskdit eval scores it by {summary}; leave out "
                          "--samples, --data and --metrics")
    cfg = run.config
    cfg.eval_num, cfg.seed = args.num, args.seed
    cfg.sample.sampler, cfg.sample.steps = args.sampler or cfg.sample.sampler, args.steps or cfg.sample.steps
    if args.guidance_scale is not None:
        cfg.sample.guidance_scale = args.guidance_scale
    start = time.time()
    scores = MODALITY_EVALS.get(modality)(run.model, run.objective, dataset_from_config(cfg.data), cfg)
    if "skipped" in scores:
        raise ConfigError(f"{args.run_dir} cannot be scored: {scores['skipped']}; listen to or look at its samples: "
                          "maskdit sample RUN --out FILE")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if isinstance(v, float))
    print(f"{modality}: {shown}  [{scores.get('num', 0)} examples, step {run.step}, "
          f"{cfg.sample.sampler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance_scale:g}, "
          f"{time.time() - start:.1f}s]")
    print(json.dumps({"step": run.step, "modality": modality, **scores}))
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from maskdit.data.datasets import load_npz, modality_name
    from maskdit.evaluate.suite import check_shape, parse_metrics, resolve_metrics, score_lines, score_samples
    from maskdit.training.trainer import pick_device

    if args.run_dir is None and not (args.samples and args.data):
        raise ConfigError("eval needs RUN_DIR, or --samples FILE.npz together with --data to compare against")
    requested = parse_metrics(args.metrics) if args.metrics is not None else None
    loaded = load(args) if args.run_dir else None
    modality = None if loaded is None else modality_name(loaded.dataset["name"])  # motion, voxels, audio
    if modality is not None:
        return score_modality(args, loaded, modality, requested)
    if loaded is not None and getattr(loaded.codec, "decodes_text", False):
        if requested not in (None, ["nll"]):
            raise ConfigError(f"{args.run_dir} is a text model: maskdit eval scores it by --metrics nll (the bound on "
                              "its held-out text); generative perplexity: python benchmarks/text_diffusion.py")
        bound = likelihood_bound(loaded, None, args)
        print(f"likelihood bound: {bound['bits_per_token']:.4f} +- {bound['stderr']:.4f} bits per token on "
              f"{bound['num']} held-out sequences ({bound['times']} times each)  [step {loaded.step}]")
        print(json.dumps({"step": loaded.step, "metrics": ["nll"], "nll": bound}))
        return 0
    if loaded is not None and len(loaded.model.input_size) != 2:
        raise ConfigError(f"maskdit eval scores image models; {args.run_dir} generates "
                          f"{len(loaded.model.input_size)}-D grids: for video tasks use "
                          f"python benchmarks/video_tasks.py {args.run_dir}")
    dataset = real_images(args, loaded)
    start = time.time()
    if args.samples:
        given = load_npz(args.samples)
        check_shape(given.images, dataset, f"--samples {args.samples}")
        metrics = resolve_metrics(requested, dataset, has_labels=given.labels is not None)
        images, labels = given.images, given.labels
        kwargs: dict[str, Any] = {"sampler": None, "steps": None, "guidance_scale": None, "seed": None,
                                  "samples": args.samples}
        context = f"{len(images)} samples from {args.samples}"
    else:
        check_shape(torch.empty(0, loaded.model.in_channels, *loaded.model.input_size), dataset,
                    f"model of {args.run_dir}")
        metrics = resolve_metrics(requested, dataset, has_labels=loaded.model.num_classes > 0)
        kinds = text_prompts(args, loaded, dataset, metrics, requested is None)
        sources = control_sources(args, loaded, dataset, metrics, requested is None)
        images, labels, kwargs, _ = draw(args, loaded, args.num)
        if loaded.model.text is not None:
            labels = None  # the rows of a text model's samples are prompts, not classes
        context = (f"{len(images)} samples, step {loaded.step}, sampler={kwargs['sampler']}, steps={kwargs['steps']}, "
                   f"guidance_scale={kwargs['guidance_scale']}, seed={kwargs['seed']}")
    sampling_s = time.time() - start
    device = next(loaded.model.parameters()).device if loaded else pick_device(args.device)
    scores = score_samples(images, labels, dataset, [m for m in metrics if m not in ("geneval", "control", "nll")],
                           device=device)
    if "control" in metrics:
        from maskdit.evaluate.control import adherence

        signal = loaded.model.control_signal
        scores["control"] = {"signal": signal, **adherence(loaded.codec.encode(images), sources, signal)}
    if "nll" in metrics:
        scores["nll"] = likelihood_bound(loaded, dataset, args)
    if "geneval" in metrics:
        from maskdit.evaluate.geneval import detector_accuracy, score

        scores["geneval"] = {**score(images.permute(0, 2, 3, 1).numpy(), args.prompt, kinds),
                             "detector_accuracy": detector_accuracy()}
    scores["time_s"] = {"sampling": round(sampling_s, 2) if not args.samples else 0.0, **scores["time_s"]}
    for line in score_lines(scores, len(images), labels is not None, context):
        print(line)
    if not metrics:
        print("no metric applies: the dataset has no labels and the Inception extra is missing", file=sys.stderr)
    result: dict[str, Any] = {"num": len(images), "step": loaded.step if loaded else None, **kwargs,
                              "metrics": metrics, **scores}
    print(json.dumps(result))
    return 0
