"""Interop: DiT/SiT state dicts and diffusers' DiTTransformer2DModel in, diffusers out, samplers alike."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskdit.cli.app import main
from maskdit.diffusion.objectives import DDPM, FlowMatching
from maskdit.diffusion.samplers import ddim, ddpm_ancestral, flow_euler
from maskdit.errors import CheckpointError
from maskdit.interop.convert import import_run, load_model
from maskdit.interop.diffusers import export_diffusers
from maskdit.interop.state_dict import dit_layout
from maskdit.model import DiT
from maskdit.model.paths import skips
from maskdit.runs import load_run

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
        sd.update(random_block_state(r, f"blocks.{i}.", width, width))
    return sd


def random_block_state(r, b, width, cond):
    """One DiT block's tensors (timm's Attention and Mlp names) of ``width``, conditioned on ``cond``."""
    return {b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
            b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
            b + "mlp.fc1.weight": r(4 * width, width), b + "mlp.fc1.bias": r(4 * width),
            b + "mlp.fc2.weight": r(width, 4 * width), b + "mlp.fc2.bias": r(width),
            b + "adaLN_modulation.1.weight": r(6 * width, cond), b + "adaLN_modulation.1.bias": r(6 * width)}


def _modulate(v, shift, scale):
    return v * (1 + scale[:, None]) + shift[:, None]


def ref_block(sd, b, h, c, heads, bias=None):
    """One DiT block (``b``: its name prefix) on tokens ``h`` under conditioning ``c``; ``bias`` ``(heads, L, L)``
    is added to the attention logits."""
    width = h.shape[-1]
    mod = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"], sd[b + "adaLN_modulation.1.bias"]).chunk(6, 1)
    a = _modulate(F.layer_norm(h, (width,), eps=1e-6), mod[0], mod[1])
    n, length, _ = a.shape
    q, kk, v = F.linear(a, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(
        n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    logits = q @ kk.transpose(-2, -1) / math.sqrt(width // heads)
    weights = (logits if bias is None else logits + bias).softmax(-1)
    att = (weights @ v).transpose(1, 2).reshape(n, length, width)
    h = h + mod[2][:, None] * F.linear(att, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
    m = _modulate(F.layer_norm(h, (width,), eps=1e-6), mod[3], mod[4])
    m = F.linear(F.gelu(F.linear(m, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]), approximate="tanh"),
                 sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return h + mod[5][:, None] * m


def ref_norm_linear(sd, b, h, c):
    """adaLN-modulated LayerNorm then a linear map (DiT's final layer, MaskDiT's decoder entry)."""
    mod = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"], sd[b + "adaLN_modulation.1.bias"])
    shift, scale = mod.chunk(2, 1)
    return F.linear(_modulate(F.layer_norm(h, (h.shape[-1],), eps=1e-6), shift, scale), sd[b + "linear.weight"],
                    sd[b + "linear.bias"])


def ref_embed(sd, x, time_input):
    """Patch embedding + positions, and the time embedding of ``time_input`` (float32, DiT's sinusoid)."""
    patch = sd["x_embedder.proj.weight"].shape[2]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = time_input.float()[:, None] * freqs[None]
    t = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t = F.linear(F.silu(F.linear(t, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                 sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    return h, t


def ref_unpatchify(h, patch):
    n, length, dim = h.shape
    side, out = math.isqrt(length), dim // (patch * patch)
    h = h.reshape(n, side, side, patch, patch, out)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(n, out, side * patch, side * patch)


def dit_forward(sd, x, k, y, heads, time_input=None):
    """DiT's forward(x, t, y) written from the paper and models.py's structure: integer steps ``k``."""
    h, t = ref_embed(sd, x, k.float() if time_input is None else time_input)
    c = t + sd["y_embedder.embedding_table.weight"][y]
    depth = len({key.split(".")[1] for key in sd if key.startswith("blocks.")})
    for i in range(depth):
        h = ref_block(sd, f"blocks.{i}.", h, c, heads)
    return ref_unpatchify(ref_norm_linear(sd, "final_layer.", h, c), sd["x_embedder.proj.weight"].shape[2])


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
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())
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
    # maskdit's velocity is SiT's, negated
    assert (ours + sit).abs().max().item() <= 1e-5 * max(1.0, sit.abs().max().item())


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
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())
    # export -> import gives the same tensors, and diffusers loads the export to the same function
    assert main(["export", str(tmp_path / "run"), "--format", "diffusers", "--out", str(tmp_path / "back")]) == 0
    from diffusers import DiTTransformer2DModel

    again = DiTTransformer2DModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert (again(x, timestep=k, class_labels=y).sample - theirs).abs().max().item() <= 1e-6 * max(
            1.0, theirs.abs().max().item())
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
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())
    # flow Euler: maskdit's t from 1 to 0 in n equal steps = FlowMatchEuler with sigmas 1..1/n, no shift
    flow = FlowMatching()
    ours = flow_euler(lambda x, t: model(x, torch.full((len(x),), t, dtype=torch.float64)), x.clone(), flow, 8)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8).tolist())
    theirs = x.clone()
    for sigma_t in scheduler.timesteps:
        v = model(theirs, torch.full((len(x),), float(sigma_t) / 1000, dtype=torch.float64))
        theirs = scheduler.step(v, sigma_t, theirs).prev_sample
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())


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
    from maskdit.training.trainer import train

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


