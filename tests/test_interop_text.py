"""Interop for caption-conditioned diffusers transformers: PixArtTransformer2DModel (``--format pixart``) and
SD3Transformer2DModel (``--format sd3``) import to maskdit models computing diffusers' own forward."""

import json

import pytest
import torch
from conftest import perturbed

from maskdit.cli.app import main
from maskdit.conditions.hf import fingerprint
from maskdit.errors import CheckpointError, ConfigError
from maskdit.interop.convert import detect_format, import_run, load_model
from maskdit.interop.pixart import PIXART_LENGTH, import_pixart
from maskdit.interop.sd3 import SD3_LENGTH, import_sd3

pytest.importorskip("diffusers")

#: the tiny PixArt and SD3 sizes every test builds
PIXART = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 8, "num_layers": 2,
          "num_attention_heads": 2, "attention_head_dim": 8, "caption_channels": 12, "cross_attention_dim": 16}
SD3 = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 2, "attention_head_dim": 8,
       "num_attention_heads": 2, "joint_attention_dim": 12, "pooled_projection_dim": 10, "caption_projection_dim": 16,
       "pos_embed_max_size": 8}


def pixart(**changes):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return perturbed(PixArtTransformer2DModel(**{**PIXART, **changes}), seed=1).eval()


def sd3(**changes):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = perturbed(SD3Transformer2DModel(**{**SD3, **changes}), seed=2).eval()
    with torch.no_grad():  # the stored position table too: a random one shows the crop lands where diffusers' does
        model.pos_embed.pos_embed.add_(0.1 * torch.randn(model.pos_embed.pos_embed.shape,
                                                         generator=torch.Generator().manual_seed(3)))
    return model


def values(tokens, mask, pooled=None):
    """maskdit's caption values (B, 1 + L, E + 1) from diffusers' inputs: row 0 the pooled vector and the caption
    flag, rows 1..L the tokens and their mask."""
    b, length, width = tokens.shape
    out = torch.zeros(b, 1 + length, width + 1)
    out[:, 0, -1] = 1.0
    if pooled is not None:
        out[:, 0, :pooled.shape[1]] = pooled
    out[:, 1:, :width], out[:, 1:, -1] = tokens, mask
    return out


def parity(ours, theirs, what):
    """max |ours - theirs| and that over max |theirs|; fails beyond 1e-5 of the output's magnitude."""
    err, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    print(f"{what}: max abs error {err:.3g}, relative {err / scale:.3g} (output magnitude {scale:.3g})")
    assert scale > 0.1 and err <= 1e-5 * scale
    return err


def imported(model, tmp_path):
    """``save_pretrained``, then ``maskdit import`` with ``--format auto``: the run's model."""
    model.save_pretrained(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    return load_model(tmp_path / "run")


@pytest.mark.parametrize("changes, pos", [({}, "sincos"), ({"interpolation_scale": 2}, "learned")],
                         ids=["alpha", "sigma-table"])
def test_pixart_imports_to_diffusers_forward(tmp_path, changes, pos):
    reference = pixart(**changes)
    model = imported(reference, tmp_path)
    assert detect_format(tmp_path / "hf") == "pixart"
    assert model.pos == pos and model.learn_sigma and model.adaln == "single" and model.text == "cross"
    g = torch.Generator().manual_seed(4)
    x, k = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0, 17, 500, 999])
    tokens, mask = torch.randn(4, PIXART_LENGTH, 12, generator=g), torch.zeros(4, PIXART_LENGTH)
    for row, real in enumerate((PIXART_LENGTH, 7, 1, 150)):  # padded captions of several lengths
        mask[row, :real] = 1
    with torch.no_grad():
        theirs = reference(x, encoder_hidden_states=tokens, timestep=k, encoder_attention_mask=mask).sample
        ours = model(x, k.double() / 1000, values(tokens, mask))
        parity(ours, theirs, f"pixart {'/'.join(f'{a}={b}' for a, b in changes.items()) or 'default'}")
        # maskdit's null caption is diffusers' caption of one all-zero token
        null = model(x, k.double() / 1000, model.conditioner.null(values(tokens, mask)))
        empty = reference(x, encoder_hidden_states=torch.zeros(4, 1, 12), timestep=k,
                          encoder_attention_mask=torch.ones(4, 1)).sample
        parity(null, empty, "pixart null caption")


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
def test_sd3_imports_to_diffusers_forward(tmp_path, qk_norm):
    reference = sd3(qk_norm=qk_norm)
    model = imported(reference, tmp_path)
    assert detect_format(tmp_path / "hf") == "sd3"
    assert model.pos == "learned" and model.text == "joint" and model.text_double == 2
    assert model.block_options.qk_norm == (qk_norm is not None)
    g = torch.Generator().manual_seed(5)
    x, sigma = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0.0, 0.25, 0.6, 1.0])
    tokens, pooled = torch.randn(4, SD3_LENGTH, 12, generator=g), torch.randn(4, 10, generator=g)
    with torch.no_grad():
        theirs = reference(x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=1000 * sigma).sample
        ours = model(x, (1000 * sigma).double() / 1000, values(tokens, torch.ones(4, SD3_LENGTH), pooled))
        parity(ours, theirs, f"sd3 qk_norm={qk_norm}")
        null = model(x, sigma.double(), model.conditioner.null(values(tokens, torch.ones(4, SD3_LENGTH), pooled)))
        empty = reference(x, encoder_hidden_states=torch.zeros(4, 1, 12), pooled_projections=torch.zeros(4, 10),
                          timestep=1000 * sigma).sample
        parity(null, empty, "sd3 null caption")


