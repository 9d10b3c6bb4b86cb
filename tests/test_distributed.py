"""torchrun with 2 gloo processes on the CPU: N processes compute what one process computes."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL, torchrun
from safetensors.torch import load_file

from maskdit.checkpoint import latest_checkpoint
from maskdit.config import load_config
from maskdit.errors import ConfigError
from maskdit.training.trainer import Trainer, train

RUN = [*SMALL, "model.depth=2", "batch_size=8", "steps=10", "log_every=1", "ckpt_every=5", "lr=1e-3",
       "warmup_steps=0"]
RECIPES = {"plain": [], "drop": ["mask.recipe=drop", "mask.ratio=0.5"],
           "mae": ["mask.recipe=mae", "mask.ratio=0.5", "mask.decoder_depth=1"],
           "masked-ids": ["objective.name=masked", "data.levels=17", "mask.recipe=drop", "mask.ratio=0.5"]}


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    return {**load_file(ckpt / "model.safetensors"), **{f"ema.{k}": v for k, v in
                                                        load_file(ckpt / "ema.safetensors").items()}}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_two_processes_reproduce_one_process(tmp_path, recipe):
    args = [*RUN, *RECIPES[recipe]]
    code, out, err = finish(torchrun([*args, f"run_dir={tmp_path / 'ddp'}"], tmp_path))
    assert code == 0, err
    assert out.count("run directory:") == 1 and "x 2 processes" in out  # rank 0 alone speaks
    train(load_config("digits", overrides=[*args, f"run_dir={tmp_path / 'one'}"]), progress=False)
    assert max_diff(weights(tmp_path / "ddp"), weights(tmp_path / "one")) <= 1e-6
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))  # written once, by rank 0
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] == pytest.approx(one[-1]["loss"], rel=1e-4)  # the global batch's loss
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["step_000005", "step_000010"]


@pytest.mark.slow
def test_resume_under_torchrun_reaches_the_uninterrupted_weights_and_sigterm_stops_every_rank(tmp_path, trained):
    run = [*RUN, "lr_schedule=constant"]  # so a 5-step run is the first half of the 10-step one
    trained(*run, "steps=5", processes=2, into=tmp_path / "ddp")  # 2 processes to step 5
    code, _, err = finish(torchrun([*run, "--resume", f"run_dir={tmp_path / 'ddp'}"], tmp_path))
    assert code == 0, err
    one = trained(*run)  # one process, uninterrupted
    assert max_diff(weights(tmp_path / "ddp"), weights(one)) <= 1e-6
    # resume at another world size: 1 process to step 5, then 2 processes on to 10 (works; not bit-exact)
    train(load_config("digits", overrides=[*run, "steps=5", f"run_dir={tmp_path / 'mixed'}"]), progress=False)
    code, _, err = finish(torchrun([*run, "--resume", f"run_dir={tmp_path / 'mixed'}"], tmp_path))
    assert code == 0, err
    assert max_diff(weights(tmp_path / "mixed"), weights(one)) <= 1e-4

    # SIGTERM to one worker: both ranks stop after the same step, one checkpoint, and the run resumes
    long = tmp_path / "long"
    proc = torchrun([*RUN, "steps=100000", "ckpt_every=100000", f"run_dir={long}"], tmp_path, start_new_session=True)
    metrics = long / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGTERM)
    code, _, err = finish(proc)
    assert "stopped by SIGTERM at step" in err
    (ckpt,) = list((long / "checkpoints").iterdir())
    stopped = int(ckpt.name.split("_")[1])
    assert stopped >= 3 and err.count("stopped by SIGTERM") == 1  # one rank reports, for all
    code, _, err = finish(torchrun([*RUN, "--resume", f"steps={stopped + 2}", f"run_dir={long}"], tmp_path))
    assert code == 0, err
    assert latest_checkpoint(long).name == f"step_{stopped + 2:06d}"


def children(pid: int) -> list[int]:
    """The maskdit processes whose parent is ``pid`` (torchrun's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"maskdit" in command:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_the_global_batch_must_divide_over_the_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="batch_size=8 is the global batch"):
        Trainer(load_config("digits", overrides=[*RUN, f"run_dir={tmp_path / 'x'}"]), progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_compiled_blocks_train_to_the_eager_weights(tmp_path, trained):
    """``compile=true`` compiles every block in place: same state-dict names, the same weights (to float
    rounding) as eager training, and a checkpoint sampling can load."""
    eager = trained(*RUN, "steps=3", "compile=false")
    train(load_config("digits", overrides=[*RUN, "steps=3", "compile=true", f"run_dir={tmp_path / 'true'}"]),
          progress=False)
    assert max_diff(weights(tmp_path / "true"), weights(eager)) <= 1e-4


@pytest.mark.parametrize("recipe", ["plain", "mae"])
def test_activation_checkpointing_changes_memory_not_results(tmp_path, trained, recipe):
    """``grad_checkpoint=true`` recomputes each block in backward: the same weights as storing activations,
    under token dropping too (the recomputation sees the same kept tokens)."""
    stored = trained(*RUN, *RECIPES[recipe], "steps=3", "grad_checkpoint=false")
    train(load_config("digits", overrides=[*RUN, *RECIPES[recipe], "steps=3", "grad_checkpoint=true",
                                           f"run_dir={tmp_path / 'true'}"]), progress=False)
    assert max_diff(all_tensors(tmp_path / "true"), all_tensors(stored)) <= 1e-6


def all_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Weights, EMA and optimizer moments of a run's latest checkpoint, by file-prefixed name."""
    ckpt = latest_checkpoint(run_dir)
    return {f"{f}.{k}": v for f in ("model", "ema", "optimizer")
            for k, v in load_file(ckpt / f"{f}.safetensors").items()}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["plain", "mae"])
def test_fsdp_shards_and_still_reproduces_one_process(tmp_path, recipe):
    """FSDP2 over 2 ranks: whole weights, EMA and Adam moments in the checkpoint equal one process's, and
    rank 0's evaluation (of the gathered EMA) sees the same model."""
    args = [*RUN, *RECIPES[recipe], "eval_every=5", "eval_num=16"]
    code, out, err = finish(torchrun([*args, "dist.strategy=fsdp", f"run_dir={tmp_path / 'fsdp'}"], tmp_path))
    assert code == 0, err
    train(load_config("digits", overrides=[*args, f"run_dir={tmp_path / 'one'}"]), progress=False)
    assert max_diff(all_tensors(tmp_path / "fsdp"), all_tensors(tmp_path / "one")) <= 1e-6

    def evals(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["eval"] for line in lines if '"eval"' in line]

    sharded, one = evals("fsdp"), evals("one")
    assert len(sharded) == 2 and [e["domain_fid"] for e in sharded] == pytest.approx([e["domain_fid"] for e in one],
                                                                                       rel=1e-3)


@pytest.mark.slow
def test_fsdp_resumes_exactly_and_reads_ddp_checkpoints(tmp_path, trained):
    run = [*RUN, "lr_schedule=constant"]
    code, _, err = finish(torchrun([*run, "steps=5", "dist.strategy=fsdp", f"run_dir={tmp_path / 'fsdp'}"], tmp_path))
    assert code == 0, err
    code, _, err = finish(torchrun([*run, "--resume", "dist.strategy=fsdp", f"run_dir={tmp_path / 'fsdp'}"], tmp_path))
    assert code == 0, err
    one = trained(*run)  # one process, uninterrupted
    assert max_diff(all_tensors(tmp_path / "fsdp"), all_tensors(one)) <= 1e-6
    # a checkpoint is whole whatever wrote it: a DDP run goes on under FSDP
    trained(*run, "steps=5", processes=2, into=tmp_path / "ddp")  # 2 processes (DDP) to step 5
    code, _, err = finish(torchrun([*run, "--resume", "dist.strategy=fsdp", f"run_dir={tmp_path / 'ddp'}"], tmp_path))
    assert code == 0, err
    assert max_diff(all_tensors(tmp_path / "ddp"), all_tensors(one)) <= 1e-6


@pytest.mark.slow
def test_a_worker_killed_mid_step_loses_only_the_steps_since_the_last_checkpoint(tmp_path):
    """``kill -9`` of one torchrun worker: no checkpoint is half-written, torchrun stops the other, and
    ``--resume`` finishes the run with the weights of an uninterrupted one."""
    run = tmp_path / "killed"
    args = [*RUN, "steps=40", "ckpt_every=4"]
    proc = torchrun([*args, f"run_dir={run}"], tmp_path, start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 10):
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    code, _, err = finish(proc)
    assert code != 0 and "terminated" in err  # rank 0 was stopped by torchrun, not crashed
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept and all(name.startswith("step_") for name in kept), kept  # only whole checkpoints, no leftovers
    last = int(kept[-1].split("_")[1])
    assert 8 <= last < 40
    code, _, err = finish(torchrun([*args, "--resume", f"run_dir={run}"], tmp_path))
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 41))  # the lost steps were trained again and logged once
    train(load_config("digits", overrides=[*args, f"run_dir={tmp_path / 'whole'}"]), progress=False)
    # one process, 40 steps: the two reduction orders drift apart by a few float32 ulps of the weights
    assert max_diff(weights(run), weights(tmp_path / "whole")) <= 1e-5


