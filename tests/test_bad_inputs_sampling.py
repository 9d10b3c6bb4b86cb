"""The bad-input corpus of the sampling-side options: ``sample`` (--accel, --seed, --from-noise, guidance, --size
with --task, task options), ``invert`` and ``prune``; the harness and its five checks are in ``corpus.py``.

Each case fails with one line naming the option (or file) and its fix, exit status 2 and no file touched. The
must-succeed tests below keep the valid neighbours of the refused values working: an invert/--from-noise round
trip, the largest seed, valid accelerator options, and the silent cases' results.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    CTX_CLIPS,
    CTX_IMAGES,
    FROM_NOISE,
    INV_IMAGES,
    INVERT,
    ITASK,
    SAMPLE,
    TINY,
    U8,
    USER_FILE,
    VTASK,
    C,
    Case,
    Runs,
    Setup,
    assert_distinct,
    check,
    npz,
    png,
    succeed,
    text,
)

from maskdit.cli.app import main

# -- inputs ------------------------------------------------------------------------------------------
F32 = np.float32
SETTINGS = {"sampler": np.array("heun"), "steps": np.array(1), "guidance_scale": np.array(1.0)}
LABELS2 = np.array([1, 2])


def noise_file(name: str = "noise.npz", shape: tuple[int, ...] = (2, 1, 8, 8), fill: float | None = None,
               labels: np.ndarray | None = LABELS2, **settings: np.ndarray) -> Setup:
    """A noise file as ``maskdit invert`` writes it (``noise``, ``labels``, settings) with the given changes;
    its description holds the values too (the corpus's ``npz`` describes only dtypes and shapes)."""
    noise = np.random.default_rng(0).standard_normal(shape).astype(F32)
    if fill is not None:
        noise.reshape(-1)[:: 7 if fill == np.inf else 1] = fill  # inf: a few values; nan: all of them
    arrays = {"noise": noise, **SETTINGS, **settings}
    if labels is not None:
        arrays["labels"] = labels
    made = npz(name, **arrays)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in arrays.values())).hexdigest()
    made.desc += ":" + digest[:16]
    return made


def trained(dst: str, *overrides: str) -> Setup:
    """A tiny run (trained once per session) copied into the case directory (for the model layouts prune refuses)."""
    def make(tmp: Path, runs: Runs) -> None:
        runs.trained(*TINY, *overrides, into=tmp / dst)

    make.desc = f"trained:{dst}:{overrides}"  # type: ignore[attr-defined]
    return make


VNOISE = (2, 1, 4, 8, 8)  #: the video run's noise shape
PRUNE = ["prune", "{img}", "--keep-blocks", "1", "--out", "pruned"]
UNCOND = ["sample", "{vid}", "--num", "2", "--steps", "1", "--out", "out.npz"]
WHITE = png("white.png", (8, 8), 255)  # all generated

