"""Interop: DiT/SiT state dicts and diffusers' DiTTransformer2DModel in, diffusers out, samplers alike."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskdit.checkpoint import load_run
from maskdit.cli import main
from maskdit.errors import CheckpointError
from maskdit.interop import dit_layout, export_diffusers, import_run, load_model
from maskdit.model import DiT
from maskdit.objectives import DDPM, FlowMatching
from maskdit.samplers import ddim, ddpm_ancestral, flow_euler

# -- an independent DiT forward on DiT's own state-dict layout (models.py), for the parity tests ------------


def dit_pos_table(dim: int, side: int) -> np.ndarray:
    """DiT's 2-D sin-cos table: float64, the first half from the column index, the second from the row."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    cols, rows = np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64))
    return np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1)


def random_dit_state(width=64, depth=2, heads=4, channels=4, patch=2, side=4, classes=10, sigma=True, seed=0):
    """A state dict with DiT's names and shapes and random weights (the zero-initialised ones too)."""
    g = torch.Generator().manual_seed(seed)
    def r(*shape, scale=0.05):
        return scale * torch.randn(*shape, generator=g)
    out = channels * (2 if sigma else 1)
    sd = {"x_embedder.proj.weight": r(width, channels, patch, patch), "x_embedder.proj.bias": r(width),
          "pos_embed": torch.from_numpy(dit_pos_table(width, side)).float()[None],
          "t_embedder.mlp.0.weight": r(width, 256), "t_embedder.mlp.0.bias": r(width),
          "t_embedder.mlp.2.weight": r(width, width), "t_embedder.mlp.2.bias": r(width),
          "y_embedder.embedding_table.weight": r(classes + 1, width),
          "final_layer.linear.weight": r(patch * patch * out, width), "final_layer.linear.bias": r(patch * patch * out),
          "final_layer.adaLN_modulation.1.weight": r(2 * width, width),
          "final_layer.adaLN_modulation.1.bias": r(2 * width)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
                   b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
                   b + "mlp.fc1.weight": r(4 * width, width), b + "mlp.fc1.bias": r(4 * width),
                   b + "mlp.fc2.weight": r(width, 4 * width), b + "mlp.fc2.bias": r(width),
                   b + "adaLN_modulation.1.weight": r(6 * width, width), b + "adaLN_modulation.1.bias": r(6 * width)})
    return sd


