"""The DiT toolbox at equal wall-clock: MoE, each block option, RoPE and representation alignment against the
plain DiT, on the CPU.

    python benchmarks/toolbox.py --data digits --budget 120 --points 2 --num 400 --sample-steps 6 --batch 64
    python benchmarks/toolbox.py --data mnist32 --budget 600 --points 3 --num 400 --sample-steps 6 --batch 32 \\
        model.hidden_size=64

Every arm trains the same preset for the same number of seconds (the machinery of
``masking_convergence.py``: evaluations during training are taken out of the budget; the final row is
the EMA weights' domain FID and class accuracy), one after the other, so run it on a quiet machine.
MoE arms keep the active parameters of the dense model: each token passes one routed and one shared
expert of half the MLP width (``model.mlp_ratio=2``). The alignment arm first trains its encoder with
``maskdit encoder train`` on the same images (its time is printed, not counted in the budget, as REPA does
not count DINOv2's). Other arms add masked training: the masking study's best recipe on mnist32 (SPRINT at
0.75, then 10% of the budget unmasked) alone, with SwiGLU, RoPE and alignment, and the digits' best (TREAD
at 0.5) alone, with SwiGLU, and with SwiGLU and alignment together; the ``patch 1`` arms train the digits at
64 tokens instead of 16, unmasked and masked; the ``b32``/``b128`` arms change the batch (masked steps at twice
the batch cost about an unmasked one). Curves and the table go to ``docs/toolbox/DATA``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from maskdit.cli.args import guarded

sys.path.insert(0, str(Path(__file__).parent))
import masking_convergence as study  # noqa: E402  (the equal-wall-clock machinery)

ENCODERS = Path("runs/toolbox/encoders")
ARMS: dict[str, list[str]] = {
    "plain": [],
    "moe 4 (top-1 + 1 shared, half width)": ["model.moe.experts=4", "model.moe.top_k=1", "model.moe.shared=1",
                                             "model.mlp_ratio=2"],
    "moe 8 (top-1 + 1 shared, half width)": ["model.moe.experts=8", "model.moe.top_k=1", "model.moe.shared=1",
                                             "model.mlp_ratio=2"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "qk-norm": ["model.qk_norm=true"],
    "swiglu": ["model.mlp=swiglu"],
    "rope": ["model.pos=rope"],
    "rmsnorm + qk-norm + swiglu + rope": ["model.norm=rmsnorm", "model.qk_norm=true", "model.mlp=swiglu",
                                          "model.pos=rope"],
    "align (self-trained MAE encoder, block 2)": ["align.weight=0.5", "align.block=2"],
    # the masking study's best recipe alone and with the digits study's best option (SwiGLU)
    "sprint 0.75 + finetune": ["mask.recipe=sprint", "mask.ratio=0.75", "mask.shape=structured"],
    "swiglu + sprint 0.75 + finetune": ["model.mlp=swiglu", "mask.recipe=sprint", "mask.ratio=0.75",
                                        "mask.shape=structured"],
    "rope + sprint 0.75 + finetune": ["model.pos=rope", "mask.recipe=sprint", "mask.ratio=0.75",
                                      "mask.shape=structured"],
    "align + sprint 0.75 + finetune": ["align.weight=0.5", "align.block=2", "mask.recipe=sprint", "mask.ratio=0.75",
                                       "mask.shape=structured"],
    # the digits' best masked recipe (docs/masking.md: TREAD 0.5, a tie with unmasked at 16 tokens)
    "tread 0.5": ["mask.recipe=tread", "mask.ratio=0.5"],
    "swiglu + tread 0.5": ["model.mlp=swiglu", "mask.recipe=tread", "mask.ratio=0.5"],
    # progressive routing: 0.5 at the start, none by step 1,400 (about what a digits arm trains in 120 s)
    "tread 0.5 decaying": ["mask.recipe=tread", "mask.ratio=0.5", "mask.schedule=linear_decay",
                           "mask.schedule_steps=1400"],
    "swiglu + tread 0.5 decaying": ["model.mlp=swiglu", "mask.recipe=tread", "mask.ratio=0.5",
                                    "mask.schedule=linear_decay", "mask.schedule_steps=1400"],
    # two options at once (SwiGLU and alignment), alone and under the digits' best masked recipe
    "swiglu + align": ["model.mlp=swiglu", "align.weight=0.5", "align.block=2"],
    "swiglu + align + tread 0.5": ["model.mlp=swiglu", "align.weight=0.5", "align.block=2", "mask.recipe=tread",
                                   "mask.ratio=0.5"],
    # the digits at patch 1 (64 tokens instead of 16): a finer model whose steps masking can make cheap
    "patch 1": ["model.patch_size=1"],
    "patch 1 + drop 0.75 + finetune": ["model.patch_size=1", "mask.recipe=drop", "mask.ratio=0.75"],
    "patch 1 + sprint 0.75 + finetune": ["model.patch_size=1", "mask.recipe=sprint", "mask.ratio=0.75",
                                         "mask.shape=structured"],
    "patch 1 + tread 0.75": ["model.patch_size=1", "mask.recipe=tread", "mask.ratio=0.75"],
    "b32 plain": ["batch_size=32"],
    # MDT's mask latent modelling (a full pass plus a masked pass each step): masking as a learning aid that
    # costs more per step, not less; MDT's ratio of 0.3
    "mdt 0.3": ["mask.recipe=mdt", "mask.ratio=0.3"],
    "swiglu + mdt 0.3": ["model.mlp=swiglu", "mask.recipe=mdt", "mask.ratio=0.3"],
}
# twice the study's batch: a masked step at batch 128 costs about an unmasked step at 64
ARMS.update({f"b128 {label}": ["batch_size=128", *ARMS[label]] for label in
             ["plain", "sprint 0.75 + finetune", "swiglu + sprint 0.75 + finetune", "tread 0.5", "swiglu + tread 0.5"]})


def encoder_for(data: str, images: str) -> Path:
    """Train (once) the MAE encoder the alignment arm aligns with; prints its time."""
    out = ENCODERS / data
    if not (out / "encoder.json").is_file():
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "maskdit", "encoder", "train", images, "--out", str(out),
                               "--steps", "1500", "--batch", "128", "--patch", "2", "--width", "64", "--depth", "2",
                               "--heads", "4", "--no-progress"])
        if done.returncode:  # maskdit has said why on stderr
            sys.exit(done.returncode)
        print(f"[encoder] trained in {time.time() - start:.0f}s -> {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    data = argv[argv.index("--data") + 1] if "--data" in argv else "mnist32"
    if "--out" not in argv:
        argv += ["--out", f"docs/toolbox/{data}"]
    if "--runs" not in argv:
        argv += ["--runs", "runs/toolbox"]
    images = "digits" if data == "digits" else (argv[argv.index("--data-path") + 1]
                                                if "--data-path" in argv else "runs/data/mnist32.npz")
    arms = dict(ARMS)
    if "--only" in argv:  # ';'-separated label prefixes, in the order to run (labels may hold commas)
        at = argv.index("--only")
        prefixes = [v.strip() for v in argv[at + 1].split(";") if v.strip()]
        del argv[at:at + 2]
        chosen = [next((label for label in ARMS if label.startswith(prefix)), None) for prefix in prefixes]
        if None in chosen:
            unknown = [pre for pre, label in zip(prefixes, chosen) if label is None]
            study.fail(f"--only {unknown} starts no arm label; the labels: {'; '.join(ARMS)}")
        arms = {label: ARMS[label] for label in ["plain", *[c for c in chosen if c != "plain"]]}
    wanted = study.split_labels(argv[argv.index("--arms") + 1]) if "--arms" in argv else list(arms)
    table_only = "--table" in argv
    if not table_only and (problem := study.unknown_arms(wanted, arms)):
        study.fail(problem)  # before an alignment encoder is trained for the other arms
    aligned = [a for a in wanted if a in arms and any(o.startswith("align.weight") for o in arms[a])]
    if aligned and not table_only:
        if data == "mnist32" and not Path(images).is_file():
            study.make_mnist32(Path(images))
        for label in aligned:
            arms[label] = [*arms[label], f"align.encoder={encoder_for(data, images)}"]
    study.ARMS.clear()
    study.ARMS.update(arms)
    study.BASELINE = "plain"
    study.main(argv)

if __name__ == "__main__":
    sys.exit(guarded(main))