CASES: list[Case] = [
    # ---- --accel: NaN and infinity (tracebacks before), sizes that only cost memory ------------------
    C("sample-accel-cache-every-nan", [*SAMPLE, "--accel", "cache:every=nan"], "cache:every=nan"),
    C("sample-accel-ras-every-inf", [*SAMPLE, "--accel", "ras:every=inf"], "ras:every=inf"),
    C("sample-accel-ras-ratio-inf", [*SAMPLE, "--accel", "ras:ratio=inf"], "ras:ratio=inf"),
    C("sample-accel-int8-calib-inf", [*SAMPLE, "--accel", "int8:calib=inf"], "int8:calib=inf"),
    C("sample-accel-int8-groups-nan", [*SAMPLE, "--accel", "int8:groups=nan"], "int8:groups=nan"),
    C("sample-accel-int8-groups-huge", [*SAMPLE, "--accel", "int8:groups=1e12"], "int8:groups=1e12"),
    C("task-accel-cache-tail-nan", [*ITASK, "--accel", "cache:tail=nan"],
      re.compile(r"--accel 'cache:tail=nan'.*tail must be in \[0, 1\]"), CTX_IMAGES),

    # ---- --seed: refused outside [0, 2^63 - 1] (a torch generator's signed range) ---------------------
    C("sample-seed-above-2-64", [*SAMPLE, "--seed", str(2**64)], "--seed"),
    C("sample-seed-2-63", [*SAMPLE, "--seed", str(2**63)], "--seed"),
    C("sample-seed-negative", [*SAMPLE, "--seed", "-1"], "--seed"),
    C("task-seed-huge", [*ITASK, "--seed", str(10**30)], "--seed", CTX_IMAGES),

    # ---- --from-noise: labels, values and settings must pass the checks the options make ------------
    C("from-noise-label-above-range", FROM_NOISE, re.compile(r"'labels' must be in 0-9.*found 12"),
      noise_file(labels=np.array([1, 12]))),
    C("from-noise-label-negative", FROM_NOISE, re.compile(r"'labels' must be in 0-9.*found -1"),
      noise_file(labels=np.array([-1, 0]))),
    C("from-noise-label-huge-uint64", FROM_NOISE, "'labels' must be in 0-9",
      noise_file(labels=np.array([2**63 + 5, 1], np.uint64))),
    C("from-noise-labels-for-unconditional", ["sample", "{vid}", "--from-noise", "noise.npz", "--out", "out.npz"],
      "unconditional", noise_file(shape=VNOISE)),
    C("from-noise-task-label-out-of-range", [*ITASK, "--from-noise", "noise.npz"], "'labels'",
      CTX_IMAGES, noise_file(labels=np.array([3, 10]))),
    C("from-noise-all-nan", FROM_NOISE, "NaN or infinite", noise_file(fill=np.nan)),
    C("from-noise-some-inf", FROM_NOISE, "NaN or infinite", noise_file(fill=np.inf)),
    C("from-noise-guidance-negative", FROM_NOISE, re.compile(r"guidance_scale -2\.0 .*--guidance-scale"),
      noise_file(guidance_scale=np.array(-2.0))),
    C("from-noise-guidance-nan", FROM_NOISE, re.compile(r"guidance_scale nan .*--guidance-scale"),
      noise_file(guidance_scale=np.array(np.nan))),
    C("from-noise-guidance-huge", FROM_NOISE, re.compile(r"guidance_scale 1e\+39 .*--guidance-scale"),
      noise_file(guidance_scale=np.array(1e39))),
    C("from-noise-guidance-text", FROM_NOISE, re.compile(r"guidance_scale 'big' .*--guidance-scale"),
      noise_file(guidance_scale=np.array("big"))),
    C("from-noise-steps-zero", FROM_NOISE, re.compile(r"steps 0 .*--steps"),
      noise_file(steps=np.array(0))),
    C("from-noise-steps-float", FROM_NOISE, re.compile(r"steps 1\.5 .*--steps"),
      noise_file(steps=np.array(1.5))),
    C("from-noise-steps-text", FROM_NOISE, re.compile(r"steps 'one' .*--steps"),
      noise_file(steps=np.array("one"))),
    C("from-noise-steps-array", FROM_NOISE, re.compile(r"'steps' must be a single value"),
      noise_file(steps=np.array([1, 2]))),
    C("from-noise-sampler-unknown", FROM_NOISE, re.compile(r"--from-noise noise\.npz: its sampler 'rk4'"),
      noise_file(sampler=np.array("rk4"))),
    C("from-noise-sampler-other-objective", FROM_NOISE, re.compile(r"--from-noise .*sampler 'ddim'"),
      noise_file(sampler=np.array("ddim"))),
    C("from-noise-sampler-not-invertible", FROM_NOISE, re.compile(r"--from-noise .*sampler 'edm'"),
      noise_file(sampler=np.array("edm"), steps=np.array(2))),

    # ---- guidance that does not fit the model ----------------------------------------------------------
    C("sample-guidance-channels-above-model", [*SAMPLE, "--guidance-channels", "2"],
      re.compile(r"--guidance-channels 2: .*1 channel")),
    C("task-guidance-channels-above-model", [*ITASK, "--guidance-channels", "3"],
      re.compile(r"--guidance-channels 3: .*1 channel"), CTX_IMAGES),
    C("sample-guidance-scale-unconditional", [*UNCOND, "--guidance-scale", "2"],
      re.compile(r"--guidance-scale.*unconditional")),
    C("task-cfg-scale-unconditional", [*VTASK, "--guidance", "cfg", "--guidance-scale", "3"],
      re.compile(r"--guidance-scale.*unconditional"), CTX_CLIPS),
    C("sample-guidance-context-without-task", [*UNCOND, "--guidance", "context", "--guidance-scale", "2"],
      re.compile(r"--guidance context .*--task")),
    C("sample-guidance-scale-huge", [*SAMPLE, "--guidance-scale", "1e39"], "--guidance-scale"),
    C("sample-guidance-power-nan", [*SAMPLE, "--guidance-power", "nan"], "--guidance-power"),
    C("sample-guidance-interval-nan", [*SAMPLE, "--guidance-interval", "nan,0.5"],
      "--guidance-interval"),
    C("sample-guidance-interval-three", [*SAMPLE, "--guidance-interval", "0.1,0.5,0.9"],
      "--guidance-interval"),

    # ---- --task combinations ---------------------------------------------------------------------------
    C("task-size-on-table-model", [*ITASK, "--size", "16x16"], re.compile(r"--size 16x16 .*--task"),
      CTX_IMAGES),
    C("task-size-video", [*VTASK, "--size", "4x8x8"], re.compile(r"--size 4x8x8 .*--task"),
      CTX_CLIPS),
    C("task-num-above-context", [*ITASK, "--num", "5"], re.compile(r"--num 5: .*holds 2"),
      CTX_IMAGES),
    C("task-mask-with-given-frames", [*ITASK, "--mask", "white.png", "--given-frames", "1"],
      "--given-frames", CTX_IMAGES, WHITE),
    C("task-animate-given-frames-past-end", [*VTASK[:2], "--task", "animate", *VTASK[4:],
                                             "--given-frames", "5"], re.compile(r"--given-frames 5: .*1-4"),
      CTX_CLIPS),
    C("task-predict-given-all-frames", [*VTASK, "--given-frames", "4"],
      re.compile(r"--given-frames 4 leaves nothing to generate: .*1-3"), CTX_CLIPS),
    C("task-interpolate-stride-one", [*VTASK[:2], "--task", "interpolate", *VTASK[4:], "--stride", "1"],
      re.compile(r"--stride 1 leaves nothing to generate: .*2-4"), CTX_CLIPS),
    C("task-classes-out-of-range", [*ITASK, "--classes", "10"], "--classes", CTX_IMAGES),

    # ---- invert ------------------------------------------------------------------------------------------
    C("invert-labels-float", INVERT, re.compile(r"'labels' must be 2 integers.*float64"),
      npz("images.npz", images=np.zeros((2, 8, 8, 1), U8), labels=np.array([1.0, 2.0]))),
    C("invert-labels-2d", INVERT, re.compile(r"'labels' must be 2 integers.*\(2, 1\)"),
      npz("images.npz", images=np.zeros((2, 8, 8, 1), U8), labels=np.array([[1], [2]]))),
    C("invert-labels-pickled", INVERT, re.compile(r"'labels' of --images images\.npz.*never loads"),
      npz("images.npz", images=np.zeros((2, 8, 8, 1), U8), labels=np.array([None, 1], dtype=object))),
    C("invert-images-pickled", INVERT, re.compile(r"cannot read --images images\.npz.*never loads"),
      npz("images.npz", images=np.array([None, 1], dtype=object))),
    C("invert-out-is-the-images", [*INVERT[:-1], "images.npz", "--overwrite"],
      re.compile(r"--out images\.npz is the --images file"), INV_IMAGES),
    C("invert-guidance-unconditional", ["invert", "{vid}", "--images", "clips.npz", "--steps", "1",
                                        "--guidance-scale", "2", "--out", "noise.npz"],
      re.compile(r"--guidance-scale 2: .*unconditional"), CTX_CLIPS),
    C("invert-guidance-huge", [*INVERT, "--guidance-scale", "1e39"], "--guidance-scale", INV_IMAGES),

    # ---- prune -------------------------------------------------------------------------------------------
    C("prune-one-block-model", PRUNE, re.compile(r"--keep-blocks 1: a 1-block model has no block to spare")),
    C("prune-keep-zero", [*PRUNE[:3], "0", *PRUNE[4:]], "--keep-blocks"),
    C("prune-search-steps-zero", [*PRUNE, "--search-steps", "0"], "--search-steps"),
    C("prune-search-steps-every-other", [*PRUNE, "--method", "every-other", "--search-steps", "5"],
      re.compile(r"--search-steps applies to --method learned")),
    C("prune-out-exists", [*PRUNE[:-1], "userdir"], "--out userdir", USER_FILE),
    C("prune-out-under-file", [*PRUNE[:-1], "afile.txt/pruned"], "--out afile.txt/pruned",
      text("afile.txt", "keep me")),
    C("prune-keep-all-blocks", ["prune", "deep", "--keep-blocks", "2", "--out", "pruned"],
      re.compile(r"--keep-blocks 2: must be between 1 and 1"), trained("deep", "model.depth=2")),
    C("prune-long-skips", ["prune", "skips", "--keep-blocks", "2", "--out", "pruned"], "long skips",
      trained("skips", "model.depth=4", "model.long_skips=2")),
    C("prune-moe-every-other-block", ["prune", "moe", "--keep-blocks", "1", "--out", "pruned"], "mixture-of-experts",
      trained("moe", "model.depth=2", "model.moe.experts=2", "model.moe.every=2")),
    C("prune-keep-within-mixer", ["prune", "mixer", "--keep-blocks", "1", "--method", "every-other", "--out",
                                  "pruned"], re.compile(r"--keep-blocks 1: .*mixer.*keep at least 2"),
      trained("mixer", "model.depth=3", "model.mixer_depth=1", "mask.ratio=0.5")),
]