def dit_forward(sd, x, k, y, heads, time_input=None):
    """DiT's forward(x, t, y) written from the paper and models.py's structure: integer steps ``k``."""
    width, channels, patch = sd["x_embedder.proj.weight"].shape[:3]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    side = h.shape[-1]
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = (k.float() if time_input is None else time_input)[:, None] * freqs[None]
    t = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t = F.linear(F.silu(F.linear(t, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                 sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    c = t + sd["y_embedder.embedding_table.weight"][y]

    def modulate(v, shift, scale):
        return v * (1 + scale[:, None]) + shift[:, None]
    depth = len({key.split(".")[1] for key in sd if key.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        mod = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"], sd[b + "adaLN_modulation.1.bias"]).chunk(6, 1)
        a = modulate(F.layer_norm(h, (width,), eps=1e-6), mod[0], mod[1])
        n, length, _ = a.shape
        q, kk, v = F.linear(a, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(
            n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        weights = (q @ kk.transpose(-2, -1) / math.sqrt(width // heads)).softmax(-1)
        att = (weights @ v).transpose(1, 2).reshape(n, length, width)
        h = h + mod[2][:, None] * F.linear(att, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        m = modulate(F.layer_norm(h, (width,), eps=1e-6), mod[3], mod[4])
        m = F.linear(F.gelu(F.linear(m, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]), approximate="tanh"),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        h = h + mod[5][:, None] * m
    shift, scale = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, 1)
    h = F.linear(modulate(F.layer_norm(h, (width,), eps=1e-6), shift, scale), sd["final_layer.linear.weight"],
                 sd["final_layer.linear.bias"])
    out = h.shape[-1] // (patch * patch)
    h = h.reshape(n, side, side, patch, patch, out)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(n, out, side * patch, side * patch)


@pytest.fixture
def dit_file(tmp_path):
    path = tmp_path / "DiT-tiny.pt"
    torch.save(random_dit_state(), path)
    return path


def test_an_imported_dit_computes_dits_forward_for_integer_steps(tmp_path, dit_file, capsys):
    assert main(["import", str(dit_file), "--out", str(tmp_path / "run"), "--num-heads", "4"]) == 0
    assert "learned sigma" in capsys.readouterr().out
    import maskdit

    model = maskdit.load_model(tmp_path / "run")
    assert model.learn_sigma and model.out_channels == 8 and model.pos_layout == "xy"
    sd = torch.load(dit_file, weights_only=True)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, 8, 8, generator=g), torch.tensor([0, 3, 9, 10, 5, 1])
    k = torch.tensor([0, 1, 250, 499, 998, 999])
    with torch.no_grad():
        ours = model(x, k.double() / 1000, y)
        theirs = dit_forward(sd, x, k, y, heads=4)
    assert ours.shape == theirs.shape == (6, 8, 8, 8)
    assert (ours - theirs).abs().max().item() <= 1e-5
    # every step of the chain embeds exactly the integer k in float64 (10 of 1000 miss it in float32)
    emb = model.t_embedder
    steps = torch.arange(1000)
    value = (emb.time_offset + emb.time_scale * (steps.double() / 1000)).float()
    assert torch.equal(value, steps.float())
    run = load_run(tmp_path / "run")
    s = run.config.sample
    assert (s.sampler, s.steps, s.guidance_scale, s.guidance_channels) == ("ddpm", 250, 4.0, 3)
    assert run.objective.step_offset == 0 and run.objective.time_of_step(5) == 0.005


def test_sit_import_flips_time_and_velocity(tmp_path):
    sd = random_dit_state(seed=2)
    torch.save(sd, tmp_path / "sit.pt")
    import_run(tmp_path / "sit.pt", tmp_path / "run", "sit", num_heads=4)
    model = load_model(tmp_path / "run")
    assert not model.learn_sigma and model.out_channels == 4
    g = torch.Generator().manual_seed(3)
    x, y, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([1, 2, 3]), torch.tensor([0.1, 0.5, 0.93])
    with torch.no_grad():
        ours = model(x, t, y)
        sit = dit_forward(sd, x, None, y, heads=4, time_input=(1 - t).float())[:, :4]  # SiT: t unscaled, 1 = data
    assert (ours + sit).abs().max().item() <= 1e-5  # maskdit's velocity is SiT's, negated


def diffusers_dit(seed=0, classes=10, out_channels=8):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                  out_channels=out_channels, num_layers=2, sample_size=8, patch_size=2,
                                  num_embeds_ada_norm=classes)
    with torch.no_grad():  # random weights everywhere, embedders shared across blocks as in converted DiTs
        for p in model.parameters():
            p.copy_(0.05 * torch.randn_like(p))
        first = model.transformer_blocks[0].norm1.emb
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first.state_dict())
    return model.eval()


def test_diffusers_dit_imports_to_the_same_function_and_round_trips(tmp_path):
    reference = diffusers_dit()
    reference.save_pretrained(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run")
    assert model.t_embedder.freq_shift == 1.0 and model.mlp_norm_eps == 1e-5
    g = torch.Generator().manual_seed(4)
    x, y, k = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0, 4, 9, 10]), torch.tensor([0, 17, 500, 999])
    with torch.no_grad():
        theirs = reference(x, timestep=k, class_labels=y).sample
        ours = model(x, k.double() / 1000, y)
    assert (ours - theirs).abs().max().item() <= 1e-5
    # export -> import gives the same tensors, and diffusers loads the export to the same function
    assert main(["export", str(tmp_path / "run"), "--format", "diffusers", "--out", str(tmp_path / "back")]) == 0
    from diffusers import DiTTransformer2DModel

    again = DiTTransformer2DModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert (again(x, timestep=k, class_labels=y).sample - theirs).abs().max().item() <= 1e-6
    import_run(tmp_path / "back", tmp_path / "run2")
    a, b = load_model(tmp_path / "run").state_dict(), load_model(tmp_path / "run2").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_dit_state_round_trips_through_diffusers_with_its_time_embedding(tmp_path, dit_file, capsys):
    import_run(dit_file, tmp_path / "run", num_heads=4)
    assert main(["export", str(tmp_path / "run"), "--format", "diffusers", "--out", str(tmp_path / "hf")]) == 0
    assert "downscale_freq_shift" in capsys.readouterr().err  # diffusers' own DiT differs: said, not hidden
    import_run(tmp_path / "hf", tmp_path / "run2")
    first, second = load_model(tmp_path / "run"), load_model(tmp_path / "run2")
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a) and second.t_embedder.freq_shift == 0.0
    assert first.config == {**second.config, "mlp_norm_eps": first.mlp_norm_eps}


def test_dit_xl2_sized_state_dict_is_read_as_675m_parameters():
    """DiT-XL/2's layout, at full size (uninitialised tensors, in memory): the architecture is inferred and
    the count matches DiT's own log line, "DiT Parameters: 675,129,632" (which includes its fixed
    position table, a parameter there and a buffer here)."""
    with torch.device("meta"):
        shapes = DiT(input_size=(32, 32), in_channels=4, patch_size=2, hidden_size=1152, depth=28, num_heads=16,
                     num_classes=1000, learn_sigma=True).state_dict()
    sd = {k: torch.empty(v.shape) for k, v in shapes.items()}
    sd["x_embedder.proj.weight"] = torch.empty(1152, 4, 2, 2)
    sd["x_embedder.proj.bias"] = sd.pop("patch_embed.bias")
    sd["y_embedder.embedding_table.weight"] = sd.pop("y_embedder.table.weight")
    del sd["patch_embed.weight"]
    sd["pos_embed"] = torch.from_numpy(dit_pos_table(1152, 16)).float()[None]
    config, state = dit_layout(sd, Path("DiT-XL-2-256x256.pt"), None)
    assert (config["depth"], config["hidden_size"], config["num_heads"], config["num_classes"]) == (28, 1152, 16, 1000)
    assert config["learn_sigma"] and config["input_size"] == [32, 32]
    assert sum(v.numel() for v in state.values()) + sd["pos_embed"].numel() == 675_129_632


def test_samplers_match_diffusers_schedulers(tmp_path):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    model = DiT(input_size=(8, 8), in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.02 * torch.randn_like(p))
    model.requires_grad_(False).double()  # float64 throughout: what is compared is the arithmetic, not rounding
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # DDIM, eta 0, diffusers' default "leading" spacing (steps 900, 800, ..., 0), DiT's time k / T. (maskdit's
    # default spacing is DiT's linspace set, 999 ... 0; diffusers' DDIM steps to t - T/n, so it cannot use it.)
    ddpm = DDPM(step_offset=0)
    ours = ddim(lambda x, t: model(x, torch.full((len(x),), t, dtype=torch.float64)), x.clone(), ddpm, 10,
                spacing="leading")
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              timestep_spacing="leading", set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(10)
    theirs = x.clone()
    for k in scheduler.timesteps:
        eps = model(theirs, torch.full((len(x),), int(k) / 1000, dtype=torch.float64))
        theirs = scheduler.step(eps, k, theirs, eta=0.0).prev_sample
    assert [int(k) for k in scheduler.timesteps] == list(range(900, -1, -100))
    assert (ours - theirs).abs().max().item() <= 1e-5
    # flow Euler: maskdit's t from 1 to 0 in n equal steps = FlowMatchEuler with sigmas 1..1/n, no shift
    flow = FlowMatching()
    ours = flow_euler(lambda x, t: model(x, torch.full((len(x),), t, dtype=torch.float64)), x.clone(), flow, 8)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8).tolist())
    theirs = x.clone()
    for sigma_t in scheduler.timesteps:
        v = model(theirs, torch.full((len(x),), float(sigma_t) / 1000, dtype=torch.float64))
        theirs = scheduler.step(v, sigma_t, theirs).prev_sample
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_learned_variance_sampler_matches_diffusers_ddpm_learned_range():
    """maskdit's ancestral DDPM with a learned variance = diffusers' DDPMScheduler(variance_type="learned_range")
    on the same respaced chain, model and noise (the model in float64)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    model = DiT(input_size=(8, 8), in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=0,
                learn_sigma=True)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.02 * torch.randn_like(p))
    model.requires_grad_(False).double()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def fn(x, t):
        return model(x, torch.full((len(x),), t, dtype=torch.float64))

    g = torch.Generator().manual_seed(7)
    ours = ddpm_ancestral(fn, x.clone(), DDPM(step_offset=0), 10, spacing="leading",
                          noise=lambda: torch.randn(x.shape, generator=g, dtype=torch.float64))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              variance_type="learned_range", clip_sample=False, timestep_spacing="leading")
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(7)
    theirs = x.clone()
    for k in scheduler.timesteps:
        theirs = scheduler.step(fn(theirs, int(k) / 1000), k, theirs, generator=g).prev_sample
    # diffusers keeps its schedule tables in float32, maskdit in float64: agreement to float32's precision
    assert (ours - theirs).abs().max().item() <= 1e-6 * theirs.abs().max().item()


def test_imports_refuse_what_they_cannot_read(tmp_path):
    import argparse  # DiT's training checkpoints keep their argparse.Namespace next to the weights

    torch.save({"ema": random_dit_state(), "args": argparse.Namespace(model="DiT-XL/2")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="never unpickles"):
        import_run(tmp_path / "pickled.pt", tmp_path / "a", num_heads=4)
    sd = random_dit_state()
    del sd["blocks.1.mlp.fc2.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\).*blocks\.1\.mlp\.fc2\.bias"):
        import_run(tmp_path / "missing.pt", tmp_path / "b", num_heads=4)
    sd = random_dit_state()
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) a DiT checkpoint does not, e.g. blocks\.0\.extra"):
        import_run(tmp_path / "extra.pt", tmp_path / "c", num_heads=4)
    torch.save(random_dit_state(width=40, heads=4), tmp_path / "odd.pt")
    with pytest.raises(Exception, match="matches no DiT preset.*--num-heads"):
        import_run(tmp_path / "odd.pt", tmp_path / "d")
    import_run(tmp_path / "odd.pt", tmp_path / "d", num_heads=4)  # named, it imports
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_refuses_what_diffusers_cannot_express(tmp_path):
    model = DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=0)
    with pytest.raises(Exception, match="class-conditional only"):
        export_diffusers(model, tmp_path / "x")
    video = DiT(input_size=(4, 8, 8), in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    with pytest.raises(Exception, match="not a square image"):
        export_diffusers(video, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_learned_sigma_trains_and_samples_with_its_variance(tmp_path):
    from maskdit.config import load_config
    from maskdit.train import train

    run = tmp_path / "run"
    train(load_config("digits", overrides=["model.depth=1", "model.hidden_size=32", "model.num_heads=2",
                                           "batch_size=16", "steps=4", "objective.name=ddpm",
                                           "model.learn_sigma=true", "warmup_steps=0", f"run_dir={run}"]),
          progress=False)
    loaded = load_run(run)
    assert loaded.model.out_channels == 2 and json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    assert main(["sample", str(run), "--num", "4", "--sampler", "ddpm", "--steps", "5",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (4, 8, 8, 1)
