"""Bad input to the scripts in benchmarks/: exit status 2, one line naming the problem, nothing written or deleted.

Each script's ``main`` runs in-process, as ``python benchmarks/SCRIPT.py ARGS`` would run it (its path as
``sys.argv[0]``, its folder on the path, the exit status from :func:`maskdit.cli.args.guarded`); one test runs a
script as a real process, for what only a process shows.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from maskdit.cli.args import guarded

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def script_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, list[str]], int]:
    """``run(script, args)``: the exit status of ``benchmarks/SCRIPT``'s main on ``args``, run in ``tmp_path``."""

    def run(script: str, args: list[str]) -> int:
        path = BENCH / script
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [str(path), *args])  # the parsers' prog, as the script's own process has
        monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on it: undone afterwards
        module = runpy.run_path(str(path), run_name=f"benchmark_{path.stem}")
        return guarded(lambda: module["main"](list(args)))

    yield run
    for name, module in list(sys.modules.items()):  # the scripts a script imported (toolbox.py: its study)
        if Path(getattr(module, "__file__", None) or "/").parent == BENCH:
            del sys.modules[name]


CASES = [
    ("reseed_eval.py", ["no_such_run", "--seeds", "1"], "no checkpoint in no_such_run"),
    ("masking_convergence.py", ["--data", "digits", "--arms", "nope", "--out", "out", "--runs", "runs"],
     "unknown arm(s) ['nope']"),
    ("masking_convergence.py", ["--data", "digits", "--arm-set", "text", "--out", "out", "--runs", "runs"],
     "--arm-set text compares text injection modes: use --data shapes-text"),
    ("masking_convergence.py", ["--data", "shapes-text", "--arm-set", "text", "--arms", "unmasked", "--out", "out"],
     "unknown arm(s) ['unmasked']"),
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
    ("attention_scaling.py", ["--tokens", "1024,1000"], "--tokens 1024,1000: each must be a square number"),
    ("attention_scaling.py", ["--part", "kernels"], "argument --part: invalid choice: 'kernels'"),
    ("attention_convert.py", ["no_such_run"], "no_such_run does not exist"),
    ("attention_convert.py", ["no_such_run", "--kinds", "linear,full"], "--kinds 'linear,full': choose from"),
    ("dit_step_speed.py", ["--dit-repo", "no_such_clone"], "--dit-repo no_such_clone: no models.py there"),
    ("dit_step_speed.py", ["--batch", "0"], "argument --batch: must be a positive integer"),
    ("attention_quality.py", ["--kinds", "full,tile"], "--kinds 'full,tile': choose from"),
    ("attention_quality.py", ["--tokens", "512"], "--tokens '512': choose from 256, 1024, 4096"),
    ("attention_sizes.py", ["--budget", "0"], "argument --budget: must be a positive number"),
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
    ("motion_tasks.py", ["no_such_run"], "no_such_run does not exist"),
    ("motion_tasks.py", ["no_such_run", "--draws", "0"], "argument --draws: must be a positive integer"),
    ("motion_tasks.py", ["no_such_run", "--from-slerp", "0.5,2"], "--from-slerp 2: a strength is a time in (0, 1]"),
    ("masking_convergence.py", ["--data", "voxels", "--arm-set", "extreme", "--arms", "tread 0.5", "--out", "out",
                                "--runs", "runs"], "unknown arm(s) ['tread 0.5']"),
    ("spoken_digits.py", ["no_such_run", "--test", "t.npz"], "no_such_run does not exist"),
    ("spoken_digits.py", ["no_such_run"], "the following arguments are required: --test"),
    ("spoken_digits.py", ["no_such_run", "--test", "t.npz", "--guidance", "1,0"],
     "argument --guidance: must be comma-separated positive numbers"),
    ("mode_actions.py", ["no_such_run"], "no_such_run does not exist"),
    ("footsteps.py", ["no_such_run"], "no_such_run does not exist"),
    ("footsteps.py", ["no_such_run", "--guidance", "1,0"],
     "argument --guidance: must be comma-separated positive numbers"),
    ("mode_actions.py", ["no_such_run", "--episodes", "0"], "argument --episodes: must be a positive integer"),
]


@pytest.mark.parametrize("script,args,expect", CASES, ids=[f"{c[0]}:{c[2][:24]}" for c in CASES])
def test_study_script_bad_input(script: str, args: list[str], expect: str, tmp_path: Path, script_main, capsys) -> None:
    code = script_main(script, args)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert expect in err
    assert len(err.strip().splitlines()) == 1, err  # the problem alone, no usage block
    assert "Traceback" not in err + out
    assert list(tmp_path.iterdir()) == []  # no output folder, no run directory


@pytest.mark.parametrize("script,args,scratch", [
    ("masking_convergence.py", ["--data", "digits", "--arms", "unmasked", "--budget", "1", "--out", "out", "--runs",
                                "mine"], "mine/digits/unmasked_0"),
    ("rope_sizes.py", [], "runs/rope_sizes"),
])
def test_scratch_runs_never_replace_a_users_folder(script: str, args: list[str], scratch: str, tmp_path: Path,
                                                    script_main, capsys) -> None:
    """A benchmark replaces its own scratch run, but a folder there that is not a maskdit run is refused, untouched."""
    folder = tmp_path / scratch
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    code = script_main(script, args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{scratch} exists and is not a maskdit run" in err
    assert "Traceback" not in err
    assert (folder / "notes.txt").read_text() == "mine" and list(folder.iterdir()) == [folder / "notes.txt"]


def test_a_script_run_as_a_process_exits_with_the_status_and_one_line(tmp_path: Path) -> None:
    """``python benchmarks/SCRIPT.py``: the exit status of the process itself is guarded's, and stderr one line."""
    done = subprocess.run([sys.executable, str(BENCH / "reseed_eval.py"), "run", "--bogus"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: reseed_eval.py: unknown option(s) --bogus (see reseed_eval.py --help)\n"
    assert list(tmp_path.iterdir()) == []
