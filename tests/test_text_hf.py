"""Frozen Hugging Face text encoders (T5, CLIP and a decoder LLM as LI-DiT uses it), tiny and random, saved locally:
what they encode, the caption store, and a text model trained on them through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskdit.conditions.hf import FrozenTextEncoder, HFTextConditioner, fingerprint, read_store, write_store
from maskdit.conditions.text import word_tokenizer
from maskdit.data.shapes import vocabulary
from maskdit.errors import ConfigError, DataError

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle to the left of a cyan square"]
ENCODERS = ("t5", "clip", "gpt2")


def save_encoder(kind: str, root: Path, width: int = 16) -> Path:
    """A tiny random ``kind`` text model and a word tokenizer over the shapes vocabulary, saved to ``root``."""
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer(vocabulary()), pad_token="[PAD]",
                                        unk_token="[UNK]", eos_token="[NULL]")
    vocab = len(tokenizer)
    if kind == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=vocab, d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0))
    elif kind == "clip":
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=width, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=64))
    else:
        model = transformers.GPT2Model(transformers.GPT2Config(
            vocab_size=vocab, n_embd=width, n_layer=1, n_head=2, n_positions=64, is_decoder=True))
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("encoders")
    return {kind: save_encoder(kind, base / kind) for kind in ENCODERS}


@pytest.mark.parametrize("kind", ENCODERS)
def test_encoded_values_are_the_encoders_own_states_masked_and_pooled(kind, encoders):
    frozen = FrozenTextEncoder(encoders[kind], 12)
    values = frozen.encode(CAPTIONS, "test").float()
    assert values.shape == (3, 13, 17) and values.dtype == torch.float32
    enc = frozen.tokenizer(CAPTIONS, padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        states = frozen.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].bool()
    assert torch.equal(values[:, 1:, -1].bool(), mask) and values[:, 0, -1].eq(1).all()
    real = states * mask.unsqueeze(-1)
    assert torch.allclose(values[:, 1:, :-1], real, atol=2e-3, rtol=1e-2)  # float16 storage
    lengths = mask.sum(1)
    pooled = real[torch.arange(3), lengths - 1] if kind == "gpt2" else real.sum(1) / lengths[:, None]
    assert torch.allclose(values[:, 0, :-1], pooled, atol=2e-3, rtol=1e-2)
    assert frozen.causal == (kind == "gpt2")


def test_a_caption_longer_than_the_length_is_refused(encoders):
    with pytest.raises(ConfigError, match="is 10 tokens of the text encoder; this model reads at most 6"):
        FrozenTextEncoder(encoders["t5"], 6).encode(CAPTIONS, "prompt")


def test_an_instruction_prefix_changes_what_a_decoder_llm_sees(encoders):
    plain = FrozenTextEncoder(encoders["gpt2"], 16).encode(CAPTIONS[:1], "p")
    prefixed = FrozenTextEncoder(encoders["gpt2"], 16, prefix="a red ").encode(CAPTIONS[:1], "p")
    assert prefixed[0, 1:, -1].sum() == plain[0, 1:, -1].sum() + 2  # two more tokens
    assert not torch.allclose(prefixed[0, 0], plain[0, 0])


def test_the_conditioner_learns_a_null_caption_and_refines_bidirectionally(encoders):
    options = {"encoder": str(encoders["gpt2"]), "fingerprint": fingerprint(encoders["gpt2"]), "width_in": 16,
               "length": 12, "refiner": 1}
    conditioner = HFTextConditioner(32, **options)
    values = conditioner.parse(CAPTIONS)
    null = conditioner.null(values)
    cond = conditioner(torch.cat([values, null]))
    assert cond.tokens.shape == (6, 12, 32) and cond.mask[3:].sum(1).tolist() == [1, 1, 1]
    assert torch.allclose(cond.pooled[3:], conditioner.null_pooled.expand(3, -1))
    # the refiner is bidirectional: the first token's output depends on the last real token
    changed = values.clone()
    last = int(changed[0, 1:, -1].sum())
    changed[0, last, :-1] += 1.0
    assert not torch.allclose(conditioner(changed[:1]).tokens[0, 0], cond.tokens[0, 0])


def test_a_caption_store_holds_exactly_the_live_encoding_and_refuses_what_does_not_match(encoders, tmp_path):
    write_store(CAPTIONS, encoders["clip"], tmp_path / "store", 12, progress=False)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    options = {"fingerprint": fingerprint(encoders["clip"]), "length": 12, "prefix": "", "width": 16}
    stored = read_store(tmp_path / "store", options, CAPTIONS)
    assert torch.equal(stored, FrozenTextEncoder(encoders["clip"], 12).encode(CAPTIONS, "x"))
    assert manifest["count"] == 3 and manifest["length"] == 12
    with pytest.raises(DataError, match="another text encoder"):
        read_store(tmp_path / "store", {**options, "fingerprint": fingerprint(encoders["t5"])}, CAPTIONS)
    with pytest.raises(DataError, match="other captions"):
        read_store(tmp_path / "store", options, CAPTIONS[::-1])
    with pytest.raises(DataError, match="another instruction prefix"):
        read_store(tmp_path / "store", {**options, "prefix": "draw: "}, CAPTIONS)
    with pytest.raises(ConfigError, match="exists"):
        write_store(CAPTIONS, encoders["clip"], tmp_path / "store", 12, progress=False)


def test_a_hub_id_is_refused_with_where_to_put_the_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="maskdit never downloads.*huggingface-cli download google/t5-small"):
        FrozenTextEncoder("google/t5-small", 8)


@pytest.mark.parametrize("mode", ["cross", "joint"])
def test_a_run_on_a_frozen_encoder_trains_from_a_store_and_samples_prompts(mode, encoders, tmp_path, capsys):
    from maskdit.cli.app import main

    enc = str(encoders["t5"])
    assert main(["captions", "encode", "shapes", "--num", "16", "--encoder", enc, "--out", str(tmp_path / "store"),
                 "--length", "14", "--no-progress"]) == 0
    common = ["--preset", "shapes-text", "model.condition=hf", f"model.text_encoder={enc}", "model.text_length=14",
              f"model.text={mode}", "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=8",
              "steps=2", "ckpt_every=2", "data.num=16", "model.patch_size=8", "precision=fp32", "warmup_steps=1",
              "log_every=1"]
    assert main(["train", "--no-progress", *common, f"data.captions={tmp_path / 'store'}",
                 f"run_dir={tmp_path / 'run'}"]) == 0
    info = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["condition_options"]
    assert info["fingerprint"] == fingerprint(enc) and info["width_in"] == 16
    assert main(["sample", str(tmp_path / "run"), "--prompt", "a red circle", "--num", "2", "--steps", "1",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (2, 32, 32, 3)
    # without the store the run encodes the captions itself, to the same values: the same first loss
    assert main(["train", "--no-progress", *common, "steps=1", f"run_dir={tmp_path / 'live'}"]) == 0
    first = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])["loss"] for d in ("run", "live")]
    assert first[0] == pytest.approx(first[1], rel=1e-5)
