"""``maskdit report``: one self-contained HTML page about a run.

The page holds the training curves and the curves of evaluations logged during training (matplotlib,
embedded as base64 PNG), a sample grid from the EMA weights of every checkpoint, the throughput and the
full config. Nothing is loaded from elsewhere — no scripts, stylesheets, fonts or remote images — so it
opens offline and can be mailed or archived as a single file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdit.errors import CheckpointError
from maskdit.files import atomic_file

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 2px 10px; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } th { background: #e8e8e8; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; max-width: 420px; }
img.grid { image-rendering: pixelated; zoom: 2; }
"""


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training records and evaluation records (``{"step", "eval": {...}}``) of a metrics.jsonl file."""
    train, evals = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: skip it, keep the rest
            (evals if "eval" in record else train).append(record)
    return train, evals


def throughput(records: list[dict[str, Any]]) -> dict[str, float] | None:
    """Steps/s over all logged intervals (each interval weighted by its steps; robust to resumes)."""
    steps = seconds = 0.0
    rates = []
    previous = 0
    for r in records:
        rate, step = r.get("steps_per_s"), r.get("step", 0)
        if rate and step > previous:
            steps += step - previous
            seconds += (step - previous) / rate
            rates.append(rate)
        previous = step
    if not rates:
        return None
    return {"steps_per_s": steps / seconds, "median_steps_per_s": float(np.median(rates)),
            "train_seconds": seconds, "steps": steps}


def png_data_uri(png: bytes) -> str:
    """A data URI of PNG bytes (or of an animated GIF's, recognised by its signature)."""
    kind = "gif" if png[:4] == b"GIF8" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(png).decode("ascii")


EXPERT_LOAD = "expert_load_"  #: metrics keys of a mixture of experts' per-expert load, drawn in one panel


def plot_curves(records: list[dict[str, Any]], keys: list[str], title: str) -> bytes:
    """One small panel per key against the step, as PNG bytes (matplotlib without pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), dpi=90)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        if key == EXPERT_LOAD.rstrip("_"):
            names = sorted({k for r in records for k in r if k.startswith(EXPERT_LOAD)}, key=lambda k: int(k[12:]))
            for name in names:
                pts = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
                ax.plot(*zip(*pts), linewidth=1.0, label=name[12:])
            ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
            ax.legend(title="expert", fontsize=6, title_fontsize=7, ncol=2)
            key = "expert load (1 = an even share)"
            pts = []
        else:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(pts) < 30 else None, linewidth=1.2)
            if key in ("loss", "grad_norm", "lr") and min(ys) > 0 and max(ys) / min(ys) > 20:
                ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def text_png(lines: list[str]) -> bytes:
    """A text model's samples as a picture of their lines (black on white, PIL's built-in font), so the report
    shows them where it shows an image model's grid."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = max(int(font.getlength(line)) for line in lines) + 12
    height = 14 * len(lines) + 10
    picture = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(picture)
    for row, line in enumerate(lines):
        draw.text((6, 5 + 14 * row), line, fill=0, font=font)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def condition_summary(model: dict[str, Any]) -> str:
    """What a saved model (its config) conditions on, in a few words: its classes, or its captions (and a control
    map)."""
    if model.get("control"):
        plain = condition_summary({**model, "control": None})
        return f"{plain} and a control map ({model['control']}, {model.get('control_kind', 'concat')})"
    options = model.get("condition_options") or {}
    if model.get("condition") == "text":
        return (f"captions (text encoder of {options.get('depth')} layers, {len(options.get('vocab', []))} words, "
                f"{options.get('length')} tokens; text={model.get('text')})")
    if model.get("condition") == "hf":
        return f"captions (frozen encoder {options.get('encoder')}; text={model.get('text')})"
    return f"{model['num_classes']} classes"


def report_prompts(run: Any, count: int = 6) -> list[str] | None:
    """The prompts a text model's report draws: one test caption of each kind on shapes, else the data's first
    distinct captions; ``None`` for a model that does not read text."""
    if getattr(run.model.conditioner, "reads", None) != "text":
        return None
    from maskdit.data.datasets import dataset_from_config

    if run.config.data.name == "shapes":
        from maskdit.data.shapes import KINDS, shapes_dataset

        return [str(c) for c in shapes_dataset(len(KINDS), "test")["captions"]]
    captions = getattr(dataset_from_config(run.config.data), "captions", None) or []
    return list(dict.fromkeys(captions))[:count] or None


