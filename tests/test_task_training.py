"""Condition masks in training and sampling: given tokens enter clean, are excluded from the loss and are
held exactly when sampling; one model serves every task."""

import numpy as np
import pytest
import torch
from conftest import TINY, perturbed

from maskdit.cli.app import main
from maskdit.config import load_config
from maskdit.diffusion.objectives import FlowMatching, denoising_loss
from maskdit.diffusion.samplers import generate
from maskdit.errors import ConfigError
from maskdit.grid import patchify
from maskdit.masks import random_keep_indices, task_mask
from maskdit.model import DiT
from maskdit.training.trainer import Trainer, model_for

VIDEO = ["compile=false", "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "data.num=32",
         "warmup_steps=1", "sample.steps=2"]


def video_model(attention="full", token_time=False):
    torch.manual_seed(0)
    return perturbed(DiT((4, 8, 8), 1, (1, 2, 2), 32, 2, 2, attention=attention, task_conditioning=True,
                         token_time=token_time))


def clips(n=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 4, 8, 8, generator=g), torch.randn(n, 1, 4, 8, 8, generator=g), torch.rand(n, generator=g)


def test_given_tokens_enter_clean_and_are_left_out_of_the_loss():
    model = video_model()
    x0, noise, t = clips()
    given = task_mask("predict", model.token_grid, k=2).reshape(1, -1).expand(3, -1)
    seen = {}
    model.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    out_hook = {}

    def keep(m, args, out):
        out.retain_grad()
        out_hook["out"] = out

    model.final_layer.register_forward_hook(keep)
    loss = denoising_loss(model, FlowMatching(), x0, None, t, noise, given=given)
    loss.backward()
    x_in = patchify(seen["x"], model.patch_size)
    assert torch.equal(x_in[given], patchify(x0, model.patch_size)[given])  # clean context
    assert not torch.allclose(x_in[~given], patchify(x0, model.patch_size)[~given])  # noised
    grad = out_hook["out"].grad.abs().sum(-1)
    assert torch.all(grad[given] == 0) and torch.all(grad[~given] > 0)


def test_condition_mask_with_token_dropping_covers_kept_and_generated_only():
    model = video_model()
    x0, noise, t = clips()
    given = task_mask("predict", model.token_grid, k=2).reshape(1, -1).expand(3, -1)
    # keep only given tokens: nothing kept is generated, so the loss is exactly zero
    keep_given = torch.arange(model.num_tokens)[given[0]].expand(3, -1)
    assert denoising_loss(model, FlowMatching(), x0, None, t, noise, keep_given, given).item() == 0.0
    keep = random_keep_indices(3, model.num_tokens, 0.5, torch.Generator().manual_seed(0))
    assert denoising_loss(model, FlowMatching(), x0, None, t, noise, keep, given).item() > 0


@pytest.mark.parametrize("attention", ["full", "factorised"])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("token_time", [False, True])
def test_sampling_returns_given_tokens_exactly(attention, sampler, token_time):
    model = video_model(attention, token_time)
    context = torch.rand(2, 1, 4, 8, 8) * 2 - 1
    given = task_mask("interpolate", model.token_grid, stride=2).reshape(1, -1).expand(2, -1)
    out = generate(model, FlowMatching(), 2, sampler=sampler, steps=3, given=given, context=context)
    tok_out, tok_ctx = patchify(out, model.patch_size), patchify(context, model.patch_size)
    assert torch.equal(tok_out[given], tok_ctx[given])
    assert not torch.allclose(tok_out[~given], tok_ctx[~given])


# --- per-token time: given tokens at t = 0 ---------------------------------------------------------------


def _twins(attention: str) -> tuple[DiT, DiT]:
    """The same weights with and without per-token time."""
    plain, timed = video_model(attention), video_model(attention, token_time=True)
    timed.load_state_dict(plain.state_dict())
    return plain, timed


@pytest.mark.parametrize("attention", ["full", "factorised"])
def test_token_time_is_exactly_the_global_path_when_every_token_has_the_same_time(attention):
    plain, timed = _twins(attention)
    x, _, t = clips()
    nothing = torch.zeros(3, plain.num_tokens, dtype=torch.bool)
    assert torch.equal(timed(x, t, given=nothing), plain(x, t, given=nothing))
    assert torch.equal(timed(x, t), plain(x, t))  # no condition mask at all
    given = task_mask("predict", plain.token_grid, k=2).reshape(1, -1).expand(3, -1)
    zero = torch.zeros(3)  # every token at t = 0: both levels are the same vector
    assert torch.equal(timed(x, zero, given=given), plain(x, zero, given=given))
    # with a mask and t > 0 the generated tokens see that their neighbours are clean
    out_timed, out_plain = patchify(timed(x, t, given=given), (1, 2, 2)), patchify(plain(x, t, given=given), (1, 2, 2))
    assert (out_timed[~given] - out_plain[~given]).abs().max() > 1e-5


