"""Masked (absorbing-state) diffusion over token ids: the codec, the token embedding, the objective's bound, the
samplers' distributions and float64 categorical draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from maskdit.data.codec import LevelsCodec
from maskdit.data.datasets import load_dataset
from maskdit.diffusion.masked import FLOAT32_GUMBEL_CAP, bits_per_token, categorical, gumbel_max
from maskdit.diffusion.objectives import MASK_ID, MaskedDiffusion
from maskdit.diffusion.samplers import NoiseStreams, sample
from maskdit.errors import ConfigError
from maskdit.grid import patchify
from maskdit.model import DiT
from maskdit.model.discrete import TokenEmbedding


def test_levels_codec_round_trips_the_digits_exactly_at_17_levels():
    digits = load_dataset("digits", levels=17)
    ids = digits.batch(torch.arange(len(digits)))[0]
    assert digits.codec.vocab_size == 17 and ids.min() == 0 and ids.max() == 16
    assert torch.equal(ids, ids.round())
    assert torch.equal(digits.codec.decode(ids), digits.images)
    coarse = LevelsCodec(4)
    assert coarse.encode(torch.tensor([0, 42, 43, 128, 255], dtype=torch.uint8)).tolist() == [0, 0, 1, 2, 3]
    with pytest.raises(ConfigError, match="data.levels"):
        LevelsCodec(1)


def test_token_embedding_is_a_linear_patch_embedding_of_the_one_hot_grid():
    torch.manual_seed(0)
    vocab, patch, width = 5, 4, 8
    embed = TokenEmbedding(vocab, patch, width)
    ids = torch.randint(-1, vocab, (3, 6, patch)).float()
    one_hot = nn.functional.one_hot(torch.where(ids < 0, vocab, ids.long()), vocab + 1).float()  # (B, N, P, V + 1)
    weight = embed.weight.reshape(patch, vocab + 1, width)
    expected = torch.einsum("bnpv,pvd->bnd", one_hot, weight) + embed.bias
    assert torch.allclose(embed(ids), expected, atol=1e-6)


def tiny_model(vocab: int = 17, **options) -> DiT:
    return DiT(input_size=(8, 8), in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2,
               vocab_size=vocab, **options)


def test_a_token_model_predicts_vocab_logits_per_cell_and_a_time_agnostic_one_ignores_time():
    torch.manual_seed(0)
    model = tiny_model(time_input=False)
    nn.init.normal_(model.final_layer.linear.weight, std=0.1)
    for block in model.blocks:
        nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    x = torch.randint(-1, 17, (2, 1, 8, 8)).float()
    out = model(x, torch.tensor([0.1, 0.9]))
    assert out.shape == (2, 17, 8, 8)
    assert torch.equal(out, model(x, torch.tensor([0.7, 0.2])))
    timed = tiny_model()
    timed.load_state_dict(model.state_dict())
    nn.init.normal_(timed.t_embedder.mlp[2].weight, std=1.0)
    assert not torch.allclose(timed(x, torch.tensor([0.1, 0.9])), timed(x, torch.tensor([0.7, 0.2])))
    rgb = DiT(input_size=(8, 8), in_channels=3, patch_size=2, hidden_size=32, depth=1, num_heads=2, vocab_size=5)
    assert rgb(torch.randint(-1, 5, (2, 3, 8, 8)).float(), torch.rand(2)).shape == (2, 15, 8, 8)  # channel c: 5c..
    with pytest.raises(ConfigError, match="at least 2"):
        DiT(input_size=(8, 8), in_channels=1, vocab_size=1)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_forward_process_masks_a_share_m_t_of_cells_and_targets_only_them(schedule):
    objective = MaskedDiffusion(schedule)
    x0 = torch.randint(0, 17, (64, 1, 32, 32)).float()
    t = torch.linspace(0.05, 0.95, 64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_t, target = objective.noisy(x0, noise, t), objective.target(x0, noise, t)
    masked = x_t == MASK_ID
    share = masked.flatten(1).float().mean(dim=1)
    assert torch.allclose(share, objective.masked_share(t), atol=0.05)  # 1024 cells each: sd <= 0.016
    assert torch.equal(x_t[~masked], x0[~masked]) and torch.equal(target[masked], x0[masked])
    assert bool((target[~masked] == MASK_ID).all())
    assert torch.allclose(objective.time_of_share(objective.masked_share(t)), t, atol=1e-6)
    if schedule == "cosine":  # m'(t) / m(t) against a finite difference of log m
        h = 1e-4
        slope = (torch.log(objective.masked_share(t.double() + h)) - torch.log(objective.masked_share(t.double() - h)))
        assert torch.allclose(objective.rate(t.double()), slope / (2 * h), rtol=1e-5)


def test_the_loss_is_the_rate_weighted_cross_entropy_of_masked_cells_averaged_over_covered_tokens():
    objective = MaskedDiffusion("linear")
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 4 * 5)  # 2 samples, 3 tokens of 4 cells, 5 ids
    target = torch.tensor([[[1, -1, -1, 4], [-1, -1, -1, -1], [0, 0, -1, 2]],
                           [[-1, 3, -1, -1], [2, -1, -1, -1], [-1, -1, -1, -1]]]).float()
    t = torch.tensor([0.5, 0.25])
    log_p = torch.log_softmax(pred.reshape(2, 3, 4, 5), dim=-1)
    expected = torch.zeros(2, 3)
    for b in range(2):
        for k in range(3):
            for p in range(4):
                if target[b, k, p] >= 0:
                    expected[b, k] -= log_p[b, k, p, int(target[b, k, p])] / t[b] / 4
    assert torch.allclose(objective.token_loss(pred, target, t), expected.mean(), atol=1e-5)
    weight = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(objective.token_loss(pred, target, t, weight), (expected * weight).sum() / 3, atol=1e-5)


class Oracle(nn.Module):
    """A 'model' that knows the data: cells independent with the given log-marginals, or a joint table over the
    grid's cells whose exact conditionals it returns given the revealed cells."""

    def __init__(self, size: tuple[int, ...], log_marginal: torch.Tensor | None = None,
                 joint: torch.Tensor | None = None):
        super().__init__()
        self.input_size, self.patch_size = size, (1,) * len(size)
        self.log_marginal, self.joint = log_marginal, joint
        self.anchor = nn.Parameter(torch.zeros(()))  # so next(parameters()) finds a device
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None, **_) -> torch.Tensor:
        self.calls += 1
        cells = x.reshape(len(x), -1).long()
        if self.joint is None:
            logits = self.log_marginal.expand(len(x), cells.shape[1], -1)
        else:  # the joint's outcomes that agree with every revealed cell, summed per cell and id
            vocab = self.joint.shape[0]
            outcomes = torch.cartesian_prod(*[torch.arange(vocab)] * cells.shape[1])  # (V^L, L)
            agree = ((cells[:, None, :] < 0) | (cells[:, None, :] == outcomes[None])).all(dim=-1)  # (B, V^L)
            weights = agree * self.joint.reshape(-1)
            one_hot = nn.functional.one_hot(outcomes, vocab).float()  # (V^L, L, V)
            logits = torch.log(torch.einsum("bo,olv->blv", weights, one_hot).clamp_min(1e-30))
        return logits.transpose(1, 2).reshape(len(x), -1, *self.input_size)


