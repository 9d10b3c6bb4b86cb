"""Bad input to the study scripts in benchmarks/: exit status 2, the problem named, nothing written."""

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
    ("reseed_eval.py", ["run", "--bogus"], "unrecognized arguments: --bogus"),
    ("toolbox.py", ["--data", "digits", "--only", "zzz", "--out", "out", "--runs", "runs"],
     "--only ['zzz'] starts no arm label"),
    # a label that holds a comma is one arm when the list is ';'-separated
    ("toolbox.py", ["--data", "digits", "--arms", "align (self-trained MAE encoder, block 2);nope", "--out", "out",
                    "--runs", "runs"], "unknown arm(s) ['nope']"),
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