def test_token_time_follows_each_kept_token_to_its_place():
    """Dropping reorders tokens: each must still find its own level (a permutation of all tokens is
    attention-equivariant, so the prediction is the full one, permuted)."""
    _, timed = _twins("full")
    x, _, t = clips()
    given = task_mask("interpolate", timed.token_grid, stride=2).reshape(1, -1).expand(3, -1)
    order = torch.stack([torch.randperm(timed.num_tokens, generator=torch.Generator().manual_seed(i))
                         for i in range(3)])
    full = patchify(timed(x, t, given=given), timed.patch_size)
    permuted = timed(x, t, keep_idx=order, given=given)
    assert torch.allclose(permuted, full.gather(1, order[..., None].expand_as(full)), atol=1e-5)


def test_token_time_needs_condition_masks():
    with pytest.raises(ConfigError, match="token_time"):
        DiT((4, 8, 8), 1, (1, 2, 2), 32, 2, 2, token_time=True)
    with pytest.raises(ConfigError, match="model.token_time=true .* needs condition masks"):
        load_config("digits", overrides=["model.token_time=true"])
    cfg = load_config("bouncing-digits", overrides=[*VIDEO, "model.token_time=true"])
    assert DiT.from_config(model_for(cfg, (1, 8, 16, 16), 0).config).token_time  # saved with the model


def test_context_guidance_contrasts_knowing_the_given_tokens_with_not_knowing_them():
    from maskdit.diffusion.guidance import guided

    model = video_model(token_time=True)
    x, _, t = clips()
    given = task_mask("predict", model.token_grid, k=2).reshape(1, -1).expand(3, -1)
    fn = guided(model, None, 2.5, given=given, guidance="context")
    strong, weak = model(x, torch.full((3,), 0.4, dtype=torch.float64), given=given), \
        model(x, torch.full((3,), 0.4, dtype=torch.float64))
    assert torch.allclose(fn(x, 0.4), weak + 2.5 * (strong - weak), atol=1e-6)
    assert torch.equal(guided(model, None, 2.5, guidance="context")(x, 0.4), weak)  # no task: nothing to contrast
    context = torch.rand(3, 1, 4, 8, 8) * 2 - 1
    out = generate(model, FlowMatching(), 3, steps=3, given=given, context=context, guidance="context",
                   guidance_scale=2.0)
    assert torch.equal(patchify(out, model.patch_size)[given], patchify(context, model.patch_size)[given])
    with pytest.raises(ConfigError, match="guidance context .* needs a model trained on tasks"):
        guided(DiT((4, 8, 8), 1, (1, 2, 2), 32, 2, 2), None, 2.0, guidance="context")


def test_mask_that_leaves_nothing_to_generate_is_refused():
    model = video_model()
    everything = torch.ones(1, model.num_tokens, dtype=torch.bool)
    with pytest.raises(ConfigError, match="leaves nothing to generate"):
        generate(model, FlowMatching(), 1, given=everything, context=torch.zeros(1, 1, 4, 8, 8))
    with pytest.raises(ConfigError, match="leaves nothing to generate"):
        task_mask("predict", model.token_grid, k=4)


def test_trainer_refuses_task_setups_that_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match="does not support condition masks"):
        Trainer(load_config("bouncing-digits", overrides=[*VIDEO, f"run_dir={tmp_path}/a", "mask.recipe=mae"]),
                progress=False)
    with pytest.raises(ConfigError, match="predict"):  # a frame task on 2-D digits
        Trainer(load_config("digits", overrides=[f"run_dir={tmp_path}/b", "task.names=[predict]"]), progress=False)
    with pytest.raises(ConfigError, match="task.weights"):
        load_config("bouncing-digits", overrides=["task.weights=[1]"])


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, run_factory):
    root = tmp_path_factory.mktemp("video")
    run_factory(*VIDEO, "steps=3", preset="bouncing-digits", into=root / "run")  # the tests write beside it
    assert main(["data", "bouncing-digits", "--split", "test", "--num", "3", "--out", str(root / "clips.npz")]) == 0
    return root


