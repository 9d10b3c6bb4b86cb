"""Bad inputs for the toolbox's config keys (MoE, RoPE, norms, alignment, distillation, routes, guidance
channels), seeds, odd paths and torchrun's environment; the harness and its five checks are in ``corpus.py``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from corpus import TRAIN, C, Case, Runs, assert_distinct, check, folder, succeed, text, word

SAMPLE1 = ["sample", "{img}", "--num", "2", "--steps", "1"]

CASES: list[Case] = [
    # ---- the toolbox's keys ------------------------------------------------------------------------
    C("toolbox-moe-top-k-zero", [*TRAIN, "model.moe.experts=4", "model.moe.top_k=0"], "model.moe.top_k"),
    C("toolbox-moe-top-k-above-experts", [*TRAIN, "model.moe.experts=4", "model.moe.top_k=5"], "top_k"),
    C("toolbox-moe-capacity-zero", [*TRAIN, "model.moe.experts=4", "model.moe.capacity=0"], "model.moe.capacity"),
    C("toolbox-moe-capacity-nan", [*TRAIN, "model.moe.experts=4", "model.moe.capacity=nan"], "model.moe.capacity"),
    C("toolbox-moe-balance-negative", [*TRAIN, "model.moe.experts=4", "model.moe.balance=-1"], "model.moe.balance"),
    C("toolbox-moe-routing-bogus", [*TRAIN, "model.moe.experts=4", "model.moe.routing=random"],
      "model.moe.routing"),
    C("toolbox-moe-every-zero", [*TRAIN, "model.moe.experts=4", "model.moe.every=0"], "model.moe.every"),
    C("toolbox-moe-shared-negative", [*TRAIN, "model.moe.shared=-1"], "model.moe.shared"),
    C("toolbox-full-blocks-beyond-depth", [*TRAIN, "model.full_blocks=[99]"], "full_blocks"),
    C("toolbox-time-scale-nan", [*TRAIN, "model.time_scale=nan"], "model.time_scale"),
    C("toolbox-align-weight-nan", [*TRAIN, "align.weight=nan"], "align.weight"),
    C("toolbox-align-block-zero", [*TRAIN, "align.weight=0.5", "align.block=0"], "align.block"),
    C("toolbox-align-encoder-missing", [*TRAIN, "align.weight=0.5", "align.block=1", "align.encoder=missing_dir"],
      "missing_dir"),
    C("toolbox-distill-teacher-missing", [*TRAIN, "distill.teacher=missing_dir"], "missing_dir"),
    C("toolbox-distill-weight-above-one", [*TRAIN, "distill.weight=1.5"], "distill.weight"),
    C("toolbox-tread-route-reversed", [*TRAIN, "mask.recipe=tread", "mask.ratio=0.5", "mask.route=[3,1]"],
      "mask.route"),
    C("toolbox-tread-route-beyond-depth", [*TRAIN, "mask.recipe=tread", "mask.ratio=0.5", "mask.route=[0,99]"],
      "mask.route"),
    C("toolbox-guidance-channels-beyond-data", [*TRAIN, "sample.guidance_channels=2"],
      "sample.guidance_channels"),
    C("toolbox-guidance-scale-nan", [*TRAIN, "sample.guidance_scale=nan"], "sample.guidance_scale"),
    C("toolbox-guidance-scale-inf", [*TRAIN, "sample.guidance_scale=inf"], "sample.guidance_scale"),
    C("toolbox-eval-every-s-nan", [*TRAIN, "eval_every_s=nan"], "eval_every_s"),
    C("toolbox-init-from-missing", [*TRAIN, "init_from=missing_dir"], "missing_dir"),
    C("toolbox-logit-std-nan", [*TRAIN, "objective.logit_std=nan"], "objective.logit_std"),
    C("toolbox-step-offset-negative", [*TRAIN, "objective.step_offset=-1"], "objective.step_offset"),
    C("toolbox-task-weight-nan", [*TRAIN, "task.names=[inpaint,outpaint]", "task.weights=[nan,1]"],
      "task.weights"),
    C("toolbox-sigma-data-nan", [*TRAIN, "model.sigma_data=nan"], "model.sigma_data"),
    C("toolbox-class-dropout-nan", [*TRAIN, "model.class_dropout=nan"], "model.class_dropout"),
    C("toolbox-lr-overflows", [*TRAIN, "lr=1e400"], word("lr")),
    C("toolbox-max-seconds-nan", [*TRAIN, "max_seconds=nan"], "max_seconds"),
    C("toolbox-path-drop-nan", [*TRAIN, "mask.path_drop=nan"], "mask.path_drop"),
    # ---- seeds --------------------------------------------------------------------------------------
    C("seed-config-negative", [*TRAIN, "seed=-1"], word("seed")),
    C("seed-config-beyond-2-64", [*TRAIN, "seed=99999999999999999999999"], word("seed")),
    C("seed-sample-beyond-2-64", [*SAMPLE1, "--seed", "18446744073709551616", "--out", "s.png"], "--seed"),
    C("seed-sample-negative", [*SAMPLE1, "--seed", "-5", "--out", "s.png"], "--seed"),
    C("seed-report-beyond-2-63", ["report", "{img}", "--seed", "9223372036854775808", "--out", "r.html"],
      "--seed"),
    C("seed-data-not-a-number", ["data", "bouncing-digits", "--seed", "1e3", "--out", "c.npz"], "--seed"),
    # ---- odd paths ----------------------------------------------------------------------------------
    C("path-out-under-proc", [*SAMPLE1, "--out", "/proc/maskdit-x.png"], "--out /proc/maskdit-x.png"),
    C("path-out-npz-under-proc", [*SAMPLE1, "--out", "/proc/maskdit-x.npz"], "--out /proc/maskdit-x.npz"),
    C("path-report-out-under-proc", ["report", "{img}", "--per-class", "1", "--out", "/proc/r.html"],
      "--out /proc/r.html"),
    C("path-data-out-under-proc", ["data", "bouncing-digits", "--num", "2", "--frames", "4", "--size", "8",
                                   "--out", "/proc/c.npz"], "--out /proc/c.npz"),
    C("path-out-is-a-directory", [*SAMPLE1, "--out", "adir"], "adir", folder("adir")),
    C("path-out-empty", [*SAMPLE1, "--out", ""], "--out"),
    C("path-run-dir-empty-string", ["sample", "", "--num", "2", "--out", "s.png"], "checkpoint"),
    C("path-run-dir-is-the-checkpoints-folder", [*TRAIN[:-1], "run_dir={img}/checkpoints"], "run_dir"),
    C("path-run-dir-under-a-file", [*TRAIN[:-1], "run_dir=afile/run"], "afile", text("afile", "x")),
    C("path-newline-in-name", [*SAMPLE1, "--out", "a\nb.txt"], re.compile(r"--out a b\.txt")),
    # ---- torchrun's environment ---------------------------------------------------------------------
    C("torchrun-rank-beyond-world", TRAIN, "RANK", env={"WORLD_SIZE": "2", "RANK": "5"}),
    C("torchrun-world-size-zero", TRAIN, "WORLD_SIZE", env={"WORLD_SIZE": "0", "RANK": "0"}),
    C("torchrun-local-rank-not-a-number", TRAIN, "LOCAL_RANK",
      env={"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "first"}),
]


def test_corpus_is_distinct():
    assert_distinct(CASES, 35)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)


def test_odd_but_valid_paths_and_the_largest_seed_work(runs: Runs, tmp_path: Path, monkeypatch, capfd):
    tmp, out, _ = succeed([*SAMPLE1, "--seed", "9223372036854775807", "--out", "with space/ünïcode.npz"], runs,
                          tmp_path, monkeypatch, capfd)
    with np.load(tmp / "with space" / "ünïcode.npz") as f:
        assert f["images"].shape == (2, 8, 8, 1)
    assert not [p for p in (tmp / "with space").iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_largest_seed_trains(runs: Runs, tmp_path: Path, monkeypatch, capfd):
    tmp, _, _ = succeed([*TRAIN, "seed=9223372036854775807", "steps=1"], runs, tmp_path, monkeypatch, capfd)
    assert (tmp / "new_run" / "checkpoints" / "step_000001" / "model.safetensors").is_file()