# -- MaskDiT's release layout -------------------------------------------------------------------------------


def random_maskdit_state(decoder_width=32, decoder_depth=2, mask_token=True, seed=4, **kw):
    """An EMA state dict with MaskDiT's names and shapes (EDMPrecond around models/maskdit.py's DiT with its
    decoder): the one-hot label map, the decoder entry, its blocks and table, the final layer at its width."""
    sd = random_dit_state(sigma=False, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 100)
    def r(*shape):
        return 0.05 * torch.randn(*shape, generator=g)
    width = sd["x_embedder.proj.weight"].shape[0]
    classes = sd.pop("y_embedder.embedding_table.weight").shape[0] - 1
    sd["y_embedder.embedding_table.weight"] = r(width, classes)
    if decoder_width:
        dw, side, rows = decoder_width, math.isqrt(sd["pos_embed"].shape[1]), sd["final_layer.linear.weight"].shape[0]
        sd.update({"decoder_layer.linear.weight": r(dw, width), "decoder_layer.linear.bias": r(dw),
                   "decoder_layer.adaLN_modulation.1.weight": r(2 * width, width),
                   "decoder_layer.adaLN_modulation.1.bias": r(2 * width),
                   "decoder_pos_embed": torch.from_numpy(dit_pos_table(dw, side)).float()[None],
                   "final_layer.linear.weight": r(rows, dw), "final_layer.linear.bias": r(rows),
                   "final_layer.adaLN_modulation.1.weight": r(2 * dw, width),
                   "final_layer.adaLN_modulation.1.bias": r(2 * dw)})
        if mask_token:
            sd["mask_token"] = r(1, 1, dw)
        for i in range(decoder_depth):
            sd.update(random_block_state(r, f"decoder_blocks.{i}.", dw, width))
    return {"model." + k: v for k, v in sd.items()}  # EDMPrecond keeps the DiT as .model