def test_cli_predict_holds_context_frames(video_run, capsys):
    out = video_run / "predict.npz"
    assert main(["sample", str(video_run / "run"), "--task", "predict", "--context", str(video_run / "clips.npz"),
                 "--given-frames", "3", "--out", str(out)]) == 0
    ctx, gen = np.load(video_run / "clips.npz")["frames"], np.load(out)["frames"]
    assert gen.shape == ctx.shape == (3, 8, 16, 16, 1) and gen.dtype == np.uint8
    assert np.array_equal(gen[:, :3], ctx[:, :3]) and not np.array_equal(gen[:, 3:], ctx[:, 3:])
    assert "38% of tokens given" in capsys.readouterr().out


def test_cli_every_task_runs_and_writes_a_gif(video_run):
    import imageio.v3 as iio

    for task in ("unconditional", "backward", "interpolate", "animate", "complete", "inpaint"):
        out = video_run / f"{task}.gif"
        assert main(["sample", str(video_run / "run"), "--task", task, "--context",
                     str(video_run / "clips.npz"), "--out", str(out), "--num", "2"]) == 0
        assert len(iio.imread(out)) == 8  # one GIF frame per clip frame


@pytest.mark.parametrize("argv, message", [
    (["--task", "predict", "--given-frames", "8"], "leaves nothing to generate"),
    (["--task", "interpolate", "--given-frames", "2"], "--given-frames does not apply to --task interpolate"),
    (["--task", "predict"], "--task needs --context"),
    (["--task", "predict", "--context", "nope.npz"], "does not exist"),
])
def test_cli_task_errors(video_run, capsys, argv, message):
    argv = [str(video_run / "clips.npz") if a == "CTX" else a for a in argv]
    if "--context" not in argv and "--task needs" not in message:
        argv += ["--context", str(video_run / "clips.npz")]
    assert main(["sample", str(video_run / "run"), *argv, "--out", str(video_run / "x.npz")]) == 2
    assert message in capsys.readouterr().err


def test_model_without_tasks_refuses_a_context(tmp_path, trained, capsys):
    run = trained(*TINY)  # digits, no tasks
    np.savez(tmp_path / "imgs.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    assert main(["sample", str(run), "--task", "inpaint", "--context", str(tmp_path / "imgs.npz"),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "trained without tasks" in capsys.readouterr().err


def test_image_inpainting_with_a_png_mask(tmp_path, trained):
    from PIL import Image

    run = trained(*TINY, "task.names=[inpaint,outpaint]")  # digits trained with image tasks
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255  # generate a box: tokens (1..2, 1..2) of the 4x4 token grid
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["sample", str(run), "--task", "inpaint", "--mask", str(tmp_path / "mask.png"), "--context",
                 str(tmp_path / "imgs.npz"), "--out", str(tmp_path / "out.npz"), "--steps", "2"]) == 0
    out = np.load(tmp_path / "out.npz")["images"]
    generated = np.zeros((8, 8), bool)
    generated[2:6, 2:6] = True  # whole 2x2 patches that touch the white box
    assert np.array_equal(out[:, ~generated], images[:, ~generated])
    assert not np.array_equal(out[:, generated], images[:, generated])
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "small.png")
    assert main(["sample", str(run), "--task", "inpaint", "--mask", str(tmp_path / "small.png"), "--context",
                 str(tmp_path / "imgs.npz"), "--out", str(tmp_path / "o.npz")]) == 2


def test_video_run_samples_reports_and_refuses_image_eval(video_run, capsys):
    import imageio.v3 as iio
    from PIL import Image

    run = str(video_run / "run")
    assert main(["sample", run, "--num", "3", "--out", str(video_run / "u.gif")]) == 0
    assert len(iio.imread(video_run / "u.gif")) == 8
    assert main(["sample", run, "--num", "3", "--out", str(video_run / "u.png")]) == 0
    assert Image.open(video_run / "u.png").size == (8 * 33 + 1, 3 * 33 + 1)  # a clip per row, 8 frames, 2x enlarged
    assert main(["eval", run, "--num", "4"]) == 2
    assert "for video tasks use" in capsys.readouterr().err
    assert main(["report", run, "--out", str(video_run / "r.html"), "--per-class", "2"]) == 0
    assert "data:image/png;base64," in (video_run / "r.html").read_text()
