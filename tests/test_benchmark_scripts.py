"""Bad input to the scripts in benchmarks/: exit status 2, one line naming the problem, nothing written or deleted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

CASES = [
    ("reseed_eval.py", ["no_such_run", "--seeds", "1"], "no checkpoint in no_such_run"),
    ("masking_convergence.py", ["--data", "digits", "--arms", "nope", "--out", "out", "--runs", "runs"],
     "unknown arm(s) ['nope']"),
    # argparse's own errors are one line too
    ("masking_convergence.py", ["--data", "bogus", "--out", "out"], "argument --data: invalid choice: 'bogus'"),
    ("reseed_eval.py", ["run", "--bogus"], "unknown option(s) --bogus"),
    ("reseed_eval.py", ["run", "--seeds", "1,x"], "argument --seeds: must be comma-separated non-negative integers"),
    ("toolbox.py", ["--data", "digits", "--only", "zzz", "--out", "out", "--runs", "runs"],
     "--only ['zzz'] starts no arm label"),
    # a label that holds a comma is one arm when the list is ';'-separated
    ("toolbox.py", ["--data", "digits", "--arms", "align (self-trained MAE encoder, block 2);nope", "--out", "out",
                    "--runs", "runs"], "unknown arm(s) ['nope']"),
    # the other benchmarks take the same parser and runner as the maskdit command
    ("accel_speed.py", ["--input", "4xbogus"], "--input '4xbogus' must look like CxL"),
    ("attention_kernels.py", ["--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
    ("attention_kernels.py", ["--preset", "digits", "--lengths", "0,x"],
     "argument --lengths: must be comma-separated non-negative integers"),
    ("ddp_scaling.py", ["--nproc", "two"], "argument --nproc: must be a positive integer"),
    ("guidance.py", ["no_such_run", "--scales", "1.5,-3"],
     "argument --scales: must be comma-separated positive numbers"),
    ("inference.py", ["no_such_run"], "no_such_run does not exist"),
    ("masking_throughput.py", ["--batch", "0"], "argument --batch: must be a positive integer"),
    ("prune.py", ["no_such_run"], "no_such_run does not exist"),
    ("prune.py", ["no_such_run", "--methods", "learned,magic"], "--methods 'learned,magic': choose from"),
    ("rope_sizes.py", ["--sizes", "8,0"], "argument --sizes: must be comma-separated positive integers"),
    ("step_overhead.py", ["--rounds", "x"], "argument --rounds: must be a positive integer"),
    ("video_tasks.py", ["no_such_run", "--bogus"], "unknown option(s) --bogus"),
]


@pytest.mark.parametrize("script,args,expect", CASES, ids=[f"{c[0]}:{c[2][:24]}" for c in CASES])
def test_study_script_bad_input(script: str, args: list[str], expect: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert expect in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # the problem alone, no usage block
    assert "Traceback" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []  # no output folder, no run directory


@pytest.mark.parametrize("script,args,scratch", [
    ("masking_convergence.py", ["--data", "digits", "--arms", "unmasked", "--budget", "1", "--out", "out", "--runs",
                                "mine"], "mine/digits/unmasked_0"),
    ("rope_sizes.py", [], "runs/rope_sizes"),
])
def test_scratch_runs_never_replace_a_users_folder(script: str, args: list[str], scratch: str, tmp_path: Path) -> None:
    """A benchmark replaces its own scratch run, but a folder there that is not a maskdit run is refused, untouched."""
    folder = tmp_path / scratch
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert f"{scratch} exists and is not a maskdit run" in done.stderr
    assert "Traceback" not in done.stderr
    assert (folder / "notes.txt").read_text() == "mine" and list(folder.iterdir()) == [folder / "notes.txt"]