def test_bits_per_token_of_an_oracle_on_independent_cells_is_their_entropy():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    objective = MaskedDiffusion("linear")
    oracle = Oracle((6, 6), log_marginal=torch.log(probs))
    x0 = torch.multinomial(probs, 300 * 36, replacement=True).reshape(300, 1, 6, 6).float()
    result = bits_per_token(oracle, objective, x0, times=8, seed=3)
    entropy = float(-(probs * probs.log2()).sum())  # 1.75 bits
    # the bound's estimate is unbiased; ~3 standard errors of the estimate, and the measured one covers it
    assert abs(result["bits_per_token"] - entropy) < max(3 * result["stderr"], 0.01)
    assert result["stderr"] < 0.05


def joint_toy() -> torch.Tensor:
    """Three cells over 3 ids with strong dependence: known marginals and a joint far from their product."""
    joint = torch.full((3, 3, 3), 0.002)
    joint[0, 0, 0], joint[1, 1, 2], joint[2, 2, 1], joint[0, 2, 2] = 0.4, 0.25, 0.2, 0.1
    return joint / joint.sum()


def draw(sampler: str, steps: int, num: int = 3000, joint: torch.Tensor | None = None, agnostic: bool = True
         ) -> tuple[torch.Tensor, int]:
    joint = joint_toy() if joint is None else joint
    oracle = Oracle((3,), joint=joint)
    objective = MaskedDiffusion("linear", time_agnostic=agnostic)
    x = torch.full((num, 1, 3), float(MASK_ID))

    def fn(x, t):
        return oracle(x, t)

    out = sample(fn, x, objective, sampler, steps, noise=NoiseStreams(7, range(num), (1, 3)))
    return out.reshape(num, 3).long(), oracle.calls


