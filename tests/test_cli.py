import contextlib
import io
import json

import numpy as np
import pytest
from conftest import SMALL
from PIL import Image

from maskdit.cli.app import main

TRAIN_OUTPUT = {}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "--no-progress", *SMALL, "steps=4", f"run_dir={path}"]) == 0
    TRAIN_OUTPUT["stdout"] = out.getvalue()
    return path


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_prints_run_dir_and_writes_run(run_dir):
    lines = TRAIN_OUTPUT["stdout"].splitlines()
    assert lines[0] == f"run directory: {run_dir}" and lines[-1] == str(run_dir)
    assert any(line.startswith("trained steps 0-4 in") for line in lines)
    assert (run_dir / "checkpoints" / "step_000004" / "model.safetensors").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 1


def test_sample_npz_and_png(run_dir, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(run_dir), "--num", "12", "--out", str(out), "--classes", "3,5"]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (12, 8, 8, 1) and f["images"].dtype == np.uint8
        assert f["labels"].dtype == np.int64 and f["labels"].tolist() == [3, 5] * 6
    png = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--num", "20", "--out", str(png), "--sampler", "euler"]) == 0
    grid = np.asarray(Image.open(png))
    assert grid.shape[0] > grid.shape[1]  # 10 rows (one per class) of 2 samples
    assert "wrote 20 samples" in capsys.readouterr().out


def test_a_sample_depends_on_its_index_not_on_num_and_batch_sizes_agree_to_rounding(run_dir, tmp_path):
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    assert main(["sample", str(run_dir), "--num", "6", "--out", str(a), "--seed", "4", "--batch-size", "4"]) == 0
    assert main(["sample", str(run_dir), "--num", "11", "--out", str(b), "--seed", "4", "--batch-size", "4"]) == 0
    assert main(["sample", str(run_dir), "--num", "6", "--out", str(c), "--seed", "4"]) == 0
    six, eleven, default = (np.load(f)["images"].astype(int) for f in (a, b, c))
    assert np.array_equal(eleven[:6], six)  # the same batch size: exactly the same samples
    assert np.abs(default - six).max() <= 1  # another batch size: float rounding, at most one uint8 level


def test_info_and_eval(run_dir, capsys):
    assert main(["info", str(run_dir)]) == 0
    info = last_json(capsys)
    assert info["step"] == 4 and info["model"]["depth"] == 1
    assert main(["eval", str(run_dir), "--num", "20", "--steps", "2", "--metrics", "domain_fid,pr,class"]) == 0
    result = last_json(capsys)
    assert result["num"] == 20 and result["steps"] == 2
    per_class = result["per_class_accuracy"]  # 20 samples cycle through the 10 classes: 2 each
    assert len(per_class) == 10 and all(v in (0.0, 0.5, 1.0) for v in per_class.values())
    assert result["class_accuracy"] == pytest.approx(sum(per_class.values()) / 10)
    assert result["classifier_holdout_accuracy"] > 0.9


def test_resume_extends_a_finished_run(tmp_path, capsys):
    path = tmp_path / "r"
    assert main(["train", "--no-progress", *SMALL, "steps=2", f"run_dir={path}"]) == 0
    assert main(["train", "--no-progress", "--resume", "steps=3", f"run_dir={path}"]) == 0
    assert (path / "checkpoints" / "step_000003").is_dir()
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", f"run_dir={path}"]) == 0
    assert "already at step 3 of 3: nothing to train" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "RUN", "--out", "x.png", "--sampler", "rk4"], "argument --sampler: invalid choice: 'rk4'"),
        (["sample", "RUN", "--out", "x.png", "--num", "0"], "argument --num: must be a positive integer"),
        (["sample", "RUN", "--out", "x.jpg"], "x.jpg: the file name must end in .png"),
        (["sample", "RUN", "--out", "x.png", "--classes", "12"], "class 12 is out of range"),
        (["sample", "RUN", "--out", "x.png", "--sampler", "ddim"],
         "--sampler ddim does not fit this run's flow objective"),
        (["sample", "RUN", "--out", "x.png", "--guidance-interval", "0.9,0.1"], "--guidance-interval: must be"),
        (["sample", "/nonexistent/run", "--out", "x.png"], "does not exist"),
        (["train", "--preset", "imagenet"], "unknown preset 'imagenet'"),
        (["train", "steps=-1"], "steps must be at least 1"),
        (["bench", "--input", "4x32"], None),
        (["bench", "--input", "banana"], "--input 'banana' must look like"),
        (["bench", "--preset", "huge"], "is not a model preset"),
    ],
)
def test_bad_options_fail_with_one_clear_line(run_dir, tmp_path, capsys, argv, message):
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    argv = [str(tmp_path / a) if a.startswith("x.") else a for a in argv]
    if message is None:  # a 1-D input is valid: bench runs on a sequence
        assert main([*argv, "--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1"]) == 0
        assert last_json(capsys)["tokens"] == 16
        return
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses before main's body runs
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err.splitlines()[-1]


