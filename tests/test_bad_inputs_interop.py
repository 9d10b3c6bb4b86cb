"""The bad-input corpus of ``maskdit import`` and ``maskdit export`` (interop), and what must still work.

Bad inputs: damaged diffusers directories (``config.json``, the safetensors weights, maskdit's own
``maskdit.json``), malformed DiT/MaskDiT/MDT ``.pt`` state dicts, a ``--vae`` that is no VAE, and exports of
models that diffusers' ``DiTTransformer2DModel`` cannot compute (each refused naming the run's config key).
The harness and its checks are in ``corpus.py``. Must-succeed: an export computes the same function in
diffusers, and export -> import gives a run that samples the same.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import (
    TINY,
    C,
    Case,
    Runs,
    Setup,
    _setup,
    assert_distinct,
    check,
    folder,
    succeed,
    tensors,
    text,
)

from maskdit.cli.app import main
from maskdit.grid import sincos_pos_embed

# -- tiny runs trained once for this module: the options to export, and the base of the diffusers cases --------
TRAINED: dict[str, list[str]] = {
    "plain": [],
    "shift1": ["model.time_freq_shift=1"],  # diffusers' own time embedding: the export is exact
    "sigma": ["objective.name=ddpm", "model.learn_sigma=true", "model.time_freq_shift=1"],
    "swiglu": ["model.mlp=swiglu"],
    "qknorm": ["model.qk_norm=true"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "moe": ["model.moe.experts=2"],
    "rope": ["model.pos=rope"],
    "learned": ["model.pos=learned"],
    "uncond": ["model.conditional=false"],
    "ratio": ["model.mlp_ratio=2"],
    "skips": ["model.depth=3", "model.long_skips=1"],
    "relbias": ["model.rel_pos_bias=true"],
    "decoder": ["model.decoder.width=32", "model.decoder.depth=1"],
    "edm": ["model.precond=edm"],
    "timescale": ["model.time_scale=500"],
    "axes": ["model.pos_layout=axes"],
}
PERTURBED = ("plain", "shift1", "sigma")  #: runs whose weights get noise, so that parity tests are not trivial
VARIANTS: dict[str, Path] = {}  #: name -> trained run (and "hf": the plain run exported), set by the fixture


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    from safetensors.torch import load_file, save_file

    from maskdit.checkpoint import latest_checkpoint

    root = tmp_path_factory.mktemp("interop-runs")
    for name, extra in TRAINED.items():
        assert main(["train", "--no-progress", *TINY, *extra, f"run_dir={root / name}"]) == 0, name
    gen = torch.Generator().manual_seed(0)
    for name in PERTURBED:  # adaLN-Zero leaves a 2-step run nearly the identity: make every weight matter
        ema = latest_checkpoint(root / name) / "ema.safetensors"
        weights = load_file(ema)
        save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in weights.items()}, ema)
    assert main(["export", str(root / "plain"), "--format", "diffusers", "--out", str(root / "hf")]) == 0
    VARIANTS.update({name: root / name for name in TRAINED}, hf=root / "hf")
    return VARIANTS


# -- case inputs -----------------------------------------------------------------------------------------------
def variant(name: str, dst: str = "run") -> Setup:
    """A copy of one of this module's trained runs."""
    return _setup(f"variant:{name}:{dst}", lambda tmp, runs: shutil.copytree(VARIANTS[name], tmp / dst))


def hf(desc: str, edit: Callable[[Path], None] | None = None, name: str = "hf") -> Setup:
    """A copy of the plain run's diffusers export (config.json, weights, maskdit.json), then ``edit`` on it."""
    def make(tmp: Path, runs: Runs) -> None:
        shutil.copytree(VARIANTS["hf"], tmp / name)
        if edit is not None:
            edit(tmp / name)
    return _setup(f"hf:{name}:{desc}", make)