def test_sampling_corpus_is_distinct():  # and new: test_bad_inputs.py checks all the corpus files together
    assert_distinct(CASES, 35)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_sampling_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)


# -- must succeed ------------------------------------------------------------------------------------
def fresh(tmp_path: Path, name: str) -> Path:
    """A new folder for one more ``succeed`` call in the same test (each lays out its own case directory)."""
    (tmp_path / name).mkdir()
    return tmp_path / name


def test_invert_then_sample_from_noise_round_trip(runs, tmp_path, monkeypatch, capfd):
    images = np.random.default_rng(2).integers(0, 255, (2, 8, 8, 1), dtype=U8)
    setup = (npz("images.npz", images=images, labels=np.array([3, 7])),)
    tmp, _, _ = succeed([*INVERT[:-3], "2", "--out", "noise.npz"], runs, tmp_path, monkeypatch, capfd, setup)
    with np.load(tmp / "noise.npz") as f:
        assert np.isfinite(f["noise"]).all() and f["labels"].tolist() == [3, 7] and int(f["steps"]) == 2
    capfd.readouterr()
    assert main(["sample", str(runs.img), "--from-noise", "noise.npz", "--out", "back.npz"]) == 0  # in tmp
    printed = capfd.readouterr().out
    assert "steps=2" in printed and "guidance_scale=1.0" in printed  # the file's settings are the defaults
    with np.load(tmp / "back.npz") as f:
        assert f["labels"].tolist() == [3, 7]
        assert np.abs(f["images"].astype(int) - images.astype(int)).max() <= 2  # the inputs come back