def test_bench_prints_json_with_steps_per_s(capsys):
    assert main(["bench", "--preset", "tiny", "--input", "1x8x8", "--batch", "4", "--steps", "2"]) == 0
    result = last_json(capsys)
    assert result["steps_per_s"] > 0 and result["tokens"] == 16 and result["activation_mb"] > 0


def test_library_log_lines_stay_off_stderr_unless_verbose_and_one_rank_reports(monkeypatch, capfd, caplog):
    import logging
    import warnings

    from maskdit.cli import info
    from maskdit.errors import DataError

    def noisy(args):  # what diffusers/transformers do while loading: a logged warning and a Python warning
        logging.getLogger("diffusers.models.modeling_utils").warning("accelerate is not installed")
        warnings.warn("defaulting to unsafe serialization", UserWarning)
        if args.run_dir == "broken":
            raise DataError("broken is not a run: pass a run directory")
        print("done")
        return 0

    monkeypatch.setattr(info, "run", noisy)  # the handler is looked up in its module when the command runs
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["info", "run"]) == 0
        out, err = capfd.readouterr()
        assert out == "done\n" and err == "" and not caplog.records and not shown  # success: maskdit's own output
        assert main(["info", "broken"]) == 2
        assert capfd.readouterr().err == "error: broken is not a run: pass a run directory\n"  # failure: one line
        assert not caplog.records and not shown
        assert main(["info", "run", "--verbose"]) == 0  # --verbose: the libraries speak as they would
        assert [r.getMessage() for r in caplog.records] == ["accelerate is not installed"]
        assert [str(w.message) for w in shown] == ["defaulting to unsafe serialization"]
    capfd.readouterr()  # (what --verbose printed; a library's handler may be bound to an earlier test's stream)
    monkeypatch.setenv("RANK", "1")  # under torchrun: the other ranks fail alike and stay quiet
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["info", "broken"]) == 2 and capfd.readouterr().err == ""
    assert logging.root.manager.disable == logging.NOTSET  # logging is left as it was


def test_every_command_is_one_registry_entry_that_help_parsing_and_dispatch_read(capsys):
    from maskdit.cli.app import COMMANDS, build_parser

    assert main(["--help"]) == 0
    listed = capsys.readouterr().out.split("commands:\n")[1].splitlines()
    assert [line.split()[0] for line in listed] == list(COMMANDS)
    for name, summary in COMMANDS.describe():
        p = build_parser(name)
        assert p.prog == f"maskdit {name}" and "--verbose" in p.format_help()
        assert name == "train" or p.description == summary
    assert main(["nonsense"]) == 2
    assert capsys.readouterr().err.startswith(f"error: maskdit: unknown command 'nonsense': choose one of "
                                              f"{', '.join(COMMANDS)}")


def test_seed_option_takes_exactly_the_seeds_a_config_takes():
    import argparse

    from maskdit.cli.args import seed_value
    from maskdit.training.step import MAX_SEED

    assert seed_value(str(MAX_SEED)) == MAX_SEED and seed_value("0") == 0
    for text in (str(MAX_SEED + 1), "-1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be an integer in \[0, {MAX_SEED}\]"):
            seed_value(text)


def test_sample_settings_come_from_the_command_line_then_a_noise_file_then_the_run():
    from maskdit.config import load_config

    sample = load_config(overrides=["sample.steps=7", "sample.guidance_scale=2.0", "sample.eta=0.5"]).sample
    merged = sample.merged({"steps": 3, "eta": 0.0, "guidance_scale": None, "seed": 9},
                           {"steps": 5, "guidance_scale": 0.0, "noise": "ignored"})
    assert merged["steps"] == 3 and merged["eta"] == 0.0  # given, even when 0
    assert merged["guidance_scale"] == 0.0  # left out: the noise file's, even when 0
    assert merged["guidance"] == sample.guidance and merged["sampler"] is None  # neither: the run's
    assert "seed" not in merged and "noise" not in merged  # only the sample section's fields