def hf_config(desc: str, change: Callable[[dict], object]) -> Setup:
    def edit(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        result = change(cfg)
        (d / "config.json").write_text(json.dumps(cfg if result is None else result))
    return hf("config:" + desc, edit)


def hf_file(file: str, content: str | bytes | None) -> Setup:
    """Replace one file of the export by ``content`` (None: the file's first half)."""
    def edit(d: Path) -> None:
        if content is None:
            data = (d / file).read_bytes()
            (d / file).write_bytes(data[: len(data) // 2])
        elif isinstance(content, bytes):
            (d / file).write_bytes(content)
        else:
            (d / file).write_text(content)
    return hf(f"file:{file}:{content!r}", edit)


def hf_weights(desc: str, change: Callable[[dict], None]) -> Setup:
    def edit(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(d / "diffusion_pytorch_model.safetensors")
        change(tensors)
        save_file(tensors, d / "diffusion_pytorch_model.safetensors")
    return hf("weights:" + desc, edit)


def hf_note(note: object) -> Setup:
    return hf_file("maskdit.json", json.dumps(note))


def dit_state(width: int = 32, depth: int = 2, channels: int = 1, classes: int = 10, side: int = 4, patch: int = 2,
              seed: int = 0) -> dict[str, torch.Tensor]:
    """A facebookresearch/DiT state dict (models.py's names) with random weights and DiT's fixed table."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return 0.05 * torch.randn(*shape, generator=g)
    rows = patch * patch * channels
    sd = {"x_embedder.proj.weight": r(width, channels, patch, patch), "x_embedder.proj.bias": r(width),
          "pos_embed": sincos_pos_embed(width, (side, side), reverse_axes=True)[None].float(),
          "t_embedder.mlp.0.weight": r(width, 256), "t_embedder.mlp.0.bias": r(width),
          "t_embedder.mlp.2.weight": r(width, width), "t_embedder.mlp.2.bias": r(width),
          "y_embedder.embedding_table.weight": r(classes + 1, width),
          "final_layer.linear.weight": r(rows, width), "final_layer.linear.bias": r(rows),
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


def dit_pt(name: str, desc: str, change: Callable[[dict], object] | None = None, **kw: int) -> Setup:
    """``name``: a DiT ``.pt`` state dict (:func:`dit_state`), changed by ``change`` (which may return a
    whole new object to save instead)."""
    def make(tmp: Path, runs: Runs) -> None:
        sd: object = dit_state(**kw)
        if change is not None:
            result = change(sd)
            sd = sd if result is None else result
        torch.save(sd, tmp / name)
    return _setup(f"dit:{name}:{desc}:{sorted(kw.items())}", make)


def fake_vae(name: str, config: dict, weights: bool = True) -> Setup:
    """A directory that looks like a diffusers VAE from the outside (config.json, a weights file)."""
    def make(tmp: Path, runs: Runs) -> None:
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text(json.dumps(config))
        if weights:
            (tmp / name / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return _setup(f"vae:{name}:{config}:{weights}", make)


def put(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def nan(key: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d[key] = torch.full_like(d[key], float("nan"))
    return change


def drop(key: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        del d[key]
    return change


IMPORT_HF = ["import", "hf", "--out", "run"]
IMPORT_DIT = ["import", "d.pt", "--num-heads", "2", "--out", "run"]
EXPORT = ["export", "run", "--format", "diffusers", "--out", "exp"]
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
GOOD_VAE = {"_class_name": "AutoencoderKL", "latent_channels": 4}

CASES: list[Case] = [
    # ---- import of a diffusers directory: config.json --------------------------------------------------------
    C("hf-config-is-list", IMPORT_HF, re.compile(r"config\.json holds a JSON list"),
      hf_config("list", lambda c: [1, 2])),
    C("hf-config-is-string", IMPORT_HF, re.compile(r"config\.json holds a JSON string"),
      hf_config("string", lambda c: "DiTTransformer2DModel")),
    C("hf-config-num-layers-word", IMPORT_HF, re.compile(r"config\.json: num_layers is \"two\""),
      hf_config("layers-two", put("num_layers", "two"))),
    C("hf-config-num-layers-null", IMPORT_HF, re.compile(r"num_layers is null"),
      hf_config("layers-null", put("num_layers", None))),
    C("hf-config-num-layers-huge", IMPORT_HF, re.compile(r"num_layers 1000000000 .*holds 1 transformer blocks"),
      hf_config("layers-huge", put("num_layers", 10**9)), max_s=20),
    C("hf-config-num-layers-wrong", IMPORT_HF, re.compile(r"num_layers 3 but .* holds 1 transformer blocks"),
      hf_config("layers-3", put("num_layers", 3))),
    C("hf-config-in-channels-missing", IMPORT_HF, re.compile(r"in_channels 4 \(left out"),
      hf_config("no-in-channels", drop("in_channels"))),
    C("hf-config-head-dim-fraction", IMPORT_HF, re.compile(r"attention_head_dim is 16\.5"),
      hf_config("head-dim-16.5", put("attention_head_dim", 16.5))),
    C("hf-config-heads-wrong", IMPORT_HF, re.compile(r"num_attention_heads 4 x attention_head_dim 16"),
      hf_config("heads-4", put("num_attention_heads", 4))),
    C("hf-config-norm-eps-word", IMPORT_HF, re.compile(r"norm_eps is \"small\""),
      hf_config("eps-word", put("norm_eps", "small"))),
    C("hf-config-sample-size-zero", IMPORT_HF, re.compile(r"sample_size is 0"),
      hf_config("size-0", put("sample_size", 0))),
    C("hf-config-classes-wrong", IMPORT_HF, re.compile(r"class_embedder.*num_embeds_ada_norm 5"),
      hf_config("classes-5", put("num_embeds_ada_norm", 5))),
    # ---- import of a diffusers directory: the weights --------------------------------------------------------
    C("hf-weights-truncated", IMPORT_HF, re.compile(rf"{DIFFUSERS_WEIGHTS} is not a readable safetensors file"),
      hf_file(DIFFUSERS_WEIGHTS, None)),
    C("hf-weights-empty", IMPORT_HF, re.compile(rf"{DIFFUSERS_WEIGHTS} is not a readable safetensors file"),
      hf_file(DIFFUSERS_WEIGHTS, b"")),
    C("hf-weights-q-wider", IMPORT_HF, re.compile(r"transformer_blocks\.0\.attn1\.to_q\.weight has shape \(32, 33\)"),
      hf_weights("q-wider", put("transformer_blocks.0.attn1.to_q.weight", torch.zeros(32, 33)))),
    C("hf-weights-patch-1d", IMPORT_HF, re.compile(r"pos_embed\.proj\.weight has shape \(3,\)"),
      hf_weights("proj-1d", put("pos_embed.proj.weight", torch.zeros(3)))),
    C("hf-weights-nan", IMPORT_HF, re.compile(r"proj_out_2\.weight holds NaN"),
      hf_weights("nan", nan("proj_out_2.weight"))),
    C("hf-weights-integer", IMPORT_HF, re.compile(r"proj_out_1\.weight is a int64 tensor"),
      hf_weights("int", lambda t: t.__setitem__("proj_out_1.weight", t["proj_out_1.weight"].long()))),
    # ---- import of a diffusers directory: maskdit.json ------------------------------------------------------
    C("hf-note-not-json", IMPORT_HF, re.compile(r"maskdit\.json is not valid JSON"), hf_file("maskdit.json", "{oops")),
    C("hf-note-is-list", IMPORT_HF, re.compile(r"maskdit\.json holds a JSON list"), hf_note([0.0])),
    C("hf-note-shift-word", IMPORT_HF, re.compile(r"maskdit\.json: time_freq_shift is \"zero\""),
      hf_note({"time_freq_shift": "zero"})),
    C("hf-note-shift-out-of-range", IMPORT_HF, re.compile(r"maskdit\.json: time_freq_shift is 5"),
      hf_note({"time_freq_shift": 5})),
    C("hf-note-objective-unknown", IMPORT_HF, re.compile(r"maskdit\.json: .*objective\.name"),
      hf_note({"time_freq_shift": 0.0, "objective": {"name": "edm-magic"}})),
    C("hf-note-sample-not-object", IMPORT_HF, re.compile(r"maskdit\.json: sample is a JSON number"),
      hf_note({"time_freq_shift": 0.0, "sample": 3})),
    C("hf-note-codec-unknown", IMPORT_HF, re.compile(r"maskdit\.json: dataset\.codec"),
      hf_note({"time_freq_shift": 0.0, "dataset": {"codec": {"name": "jpeg"}}})),
    # ---- import of DiT-family .pt state dicts ---------------------------------------------------------------
    C("dit-pos-embed-wrong-width", IMPORT_DIT, re.compile(r"pos_embed has shape \(1, 16, 33\), not \(1, tokens, 32\)"),
      dit_pt("d.pt", "pos-33", put("pos_embed", torch.zeros(1, 16, 33)))),
    C("dit-pos-embed-flat", IMPORT_DIT, re.compile(r"pos_embed has shape \(512,\)"),
      dit_pt("d.pt", "pos-flat", put("pos_embed", torch.zeros(512)))),
    C("dit-pos-embed-two-tables", IMPORT_DIT, re.compile(r"pos_embed has shape \(2, 16, 32\)"),
      dit_pt("d.pt", "pos-2", put("pos_embed", torch.zeros(2, 16, 32)))),
    C("dit-pos-embed-no-tokens", IMPORT_DIT, re.compile(r"pos_embed has shape \(1, 0, 32\)"),
      dit_pt("d.pt", "pos-0", put("pos_embed", torch.zeros(1, 0, 32)))),
    C("dit-fc1-scalar", IMPORT_DIT, re.compile(r"blocks\.0\.mlp\.fc1\.weight has shape \(\)"),
      dit_pt("d.pt", "fc1-0d", put("blocks.0.mlp.fc1.weight", torch.tensor(1.0)))),
    C("dit-label-table-scalar", IMPORT_DIT, re.compile(r"y_embedder\.embedding_table\.weight has shape \(\)"),
      dit_pt("d.pt", "table-0d", put("y_embedder.embedding_table.weight", torch.tensor(1.0)))),
    C("dit-key-not-a-name", IMPORT_DIT, re.compile(r"d\.pt has a key 7 \(int\)"),
      dit_pt("d.pt", "int-key", put(7, torch.zeros(1)))),
    C("dit-value-not-a-tensor", IMPORT_DIT, re.compile(r"d\.pt: notes is a str, not a tensor"),
      dit_pt("d.pt", "str-value", put("notes", "trained on 8 GPUs"))),
    C("dit-not-a-dict", IMPORT_DIT, re.compile(r"d\.pt holds a list, not a state dict"),
      dit_pt("d.pt", "list", lambda sd: list(sd.values()))),
    C("dit-nan-weights", IMPORT_DIT, re.compile(r"blocks\.1\.attn\.qkv\.weight holds NaN"),
      dit_pt("d.pt", "nan", nan("blocks.1.attn.qkv.weight"))),
    C("dit-complex-weights", IMPORT_DIT, re.compile(r"t_embedder\.mlp\.0\.bias is a complex64 tensor"),
      dit_pt("d.pt", "complex", lambda sd: sd.__setitem__("t_embedder.mlp.0.bias",
                                                          sd["t_embedder.mlp.0.bias"].to(torch.complex64)))),
    C("maskdit-mask-token-wrong-size", ["import", "m.pt", "--format", "maskdit", "--num-heads", "2", "--out", "run"],
      re.compile(r"mask_token has shape \(1, 1, 17\), not one token of the decoder's width 16"),
      tensors("m.pt", {"model.x_embedder.proj.weight": (32, 1, 2, 2), "model.decoder_layer.linear.weight": (16, 32),
                       "model.mask_token": (1, 1, 17)})),
    C("mdt-bias-table-flat", ["import", "t.pt", "--format", "mdt", "--out", "run"],
      re.compile(r"relative_position_bias_table has shape \(52,\)"),
      tensors("t.pt", {"x_embedder.proj.weight": (32, 1, 2, 2), "en_inblocks.0.attn.qkv.weight": (96, 32),
                       "en_outblocks.0.attn.qkv.weight": (96, 32),
                       "en_inblocks.0.attn.rel_pos_bias.relative_position_bias_table": (52,)})),
    C("mdt-pos-embed-flat", ["import", "t.pt", "--format", "mdt", "--out", "run"],
      re.compile(r"pos_embed has shape \(16,\)"),
      tensors("t.pt", {"x_embedder.proj.weight": (32, 1, 2, 2), "en_inblocks.0.attn.qkv.weight": (96, 32),
                       "en_outblocks.0.attn.qkv.weight": (96, 32),
                       "en_inblocks.0.attn.rel_pos_bias.relative_position_bias_table": (52, 2), "pos_embed": (16,)})),
    # ---- import --vae ----------------------------------------------------------------------------------------
    C("vae-dir-missing", [*IMPORT_DIT, "--vae", "no_such_vae"], re.compile(r"--vae no_such_vae does not exist"),
      dit_pt("d.pt", "plain")),
    C("vae-dir-empty", [*IMPORT_DIT, "--vae", "emptydir"], re.compile(r"--vae emptydir has no config\.json"),
      dit_pt("d.pt", "plain"), folder("emptydir")),
    C("vae-is-a-file", [*IMPORT_DIT, "--vae", "vae.txt"], re.compile(r"--vae vae\.txt is not a directory"),
      dit_pt("d.pt", "plain"), text("vae.txt", "not a vae")),
    C("vae-is-a-unet", [*IMPORT_DIT, "--vae", "unet"], re.compile(r"unet holds a UNet2DConditionModel, not an Autoenc"),
      dit_pt("d.pt", "plain"), fake_vae("unet", {"_class_name": "UNet2DConditionModel"})),
    C("vae-without-weights", [*IMPORT_DIT, "--vae", "vae"], re.compile(r"--vae vae has no weights"),
      dit_pt("d.pt", "plain"), fake_vae("vae", GOOD_VAE, weights=False)),
    C("vae-latents-do-not-fit", [*IMPORT_DIT, "--vae", "vae"], re.compile(r"encodes 4 latent channels .* models 1"),
      dit_pt("d.pt", "plain"), fake_vae("vae", GOOD_VAE)),
    # ---- export of what diffusers' DiTTransformer2DModel cannot compute --------------------------------------
    C("export-swiglu", EXPORT, "model.mlp=swiglu", variant("swiglu")),
    C("export-qk-norm", EXPORT, "model.qk_norm=true", variant("qknorm")),
    C("export-rmsnorm", EXPORT, "model.norm=rmsnorm", variant("rmsnorm")),
    C("export-moe", EXPORT, "model.moe.experts=2", variant("moe")),
    C("export-rope", EXPORT, "model.pos=rope", variant("rope")),
    C("export-learned-positions", EXPORT, "model.pos=learned", variant("learned")),
    C("export-unconditional", EXPORT, "model.conditional=false", variant("uncond")),
    C("export-task-run", ["export", "{timg}", "--format", "diffusers", "--out", "exp"], "task.names"),
    C("export-mlp-ratio", EXPORT, "model.mlp_ratio=2", variant("ratio")),
    C("export-long-skips", EXPORT, "model.long_skips=1", variant("skips")),
    C("export-rel-pos-bias", EXPORT, "model.rel_pos_bias=true", variant("relbias")),
    C("export-decoder", EXPORT, "model.decoder.width=32", variant("decoder")),
    C("export-edm-precond", EXPORT, "model.precond=edm", variant("edm")),
    C("export-time-scale", EXPORT, "model.time_scale=500", variant("timescale")),
    C("export-axes-table", EXPORT, "model.pos_layout=axes", variant("axes")),
]


def test_interop_corpus_is_distinct():
    assert_distinct(CASES, 35)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_interop_input(case: Case, runs: Runs, variants, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)


# -- must succeed ----------------------------------------------------------------------------------------------
def ok(argv: list[str], where: Path, runs: Runs, monkeypatch, capfd) -> tuple[Path, str, str]:
    """:func:`succeed` in a fresh case directory under ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    return succeed(argv, runs, where, monkeypatch, capfd)


def _compare(model, theirs, classes: int) -> None:
    """``model`` (maskdit) and ``theirs`` (diffusers) on the same inputs: DiT's integer steps, every label and
    the null label; the tolerance scales with the outputs."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, model.in_channels, *model.input_size, generator=g)
    k = torch.tensor([0, 1, 250, 500, 998, 999])
    y = torch.tensor([0, 3, 9, classes, 5, 1])
    with torch.no_grad():
        ours = model(x, k.double() / 1000, y)
        out = theirs(x, timestep=k, class_labels=y).sample
    assert ours.shape == out.shape
    assert ours.abs().max() > 1e-2, "the outputs are near zero: the comparison would prove nothing"
    assert (ours - out).abs().max().item() <= 1e-5 * max(1.0, out.abs().max().item())


@pytest.mark.parametrize("name", ["shift1", "sigma"])
def test_an_export_computes_the_same_function_in_diffusers(name, runs, variants, tmp_path, monkeypatch, capfd):
    from diffusers import DiTTransformer2DModel

    from maskdit.runs import load_run

    tmp, _, err = succeed(["export", str(variants[name]), "--format", "diffusers", "--out", "exp"], runs, tmp_path,
                            monkeypatch, capfd)
    assert err == ""  # a run with diffusers' time embedding exports exactly: nothing to note
    model = load_run(variants[name]).model.eval()
    theirs = DiTTransformer2DModel.from_pretrained(tmp / "exp").eval()
    assert theirs.config.out_channels == model.out_channels == (2 if name == "sigma" else 1)
    _compare(model, theirs, model.num_classes)


def test_a_default_run_exports_all_but_its_time_shift_and_says_so(runs, variants, tmp_path, monkeypatch, capfd):
    """DiT's time embedding (maskdit's default) is not diffusers': the export notes it, and the only difference
    is that frequency shift (maskdit.json keeps it for an exact re-import)."""
    from diffusers import DiTTransformer2DModel

    from maskdit.runs import load_run

    tmp, _, err = succeed(["export", str(variants["plain"]), "--format", "diffusers", "--out", "exp"], runs,
                            tmp_path, monkeypatch, capfd)
    assert "downscale_freq_shift" in err and len(err.splitlines()) == 1
    model = load_run(variants["plain"]).model.eval()
    assert model.t_embedder.freq_shift == 0.0
    model.t_embedder.freq_shift = 1.0  # diffusers' shift: then the functions agree
    _compare(model, DiTTransformer2DModel.from_pretrained(tmp / "exp").eval(), model.num_classes)


@pytest.mark.parametrize("name", ["plain", "sigma"])
def test_export_then_import_samples_the_same(name, runs, variants, tmp_path, monkeypatch, capfd):
    run = str(variants[name])
    tmp, _, _ = ok(["export", run, "--format", "diffusers", "--out", "exp"], tmp_path, runs, monkeypatch, capfd)
    ok(["import", str(tmp / "exp"), "--out", str(tmp / "back")], tmp_path / "b", runs, monkeypatch, capfd)
    for src, dst in ((run, "a.npz"), (str(tmp / "back"), "b.npz")):
        ok(["sample", src, "--num", "4", "--seed", "3", "--out", str(tmp / dst)], tmp_path / dst, runs, monkeypatch,
           capfd)
    a, b = np.load(tmp / "a.npz"), np.load(tmp / "b.npz")
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    from maskdit.runs import load_run

    first, second = load_run(run), load_run(tmp / "back")
    assert first.config.objective == second.config.objective and first.config.sample == second.config.sample
    assert first.model.config == second.model.config
    assert second.dataset["class_names"] == first.dataset["class_names"]


def test_import_with_a_real_vae_directory(runs, tmp_path, monkeypatch, capfd):
    """A valid --vae passes the checks, is stored as an absolute path and decodes the samples."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                  sample_size=8).save_pretrained(tmp_path / "vae")
    torch.save(dit_state(channels=4), tmp_path / "d.pt")
    tmp, _, _ = succeed(["import", str(tmp_path / "d.pt"), "--num-heads", "2", "--vae", "../vae", "--out", "run"],
                        runs, tmp_path, monkeypatch, capfd)
    info = json.loads((tmp / "run" / "config.json").read_text())
    assert info["dataset"]["codec"]["vae"] == str((tmp_path / "vae").resolve())
    ok(["sample", str(tmp / "run"), "--num", "2", "--steps", "2", "--out", str(tmp / "s.npz")], tmp_path / "s", runs,
       monkeypatch, capfd)
    assert np.load(tmp / "s.npz")["images"].shape == (2, 8, 8, 3)


def test_a_write_that_fails_midway_leaves_nothing(variants, tmp_path, monkeypatch):
    """An import or export that fails while writing (a full disk) removes what it wrote, and the parents it made."""
    import safetensors.torch

    from maskdit.interop import convert
    from maskdit.interop.diffusers import export_diffusers
    from maskdit.runs import load_run

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    torch.save(dit_state(), tmp_path / "d.pt")
    monkeypatch.setattr(convert, "save_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space"):
        convert.import_run(tmp_path / "d.pt", tmp_path / "a" / "b" / "run", num_heads=2)
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    run = load_run(variants["plain"])
    with pytest.raises(OSError, match="No space"):
        export_diffusers(run.model, tmp_path / "c" / "exp", run)
    assert [p.name for p in tmp_path.iterdir()] == ["d.pt"]