def maskdit_denoiser(sd, x, sigma, onehot, heads, decoder_heads=16, sigma_data=0.5):
    """MaskDiT's EDMPrecond.forward(x, sigma, class_labels) -> D(x; sigma), from the release's structure."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    s = sigma.float().reshape(-1, 1, 1, 1)
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + s**2).sqrt()
    h, t = ref_embed(sd, c_in * x, (s.log() / 4).flatten())
    c = t + F.linear(onehot, sd["y_embedder.embedding_table.weight"])
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        h = ref_block(sd, f"blocks.{i}.", h, c, heads)
    if "decoder_layer.linear.weight" in sd:
        h = ref_norm_linear(sd, "decoder_layer.", h, c) + sd["decoder_pos_embed"]
        for i in range(len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})):
            h = ref_block(sd, f"decoder_blocks.{i}.", h, c, decoder_heads)
    out = ref_unpatchify(ref_norm_linear(sd, "final_layer.", h, c), sd["x_embedder.proj.weight"].shape[2])
    return c_skip * x + c_out * out


def test_a_maskdit_import_computes_the_releases_edm_denoiser(tmp_path):
    sd = random_maskdit_state()
    torch.save(sd, tmp_path / "maskdit.pt")
    assert main(["import", str(tmp_path / "maskdit.pt"), "--format", "maskdit", "--out", str(tmp_path / "run"),
                 "--num-heads", "4"]) == 0
    model = load_model(tmp_path / "run")
    assert model.decoder is not None and (model.decoder.width, model.decoder.depth) == (32, 2)
    assert model.precond is not None and not model.learn_sigma
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    sigma = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])
    y = torch.tensor([0, 3, 9, 10, 5, 1])  # 10 = the null label: MaskDiT's all-zero one-hot
    onehot = F.one_hot(y, 11)[:, :10].float()
    x_sigma = x0 + sigma.reshape(-1, 1, 1, 1) * noise
    t = sigma / (1 + sigma)  # maskdit's flow time of that noise level: x_t = x_sigma / (1 + sigma)
    with torch.no_grad():
        theirs = maskdit_denoiser(sd, x_sigma, sigma, onehot, heads=4)
        x_t = x_sigma / (1 + sigma.reshape(-1, 1, 1, 1))
        v = model(x_t, t, y)
        ours = x_t - t.reshape(-1, 1, 1, 1) * v  # the denoised estimate the velocity implies
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())
    run = load_run(tmp_path / "run")
    assert (run.config.sample.sampler, run.config.sample.steps, run.objective.name) == ("edm", 40, "flow")
    objective = run.objective
    assert (objective.time_sampling, objective.logit_mean, objective.logit_std) == ("logit_normal", -1.2, 1.2)
    # without its decoder (use_decoder=False) and without the MAE mask token it imports too
    torch.save(random_maskdit_state(decoder_width=0), tmp_path / "plain.pt")
    import_run(tmp_path / "plain.pt", tmp_path / "plain", "maskdit", num_heads=4)
    assert load_model(tmp_path / "plain").decoder is None
    torch.save(random_maskdit_state(mask_token=False), tmp_path / "nomae.pt")
    import_run(tmp_path / "nomae.pt", tmp_path / "nomae", "maskdit", num_heads=4)
    assert torch.equal(load_model(tmp_path / "nomae").decoder.mask_token, torch.zeros(32))


def test_edm_sampler_on_a_maskdit_import_is_maskdits_sampler_with_guidance(tmp_path):
    from maskdit.diffusion.samplers import edm_sigmas, generate

    sd = random_maskdit_state(seed=6)
    torch.save(sd, tmp_path / "m.pt")
    import_run(tmp_path / "m.pt", tmp_path / "run", "maskdit", num_heads=4)
    run = load_run(tmp_path / "run")
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    y, scale, steps = torch.tensor([2, 4, 8]), 1.5, 6
    onehot = F.one_hot(y, 10).float()

    def net(x, sigma):  # MaskDiT's forward_with_cfg on all channels: the null label is the zero vector
        s = torch.full((len(x),), sigma)
        cond = maskdit_denoiser(sd, x, s, onehot, heads=4)
        uncond = maskdit_denoiser(sd, x, s, torch.zeros_like(onehot), heads=4)
        return uncond + scale * (cond - uncond)

    sigmas = edm_sigmas(steps)  # MaskDiT's edm_sampler (S_churn 0): Heun, Euler on the last step
    x = latents.double() * sigmas[0]
    with torch.no_grad():
        for i in range(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            d = (x - net(x.float(), s).double()) / s
            x_next = x + (s_next - s) * d
            if i < steps - 1:
                x_next = x + (s_next - s) * (0.5 * d + 0.5 * (x_next - net(x_next.float(), s_next).double()) / s_next)
            x = x_next
        ours = generate(run.model, run.objective, 3, y, "edm", steps, guidance_scale=scale, start=latents)
    assert sigmas[0] == 80.0 and abs(sigmas[-2] - 0.002) < 1e-12 and sigmas[-1] == 0.0
    assert (ours.double() - x).abs().max().item() <= 1e-4 * max(1.0, x.abs().max().item())


def test_a_maskdit_import_finetunes_masked_and_refuses_what_it_cannot_hold(tmp_path):
    from maskdit.config import load_config
    from maskdit.training.trainer import train

    torch.save(random_maskdit_state(channels=1, classes=10, seed=8), tmp_path / "m.pt")
    import_run(tmp_path / "m.pt", tmp_path / "run", "maskdit", num_heads=4)
    model = load_model(tmp_path / "run")
    # the decoder fills dropped places with its mask token and returns the kept tokens: keeping every token
    # (in order) is the full pass, and dropped inputs get exactly zero gradient
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    t, y = torch.tensor([0.3, 0.8]), torch.tensor([1, 2])
    everything = torch.arange(16).expand(2, 16)
    full = model(x, t, y)
    from maskdit.grid import patchify

    assert torch.allclose(model(x, t, y, keep_idx=everything), patchify(full, model.patch_size), atol=1e-6)
    keep = torch.tensor([[0, 5, 6, 15], [1, 2, 3, 4]])
    model(x, t, y, keep_idx=keep).sum().backward()
    grads = patchify(x.grad, model.patch_size).abs().sum(-1)
    kept = torch.zeros(2, 16, dtype=torch.bool).scatter(1, keep, True)
    assert grads[~kept].max().item() == 0.0 and grads[kept].min().item() > 0
    # masked finetuning from the import: the decoder, EDM preconditioning and time scale come along
    train(load_config("digits", overrides=["model.depth=2", "model.hidden_size=64", "model.num_heads=4",
                                           "batch_size=8", "steps=2", "warmup_steps=0", "mask.ratio=0.5",
                                           f"init_from={tmp_path / 'run'}", f"run_dir={tmp_path / 'ft'}"]),
          progress=False)
    tuned = load_run(tmp_path / "ft").model
    assert tuned.decoder is not None and tuned.precond is not None and tuned.t_embedder.time_scale == 1.0
    with pytest.raises(Exception, match="mask.recipe=drop"):
        train(load_config("digits", overrides=["model.depth=2", "model.hidden_size=64", "model.num_heads=4",
                                               "steps=1", "mask.ratio=0.5", "mask.recipe=mae",
                                               f"init_from={tmp_path / 'run'}", f"run_dir={tmp_path / 'ft2'}"]),
              progress=False)
    with pytest.raises(Exception, match="no diffusers DiT counterpart"):
        export_diffusers(model, tmp_path / "hf")
    sd = random_maskdit_state(seed=9)
    sd["model.cls_token"] = torch.zeros(1, 1, 64)
    torch.save(sd, tmp_path / "cls.pt")
    with pytest.raises(CheckpointError, match="class token"):
        import_run(tmp_path / "cls.pt", tmp_path / "cls", "maskdit", num_heads=4)
    assert not (tmp_path / "cls").exists() and not (tmp_path / "hf").exists()


# -- MDT v2's release layout --------------------------------------------------------------------------------


def beit_index(side):
    """BEiT's relative_position_index for a side x side window (as MDT v2 stores it)."""
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (side - 1)
    return rel[..., 0] * (2 * side - 1) + rel[..., 1]


