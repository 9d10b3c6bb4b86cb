"""Stopping and failing without losing work: real SIGTERM / SIGINT to a training process, a second Ctrl-C
while a checkpoint is written, signals during start-up, and filesystem errors as one line."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SMALL

import maskdit.checkpoint as ckpt_mod
import maskdit.training.trainer as train_mod
from maskdit.checkpoint import latest_checkpoint, list_checkpoints
from maskdit.cli.app import main
from maskdit.config import load_config
from maskdit.errors import Interrupted
from maskdit.runs import load_run
from maskdit.training.trainer import Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_training(run_dir, *extra):
    args = [sys.executable, "-m", "maskdit", "train", "--no-progress", *SMALL, "batch_size=16", "steps=100000",
            "log_every=1", "ckpt_every=100000", f"run_dir={run_dir}", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_steps(proc, run_dir, steps=3, timeout=60):
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not start in time")


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_checkpoints_and_exits_128_plus_its_number(tmp_path, signum, code):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    wait_for_steps(proc, run_dir)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"stopped by {signal.Signals(signum).name}" in err
    ckpt = latest_checkpoint(run_dir)
    step = json.loads((ckpt / "state.json").read_text())["step"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert step >= 3 and records[-1]["step"] == step
    assert load_run(run_dir).step == step
    # and the run goes on from there (here: the stopped process is gone, so no second one needs to start)
    assert main(["train", "--no-progress", "--resume", *SMALL, "batch_size=16", f"steps={step + 2}",
                 f"run_dir={run_dir}"]) == 0
    assert latest_checkpoint(run_dir).name == f"step_{step + 2:06d}"


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_exits_without_a_traceback(tmp_path, signum, code):
    proc = start_training(tmp_path / "run")
    first = proc.stdout.readline()  # printed once the config is read, before data and model are built
    assert first.startswith("run directory:"), first
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_a_second_ctrl_c_while_the_checkpoint_is_written_does_not_lose_it(tmp_path, monkeypatch, capsys):
    cfg = load_config("digits", overrides=[*SMALL, "batch_size=16", "steps=50", "ckpt_every=3",
                                           f"run_dir={tmp_path}"])
    real_save = train_mod.save_checkpoint
    calls = []

    def save_under_fire(*args, **kwargs):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # the first asks to stop after this step...
        os.kill(os.getpid(), signal.SIGINT)  # ...the second arrives mid-write and must not abort it
        time.sleep(0.05)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(train_mod, "save_checkpoint", save_under_fire)
    trainer = Trainer(cfg, progress=False)
    with pytest.raises(Interrupted) as stopped:
        trainer.run()
    assert stopped.value.exit_code == 130 and len(calls) == 2  # the periodic save, then the final one
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000003"]
    assert load_run(tmp_path).step == 3 and not list((tmp_path / "checkpoints").glob(".*"))
    assert "still writing the checkpoint" in capsys.readouterr().err


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch, capsys):
    def full(tensors, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    code = main(["train", "--no-progress", *SMALL, "batch_size=16", "steps=2", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "model.safetensors" in err and "No space left on device" in err
    assert not (tmp_path / "run").exists()  # the run wrote no checkpoint: what it created is gone


def test_an_unwritable_cache_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MASKDIT_CACHE", str(blocker))
    run_dir = tmp_path / "run"
    assert main(["train", "--no-progress", *SMALL, "steps=1", f"run_dir={run_dir}"]) == 0
    capsys.readouterr()
    code = main(["eval", str(run_dir), "--num", "4", "--steps", "1", "--metrics", "class"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(blocker) in err[0] and "Traceback" not in err[0]
    assert blocker.read_text() == "not a directory"
