"""Converting a trained full-attention run to the linear-cost attention kinds: domain FID as converted, and after a
short finetune distilled from the full run (LiT's weight inheritance plus knowledge distillation).

    python benchmarks/attention_convert.py runs/attn/full --kinds linear,window,proxy --shares 0.02,0.1 model.window=2

For each kind the full run's weights load into a model of that kind (the layers the kinds share; a kind's own layers
start neutral: ``maskdit train init_from=RUN model.attention=KIND``), which is scored as it is, then finetuned for each
share of the full run's training steps with the full run as the teacher (``distill.teacher``, ``distill.weight``;
``--attention W`` adds CLEAR's attention-output distillation, ``distill.attention``) and scored again; with
``--scratch`` the kind is also trained from scratch for the largest share's steps. Scores: domain FID and class
accuracy of ``--num`` samples (the run's sampler, steps and guidance), noise seeds 0 and 1. The
``overrides`` (``model.window=2``, ``lr=3e-4``) apply to every converted run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from maskdit.cli.args import Parser, guarded, non_negative_float, positive_int


def score(model: torch.nn.Module, objective, config, codec, num: int, dataset) -> list[dict]:  # noqa: ANN001
    from maskdit.diffusion.samplers import generate
    from maskdit.evaluate.suite import score_samples

    s = config.sample
    labels = torch.arange(num) % model.num_classes if model.num_classes else None
    out = []
    for seed in (0, 1):
        x = generate(model, objective, num, labels, sampler=s.sampler, steps=s.steps, guidance_scale=s.guidance_scale,
                     seed=seed)
        out.append(score_samples(codec.decode(x), labels, dataset, ["domain_fid", "class"], progress=False))
    return out


def converted(run, kind: str, overrides: list[str]) -> torch.nn.Module:  # noqa: ANN001
    """The full run's EMA weights in a model of ``kind`` (what ``init_from`` loads), with ``model.KEY=V`` overrides."""
    from maskdit.checkpoint import load_weights
    from maskdit.model import DiT
    from maskdit.model.attention import kind_layer

    config = dict(run.model.config, attention=kind)
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("model."):
            config[key[len("model."):]] = yaml.safe_load(value)
    model = DiT.from_config(config)
    load_weights(model, run.path / "ema.safetensors", optional=kind_layer)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a trained full-attention run")
    p.add_argument("--kinds", default="linear,window,proxy")
    p.add_argument("--shares", default="0.02,0.1", help="finetune steps as shares of the run's steps")
    p.add_argument("--distill", type=non_negative_float, default=0.5, help="distill.weight (0: no teacher)")
    p.add_argument("--attention", type=non_negative_float, default=0.0,
                   help="distill.attention: weight of the blocks' attention-output gap to the teacher (CLEAR)")
    p.add_argument("--num", type=positive_int, default=500)
    p.add_argument("--scratch", action="store_true", help="also train each kind from scratch for the largest share")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides of every converted run")
    args = p.parse_intermixed_args(argv)
    from maskdit.cli.app import main as cli
    from maskdit.data.datasets import dataset_from_config
    from maskdit.model.attention import ATTENTIONS
    from maskdit.runs import load_run

    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in ATTENTIONS.names() or k == "full" for k in kinds):
        p.error(f"--kinds {args.kinds!r}: choose from linear, window, proxy, tile, separated by commas")
    shares = sorted(float(s) for s in args.shares.split(",") if s)
    full = load_run(args.run)
    dataset = dataset_from_config(full.config.data)
    rows = [("full attention", "-", score(full.model, full.objective, full.config, full.codec, args.num, dataset), 0.0)]
    work = Path(tempfile.mkdtemp(prefix="convert-"))
    for kind in kinds:
        model = converted(full, kind, args.overrides)
        rows.append((f"{kind}, converted", 0, score(model, full.objective, full.config, full.codec, args.num, dataset),
                     0.0))
        plans = [(share, True) for share in shares] + ([(shares[-1], False)] if args.scratch else [])
        for share, inherit in plans:
            steps = max(1, round(share * full.config.steps))
            cfg = full.config.to_dict()
            out = work / f"{kind}-{steps}-{'ft' if inherit else 'scratch'}"
            cfg.update(steps=steps, run_dir=str(out), ckpt_every=steps, keep_checkpoints=1, eval_every=0,
                       warmup_steps=min(cfg.get("warmup_steps", 0), steps // 10),
                       init_from=str(args.run) if inherit else None)
            cfg["model"] = dict(cfg["model"], attention=kind)
            if inherit and args.distill:
                cfg["distill"] = {"teacher": str(args.run), "weight": args.distill, "attention": args.attention}
            config_path = work / f"{out.name}.yaml"
            config_path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if v is not None}))
            start = time.perf_counter()
            assert cli(["train", "--no-progress", str(config_path), *args.overrides]) == 0
            seconds = time.perf_counter() - start
            run = load_run(out)
            if not inherit:
                how = f"from scratch, {steps} steps"
            elif not args.distill:
                how = f"+ {steps} steps"
            else:
                extra = f", attention outputs {args.attention:g}" if args.attention else ""
                how = f"+ {steps} steps distilled (weight {args.distill:g}{extra})"
            rows.append((f"{kind}, {how}", steps, score(run.model, run.objective, run.config, run.codec, args.num,
                                                          dataset), seconds))
    base = sum(s["domain_fid"] for s in rows[0][2]) / 2
    print(f"\nrun {args.run} (step {full.step} of {full.config.steps}), {args.num} samples x seeds 0 and 1, "
          f"overrides {' '.join(args.overrides) or '-'}\n")
    print("| model | steps | domain FID (seed 0 / 1) | vs full | class accuracy | seconds |")
    print("|---|---|---|---|---|---|")
    for name, steps, scores, seconds in rows:
        fid = sum(s["domain_fid"] for s in scores) / 2
        fids = " / ".join(f"{s['domain_fid']:.2f}" for s in scores)
        accs = " / ".join(f"{s['class_accuracy']:.3f}" for s in scores)
        print(f"| {name} | {steps} | {fids} | {fid / base:.2f}x | {accs} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(guarded(main))
