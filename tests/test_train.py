import json

import pytest
import torch
from safetensors.torch import load_file

import maskdit.checkpoint as ckpt_mod
from maskdit.checkpoint import latest_checkpoint, list_checkpoints, load_weights, remove_run
from maskdit.config import load_config
from maskdit.errors import CheckpointError, ConfigError
from maskdit.model import DiT
from maskdit.runs import load_run
from maskdit.training.schedule import learning_rate
from maskdit.training.trainer import Trainer, train

SMALL = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=16", "warmup_steps=2",
         "log_every=1", "ckpt_every=3"]


def small_cfg(run_dir, *extra):
    return load_config("digits", overrides=[*SMALL, f"run_dir={run_dir}", *extra])


def weights(run_dir):
    c = latest_checkpoint(run_dir)
    return load_file(c / "model.safetensors"), load_file(c / "ema.safetensors"), load_file(c / "optimizer.safetensors")


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_resume_continues_exactly(tmp_path, objective):
    cfg = small_cfg(tmp_path / "full", "steps=7", f"objective.name={objective}")
    train(cfg, progress=False)
    cfg = small_cfg(tmp_path / "split", "steps=7", f"objective.name={objective}")
    train(cfg, progress=False, stop_after=3)
    assert latest_checkpoint(tmp_path / "split").name == "step_000003"
    train(cfg, resume=True, progress=False)
    for full, split in zip(weights(tmp_path / "full"), weights(tmp_path / "split")):
        assert_same(full, split)
    state = json.loads((latest_checkpoint(tmp_path / "split") / "state.json").read_text())
    assert state["step"] == 7 and state["data_position"] == {"epoch": 0, "batch": 7}
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))


def test_training_reduces_loss_and_seed_changes_run(tmp_path):
    cfg = small_cfg(tmp_path / "a", "steps=60", "log_every=20")
    train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0]
    train(small_cfg(tmp_path / "b", "steps=3", "seed=1"), progress=False)
    train(small_cfg(tmp_path / "c", "steps=3", "seed=2"), progress=False)
    assert not torch.equal(weights(tmp_path / "b")[0]["blocks.0.attn.qkv.weight"],
                           weights(tmp_path / "c")[0]["blocks.0.attn.qkv.weight"])


def test_existing_run_is_not_overwritten(tmp_path, trained):
    run = trained(*SMALL, "steps=3", into=tmp_path / "run")
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(small_cfg(run, "steps=3"), progress=False)


def test_remove_run_deletes_runs_only(tmp_path, trained):
    """Benchmarks clear their scratch runs with remove_run: a run (or an empty folder) goes, anything else stays."""
    run = trained(*SMALL, "steps=3", into=tmp_path / "run")
    remove_run(run)
    assert not run.exists()
    (tmp_path / "empty").mkdir()
    remove_run(tmp_path / "empty")
    remove_run(tmp_path / "never-made")  # nothing there: nothing to do
    assert not (tmp_path / "empty").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for path in (mine, tmp_path / "file"):
        with pytest.raises(CheckpointError, match="is not a maskdit run, so it was left alone"):
            remove_run(path)
    assert (mine / "notes.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "keep me too"


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, "steps=6")
    train(cfg, progress=False, stop_after=3)
    real_save = ckpt_mod.save_file

    def crash_on_ema(tensors, path, *a, **k):
        if path.name == "ema.safetensors":
            path.write_bytes(b"half a file")
            raise OSError("disk full")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", crash_on_ema)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, resume=True, progress=False)
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_000003" and [p.name for p in list_checkpoints(tmp_path)] == ["step_000003"]
    run = load_run(tmp_path)  # still loads
    assert run.step == 3
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)
    train(cfg, resume=True, progress=False)  # and the run can go on from it
    assert latest_checkpoint(tmp_path).name == "step_000006"


