"""Foundation v2: registries, the training-step module and its step inputs, the aux-loss channel, positions
that travel with kept tokens, codecs and the dataset protocol, and the bugs this release fixed."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, perturbed

from maskdit.checkpoint import STEP_NAME, latest_checkpoint, list_checkpoints
from maskdit.cli.app import build_parser, main
from maskdit.config import load_config
from maskdit.data.codec import PIXELS, codec_from_config
from maskdit.data.datasets import DATASETS, MAX_CLASSES, dataset_from_config, load_npz
from maskdit.diffusion.guidance import GUIDANCES
from maskdit.diffusion.objectives import OBJECTIVES, FlowMatching
from maskdit.diffusion.samplers import SAMPLERS, generate
from maskdit.diffusion.tasks import complete
from maskdit.errors import ConfigError, DataError
from maskdit.masks import DROP_SHAPES, TASKS
from maskdit.model import DiT
from maskdit.model.aux import report_aux_loss
from maskdit.model.decoders import MAEDecoder, SideInterpolater
from maskdit.registry import Registry
from maskdit.runs import load_run
from maskdit.training.recipes import RECIPES, build_recipe
from maskdit.training.step import StepSampler, TrainingStep
from maskdit.training.trainer import Trainer, TrainingDiverged, train

README = (Path(__file__).parent.parent / "README.md").read_text()


def small(run_dir, *extra):
    return load_config("digits", overrides=[*SMALL, "batch_size=16", f"run_dir={run_dir}", *extra])


# -- registries ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("registry", [SAMPLERS, OBJECTIVES, RECIPES, DATASETS, TASKS, DROP_SHAPES, GUIDANCES],
                         ids=lambda r: r.kind)
def test_every_registered_name_is_documented_in_the_readme(registry):
    missing = [name for name in registry if f"`{name}`" not in README]
    assert not missing, f"README does not mention {registry.kind}(s) {missing}"


def test_a_new_sampler_is_one_registration_away_from_config_cli_and_generate(tmp_path):
    """Registering a sampler (here: the explicit midpoint method) is all it takes: config validation, the
    CLI's --sampler choices and generate() pick it up from the table."""
    calls = []

    def midpoint(fn, x, objective, steps, *, eta=0.0, noise=None, progress=False):
        ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
        for i in range(steps):
            dt = ts[i + 1] - ts[i]
            calls.append(i)
            x = x + dt * fn(x + 0.5 * dt * fn(x, ts[i]), ts[i] + 0.5 * dt)
        return x

    with pytest.raises(ConfigError, match="sample.sampler must be one of .*got 'midpoint'"):
        load_config("digits", overrides=["sample.sampler=midpoint"])
    SAMPLERS.add("midpoint", midpoint, "explicit midpoint", objectives=("flow",), calls_per_step=2)
    try:
        assert load_config("digits", overrides=["sample.sampler=midpoint"]).sample.sampler == "midpoint"
        with pytest.raises(ConfigError, match="does not fit the ddpm objective"):
            load_config("digits", overrides=["sample.sampler=midpoint", "objective.name=ddpm"])
        assert "midpoint" in build_parser("sample").format_help()
        model = perturbed(DiT((8, 8), 1, 2, 32, 1, 2))
        x = generate(model, FlowMatching(), 3, sampler="midpoint", steps=4)
        assert x.shape == (3, 1, 8, 8) and calls == [0, 1, 2, 3]
    finally:
        SAMPLERS.remove("midpoint")
    assert "midpoint" not in SAMPLERS


def test_registry_refuses_duplicates_and_names_the_choices():
    reg = Registry("widget", key="model.widget")
    reg.add("a", 1, "first")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 2)
    with pytest.raises(ConfigError, match="unknown widget 'b': model.widget must be one of a"):
        reg.get("b")


# -- step inputs and the training-step module ---------------------------------------------------------
def _sampler(batch=8, tasks=None, ratio=0.5):
    mask = load_config("digits", overrides=[f"mask.ratio={ratio}"]).mask
    return StepSampler(3, 100, batch, (1, 4, 8, 8), FlowMatching(), 0.1, 64, (4, 4, 4), mask, 1000,
                       tasks or {"predict": 1.0, "interpolate": 1.0})


