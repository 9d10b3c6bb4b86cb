"""Text conditioning: the word tokenizer and text encoder, the three injection modes (cross, joint, concat) with
every recipe, caption data, prompts and negative prompts at sampling, and the GenEval-style eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import perturbed

from maskdit.conditions.text import NULL, SPECIALS, caption_words
from maskdit.data.datasets import load_folder, load_npz
from maskdit.diffusion.guidance import guided
from maskdit.errors import ConfigError, DataError
from maskdit.grid import patchify
from maskdit.masks import random_keep_indices
from maskdit.model.blocks import Context
from maskdit.model.dit import DiT
from maskdit.model.text import TEXT_MODES
from maskdit.training.recipes import RECIPES, build_recipe

VOCAB = ["a", "and", "blue", "circle", "red", "square", "two"]
OPTIONS = {"vocab": VOCAB, "length": 6, "depth": 1}
#: Tiny text-run overrides for the shapes-text preset: 1 block of width 32, 16 scenes, 2 steps.
TEXT_TINY = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "warmup_steps=1",
             "sample.steps=2", "steps=2", "ckpt_every=2", "keep_checkpoints=1", "data.num=16", "model.patch_size=8",
             "precision=fp32"]


def text_model(mode: str, **kw) -> DiT:
    return DiT((8, 8), 3, 2, 32, 4, 2, condition="text", condition_options=OPTIONS, text=mode, **kw)


def ids(model: DiT, *captions: str) -> torch.Tensor:
    return model.conditioner.parse(list(captions))


# -- the tokenizer and the encoder ------------------------------------------------------------------------------
def test_captions_become_padded_ids_over_the_vocabulary_and_unknown_words_are_refused_by_name():
    model = text_model("cross")
    got = ids(model, "a red circle", "Two blue squares".replace("squares", "square"))
    first = [len(SPECIALS) + VOCAB.index(w) for w in ("a", "red", "circle")]
    assert got[0].tolist() == first + [0, 0, 0]  # [PAD] = 0 after the caption
    assert got[1, 0].item() == len(SPECIALS) + VOCAB.index("two")  # lower-cased
    with pytest.raises(ConfigError, match="'purple' is not a word this model learned"):
        ids(model, "a purple circle")
    with pytest.raises(ConfigError, match="has 7 words; this model reads at most 6"):
        ids(model, "a red circle and a blue square")
    assert caption_words(["A red-circle."]) == [["a", "red", "-", "circle", "."]]


def test_the_null_caption_is_one_learned_null_token_and_dropout_swaps_whole_captions():
    model = text_model("cross")
    y = ids(model, "a red circle", "two blue square")
    null = model.conditioner.null(y)
    assert null[:, 0].eq(SPECIALS.index(NULL)).all() and null[:, 1:].eq(0).all()
    dropped = model.conditioner.drop(y, torch.tensor([True, False]))
    assert torch.equal(dropped[0], null[0]) and torch.equal(dropped[1], y[1])
    cond = model.conditioner(null)
    assert cond.mask.sum(1).tolist() == [1, 1]  # one real token to attend to, never an empty row


def test_padding_never_reaches_the_encoder_or_the_pooled_vector():
    conditioner = perturbed(text_model("cross")).conditioner
    y = ids(text_model("cross"), "a red circle")
    base = conditioner(y)
    with torch.no_grad():  # change only the padding token's embedding: nothing real may move
        conditioner.embed.weight[0].add_(3.0)
    moved = conditioner(y)
    assert torch.allclose(base.pooled, moved.pooled, atol=1e-6)
    assert torch.allclose(base.tokens[:, :3], moved.tokens[:, :3], atol=1e-6)


# -- the injection modes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", TEXT_MODES.names(captions=True))
def test_a_fresh_text_model_outputs_zero_and_a_trained_one_reads_the_caption(mode):
    model = text_model(mode)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    y = ids(model, "a red circle", "two blue square")
    assert model(x, t, y).abs().max().item() == 0.0  # adaLN-Zero and the zero cross-attention output
    perturbed(model)
    swapped = y.flip(0)
    out, other = model(x, t, y), model(x, t, swapped)
    assert (out - other).abs().max().item() > 1e-3


@pytest.mark.parametrize("mode", TEXT_MODES.names(captions=True))
def test_masked_text_tokens_change_nothing_in_any_mode(mode):
    model = perturbed(text_model(mode)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    context = model.context(t, ids(model, "a red circle", "two blue square"))
    garbage = context.text.clone()
    garbage[~context.text_mask] = 50 * torch.randn(int((~context.text_mask).sum()), 32)
    tokens = model.embed(x)
    a, _ = model.run_blocks(tokens, context)
    b, _ = model.run_blocks(tokens, Context(context.c, text=garbage, text_mask=context.text_mask))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("mode", ["joint", "concat"])
def test_joint_blocks_carry_the_text_stream_across_path_segments(mode):
    """The plain path runs the patch mixer and the rest as two block ranges: keeping every token in order must
    give exactly the unmasked result, so the text stream leaves the mixer as the next range expects it."""
    model = perturbed(text_model(mode, mixer_depth=2))
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    y = ids(model, "a red circle", "two blue square")
    everything = torch.arange(model.num_tokens).expand(2, -1)
    full = model(x, t, y)
    kept = model(x, t, y, keep_idx=everything)
    assert torch.allclose(kept, patchify(full, model.patch_size), atol=1e-5)
    _, after = model.features(x, t, y)
    assert after.text.shape == (2, 6, 32)
    assert not torch.allclose(after.text, model.context(t, y).text)  # the blocks changed the text stream
    tokens, c = model.features(x, t, y, keep_idx=everything)
    plain, _ = model.features(x, t, y)
    assert torch.allclose(tokens, plain, atol=1e-5) and torch.allclose(c.text, after.text, atol=1e-5)


def test_joint_blocks_have_their_own_text_weights_only_while_double():
    model = text_model("joint", text_double=1)
    assert model.blocks[0].text is not None and all(b.text is None for b in model.blocks[1:])
    assert text_model("joint").text_double == 2  # half the depth by default, and saved resolved
    assert DiT.from_config(text_model("joint").config).text_double == 2


@pytest.mark.parametrize("mode", TEXT_MODES.names(captions=True))
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_trains_a_text_model_and_the_text_encoder_learns(mode, recipe):
    options = {"fusion": (1, 3)} if recipe == "sprint" else {}
    model = perturbed(text_model(mode, **options))
    route = {"route": [1, 3]} if recipe == "tread" else {}
    built = build_recipe(recipe, model, decoder_depth=1, **route)
    from maskdit.diffusion.objectives import FlowMatching

    x0, t, noise = torch.randn(4, 3, 8, 8), torch.rand(4), torch.randn(4, 3, 8, 8)
    y = ids(model, "a red circle", "two blue square", "a square", "a blue circle")
    keep = random_keep_indices(4, model.num_tokens, 0.5, torch.Generator().manual_seed(0))
    loss, _ = built.loss(model, FlowMatching(), x0, y, t, noise, keep)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.conditioner.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0  # the caption reached the loss


def test_the_deferred_mixer_sees_the_text():
    model = perturbed(text_model("cross", mixer_depth=1))
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    y = ids(model, "a red circle", "two blue square")
    keep = random_keep_indices(2, model.num_tokens, 0.75, torch.Generator().manual_seed(1))
    model(x, t, y, keep_idx=keep).square().mean().backward()
    assert model.blocks[0].context.kv.weight.grad.abs().sum() > 0


def test_text_modes_refuse_what_they_cannot_join():
    with pytest.raises(ConfigError, match="model.condition=label gives none"):
        DiT((8, 8), 3, 2, 32, 2, 2, num_classes=3, text="cross")
    with pytest.raises(ConfigError, match="attention=full"):
        DiT((2, 8, 8), 3, 2, 32, 2, 2, condition="text", condition_options=OPTIONS, text="joint",
            attention="factorised")
    with pytest.raises(ConfigError, match="pass captions"):
        text_model("joint").blocks[0](torch.randn(1, 16, 32), torch.randn(1, 32))


def test_block_caching_carries_a_joint_models_text_residual():
    from maskdit.diffusion.accel import accelerated

    model = perturbed(text_model("joint")).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    y = ids(model, "a red circle", "two blue square")
    plain = model(x, t, y)
    with torch.no_grad(), accelerated(model, "cache:every=2,tail=0", 4):
        first, second = model(x, t, y), model(x, t, y)  # the second reuses the middle blocks' residuals
    assert torch.allclose(first, plain, atol=1e-5) and torch.allclose(second, plain, atol=1e-4)


def test_a_negative_prompt_takes_the_null_captions_place_in_guidance():
    model = perturbed(text_model("cross")).eval()
    x, t = torch.randn(2, 3, 8, 8), 0.5
    y, neg = ids(model, "a red circle", "a red circle"), ids(model, "a blue square", "a blue square")
    tt = torch.full((2,), t, dtype=torch.float64)
    with torch.no_grad():
        got = guided(model, y, 3.0, negative=neg)(x, t)
        want = torch.lerp(model(x, tt, neg), model(x, tt, y), 3.0)
        plain = guided(model, y, 3.0)(x, t)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)
    with pytest.raises(ConfigError, match="negative condition"):
        guided(model, y, 3.0, negative=neg[:1])


# -- data --------------------------------------------------------------------------------------------------------
def test_captions_load_from_an_npz_and_from_side_files(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    np.savez(tmp_path / "d.npz", images=images, captions=np.array(["a red circle", "a blue square"]))
    assert load_npz(tmp_path / "d.npz").captions == ["a red circle", "a blue square"]
    np.savez(tmp_path / "bad.npz", images=images, captions=np.array([1, 2]))
    with pytest.raises(DataError, match="'captions' must be 2 strings"):
        load_npz(tmp_path / "bad.npz")
    from PIL import Image

    (tmp_path / "f" / "x").mkdir(parents=True)
    for name in ("one", "two"):
        Image.fromarray(images[0]).save(tmp_path / "f" / "x" / f"{name}.png")
    (tmp_path / "f" / "x" / "one.txt").write_text("a red circle\n")
    with pytest.raises(DataError, match="two.png has no caption file two.txt"):
        load_folder(tmp_path / "f")
    (tmp_path / "f" / "x" / "two.txt").write_text("two blue squares")
    assert load_folder(tmp_path / "f").captions == ["a red circle", "two blue squares"]


def test_a_tiny_text_run_trains_samples_prompts_and_judges(trained, tmp_path, capsys):
    from maskdit.cli.app import main

    run = trained(*TEXT_TINY, preset="shapes-text")
    info = json.loads((run / "config.json").read_text())
    options = info["model"]["condition_options"]
    assert "circle" in options["vocab"] and info["model"]["text"] == "cross"
    assert main(["sample", str(run), "--prompt", "a red circle", "--prompt", "two blue squares", "--num", "4",
                 "--steps", "1", "--out", str(tmp_path / "s.npz"), "--negative-prompt", "a green square"]) == 0
    out = capsys.readouterr().out
    assert "row 1: a red circle" in out and "row 2: two blue squares" in out
    with np.load(tmp_path / "s.npz") as f:
        assert f["captions"].tolist() == ["a red circle", "two blue squares"] * 2
        assert f["images"].shape == (4, 32, 32, 3)
    assert main(["eval", str(run), "--num", "6", "--steps", "1", "--metrics", "geneval"]) == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads(lines[-1])
    assert set(result["geneval"]) >= {"overall", "single", "detector_accuracy"}
    assert result["geneval"]["detector_accuracy"] >= 0.99
    assert any(line.startswith("GenEval-style") for line in lines)


def test_adaln_single_shares_one_modulation_and_gives_each_block_a_table():
    model = text_model("cross", adaln="single")
    zero = text_model("cross")
    shared = model.t_block[1].weight
    assert all(b.adaLN_modulation.shared[0] is model.t_block for b in model.blocks)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in zero.parameters())
    assert sum(1 for name, _ in model.named_parameters() if name.startswith("t_block")) == 2  # saved once
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    y = ids(model, "a red circle", "two blue square")
    assert model(x, t, y).abs().max().item() == 0.0  # the final layer starts at zero
    perturbed(model)
    c = model.condition(t, y)
    want = model.t_block(c) + model.blocks[1].adaLN_modulation.table.flatten()
    assert torch.allclose(model.blocks[1].adaLN_modulation(c), want)
    final = model.final_layer.adaLN_modulation
    assert torch.allclose(final(c)[:, :32], final.table[0] + c)
    assert shared.shape == (6 * 32, 32)
    with pytest.raises(ConfigError, match="adaln=single"):
        DiT((2, 8, 8), 3, 2, 32, 2, 2, attention="factorised", adaln="single")


def test_the_report_shows_a_text_models_prompts_beside_its_rows(trained, tmp_path):
    from maskdit.cli.app import main
    from maskdit.data.shapes import KINDS, shapes_dataset

    run = trained(*TEXT_TINY, preset="shapes-text")
    assert main(["report", str(run), "--per-class", "1", "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    captions = [str(c) for c in shapes_dataset(len(KINDS), "test")["captions"]]
    assert all(f"{i + 1}. {c}" in page for i, c in enumerate(captions))