def test_from_noise_without_labels_on_the_unconditional_video_run(runs, tmp_path, monkeypatch, capfd):
    tmp, _, _ = succeed(["sample", "{vid}", "--from-noise", "noise.npz", "--out", "out.npz"], runs, tmp_path,
                        monkeypatch, capfd, (noise_file(shape=VNOISE, labels=None),))
    with np.load(tmp / "out.npz") as f:
        assert f["frames"].shape == (2, 4, 8, 8, 1)


@pytest.mark.parametrize("seed", ["0", str(2**63 - 1)])
def test_seeds_at_both_ends_of_the_range(seed, runs, tmp_path, monkeypatch, capfd):
    succeed([*SAMPLE, "--seed", seed], runs, fresh(tmp_path, "s"), monkeypatch, capfd)
    succeed([*ITASK, "--seed", seed], runs, fresh(tmp_path, "t"), monkeypatch, capfd, (CTX_IMAGES,))


@pytest.mark.parametrize("spec", ["cache:every=2,tail=0.5", "ras:ratio=0.5,every=2", "int8:groups=2,calib=4",
                                  "int8:calib=4+ras:ratio=1"])
def test_valid_accelerator_options_still_sample(spec, runs, tmp_path, monkeypatch, capfd):
    tmp, out, _ = succeed([*SAMPLE[:-1], "out.npz", "--accel", spec], runs, tmp_path, monkeypatch,
                          capfd)
    assert f"accel={spec}" in out
    with np.load(tmp / "out.npz") as f:
        assert f["images"].shape == (2, 8, 8, 1)


def test_the_silent_cases_neighbours_still_work(runs, tmp_path, monkeypatch, capfd):
    # guidance on every channel the model has, unguided unconditional sampling, a task on fewer inputs than the
    # context holds, the last frame given to animate, and a noise file's settings overridden by the options
    succeed([*SAMPLE, "--guidance-channels", "1"], runs, fresh(tmp_path, "a"), monkeypatch, capfd)
    succeed([*UNCOND, "--guidance-scale", "1"], runs, fresh(tmp_path, "b"), monkeypatch, capfd)
    tmp, out, _ = succeed([*ITASK[:-1], "one.npz", "--num", "1"], runs, fresh(tmp_path, "c"), monkeypatch, capfd,
                          (CTX_IMAGES,))
    with np.load(tmp / "one.npz") as f:
        assert f["images"].shape == (1, 8, 8, 1)
    succeed([*VTASK[:2], "--task", "animate", *VTASK[4:], "--given-frames", "4"], runs, fresh(tmp_path, "d"),
            monkeypatch, capfd, (CTX_CLIPS,))
    _, out, _ = succeed([*FROM_NOISE, "--steps", "2", "--guidance-scale", "1.5"], runs, fresh(tmp_path, "e"),
                        monkeypatch, capfd, (noise_file(),))
    assert "steps=2" in out and "guidance_scale=1.5" in out


def test_prune_every_other_without_search_steps(runs, tmp_path, monkeypatch, capfd):
    tmp, out, _ = succeed(["prune", "deep", "--keep-blocks", "1", "--method", "every-other", "--out", "pruned"],
                          runs, tmp_path, monkeypatch, capfd, (trained("deep", "model.depth=2"),))
    assert "kept blocks [1]" in out and (tmp / "pruned" / "config.json").is_file()