def chi_square(samples: torch.Tensor, joint: torch.Tensor) -> float:
    """Pearson's statistic of the drawn triples against ``joint`` (27 cells, 26 degrees of freedom)."""
    counts = torch.zeros(27)
    counts.index_add_(0, samples[:, 0] * 9 + samples[:, 1] * 3 + samples[:, 2], torch.ones(len(samples)))
    expected = joint.reshape(-1) * len(samples)
    return float(((counts - expected) ** 2 / expected).sum())


def test_first_hitting_and_a_300_step_ancestral_chain_draw_the_joint_a_one_step_chain_only_its_marginals():
    joint = joint_toy()
    critical = 54.05  # chi-square, 26 degrees of freedom, p = 0.001
    fhs, fhs_calls = draw("first-hitting", 1)
    assert fhs_calls == 3  # one call per cell
    assert chi_square(fhs, joint) < critical
    ancestral, _ = draw("ancestral", 300)
    assert chi_square(ancestral, joint) < critical
    one_step, _ = draw("ancestral", 1)  # every cell at once, each from its marginal: not the joint
    assert chi_square(one_step, joint) > 10 * critical
    product = joint.sum(dim=(1, 2))[:, None, None] * joint.sum(dim=(0, 2))[None, :, None] * \
        joint.sum(dim=(0, 1))[None, None, :]
    assert chi_square(one_step, product) < critical


def test_the_cache_changes_no_sample_and_a_time_conditioned_objective_never_reuses():
    cached, cached_calls = draw("ancestral", 200, num=4)  # 12 cells to reveal over 200 steps
    fresh, fresh_calls = draw("ancestral", 200, num=4, agnostic=False)
    assert torch.equal(cached, fresh)
    assert cached_calls <= 12 < fresh_calls  # the chain ends when the last cell is revealed


def test_maskgit_reveals_everything_in_its_rounds_and_never_changes_a_revealed_cell():
    joint = joint_toy()
    oracle = Oracle((3,), joint=joint)
    x = torch.full((500, 1, 3), float(MASK_ID))
    x[:250, 0, 1] = 2  # half the samples are given their second cell
    streams = NoiseStreams(0, range(500), (1, 3))
    out = sample(lambda x, t: oracle(x, t), x, MaskedDiffusion(), "maskgit", 2, noise=streams)
    assert oracle.calls == 2 and bool((out >= 0).all())
    assert bool((out[:250, 0, 1] == 2).all())
    # given cell 1 = 2, the joint puts its mass on (1, 2, 2)-like triples only: (2, 2, 1) and (0, 2, 2)
    firsts = out[:250, 0, 0].long()
    assert set(firsts.tolist()) <= {0, 1, 2} and (firsts != 1).float().mean() > 0.9