@pytest.mark.slow
def test_under_torchrun_one_rank_reports_bad_input(tmp_path):
    code, out, err = finish(torchrun([*RUN, "model.depth=0", f"run_dir={tmp_path / 'bad'}"], tmp_path))
    assert code != 0 and err.count("error: config key model.depth must be") == 1, err  # not once per rank
    assert not (tmp_path / "bad").exists()


TEXT = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.text=joint", "model.patch_size=8",
        "data.num=32", "batch_size=8", "steps=6", "log_every=1", "ckpt_every=6", "lr=1e-3", "warmup_steps=0",
        "precision=fp32", "mask.recipe=tread", "mask.ratio=0.5", "mask.route=[1,2]"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_text_model_with_routed_tokens_under_torchrun_reproduces_one_process(tmp_path, strategy):
    """Captions, their text encoder, joint blocks and TREAD routing over 2 ranks: the weights, EMA and Adam moments
    one process reaches."""
    code, _, err = finish(torchrun(["--preset", "shapes-text", *TEXT, f"dist.strategy={strategy}",
                                    f"run_dir={tmp_path / 'many'}"], tmp_path))
    assert code == 0, err
    train(load_config("shapes-text", overrides=[*TEXT, f"run_dir={tmp_path / 'one'}"]), progress=False)
    # the two reduction orders of the gradients differ by float32 ulps, which Adam's moments carry (1.9e-6 seen)
    assert max_diff(all_tensors(tmp_path / "many"), all_tensors(tmp_path / "one")) <= 1e-5


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_lora_run_under_torchrun_reproduces_one_process(tmp_path, trained, strategy):
    """A frozen base and LoRA updates on 2 ranks: the same updates, EMA and Adam moments (and only those) as one
    process reaches; FSDP shards blocks that hold frozen and trainable weights side by side."""
    base = trained(*RUN, "steps=2")
    args = [*RUN, "steps=4", f"init_from={base}", "lora.rank=2", "lora.targets=[all]", "lr=1e-2"]
    code, _, err = finish(torchrun([*args, f"dist.strategy={strategy}", f"run_dir={tmp_path / 'many'}"], tmp_path))
    assert code == 0, err
    train(load_config("digits", overrides=[*args, f"run_dir={tmp_path / 'one'}"]), progress=False)
    many, one = all_tensors(tmp_path / "many"), all_tensors(tmp_path / "one")
    assert max_diff(many, one) <= 1e-6
    assert all("lora_" in k for k in many if not k.startswith("optimizer."))


@pytest.mark.parametrize("kind,strategy", [("controlnet", "ddp"), ("controlnet", "fsdp"), ("tokens", "fsdp")])
def test_a_frozen_base_control_run_under_torchrun_reproduces_one_process(tmp_path, trained, kind, strategy):
    """A ControlNet branch (DDP) or condition tokens (FSDP) beside a frozen base on 2 ranks: the same weights, EMA
    and Adam moments as one process reaches."""
    base = trained(*RUN, "steps=2")
    args = [*RUN, "steps=4", f"init_from={base}", "control.signal=edges", f"control.kind={kind}", "control.blocks=1",
            "control.rank=4", "lr=1e-2"]
    code, _, err = finish(torchrun([*args, f"dist.strategy={strategy}", f"run_dir={tmp_path / 'many'}"], tmp_path))
    assert code == 0, err
    train(load_config("digits", overrides=[*args, f"run_dir={tmp_path / 'one'}"]), progress=False)
    many, one = all_tensors(tmp_path / "many"), all_tensors(tmp_path / "one")
    assert max_diff(many, one) <= 1e-6
    assert any(k.startswith("model.control.") for k in many)