def checkpoint_samples(ckpt: Path, per_class: int, seed: int, device: str | torch.device,
                       progress: bool) -> tuple[bytes, str]:
    """A grid of EMA samples from one checkpoint with the run's sampler settings, and its caption."""
    from maskdit.data.datasets import dataset_from_config
    from maskdit.data.media import grid_png
    from maskdit.data.modalities import modality_of
    from maskdit.diffusion.samplers import default_sampler, generate
    from maskdit.runs import load_run

    run = load_run(ckpt, ema=True, device=device)
    s = run.config.sample
    sampler = s.sampler or default_sampler(run.objective)
    classes = run.model.num_classes
    num = per_class * classes if classes else per_class * per_class
    labels = torch.arange(num) % classes if classes else None
    prompts = report_prompts(run)
    values = labels
    if prompts:  # a text model: a row of samples per prompt
        num = per_class * len(prompts)
        labels = torch.arange(num) % len(prompts)
        values = run.model.conditioner.parse(prompts)[labels]
    if getattr(run.model.conditioner, "reads", None) in ("observations", "audio"):  # values from its own data
        data = dataset_from_config(run.config.data)
        values = run.model.conditioner.values(data)[torch.linspace(0, len(data) - 1, num).long()]
    if run.model.control is not None:  # the control maps of the run's first images, with their labels (prompts)
        data = dataset_from_config(run.config.data)
        sources, real = data.batch(torch.arange(num) % len(data))
        if not prompts:
            labels = values = real if classes else None
        values = run.model.conditioner.value(values, sources)
    start = time.time()
    x = generate(run.model, run.objective, num, values, sampler=sampler, steps=s.steps,
                 guidance_scale=s.guidance_scale, guidance_interval=s.guidance_interval, guidance=s.guidance,
                 guidance_channels=s.guidance_channels, guidance_power=s.guidance_power, eta=s.eta, seed=seed,
                 progress=progress)
    caption = (f"step {run.step}: {num} samples from the EMA weights, sampler={sampler}, steps={s.steps}, "
               f"guidance_scale={s.guidance_scale}, seed={seed} ({time.time() - start:.1f}s)")
    if prompts:
        caption += "; rows: " + "; ".join(f"{i + 1}. {p}" for i, p in enumerate(prompts))
    images = run.codec.decode(x)
    modality = modality_of(run.dataset["name"])
    if modality is not None:  # as a person looks at it (motion: stick figures, animated)
        return modality.preview(images), caption
    if isinstance(images, list):  # a text model's lines
        return text_png(images), caption
    if images.dim() == 5:  # video: one clip per row
        from maskdit.data.media import clips_as_rows

        images, labels = clips_as_rows(images)
    return grid_png(images, labels), caption


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> str:
    e = html.escape
    head = "<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)) or v is None:
        return json.dumps(v)
    return str(v)


