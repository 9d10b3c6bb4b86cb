import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from maskdit.cli import main
from conftest import SMALL



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


def test_samples_do_not_depend_on_batch_size(run_dir, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    main(["sample", str(run_dir), "--num", "6", "--out", str(a), "--seed", "4"])
    main(["sample", str(run_dir), "--num", "6", "--out", str(b), "--seed", "4", "--batch-size", "4"])
    assert np.array_equal(np.load(a)["images"], np.load(b)["images"])


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
