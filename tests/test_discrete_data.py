"""Token data for masked diffusion: the FSQ tokenizer and its token stores, character text, and the autoregressive
judge of generated text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maskdit.cli.app import main
from maskdit.data.datasets import load_dataset
from maskdit.data.text import CharCodec, builtin_corpus, fold, load_text
from maskdit.data.tokens import FSQ, TokenDataset, load_tokenizer
from maskdit.errors import CheckpointError, DataError
from maskdit.evaluate.charlm import CharLM, generative_perplexity, unigram_entropy

TINY_MASKED = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "batch_size=8", "warmup_steps=1",
               "steps=3", "ckpt_every=3", "objective.name=masked", "model.patch_size=1"]


def test_fsq_ids_cover_the_code_space_and_round_trip():
    fsq = FSQ([3, 4, 2])
    ids = torch.arange(fsq.size).reshape(1, 4, 6)
    assert fsq.size == 24
    assert torch.equal(fsq.index(fsq.unpack(ids)), ids)
    z = torch.randn(2, 3, 5, 5, requires_grad=True)
    q = fsq(z)
    span = torch.tensor([2.0, 3.0, 1.0]).reshape(1, 3, 1, 1)
    levels = (q + 1) / 2 * span
    assert torch.allclose(levels, levels.round(), atol=1e-5)  # every value on its channel's grid
    q.sum().backward()
    assert z.grad is not None and bool((z.grad != 0).any())  # straight through the rounding


def test_a_token_model_trains_on_a_tokenizers_store_and_decodes_through_it(tmp_path: Path, capsys):
    images = load_dataset("digits").images[:400]
    np.savez(tmp_path / "digits.npz", images=images[:, 0].numpy(), labels=np.arange(400) % 10)
    assert main(["tokenizer", "train", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "tok"), "--levels", "4,4",
                 "--steps", "150", "--width", "16", "--no-progress"]) == 0
    model, facts = load_tokenizer(tmp_path / "tok")
    assert facts["vocab_size"] == 16 and facts["final_loss"] < 0.5 * facts["first_loss"]
    assert main(["tokens", str(tmp_path / "digits.npz"), "--tokenizer", str(tmp_path / "tok"), "--out",
                 str(tmp_path / "store.npz"), "--no-progress"]) == 0
    store = TokenDataset(tmp_path / "store.npz")
    assert store.shape == (1, 4, 4) and store.codec.vocab_size == 16 and len(store) == 400
    x, labels = store.batch(torch.arange(4))
    assert torch.equal(labels, torch.arange(4)) and bool((x >= 0).all() and (x < 16).all())
    assert main(["train", "--no-progress", *TINY_MASKED, "data.name=tokens", f"data.path={tmp_path / 'store.npz'}",
                 f"run_dir={tmp_path / 'run'}"]) == 0
    assert main(["sample", str(tmp_path / "run"), "--num", "4", "--steps", "4", "--out",
                 str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (4, 8, 8, 1) and f["images"].dtype == np.uint8
    # a changed tokenizer no longer decodes the run's samples
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "tok" / "tokenizer.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, tmp_path / "tok" / "tokenizer.safetensors")
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "--num", "4", "--steps", "4", "--out",
                 str(tmp_path / "t.npz")]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists()
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_tokenizer(tmp_path / "tok")


def test_the_built_in_corpus_splits_into_disjoint_sequences_that_round_trip():
    train, test = load_text(None, 64, "train"), load_text(None, 64, "test")
    assert train.shape == (1, 64) and len(train) > 5000 and 500 < len(test) < len(train) / 5
    assert train.codec.alphabet == test.codec.alphabet  # the alphabet is the whole corpus's
    corpus = fold(builtin_corpus())
    assert corpus.startswith(train.text) and corpus.endswith(test.text)
    x, y = train.batch(torch.arange(3))
    assert y is None and x.shape == (3, 1, 64)
    assert train.codec.decode(x) == [train.text[i * 64:(i + 1) * 64] for i in range(3)]
    with pytest.raises(DataError, match="outside the model's alphabet"):
        CharCodec("ab").ids("abc")


def test_a_masked_text_model_writes_lines_of_its_alphabet(tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    assert main(["train", "--no-progress", *TINY_MASKED, "data.name=text", f"data.path={corpus}", "data.length=16",
                 "model.conditional=false", f"run_dir={tmp_path / 'run'}"]) == 0
    assert main(["sample", str(tmp_path / "run"), "--num", "5", "--sampler", "first-hitting", "--out",
                 str(tmp_path / "s.txt")]) == 0
    lines = (tmp_path / "s.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and all(len(line) == 16 and set(line) <= set("the cat sat on mat.") for line in lines)
    assert main(["sample", str(tmp_path / "run"), "--num", "5", "--out", str(tmp_path / "s.png")]) == 2  # text out
    assert main(["report", str(tmp_path / "run"), "--per-class", "4", "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64") >= 1  # its lines as a picture


def test_the_char_lm_is_causal_and_its_perplexity_is_the_exponent_of_its_loss():
    torch.manual_seed(0)
    lm = CharLM(7, 12, width=32, depth=2, num_heads=2).eval()
    ids = torch.randint(0, 7, (3, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 7
    with torch.no_grad():
        assert torch.allclose(lm(ids)[:, :9], lm(changed)[:, :9], atol=1e-5)  # position 8 sees ids 0..7 only
        assert not torch.allclose(lm(ids)[:, 9:], lm(changed)[:, 9:], atol=1e-5)
        manual = -torch.log_softmax(lm(ids), dim=-1).gather(-1, ids[..., None]).mean()
    assert generative_perplexity(lm, ids) == pytest.approx(math.exp(float(manual)), rel=1e-5)
    samples = lm.sample(4, seed=1)
    assert samples.shape == (4, 12) and torch.equal(samples, lm.sample(4, seed=1))
    assert unigram_entropy(["aabb", "ab"]) == pytest.approx(math.log(2))


def test_eval_scores_a_text_model_by_its_bound_on_held_out_text(tmp_path: Path, capsys):
    import json

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc abd " * 400, encoding="utf-8")
    assert main(["train", "--no-progress", *TINY_MASKED, "data.name=text", f"data.path={corpus}", "data.length=8",
                 "model.conditional=false", f"run_dir={tmp_path / 'run'}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    bound = json.loads(out[-1])["nll"]
    assert "bits per token" in out[0] and 0 < bound["bits_per_token"] < 8 and bound["num"] == 40
    assert main(["eval", str(tmp_path / "run"), "--metrics", "domain_fid"]) == 2


def test_word_sequences_keep_the_most_frequent_words_and_mark_the_rest_unknown(tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat. the dog sat. a bird flew! " * 50, encoding="utf-8")
    words = load_text(str(corpus), 6, "train", words=4)
    assert words.codec.words == ["the", "sat", ".", "cat"] and words.codec.vocab_size == 5
    x, _ = words.batch(torch.arange(1))
    assert words.codec.decode(x) == ["the cat sat . the <unk>"]
    assert load_dataset("text", str(corpus), words=4, length=6).shape == (1, 6)
