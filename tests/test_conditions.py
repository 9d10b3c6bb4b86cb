"""The conditioning seam: the label conditioner, and a new conditioner added from a test file alone."""

import pytest
import torch
from conftest import SMALL
from torch import nn

from maskdit.conditions.base import CONDITIONERS, Condition, Conditioner
from maskdit.conditions.label import LabelConditioner
from maskdit.config import load_config
from maskdit.diffusion.guidance import guided
from maskdit.diffusion.objectives import FlowMatching
from maskdit.diffusion.samplers import generate
from maskdit.errors import ConfigError
from maskdit.model.dit import DiT
from maskdit.runs import load_run
from maskdit.training.recipes import build_recipe
from maskdit.training.step import StepInputs, TrainingStep
from maskdit.training.trainer import train


class ParityConditioner(Conditioner):
    """A toy condition: only whether the label is even or odd (null value -1)."""

    def __init__(self, width: int):
        super().__init__()
        self.table = nn.Embedding(3, width)

    @classmethod
    def build(cls, width, num_classes):
        return cls(width) if num_classes > 0 else None

    def forward(self, y):
        return Condition(self.table(torch.where(y < 0, 2, y % 2)))

    def null(self, y):
        return torch.full_like(y, -1)


@pytest.fixture
def parity():
    CONDITIONERS.add("parity", ParityConditioner, "toy: the label's parity")
    yield
    CONDITIONERS.remove("parity")


def test_the_label_conditioner_drops_to_the_null_label_and_embeds_it():
    cond = LabelConditioner(num_classes=4, width=8)
    y = torch.tensor([0, 1, 2, 3])
    assert torch.equal(cond.null(y), torch.full((4,), 4))
    dropped = cond.drop(y, torch.tensor([True, False, True, False]))
    assert torch.equal(dropped, torch.tensor([4, 1, 4, 3]))
    assert torch.equal(cond(dropped).pooled, cond.table.weight[[4, 1, 4, 3]])
    assert LabelConditioner.build(8, 0) is None  # unlabelled data: an unconditional model


def test_an_unknown_conditioner_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="config key model.condition must be one of .*label"):
        load_config(overrides=["model.condition=caption"])


def test_a_conditioner_registered_in_a_test_trains_samples_guides_and_reloads(parity, tmp_path):
    cfg = load_config("digits", overrides=[*SMALL, "steps=4", "ckpt_every=4", "model.condition=parity",
                                           f"run_dir={tmp_path / 'run'}"])
    train(cfg, progress=False)
    run = load_run(tmp_path / "run")
    model = run.model
    assert isinstance(model.conditioner, ParityConditioner) and model.config["condition"] == "parity"
    with torch.no_grad():
        for p in model.conditioner.parameters():  # make the condition matter after only 4 steps
            p.add_(torch.randn_like(p))
        x, t = torch.randn(1, 1, 8, 8).expand(4, -1, -1, -1), torch.full((4,), 0.5)
        out = model(x, t, torch.tensor([0, 2, 1, -1]))
    assert torch.equal(out[0], out[1])  # same parity, same prediction: the label reaches the model only through it
    assert not torch.allclose(out[0], out[2]) and not torch.allclose(out[0], out[3])

    seen = []
    forward = model.forward
    model.forward = lambda x, t, y, **kw: (seen.append(y.clone()), forward(x, t, y, **kw))[1]
    guided(model, torch.tensor([3, 4]), scale=2.0)(torch.randn(2, 1, 8, 8), 0.5)
    assert torch.equal(seen[-1], torch.tensor([3, 4, -1, -1]))  # guidance asks the conditioner for its null
    samples = generate(model, run.objective, 3, labels=torch.tensor([0, 1, 2]), steps=2, guidance_scale=2.0)
    assert samples.shape == (3, 1, 8, 8) and torch.isfinite(samples).all()


def test_a_training_step_drops_the_condition_through_the_conditioner(parity):
    model = DiT((8, 8), 1, 2, 32, 1, 2, num_classes=10, condition="parity")
    seen = []
    embed = model.conditioner.forward
    model.conditioner.forward = lambda y: (seen.append(y.clone()), embed(y))[1]
    step = TrainingStep(model, build_recipe("drop", model), FlowMatching())
    y = torch.tensor([5, 6, 7])
    inputs = StepInputs(index=torch.arange(3), t=torch.full((3,), 0.5), noise=torch.randn(3, 1, 8, 8),
                        drop_condition=torch.tensor([False, True, False]), keep_idx=None, given=None, mask_ratio=0.0)
    loss, _ = step((torch.randn(3, 1, 8, 8), y), inputs)
    assert torch.isfinite(loss) and torch.equal(seen[-1], torch.tensor([5, -1, 7]))
