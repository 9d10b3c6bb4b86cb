"""Action sequences: the Hopper expert read from pybullet_envs, its demonstrations, the vector condition, noise-routed
experts (MoDE) with cached routes, and a tiny policy run end to end (sampling chunks for observations, imitation
error, closed-loop episodes in the simulator)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from maskdit.cli.app import main
from maskdit.data import actions as A
from maskdit.grid import sincos_time
from maskdit.model.moe import NOISE_FEATURES, MoEMlp, MoESpec, cached_routes, noise_level


def test_the_expert_is_read_from_its_example_file_and_hops():
    layers = A.expert_layers("hopper")
    assert [w.shape for w, _ in layers] == [(15, 128), (128, 64), (64, 3)]
    demos = A.demonstrations("hopper", "train", 1)
    assert demos.observations.shape == (1, A.EPISODE, 15) and demos.actions.shape == (1, A.EPISODE, 3)
    assert demos.lengths[0] == A.EPISODE and demos.returns[0] > 1500  # it hops the whole episode, noise and all
    t = 123
    assert np.allclose(demos.actions[0, t], A.expert_action("hopper", demos.observations[0, t]), atol=1e-5)


def test_chunks_are_consecutive_expert_actions_from_their_observation():
    demos = A.demonstrations("hopper", "train", 1)
    actions, obs = A.chunks(demos, 8)
    assert actions.shape == (A.EPISODE - 7, 3, 8) and obs.shape == (A.EPISODE - 7, 15)
    assert torch.equal(actions[40], torch.from_numpy(demos.actions[0, 40:48]).T)
    assert torch.equal(obs[40], torch.from_numpy(demos.observations[0, 40]))


def test_test_episodes_start_elsewhere_than_training_ones():
    train, test = A.demonstrations("hopper", "train", 1), A.demonstrations("hopper", "test", 1)
    assert not np.allclose(train.observations[0, 0], test.observations[0, 0])


def test_the_vector_condition_embeds_standardised_vectors_and_has_a_null():
    from maskdit.conditions.vector import VectorConditioner

    cond = VectorConditioner(8, 3, [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    cond.initialize()
    v = cond.given(torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]))
    assert v.shape == (2, 4) and v[:, -1].tolist() == [1.0, 1.0]
    with torch.no_grad():
        cond.null_vector.fill_(0.5)
        pooled = cond(v).pooled
        assert torch.allclose(pooled[0], cond.embed(torch.zeros(3)))  # the mean maps to the embedding of zeros
        dropped = cond(cond.drop(v, torch.tensor([False, True]))).pooled
    assert torch.equal(dropped[0], pooled[0]) and torch.equal(dropped[1], torch.full((8,), 0.5))


def _moe(top_k: int = 1) -> MoEMlp:
    torch.manual_seed(0)
    layer = MoEMlp(16, MoESpec(experts=4, top_k=top_k, routing="noise"),
                   lambda: torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16)))
    torch.nn.init.normal_(layer.router.weight, std=2.0)  # routes that differ from time to time
    return layer


def test_noise_routing_sends_a_sample_to_the_experts_of_its_time_alone():
    layer = _moe(top_k=2)
    x, t = torch.randn(5, 7, 16), torch.tensor([0.1, 0.5, 0.9, 0.5, 0.3])
    with torch.no_grad(), noise_level(t):
        together = layer(x)
    for i in range(5):  # a sample's output does not depend on the rest of its batch
        with torch.no_grad(), noise_level(t[i : i + 1]):
            alone = layer(x[i : i + 1])
        assert torch.allclose(alone[0], together[i], atol=1e-5)
    with torch.no_grad(), noise_level(torch.full((1,), 0.5)):
        weights, choice = layer.router(sincos_time(torch.full((1,), 0.5), NOISE_FEATURES)).softmax(-1).topk(2)
        weights = weights / weights.sum()
        expected = sum(w * layer.experts[int(e)](x[1]) for w, e in zip(weights[0], choice[0]))
    assert torch.allclose(together[1], expected, atol=1e-5)


def test_cached_routes_compute_each_time_once_and_match_the_routed_output():
    layer = _moe()
    x = torch.randn(6, 7, 16)
    outs = []
    with torch.no_grad(), cached_routes() as cache:
        for level in (0.8, 0.4, 0.8):
            with noise_level(torch.full((6,), level)):
                outs.append(layer(x))
    assert len(cache) == 2 and all(len(route) == 1 for route in cache.values())  # top-1: one expert per time
    assert torch.equal(outs[0], outs[2])
    with torch.no_grad(), noise_level(torch.full((6,), 0.4)):
        routed = layer(x)
    assert torch.allclose(outs[1], routed, atol=1e-6)


def test_the_noise_router_learns_from_the_balance_loss():
    from maskdit.model.aux import collect_aux_losses

    layer = _moe()
    with collect_aux_losses() as bag, noise_level(torch.rand(8)):
        out = layer(torch.randn(8, 3, 16))
    losses = [v for name, v, adds in bag if adds]
    (out.square().mean() + sum(losses)).backward()
    assert len(losses) == 1 and layer.router.weight.grad.abs().sum() > 0


def test_a_noise_routed_layer_called_without_the_model_is_refused():
    with pytest.raises(Exception, match="reads the model's time"):
        _moe()(torch.randn(2, 3, 16))


HOPPER = ["--preset", "hopper", *TINY, "data.num=1", "data.frames=8", "model.hidden_size=32", "model.mlp_ratio=2"]


@pytest.fixture(scope="module")
def policy(run_factory):
    return run_factory(*HOPPER[2:], "model.moe.experts=2", "model.moe.top_k=1", "model.moe.routing=noise",
                       preset="hopper")


def test_a_policy_samples_chunks_for_observations_and_is_scored_in_the_simulator(policy, tmp_path, capsys):
    obs = tmp_path / "obs.npz"
    assert main(["data", "hopper", "--num", "1", "--frames", "8", "--out", str(obs)]) == 0
    stored = np.load(obs)
    assert stored["observations"].shape[1] == 15 and stored["actions"].shape[1:] == (8, 3)
    out = tmp_path / "chunks.npz"
    assert main(["sample", str(policy), "--num", "3", "--observations", str(obs), "--out", str(out)]) == 0
    made = np.load(out)["actions"]
    assert made.shape == (3, 8, 3) and np.isfinite(made).all()
    capsys.readouterr()
    assert main(["eval", str(policy), "--num", "16"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["modality"] == "actions" and scores["num"] == 16 and scores["imitation_mse"] > 0
    assert scores["expert_return"] > 1500 and 0 < scores["episode_length"] <= A.EPISODE
    report = tmp_path / "report.html"  # its samples: chunks for observations of its own data
    assert main(["report", str(policy), "--out", str(report)]) == 0 and "data:image/png" in report.read_text()


def test_the_test_split_is_standardised_as_the_training_split_the_run_learns_from():
    from maskdit.data.datasets import DataConfig, dataset_from_config

    cfg = DataConfig(name="hopper", num=4, frames=8)
    train, test = dataset_from_config(cfg), dataset_from_config(cfg, "test")
    assert len(test.demos.lengths) == 1 and len(train.demos.lengths) == 4
    assert torch.equal(test.codec.mean, train.codec.mean) and torch.equal(test.codec.std, train.codec.std)
