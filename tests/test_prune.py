"""Depth pruning: the search finds the blocks a model cannot do without, the pruned run computes what the
kept blocks computed, and it finetunes from there."""

import pytest
import torch
from conftest import perturbed

from maskdit.cli.app import main
from maskdit.errors import ConfigError
from maskdit.model import DiT
from maskdit.runs import load_run
from maskdit.training.prune import evenly_spaced, gated_blocks, group_layout, keep_blocks, prune_learned


def tiny(depth=4):
    torch.manual_seed(0)
    return perturbed(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=depth, num_heads=2,
                         num_classes=3), scale=0.2).eval()


def test_group_layout_and_evenly_spaced_blocks():
    assert group_layout(6, 3) == (2, 1) and group_layout(12, 8) == (3, 2) and group_layout(28, 14) == (2, 1)
    assert evenly_spaced(6, 3) == [0, 2, 5] and evenly_spaced(28, 14)[:3] == [0, 2, 4]
    assert evenly_spaced(5, 1) == [2]
    with pytest.raises(ConfigError, match="between 1 and 5"):
        group_layout(6, 6)


def test_a_gated_model_equals_the_model_built_from_its_kept_blocks():
    model = tiny()
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 1, 2])
    with torch.no_grad(), gated_blocks(model, [torch.tensor(1.0)] * 4):
        assert torch.equal(model(x, t, y), model(x, t, y).clone())
    kept = [1, 3]
    small = DiT.from_config({**model.config, "depth": 2})
    small.load_state_dict(keep_blocks(model, kept))
    gates = [torch.tensor(float(i in kept)) for i in range(4)]
    with torch.no_grad():
        with gated_blocks(model, gates):
            gated = model(x, t, y)
        assert torch.allclose(small.eval()(x, t, y), gated, atol=1e-6)
        assert not torch.allclose(model(x, t, y), gated, atol=1e-3)  # the hooks are gone again


def test_the_learned_search_finds_the_blocks_the_loss_needs():
    model = tiny()
    x, t, y = torch.randn(8, 1, 8, 8), torch.rand(8), torch.arange(8) % 3
    with torch.no_grad(), gated_blocks(model, [torch.tensor(float(i in (1, 2))) for i in range(4)]):
        target = model(x, t, y)  # what the model computes with blocks 1 and 2 only

    def loss_fn(m, step):
        return (m(x, t, y) - target).pow(2).mean()

    assert prune_learned(model, 2, loss_fn, steps=60, lr=0.0, logit_lr=0.2) == [1, 2]
    assert prune_learned(model, 2, loss_fn, steps=60, lr=1e-4, logit_lr=0.2) == [1, 2]  # weights train too
    assert evenly_spaced(4, 2) == [0, 3]  # the baseline would have missed both


def test_cli_prunes_a_run_that_samples_and_finetunes(tmp_path, capsys):
    tiny_run = ["model.depth=4", "model.hidden_size=32", "model.num_heads=2", "batch_size=16", "warmup_steps=1",
                "sample.steps=2", "ckpt_every=10", "keep_checkpoints=1"]
    assert main(["train", "--no-progress", *tiny_run, "steps=10", f"run_dir={tmp_path / 'full'}"]) == 0
    assert main(["prune", str(tmp_path / "full"), "--keep-blocks", "2", "--search-steps", "5",
                 "--out", str(tmp_path / "half")]) == 0
    printed = capsys.readouterr().out
    assert "kept blocks [" in printed and "model.depth=2" in printed
    full, half = load_run(tmp_path / "full"), load_run(tmp_path / "half")
    kept = half.info["pruned"]["kept"]
    assert len(half.model.blocks) == 2 and half.step == 0 and half.config.model.depth == 2
    for new, old in enumerate(kept):
        for (name, a), b in zip(half.model.blocks[new].state_dict().items(),
                                full.model.blocks[old].state_dict().values()):
            assert torch.equal(a, b), name
    assert main(["sample", str(tmp_path / "half"), "--num", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["train", "--no-progress", *tiny_run, "model.depth=2", "steps=3", f"init_from={tmp_path / 'half'}",
                 f"run_dir={tmp_path / 'recovered'}"]) == 0
    assert load_run(tmp_path / "recovered").step == 3
    assert main(["prune", str(tmp_path / "full"), "--keep-blocks", "2", "--out", str(tmp_path / "half")]) == 2


def test_a_restoration_model_prunes_with_its_maps_and_its_chain_start(tmp_path, capsys):
    """A controlled run (concat, objective.source=control): the search's loss pairs each image with its map and
    starts the chain at the degraded image; control kinds with per-block layers are refused."""
    tiny_run = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "batch_size=16", "warmup_steps=1",
                "sample.steps=2", "ckpt_every=4", "keep_checkpoints=1", "control.signal=lowres:2",
                "objective.source=control"]
    assert main(["train", "--no-progress", *tiny_run, "steps=4", f"run_dir={tmp_path / 'full'}"]) == 0
    assert main(["prune", str(tmp_path / "full"), "--keep-blocks", "1", "--search-steps", "3",
                 "--out", str(tmp_path / "half")]) == 0
    half = load_run(tmp_path / "half")
    assert len(half.model.blocks) == 1 and half.model.control is not None
    assert half.objective.source == "control"
    plain = tiny_run[:-2]
    assert main(["train", "--no-progress", *plain, "steps=2", f"run_dir={tmp_path / 'base'}"]) == 0
    assert main(["train", "--no-progress", *plain, "steps=2", "control.signal=edges", "control.kind=tokens",
                 "control.rank=2", f"init_from={tmp_path / 'base'}", f"run_dir={tmp_path / 'tok'}"]) == 0
    capsys.readouterr()
    assert main(["prune", str(tmp_path / "tok"), "--keep-blocks", "1", "--out", str(tmp_path / "tok1")]) == 2
    assert "control.kind=tokens) holds layers per base block" in capsys.readouterr().err
    assert not (tmp_path / "tok1").exists()