def test_categorical_draws_follow_the_softmax_and_refuse_a_zero_temperature():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(20000, 3)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    freq = torch.bincount(categorical(logits, u), minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015)
    sharper = torch.bincount(categorical(logits, u, temperature=0.5), minlength=3).float() / 20000
    assert torch.allclose(sharper, torch.softmax(logits[0] / 0.5, dim=0), atol=0.015)
    with pytest.raises(ConfigError, match="temperature"):
        categorical(logits, u, temperature=0.0)


def test_float32_gumbel_max_truncates_the_tail_of_a_30000_id_vocabulary_and_float64_does_not():
    """A step of a masked chain: 'stay masked' (half the mass) against 30,000 ids with Zipf probabilities. The same
    float64 uniforms, and their float32 copies as ``torch.rand`` makes them (multiples of 2^-24, so the noise stops
    at 16.64): float32 draws only lose rare ids, to more probable ones, so the revealed ids' entropy drops (a lower
    effective temperature); the float64 noise passes the cap as often as a Gumbel should."""
    vocab, rows = 30000, 3000
    p = 1 / torch.arange(1, vocab + 1, dtype=torch.float64) ** 1.2
    p /= p.sum()
    logits = torch.cat([torch.tensor([math.log(0.8)], dtype=torch.float64), torch.log(0.2 * p)])
    generator = torch.Generator().manual_seed(0)
    draws64, draws32, above_cap64, above_cap32 = [], [], 0, 0
    for _ in range(rows // 500):
        u = torch.rand((500, vocab + 1), generator=generator, dtype=torch.float64)
        u32 = (torch.floor(u * 2**24) / 2**24).float()
        above_cap64 += int((-torch.log(-torch.log(u)) > FLOAT32_GUMBEL_CAP + 1e-3).sum())
        above_cap32 += int((-torch.log(-torch.log(u32.clamp_min(1e-38))) > FLOAT32_GUMBEL_CAP + 1e-3).sum())
        draws64.append(gumbel_max(logits, u))
        draws32.append(gumbel_max(logits, u32))
    d64, d32 = torch.cat(draws64), torch.cat(draws32)
    assert above_cap32 == 0 and above_cap64 >= 1  # ~5 expected among 9e7 float64 draws (P = 6e-8 each)
    changed = d64 != d32
    assert int(changed.sum()) >= 1
    assert bool((logits[d32[changed]] > logits[d64[changed]]).all())  # always towards a more probable outcome

    def entropy(ids: torch.Tensor) -> float:
        freq = np.bincount(ids[ids > 0].numpy() - 1) / int((ids > 0).sum())
        freq = freq[freq > 0]
        return float(-(freq * np.log(freq)).sum())

    assert entropy(d32) < entropy(d64)
    assert float(-torch.log(p[d32[d32 > 0] - 1]).mean()) < float(-torch.log(p[d64[d64 > 0] - 1]).mean())


MASKED_RUN = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=16", "warmup_steps=2",
              "log_every=1", "ckpt_every=100", "objective.name=masked", "data.levels=17"]


@pytest.mark.parametrize("recipe", [["mask.recipe=drop", "mask.ratio=0.5"], ["mask.recipe=tread", "mask.ratio=0.5",
                                    "mask.route=[1,2]"], ["mask.recipe=sprint", "mask.ratio=0.5", "mask.route=[1,2]",
                                                                   "model.depth=3"],
                                    ["mask.recipe=mdt", "mask.ratio=0.5", "mask.decoder_depth=1"],
                                    ["task.names=[inpaint,outpaint]", "model.token_time=true"]],
                         ids=["drop", "tread", "sprint", "mdt", "tasks"])