def test_step_inputs_are_a_pure_function_of_seed_and_step_and_shard_exactly():
    a, b = _sampler().draw(17), _sampler().draw(17)
    for name in ("index", "t", "noise", "drop_condition", "keep_idx", "given"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.noise, _sampler().draw(18).noise)
    shards = [a.shard(rank, 4) for rank in range(4)]
    for name in ("index", "t", "noise", "drop_condition", "keep_idx", "given"):
        assert torch.equal(torch.cat([getattr(s, name) for s in shards]), getattr(a, name)), name
    assert a.keep_idx.shape == (8, 32) and a.given.shape == (8, 64) and a.mask_ratio == 0.5


class AuxBlock(torch.nn.Module):
    """A block that reports a loss term through the aux channel (like an MoE balance loss would)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.weight = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x, c, pos=None):
        report_aux_loss("aux_test", self.weight * x.pow(2).mean())
        return self.inner(x, c, pos)


def test_training_step_adds_reported_aux_losses_and_equals_the_recipe_loss():
    model = perturbed(DiT((8, 8), 1, 2, 32, 2, 2, num_classes=10))
    objective = FlowMatching()
    step = TrainingStep(model, build_recipe("drop", model), objective)
    inputs = StepSampler(0, 64, 4, (1, 8, 8), objective, 0.5, model.num_tokens, model.token_grid,
                         load_config("digits", overrides=["mask.ratio=0.5"]).mask, 100).draw(3)
    x0, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    loss, parts = step((x0, y), inputs)
    y_used = torch.where(inputs.drop_condition, torch.full_like(y, 10), y)
    expected, _ = step.recipe.loss(model, objective, x0, y_used, inputs.t, inputs.noise, inputs.keep_idx)
    assert torch.equal(loss, expected) and torch.equal(parts["loss_denoise"], expected.detach())
    model.blocks[1] = AuxBlock(model.blocks[1])
    with_aux, parts = step((x0, y), inputs)
    assert parts["aux_test"] > 0 and torch.allclose(with_aux, expected + parts["aux_test"])
    with_aux.backward()
    assert model.blocks[1].weight.grad is not None and model.blocks[1].weight.grad > 0
    model.blocks[1].weight.grad = None
    model(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1]))  # sampling: nothing collects, no error


def test_positions_travel_with_kept_tokens_to_every_block():
    model = DiT((8, 8), 1, 2, 32, 3, 2, mixer_depth=1)
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[2]))
    keep = torch.tensor([[0, 3, 7, 12], [1, 2, 14, 15]])
    model(torch.randn(2, 1, 8, 8), torch.rand(2), keep_idx=keep)
    assert seen[0] is None  # the patch mixer sees every token, in order
    assert all(torch.equal(p, keep) for p in seen[1:])
    seen.clear()
    model(torch.randn(2, 1, 8, 8), torch.rand(2))
    assert seen == [None, None, None]


@pytest.mark.parametrize("extra", [[], ["model.moe.experts=4", "model.moe.shared=1", "model.moe.capacity=0.5",
                                         "model.pos=rope", "model.qk_norm=true"]])
def test_the_training_step_never_reads_device_values_back(tmp_path, monkeypatch, extra):
    """Plain, and with a mixture of experts whose capacity turns assignments away (routing stays on the
    device) and rotary attention."""
    trainer = Trainer(small(tmp_path, "steps=3", "mask.ratio=0.5", *extra), progress=False)
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name: (reads.append(_name),
                                                                                         _real(self, *a))[1])
    stats = trainer.train_step(0)
    monkeypatch.undo()
    assert reads == [], f"host reads in a training step: {reads}"
    assert torch.is_tensor(stats["loss"]) and torch.is_tensor(stats["grad_norm"])


# -- decoders start as the identity -------------------------------------------------------------------
def test_decoder_blocks_are_zero_initialised_like_the_backbone():
    decoder = MAEDecoder((4, 4), 32, 4, depth=2, width=16)
    for block in [*decoder.blocks, decoder.final_layer]:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
        assert torch.count_nonzero(block.adaLN_modulation[-1].bias) == 0
    interpolater = SideInterpolater(32, 2)
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    assert torch.equal(interpolater.block(x, c), x)  # a fresh block is the identity


# -- codec and datasets -------------------------------------------------------------------------------
def test_pixel_codec_round_trips_and_runs_record_their_codec(tmp_path):
    stored = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(PIXELS.decode(PIXELS.encode(stored)), stored)
    assert PIXELS.encode(stored).min() == -1 and PIXELS.encode(stored).max() == 1
    assert isinstance(codec_from_config(None), type(PIXELS))  # runs written before codecs existed
    train(small(tmp_path, "steps=1"), progress=False)
    info = json.loads((tmp_path / "config.json").read_text())
    assert info["dataset"]["codec"] == {"name": "uint8"}
    assert load_run(tmp_path).codec.name == "uint8"


def test_memory_mapped_npy_dataset_reads_only_what_a_batch_needs(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(50) % 5)
    cfg = load_config("digits", overrides=["data.name=npy", f"data.path={tmp_path}"]).data
    data = dataset_from_config(cfg)
    assert data.shape == (1, 8, 8) and len(data) == 50 and data.num_classes == 5
    x, y = data.batch(torch.tensor([7, 3]))
    assert torch.equal(PIXELS.decode(x)[:, 0], torch.from_numpy(images[[7, 3]])) and y.tolist() == [2, 3]
    train(load_config("digits", overrides=[*SMALL, "batch_size=10", "steps=2", f"run_dir={tmp_path / 'run'}",
                                           "data.name=npy", f"data.path={tmp_path}"]), progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_000002"
    np.savez(tmp_path / "fake.npz", images=images[:10, :, :, None], labels=np.arange(10) % 5)
    assert main(["eval", "--samples", str(tmp_path / "fake.npz"), "--data", str(tmp_path), "--metrics",
                 "domain_fid,class"]) == 0  # --data takes a directory of .npy arrays too


def test_a_huge_label_is_refused_quickly_without_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, 10**9]))
    start = time.time()
    with pytest.raises(DataError, match=f"label 1000000000 is beyond the maximum of {MAX_CLASSES} classes"):
        load_npz(path)
    assert time.time() - start < 2


def test_empty_images_are_refused(tmp_path):
    np.savez(tmp_path / "empty.npz", images=np.zeros((4, 0, 0), np.uint8))
    with pytest.raises(DataError, match="hold no pixels"):
        load_npz(tmp_path / "empty.npz")


# -- sampling bugs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.7)])
def test_stochastic_samplers_do_not_depend_on_the_batch_size(sampler, eta):
    from maskdit.diffusion.objectives import DDPM

    model = perturbed(DiT((8, 8), 1, 2, 32, 1, 2, num_classes=3)).eval()
    labels = torch.arange(7) % 3
    kwargs = dict(sampler=sampler, steps=6, eta=eta, seed=5, guidance_scale=2.0)
    whole = generate(model, DDPM(), 7, labels, batch_size=7, **kwargs)
    parts = generate(model, DDPM(), 7, labels, batch_size=3, **kwargs)
    # equal up to float rounding, which differs with the batch's matrix shapes (before the fix the step
    # noise itself differed, by as much as the samples' own size)
    assert (whole - parts).abs().max() <= 1e-5 * whole.abs().max()
    other_seed = generate(model, DDPM(), 7, labels, batch_size=7, **{**kwargs, "seed": 6})
    assert not torch.allclose(whole, other_seed)


class _Run:
    def __init__(self, model):
        self.model, self.objective, self.codec = model, FlowMatching(), PIXELS


def test_complete_reads_a_square_token_grid_as_one_mask_even_when_its_side_equals_the_batch():
    model = perturbed(DiT((8, 8), 1, 2, 32, 1, 2, task_conditioning=True)).eval()  # 4x4 token grid
    context = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    grid = torch.ones(4, 4, dtype=torch.bool)
    grid[1:3, 1:3] = False  # generate the centre of every image
    out = complete(_Run(model), context, grid, steps=2, sampler="euler")
    pixels = grid.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out[:, 0][:, pixels], context[:, 0][:, pixels])
    assert not torch.equal(out[:, 0][:, ~pixels], context[:, 0][:, ~pixels])
    per_image = grid.reshape(1, -1).repeat(4, 1)
    per_image[0] = True
    per_image[0, 0] = False  # one mask per image: image 0 generates only token 0
    out = complete(_Run(model), context, per_image, steps=2, sampler="euler")
    assert torch.equal(out[0, 0, 2:, :], context[0, 0, 2:, :])
    with pytest.raises(ConfigError, match="shaped like the token grid"):
        complete(_Run(model), context, torch.ones(3, 16, dtype=torch.bool), steps=2)


# -- checkpoints --------------------------------------------------------------------------------------
def test_pruning_deletes_only_the_projects_own_checkpoint_names(tmp_path):
    cfg = small(tmp_path, "steps=4", "ckpt_every=1", "keep_checkpoints=1")
    train(cfg, progress=False, stop_after=2)
    user = [tmp_path / "checkpoints" / name for name in ("step_001990_milestone", "step_best", "step_1")]
    for d in user:
        d.mkdir()
        (d / "notes.txt").write_text("mine")
    train(cfg, resume=True, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000004"]
    assert all((d / "notes.txt").read_text() == "mine" for d in user)
    assert STEP_NAME.fullmatch("step_000004") and not STEP_NAME.fullmatch("step_001990_milestone")


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg = small(tmp_path, "steps=4", "ckpt_every=2", "keep_checkpoints=2")
    train(cfg, progress=False)
    (tmp_path / "checkpoints" / "step_000004" / "ema.safetensors").write_bytes(b"\0" * 10)
    capsys.readouterr()
    run = load_run(tmp_path)
    assert run.step == 2 and "skipping damaged checkpoint" in capsys.readouterr().err
    trainer = Trainer(load_config("digits", overrides=[*SMALL, "batch_size=16", "steps=4", f"run_dir={tmp_path}",
                                                       "ckpt_every=2", "keep_checkpoints=2"]), resume=True,
                      progress=False)
    assert trainer.step == 2


def test_resume_skips_a_torn_metrics_line_and_config_is_rewritten_whole(tmp_path):
    cfg = small(tmp_path, "steps=4", "ckpt_every=2", "log_every=1")
    train(cfg, progress=False, stop_after=2)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.5')  # a crash in the middle of a line
    train(cfg, resume=True, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "config.json").read_text())["config"]["steps"] == 4
    assert not list(tmp_path.glob(".*tmp*"))


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_after_nan_tolerance(tmp_path, monkeypatch):
    cfg = small(tmp_path, "steps=12", "log_every=2", "ckpt_every=2", "nan_tolerance=3")
    trainer = Trainer(cfg, progress=False)
    real_loss = type(trainer.recipe).loss
    poisoned = {3, 5, 6, 7}  # one bad step, then three in a row

    def loss(self, model, objective, x0, *args):
        value, parts = real_loss(self, model, objective, x0, *args)
        return (value * float("nan") if trainer.step in poisoned else value), parts

    monkeypatch.setattr(type(trainer.recipe), "loss", loss)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(stop_after=4)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nan_skipped"] for r in records] == [0, 1]
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    with pytest.raises(TrainingDiverged, match="not finite for 3 steps in a row.*step_000006"):
        trainer.run()
    assert latest_checkpoint(tmp_path).name == "step_000006"  # nothing written after the bad streak


def test_a_checkpoint_with_non_finite_weights_is_refused_at_sampling(tmp_path, capsys):
    train(small(tmp_path, "steps=1"), progress=False)
    from safetensors.torch import load_file, save_file

    path = latest_checkpoint(tmp_path) / "ema.safetensors"
    tensors = load_file(path)
    tensors["final_layer.linear.bias"][0] = float("inf")
    save_file(tensors, path)
    assert main(["sample", str(tmp_path), "--num", "2", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "non-finite weights" in err and "final_layer.linear.bias" in err


# -- nothing lost -------------------------------------------------------------------------------------
def _train_cli(run_dir, *extra):
    return main(["train", "--no-progress", *SMALL, "batch_size=16", f"run_dir={run_dir}", *extra])


def test_train_never_writes_into_a_directory_that_is_not_a_run(tmp_path, capsys):
    from conftest import tree_hashes

    (tmp_path / "config.json").write_text('{"mine": true}')
    (tmp_path / "metrics.jsonl").write_text("my notes\n")
    before = tree_hashes(tmp_path)
    for extra in ([], ["--resume"]):
        assert _train_cli(tmp_path, "steps=1", *extra) == 2
        assert "not a maskdit run" in capsys.readouterr().err
    assert tree_hashes(tmp_path) == before


def test_resume_needs_a_run_and_a_run_without_checkpoints_restarts_only_with_resume(tmp_path, capsys):
    assert _train_cli(tmp_path / "nothing", "steps=1", "--resume") == 2
    assert "holds no run to resume" in capsys.readouterr().err and not (tmp_path / "nothing").exists()
    run = tmp_path / "run"
    trainer = Trainer(small(run, "steps=2"), progress=False)
    run.mkdir()
    (run / "config.json").write_text(json.dumps(trainer.run_info()))  # a run that died before its first checkpoint
    assert _train_cli(run, "steps=2") == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert _train_cli(run, "steps=2", "--resume") == 0
    assert latest_checkpoint(run).name == "step_000002"


def test_a_moved_run_resumes_where_it_is_now_never_where_it_was_saved(tmp_path, capsys):
    import shutil

    from conftest import tree_hashes

    assert _train_cli(tmp_path / "old", "steps=2") == 0
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    before = tree_hashes(tmp_path / "old")
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", f"run_dir={tmp_path / 'new'}", "steps=3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "new")
    assert latest_checkpoint(tmp_path / "new").name == "step_000003"
    assert tree_hashes(tmp_path / "old") == before


def test_options_and_overrides_may_be_intermixed(tmp_path, capsys):
    assert main(["train", "--no-progress", *SMALL, "batch_size=16", "--preset", "digits", "steps=1",
                 f"run_dir={tmp_path}"]) == 0
    assert main(["train", "--resume", "steps=2", "--no-progress", f"run_dir={tmp_path}"]) == 0
    assert latest_checkpoint(tmp_path).name == "step_000002"


def test_out_files_are_replaced_only_with_overwrite(tmp_path, capsys):
    assert _train_cli(tmp_path / "run", "steps=1") == 0
    out = tmp_path / "mine.png"
    out.write_bytes(b"my picture")
    for command in (["sample", str(tmp_path / "run"), "--num", "2"], ["data", "bouncing-balls", "--num", "1"],
                    ["report", str(tmp_path / "run")]):
        target = out if command[0] != "data" else out.with_suffix(".gif")
        if command[0] == "data":
            target.write_bytes(b"my clip")
        if command[0] == "report":
            target = out.with_suffix(".html")
            target.write_text("my page")
        original = target.read_bytes()
        capsys.readouterr()
        assert main([*command, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert "already exists: pass --overwrite" in err and target.read_bytes() == original, command
        assert main([*command, "--out", str(target), "--overwrite"]) == 0
        assert target.read_bytes() != original, command


def test_usage_errors_are_one_line(capsys):
    for argv in (["frobnicate"], ["sample"], ["train", "--bogus"], ["sample", "x", "--out", "y.png", "--num", "many"],
                 []):
        with _no_exit():
            assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "usage:" not in err, argv


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        assert kind is not SystemExit, "argparse exited instead of main returning 2"