def test_old_checkpoints_are_pruned(tmp_path):
    train(small_cfg(tmp_path, "steps=9", "keep_checkpoints=2"), progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000006", "step_000009"]


def test_checkpoint_that_does_not_fit_the_model_is_refused(trained):
    run = trained(*SMALL, "steps=1")
    other = DiT((8, 8), 1, 2, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    with pytest.raises(CheckpointError, match=r"does not match the model .*shape mismatch"):
        load_weights(other, latest_checkpoint(run) / "model.safetensors")
    deeper = DiT((8, 8), 1, 2, hidden_size=32, depth=3, num_heads=2, num_classes=10)
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_weights(deeper, latest_checkpoint(run) / "model.safetensors")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_run(run / "checkpoints")


def test_damaged_weights_file_is_refused(tmp_path, trained):
    run = trained(*SMALL, "steps=1", into=tmp_path / "run")
    (latest_checkpoint(run) / "ema.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="damaged"):
        load_run(run)


def test_learning_rate_schedule():
    cfg = load_config("digits", overrides=["steps=100", "warmup_steps=10", "lr=0.001", "lr_min=0.0"])
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 55) == pytest.approx(5e-4)
    assert learning_rate(cfg, 100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=0", "steps must be at least 1"),
        ("ema_decay=1.5", r"ema_decay must be in \[0, 1\)"),
        ("model.dept=3", "unknown config key 'model.dept'"),
        ("model.preset=DiT-Q/3", "model.preset must be one of"),
        ("lr=fast", "lr has the wrong type"),
        ("objective.name=score", "objective.name must be one of flow, ddpm or masked"),
        ("data.name=npz", "data.path is required"),
        ("batch", "must look like key=value"),
        ("precision=fp16", "precision must be one of auto, fp32 or bf16"),
    ],
)
def test_bad_config_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits", overrides=[override])


def test_scientific_notation_reaches_float_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 3e-4\nmodel:\n  class_dropout: 1e-1\n")
    cfg = load_config(None, path, ["lr_min=1e-6"])
    assert cfg.lr == 3e-4 and cfg.model.class_dropout == 0.1 and cfg.lr_min == 1e-6
    with pytest.raises(ConfigError, match="steps has the wrong type"):
        load_config(None, None, ["steps=1e3"])


def test_bf16_precision_computes_the_forward_in_bf16_and_keeps_fp32_weights(trained):
    """``precision=bf16`` autocasts the forward (on the CPU too): the losses move by bf16 rounding only,
    the weights, gradients and checkpoints stay fp32, and the default on a CPU is fp32."""
    runs = {}
    for precision in ("auto", "fp32", "bf16"):
        run = trained(*SMALL, "steps=3", f"precision={precision}")
        runs[precision] = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]
    assert runs["auto"] == runs["fp32"]
    # step 1's loss is the same in both (the zero-initialised final layer predicts 0); later steps differ by rounding
    assert runs["bf16"][0] == runs["fp32"][0]
    assert runs["bf16"][-1] != runs["fp32"][-1]
    assert runs["bf16"][-1] == pytest.approx(runs["fp32"][-1], rel=0.02)
    model, ema, _ = weights(trained(*SMALL, "steps=3", "precision=bf16"))
    assert {t.dtype for t in [*model.values(), *ema.values()]} == {torch.float32}


def test_compile_on_the_cpu_without_a_compiler_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import maskdit.training.trainer as train_mod

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(train_mod.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="compile=true on the CPU needs a C.. compiler.*compile=false"):
        Trainer(small_cfg(tmp_path / "run", "compile=true", "device=cpu"), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compiled_bf16_training_resumes_exactly(tmp_path):
    """The bouncing-digits preset's mode (compiled blocks, bf16 forward on the CPU) keeps the exact-resume promise."""
    extra = ["steps=5", "compile=true", "precision=bf16", "model.depth=1"]
    train(small_cfg(tmp_path / "full", *extra), progress=False)
    cfg = small_cfg(tmp_path / "split", *extra)
    train(cfg, progress=False, stop_after=3)
    train(cfg, resume=True, progress=False)
    for full, split in zip(weights(tmp_path / "full"), weights(tmp_path / "split")):
        assert_same(full, split)


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    Trainer(small_cfg(tmp_path / "run", "precision=bf16", "device=cpu"), progress=False)
    err = capsys.readouterr().err
    assert "no native bf16" in err and "pass precision=fp32" in err
    Trainer(small_cfg(tmp_path / "run", "precision=fp32", "device=cpu"), progress=False)
    assert "bf16" not in capsys.readouterr().err