def test_a_masked_model_trains_with_each_token_recipe_and_its_bound_falls(tmp_path, recipe):
    import json

    from maskdit.config import load_config
    from maskdit.runs import load_run
    from maskdit.training.trainer import train

    cfg = load_config("digits", overrides=[*MASKED_RUN, f"run_dir={tmp_path}", "steps=40", "lr=3e-3",
                                           "ema_decay=0.5", *recipe])
    train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for v in losses)
    run = load_run(tmp_path)
    x0, y = load_dataset("digits", levels=17).batch(torch.arange(0, 1797, 7))
    bound = bits_per_token(run.model, run.objective, x0, y, times=8)["bits_per_token"]
    assert bound < 0.85 * math.log2(17)  # at the start (zero head): log2(17) = 4.09 bits, uniform over the ids


def test_resume_of_a_masked_run_continues_exactly(tmp_path):
    from safetensors.torch import load_file

    from maskdit.checkpoint import latest_checkpoint
    from maskdit.config import load_config
    from maskdit.training.trainer import train

    overrides = [*MASKED_RUN, "steps=6", "ckpt_every=3", "objective.time_agnostic=true"]
    train(load_config("digits", overrides=[*overrides, f"run_dir={tmp_path / 'full'}"]), progress=False)
    cfg = load_config("digits", overrides=[*overrides, f"run_dir={tmp_path / 'split'}"])
    train(cfg, progress=False, stop_after=3)
    train(cfg, resume=True, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (load_file(latest_checkpoint(tmp_path / run) / name) for run in ("full", "split"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_holds_given_cells_and_decodes_to_pixels(trained):
    from maskdit.diffusion.samplers import generate
    from maskdit.runs import load_run

    run = load_run(trained(*MASKED_RUN[:-3], "steps=2", "objective.name=masked", "data.levels=17",
                           "task.names=[inpaint]"))
    digits = load_dataset("digits", levels=17)
    context, labels = digits.batch(torch.arange(6))
    given = torch.zeros(6, run.model.num_tokens, dtype=torch.bool)
    given[:, :8] = True  # the top half of the 16 tokens
    for sampler, steps in (("ancestral", 10), ("first-hitting", 1), ("maskgit", 3)):
        x = generate(run.model, run.objective, 6, labels, sampler=sampler, steps=steps, given=given, context=context)
        cells = patchify(x, run.model.patch_size)
        assert torch.equal(cells[:, :8], patchify(context, run.model.patch_size)[:, :8])
        assert bool((x >= 0).all() and (x <= 16).all() and (x == x.round()).all())
        again = generate(run.model, run.objective, 6, labels, sampler=sampler, steps=steps, given=given,
                         context=context, seed=0)
        assert torch.equal(x, again)  # the same seed and batch size: the same samples
    pixels = run.codec.decode(x)
    assert pixels.dtype == torch.uint8 and pixels.shape == (6, 1, 8, 8)
    with pytest.raises(ConfigError, match="does not fit the masked objective"):
        generate(run.model, run.objective, 2, labels[:2], sampler="heun")
    with pytest.raises(ConfigError, match="positive temperature"):
        generate(run.model, run.objective, 2, labels[:2], temperature=0.0)


def test_a_caption_conditioned_masked_model_on_rgb_levels_samples_prompts(tmp_path):
    """The conditioning seam is the same for ids: a text model (cross-attention to captions) over 3-channel 8-level
    shapes trains, and sampling with prompts gives RGB images and a task's given cells back exactly."""
    from maskdit.cli.app import main

    run = tmp_path / "run"
    assert main(["train", "--no-progress", "--preset", "shapes-text", "model.depth=1", "model.hidden_size=32",
                 "model.num_heads=2", "batch_size=8", "steps=3", "warmup_steps=1", "data.num=64",
                 "precision=fp32", "objective.name=masked", "data.levels=8", "task.names=[inpaint]",
                 f"run_dir={run}"]) == 0
    assert main(["sample", str(run), "--num", "4", "--steps", "4", "--prompt", "a red circle",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        images = f["images"]
    assert images.shape == (4, 32, 32, 3) and set(np.unique(images)) <= {round(k * 255 / 7) for k in range(8)}