def test_imports_write_runs_that_say_what_they_are(tmp_path):
    reference = sd3()
    reference.save_pretrained(tmp_path / "hf")
    config, state, settings = import_sd3(tmp_path / "hf")
    assert settings["objective"]["name"] == "flow" and settings["model"]["condition"] == "hf"
    assert config["condition_options"]["pooled_in"] == 10 and config["condition_options"]["length"] == SD3_LENGTH
    # the last block's text stream (context_pre_only): shift and scale from (scale, shift), nothing else
    mod = state["blocks.1.text.adaLN_modulation.1.weight"]
    scale, shift = reference.transformer_blocks[1].norm1_context.linear.weight.detach().chunk(2)
    assert torch.equal(mod[:16], shift) and torch.equal(mod[16:32], scale) and not mod[32:].any()
    assert not state["blocks.1.text.mlp.fc2.weight"].any() and not state["blocks.1.text.attn.proj.weight"].any()
    reference = pixart()
    reference.save_pretrained(tmp_path / "px")
    config, state, settings = import_pixart(tmp_path / "px")
    assert config["learn_sigma"] and settings["objective"] == {"name": "ddpm", "schedule": "linear",
                                                               "num_steps": 1000, "step_offset": 0}
    assert "NO-ENCODER" in config["condition_options"]["encoder"]  # no pipeline text encoder beside it
    assert detect_format(tmp_path) == "diffusers"  # no config.json: the diffusers adapter explains
    # in a pipeline directory, the T5 encoder beside the transformer (of the caption width) is the run's encoder
    encoder = tmp_path / "text_encoder"
    encoder.mkdir()
    (encoder / "model.safetensors").write_bytes(b"0" * 64)
    for width, found in ((24, False), (12, True)):
        (encoder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": width}))
        options = import_pixart(tmp_path / "px")[0]["condition_options"]
        assert (options["encoder"] == str(encoder.resolve())) == found
        assert (options["fingerprint"] == fingerprint(encoder)) == found


@pytest.mark.parametrize("build, edit, key", [
    (pixart, {"norm_eps": 1e-5}, "norm_eps"),
    (pixart, {"use_additional_conditions": True}, "use_additional_conditions"),
    (pixart, {"use_additional_conditions": None, "sample_size": 128}, "use_additional_conditions"),
    (pixart, {"cross_attention_dim": 32}, "cross_attention_dim"),
    (pixart, {"norm_type": "ada_norm_zero"}, "norm_type"),
    (sd3, {"dual_attention_layers": [0]}, "dual_attention_layers"),
    (sd3, {"qk_norm": "layer_norm"}, "qk_norm"),
    (sd3, {"out_channels": 8}, "out_channels"),
    (sd3, {"pooled_projection_dim": 20}, "pooled_projection_dim"),
    (sd3, {"sample_size": 32}, "pos_embed_max_size"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_what_maskdit_cannot_express_is_refused_by_its_config_key(tmp_path, build, edit, key):
    build().save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(CheckpointError, match=key):
        import_run(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["pixart", "sd3"])
def test_an_import_exports_back_to_the_same_diffusers_function(tmp_path, kind):
    """import -> export -> diffusers' from_pretrained computes what the original did (SD3: its last block's unused
    text weights are gone, the crop of the position table is the whole stored table)."""
    reference = pixart(interpolation_scale=1) if kind == "pixart" else sd3(qk_norm="rms_norm")
    imported(reference, tmp_path)
    assert main(["export", str(tmp_path / "run"), "--format", kind, "--out", str(tmp_path / "back")]) == 0
    back = type(reference).from_pretrained(tmp_path / "back").eval()
    g = torch.Generator().manual_seed(6)
    x, k = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([3, 100, 640, 999])
    with torch.no_grad():
        if kind == "pixart":
            tokens, mask = torch.randn(4, 9, 12, generator=g), torch.ones(4, 9)
            mask[1, 4:] = 0
            outs = [m(x, encoder_hidden_states=tokens, timestep=k, encoder_attention_mask=mask).sample
                    for m in (reference, back)]
        else:
            tokens, pooled = torch.randn(4, 9, 12, generator=g), torch.randn(4, 10, generator=g)
            outs = [m(x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=k.float()).sample
                    for m in (reference, back)]
    parity(outs[1], outs[0], f"{kind} import -> export")


def test_exports_refuse_what_the_layout_cannot_hold(tmp_path):
    from maskdit.interop.pixart import export_pixart
    from maskdit.interop.sd3 import export_sd3
    from maskdit.model.dit import DiT

    labels = DiT((8, 8), 4, 2, 16, 2, 2, num_classes=3)
    with pytest.raises(ConfigError, match="cannot be exported as a diffusers PixArtTransformer2DModel.*model.text="):
        export_pixart(labels, tmp_path / "a")
    with pytest.raises(ConfigError, match="model.adaln=zero"):
        export_pixart(labels, tmp_path / "a")
    with pytest.raises(ConfigError, match="SD3Transformer2DModel.*model.condition"):
        export_sd3(labels, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