def _img(png: bytes, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{png_data_uri(png)}">'


def build_report(run_dir: str | Path, per_class: int = 4, seed: int = 0, device: str | torch.device = "cpu",
                 progress: bool = True) -> str:
    """The HTML text of a run's report (see the module docstring)."""
    from maskdit.checkpoint import list_checkpoints
    from maskdit.files import read_json

    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    if not (run_dir / "config.json").is_file() and not ckpts:
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json, no checkpoints): "
                              "pass the run_dir a training run wrote")
    info = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else read_json(
        ckpts[-1] / "config.json")
    train, evals = read_metrics(run_dir / "metrics.jsonl")
    e = html.escape
    parts = [f"<h1>maskdit run report: {e(str(run_dir))}</h1>",
             f"<p>written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}; dataset {e(str(info['dataset']['name']))} "
             f"({info['dataset']['size']} examples of {e('x'.join(map(str, info['dataset']['shape'])))}); "
             f"{len(ckpts)} checkpoint(s); {len(train)} training and {len(evals)} evaluation records.</p>"]

    parts.append("<h2>Throughput</h2>")
    tp = throughput(train)
    if tp:
        parts.append(_table([("steps/s over all logged steps", tp["steps_per_s"]),
                             ("median steps/s of the logged intervals", tp["median_steps_per_s"]),
                             ("training seconds (from steps/s)", tp["train_seconds"]),
                             ("steps logged", int(tp["steps"])),
                             ("last step", train[-1]["step"])]))
    else:
        parts.append("<p>no training records in metrics.jsonl</p>")

    parts.append("<h2>Training curves</h2>")
    skip = {"step", "elapsed_s"}
    keys = [k for k in dict.fromkeys(k for r in train for k in r) if k not in skip
            and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in train)]
    experts = [k for k in keys if k.startswith(EXPERT_LOAD)]
    if experts:  # one panel for all experts' loads (a mixture-of-experts model)
        keys = [k for k in keys if k not in experts] + [EXPERT_LOAD.rstrip("_")]
    parts.append(_img(plot_curves(train, keys, "training"), "training curves") if keys and train
                 else "<p>no training records</p>")

    parts.append("<h2>Evaluations during training</h2>")
    if evals:
        flat = [{"step": r["step"], **r["eval"]} for r in evals]
        metric_keys = [k for k in ("domain_fid", "fid", "kid", "precision", "recall", "class_accuracy",
                                   "inbetween_rotation_deg", "slerp_rotation_deg")
                       if any(isinstance(f.get(k), (int, float)) for f in flat)]
        if metric_keys:
            parts.append(_img(plot_curves(flat, metric_keys, "evaluation (EMA weights)"), "evaluation curves"))
        cols = ["step", *metric_keys, "num", "sampler", "steps", "guidance_scale", "seed", "seconds"]
        parts.append(_table([tuple(f.get(c, "") for c in cols) for f in flat], tuple(cols)))
    else:
        parts.append("<p>none logged (set eval_every=N in the config to log domain FID and class accuracy "
                     "every N steps)</p>")

    parts.append("<h2>Samples per checkpoint</h2>")
    for ckpt in ckpts:
        png, caption = checkpoint_samples(ckpt, per_class, seed, device, progress)
        parts.append(f"<figure>{_img(png, caption, 'grid')}<figcaption>{e(caption)}</figcaption></figure>")
    if not ckpts:
        parts.append("<p>no checkpoints</p>")

    parts.append("<h2>Config</h2>")
    parts.append(_table(_flatten(info["config"]), ("key", "value")))
    parts.append("<h2>Model</h2>")
    parts.append(_table(_flatten(info.get("model", {})), ("key", "value")))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>maskdit report: {e(run_dir.name)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, per_class: int = 4, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); returns the path."""
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    text = build_report(run_dir, per_class, seed, device, progress)
    with atomic_file(out, "--out") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def describe_checkpoint(path: str | Path) -> tuple[list[str], dict[str, Any]]:
    """What a run's latest (or a given) checkpoint holds, as ``maskdit info`` prints it: lines for people
    (model, objective and sampler defaults, data, files, the run's other checkpoints) and a record for
    programs (``checkpoint``, ``step``, ``params``, ``model``). Only the files' headers are read."""
    from maskdit.checkpoint import list_checkpoints, resolve_checkpoint
    from maskdit.diffusion.samplers import default_sampler
    from maskdit.files import read_json
    from maskdit.model.dit import parameter_count

    ckpt = resolve_checkpoint(path)
    info = read_json(ckpt / "config.json", keys=("config", "model", "dataset"))
    state = read_json(ckpt / "state.json", keys=("step", "data_position"))
    params = parameter_count(ckpt / "ema.safetensors")
    cfg, model, data = info["config"], info["model"], info["dataset"]
    lines = [f"checkpoint: {ckpt} (step {state['step']} of {cfg['steps']})",
             f"model: DiT depth {model['depth']}, width {model['hidden_size']}, {model['num_heads']} heads, "
             f"patch {model['patch_size']}, input {model['in_channels']}x{'x'.join(map(str, model['input_size']))}, "
             f"{condition_summary(model)}, {params / 1e6:.2f}M parameters"]
    sampler = cfg["sample"]["sampler"] or default_sampler(cfg["objective"]["name"])
    lines += [f"objective: {cfg['objective']['name']}; sampler default: {sampler} "
              f"{cfg['sample']['steps']} steps, guidance {cfg['sample']['guidance_scale']}",
              f"data: {data['name']} ({data['size']} examples of {'x'.join(map(str, data['shape']))}), "
              f"position {state['data_position']}",
              "files: " + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in sorted(ckpt.iterdir()))]
    lora = info.get("lora")
    if isinstance(lora, dict):  # the files hold only the updates; the count above is theirs
        lines.append(f"LoRA adapter: rank {lora.get('rank')} on {lora.get('layers')} layers "
                     f"({', '.join(lora.get('targets', []))}), scale {lora.get('scale')}, of the base "
                     f"{lora.get('base')} (sha256 {str(lora.get('sha256'))[:12]})")
    others = [p.name for p in list_checkpoints(ckpt.parent.parent)] if ckpt.parent.name == "checkpoints" else []
    if others:
        lines.append(f"checkpoints in run: {', '.join(others)}")
    return lines, {"checkpoint": str(ckpt), "step": state["step"], "params": params, "model": model,
                   **({"lora": lora} if isinstance(lora, dict) else {})}