def random_mdt_state(width=64, half=2, decode=2, heads=4, channels=4, patch=2, side=4, classes=10, seed=11):
    """A state dict with MDT v2's names and shapes (models.py's MDTv2), random weights everywhere."""
    base = random_dit_state(width=width, depth=2 * half + decode, heads=heads, channels=channels, patch=patch,
                            side=side, classes=classes, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    def r(*shape):
        return 0.05 * torch.randn(*shape, generator=g)
    sd = {k: v for k, v in base.items() if not k.startswith("blocks.")}
    sd["pos_embed"] = sd["pos_embed"] + r(*sd["pos_embed"].shape)  # learned: no longer the sin-cos table
    sd["decoder_pos_embed"] = r(*sd["pos_embed"].shape)
    sd["mask_token"] = r(1, 1, width)
    groups = [("en_inblocks", half, False), ("en_outblocks", half, True), ("de_blocks", decode, True),
              ("sideblocks", 1, False)]
    index, rows = beit_index(side), (2 * side - 1) ** 2 + 3
    for name, count, skip in groups:
        for j in range(count):
            prefix = f"{name}.{j}."
            for key, value in base.items():
                if key.startswith("blocks.0."):
                    sd[prefix + key.removeprefix("blocks.0.")] = r(*value.shape)
            sd[prefix + "attn.rel_pos_bias.relative_position_bias_table"] = r(rows, heads)
            sd[prefix + "attn.rel_pos_bias.relative_position_index"] = index.clone()
            if skip:
                sd[prefix + "skip_linear.weight"], sd[prefix + "skip_linear.bias"] = r(width, 2 * width), r(width)
    return sd


def mdt_forward(sd, x, k, y, heads):
    """MDT v2's forward(x, t, y) (no masking), written from the release's structure."""
    h, t = ref_embed(sd, x, k.float())
    c = t + sd["y_embedder.embedding_table.weight"][y]

    def run(prefix, h):
        table = sd[prefix + "attn.rel_pos_bias.relative_position_bias_table"]
        bias = table[sd[prefix + "attn.rel_pos_bias.relative_position_index"]].permute(2, 0, 1)
        return ref_block(sd, prefix, h, c, heads, bias)

    def join(prefix, h, skip):
        return F.linear(torch.cat([h, skip], -1), sd[prefix + "skip_linear.weight"], sd[prefix + "skip_linear.bias"])
    embedded, skips = h, []
    for j in range(_count_prefix(sd, "en_inblocks.")):
        h = run(f"en_inblocks.{j}.", h)
        skips.append(h)
    for j in range(_count_prefix(sd, "en_outblocks.")):
        h = run(f"en_outblocks.{j}.", join(f"en_outblocks.{j}.", h, skips.pop()))
    h = h + sd["decoder_pos_embed"]
    for j in range(_count_prefix(sd, "de_blocks.")):
        h = run(f"de_blocks.{j}.", join(f"de_blocks.{j}.", h, embedded))
    return ref_unpatchify(ref_norm_linear(sd, "final_layer.", h, c), sd["x_embedder.proj.weight"].shape[2])


def _count_prefix(sd, prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def test_an_mdt_import_computes_mdts_forward_and_samples_like_its_script(tmp_path):
    sd = random_mdt_state()
    torch.save(sd, tmp_path / "mdt.pt")
    assert main(["import", str(tmp_path / "mdt.pt"), "--format", "mdt", "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run")  # the heads came from the bias table: no --num-heads needed
    assert (model.num_heads, model.depth, model.long_skips, model.pos) == (4, 6, 2, "learned")
    g = torch.Generator().manual_seed(12)
    x, y, k = torch.randn(5, 4, 8, 8, generator=g), torch.tensor([0, 3, 9, 10, 5]), torch.tensor([0, 1, 400, 998, 999])
    with torch.no_grad():
        ours = model(x, k.double() / 1000, y)
        theirs = mdt_forward(sd, x, k, y, heads=4)
    assert ours.shape == theirs.shape == (5, 8, 8, 8)
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())
    run = load_run(tmp_path / "run")
    s = run.config.sample
    assert (s.sampler, s.steps, s.guidance_scale, s.guidance_channels, s.guidance_power) == ("ddpm", 250, 4.0, 3, 0.01)
    assert run.objective.step_offset == 0
    # guidance as MDT's forward_with_cfg: the scale follows its power-cosine of the step, on 3 channels
    from maskdit.diffusion.guidance import guided

    for power, step in ((0.01, 999), (0.5, 300)):
        real = (4.0 - 1) * (1 - math.cos((1 - step / 1000) ** power * math.pi)) / 2 + 1
        with torch.no_grad():
            cond, uncond = (mdt_forward(sd, x[:1], torch.tensor([step]), torch.tensor([label]), heads=4)
                            for label in (3, 10))
            ours = guided(model, torch.tensor([3]), 4.0, channels=3, power=power)(x[:1], step / 1000)
        want = torch.cat([uncond[:, :3] + real * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], dim=1)
        assert (ours - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    # under token dropping each kept token keeps its own relative biases, skips and decoder positions:
    # keeping every token (shuffled) is the full pass, shuffled
    perm = torch.randperm(16, generator=g).expand(2, 16)
    from maskdit.grid import patchify

    with torch.no_grad():
        kept = model(x[:2], k[:2].double() / 1000, y[:2], keep_idx=perm)
        full = patchify(model(x[:2], k[:2].double() / 1000, y[:2]), model.patch_size)
    assert torch.allclose(kept, full.gather(1, perm[..., None].expand(-1, -1, full.shape[-1])), atol=1e-5)


def test_mdt_import_refusals_and_finetuning(tmp_path):
    from maskdit.config import load_config
    from maskdit.training.trainer import train

    sd = random_mdt_state(channels=1, seed=13)
    sd["en_inblocks.0.attn.rel_pos_bias.relative_position_index"] = sd[
        "en_inblocks.0.attn.rel_pos_bias.relative_position_index"].flip(0)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="relative_position_index"):
        import_run(tmp_path / "bad.pt", tmp_path / "a", "mdt")
    with pytest.raises(Exception, match="contradicts"):
        import_run(tmp_path / "bad.pt", tmp_path / "a", "mdt", num_heads=2)
    sd = random_mdt_state(channels=1, seed=13)
    del sd["de_blocks.1.skip_linear.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\).*de_blocks\.1\.skip_linear\.bias"):
        import_run(tmp_path / "missing.pt", tmp_path / "b", "mdt")
    torch.save(random_mdt_state(channels=1, seed=13), tmp_path / "mdt.pt")
    import_run(tmp_path / "mdt.pt", tmp_path / "run", "mdt")
    with pytest.raises(Exception, match="no diffusers DiT counterpart"):
        export_diffusers(load_model(tmp_path / "run"), tmp_path / "hf")
    # masked finetuning from the import keeps its skips, biases and learned tables; they train. With MDT's
    # own recipe (the import's) the side-interpolater comes along from the import's training-only weights
    from maskdit.training.trainer import Trainer

    overrides = ["model.depth=6", "model.hidden_size=64", "model.num_heads=4", "batch_size=8", "steps=2",
                 "warmup_steps=0", "mask.ratio=0.5", "objective.name=ddpm", "model.learn_sigma=true",
                 f"init_from={tmp_path / 'run'}"]
    trainer = Trainer(load_config("digits", overrides=[*overrides, "mask.recipe=mdt", f"run_dir={tmp_path / 'ft0'}"]),
                      progress=False)
    side = sd["sideblocks.0.attn.rel_pos_bias.relative_position_bias_table"]
    assert torch.equal(trainer.recipe.interpolater.block.attn.rel_bias.table.detach().cpu(), side)
    assert torch.equal(trainer.recipe.interpolater.mask_token.detach().cpu(), sd["mask_token"].reshape(-1))
    trainer.run()
    assert json.loads((tmp_path / "ft0" / "metrics.jsonl").read_text().splitlines()[-1])["loss_masked"] > 0
    train(load_config("digits", overrides=[*overrides, f"run_dir={tmp_path / 'ft'}"]), progress=False)
    before, after = load_model(tmp_path / "run"), load_model(tmp_path / "ft")
    assert after.long_skips == 2 and after.block_options.rel_grid == (4, 4) and after.pos == "learned"
    assert not torch.equal(before.decoder_pos_embed, after.decoder_pos_embed)
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "hf"))
    from maskdit.diffusion.samplers import generate

    run = load_run(tmp_path / "run")
    with pytest.raises(Exception, match="long skips"):
        generate(run.model, run.objective, 2, torch.tensor([1, 2]), "ddim", 3, accel="cache:every=2")
    ras = generate(run.model, run.objective, 2, torch.tensor([1, 2]), "ddim", 3, accel="ras:ratio=1")
    assert torch.equal(ras, generate(run.model, run.objective, 2, torch.tensor([1, 2]), "ddim", 3))


def mdt_masked_forward(sd, x, k, y, heads, keep):
    """MDT v2's masked training pass (forward with enable_mask): the encoder on the kept tokens (their rows
    and columns of each bias), the side-interpolater completing every token, the decoder on all of them."""
    h, t = ref_embed(sd, x, k.float())
    c = t + sd["y_embedder.embedding_table.weight"][y]
    n, length, width = h.shape

    def bias(prefix, ids=None):
        full = sd[prefix + "attn.rel_pos_bias.relative_position_bias_table"][
            sd[prefix + "attn.rel_pos_bias.relative_position_index"]].permute(2, 0, 1)
        return full if ids is None else torch.stack([full[:, i][:, :, i] for i in ids])

    def join(prefix, h, skip):
        return F.linear(torch.cat([h, skip], -1), sd[prefix + "skip_linear.weight"], sd[prefix + "skip_linear.bias"])
    embedded, skips = h, []
    h = torch.stack([h[b, keep[b]] for b in range(n)])
    for j in range(_count_prefix(sd, "en_inblocks.")):
        h = ref_block(sd, f"en_inblocks.{j}.", h, c, heads, bias(f"en_inblocks.{j}.", keep))
        skips.append(h)
    for j in range(_count_prefix(sd, "en_outblocks.")):
        p = f"en_outblocks.{j}."
        h = ref_block(sd, p, join(p, h, skips.pop()), c, heads, bias(p, keep))
    full = sd["mask_token"].expand(n, length, width).clone()
    for b in range(n):
        full[b, keep[b]] = h[b]
    before = full + sd["decoder_pos_embed"]
    after = ref_block(sd, "sideblocks.0.", before, c, heads, bias("sideblocks.0."))
    dropped = torch.ones(n, length, 1)
    for b in range(n):
        dropped[b, keep[b]] = 0.0
    h = after * dropped + before * (1 - dropped)
    for j in range(_count_prefix(sd, "de_blocks.")):
        p = f"de_blocks.{j}."
        h = ref_block(sd, p, join(p, h, embedded), c, heads, bias(p))
    return ref_unpatchify(ref_norm_linear(sd, "final_layer.", h, c), sd["x_embedder.proj.weight"].shape[2])


def test_mdt_recipe_on_an_import_runs_mdts_masked_pass(tmp_path):
    from maskdit.training.recipes import build_recipe

    sd = random_mdt_state(seed=14)
    torch.save(sd, tmp_path / "mdt.pt")
    import_run(tmp_path / "mdt.pt", tmp_path / "run", "mdt")
    run = load_run(tmp_path / "run")
    assert run.config.mask.recipe == "mdt"
    recipe = build_recipe("mdt", run.model)
    from maskdit.checkpoint import latest_checkpoint, load_aux

    load_aux(recipe, latest_checkpoint(tmp_path / "run"))
    g = torch.Generator().manual_seed(15)
    x, y, k = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 10]), torch.tensor([3, 700])
    keep = torch.stack([torch.randperm(16, generator=g)[:6] for _ in range(2)])
    with torch.no_grad():
        c = run.model.condition(k.double() / 1000, y)
        tokens, _ = skips(run.model, run.model.embed(x), c, keep, side=recipe.interpolater)
        ours = ref_unpatchify(run.model.head(tokens, c), 2)
        theirs = mdt_masked_forward(sd, x, k, y, 4, keep)
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())
