"""The site's side of the strategies: SCAFFOLD and FedBN state kept across rounds in context.state,
FedProx's μ from the server's config, hostile behaviour only in simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_fakes import FakeGrid, flower_identity  # noqa: F401 (fixture)
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from torch import nn
from torch.utils.data import TensorDataset

from fedward.client.app import train
from fedward.client.hostile import LabelFlipped, corrupt_update, hostile_mod, hostile_mode
from fedward.client.site import load_site, site_source
from fedward.common.algorithms.fedbn import (
    LOCAL_NORM_LAYERS,
    NORM_STATE,
    keep_norm_layers,
    norm_layer_keys,
    site_model_state,
)
from fedward.common.algorithms.scaffold import SCAFFOLD_CONTROL_DELTA, SCAFFOLD_STATE
from fedward.common.config import RunConfig
from fedward.common.tasks import get_task
from fedward.common.training import LocalTraining, train_model
from fedward.strategies.registry import StrategySettings, build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")

CONFIG = RunConfig(dp=False, min_sites=3, local_epochs=1)
NODE = 11


def _context(config: RunConfig = CONFIG, partition: int = 0) -> Context:
    node = {"partition-id": partition, "num-partitions": 3}
    return Context(
        run_id=1, node_id=NODE, node_config=node, state=RecordDict(), run_config=config.to_flower()
    )


def _strategy(name: str, config: RunConfig = CONFIG):
    return build_strategy(
        name,
        num_sites=1,
        train_metrics=aggregate_metricrecords,
        evaluate_metrics=aggregate_metricrecords,
        settings=StrategySettings.from_config(config),
    )


def _start(config: RunConfig, context: Context) -> tuple[ArrayRecord, ConfigRecord]:
    """The initial global model and the shared preprocessing of this one site."""
    task = get_task("ckd")
    site = load_site(site_source(context, config), config)
    torch.manual_seed(config.seed)
    return ArrayRecord(task.build_model(config).state_dict()), ConfigRecord(
        task.combine_statistics([task.statistics(site)[0].sum(axis=0)])
    )


def _rounds(name: str, num_rounds: int, config: RunConfig = CONFIG, context: Context | None = None):
    """Run `num_rounds` rounds of one CKD site against strategy `name` (through the simulation's hostile
    mod); the site's replies."""
    context = context or _context(config.model_copy(update={"strategy": name}))
    strategy = _strategy(name, config)
    arrays, shared = _start(config, context)
    replies = []
    for rnd in range(1, num_rounds + 1):
        (message,) = strategy.configure_train(rnd, arrays, ConfigRecord(dict(shared)), FakeGrid([NODE]))
        reply = hostile_mod(message, context, train)
        replies.append(reply)
        arrays, _ = strategy.aggregate_train(rnd, [reply])
    return replies, context


def test_scaffold_site_keeps_its_control_variate_across_rounds() -> None:
    (first, second), context = _rounds("scaffold", 2)
    c1 = first.content[SCAFFOLD_CONTROL_DELTA].to_torch_state_dict()  # c_i starts at 0: Δc = c_i¹
    d2 = second.content[SCAFFOLD_CONTROL_DELTA].to_torch_state_dict()
    c2 = context.state[SCAFFOLD_STATE].to_torch_state_dict()
    assert set(c2) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}  # parameters only
    for key in c2:
        assert torch.allclose(c2[key], c1[key] + d2[key], atol=1e-6)
        assert d2[key].abs().sum() > 0


def test_fedprox_mu_from_the_server_shrinks_the_site_update() -> None:
    moved = {}
    for name, mu in (("fedavg", 0.0), ("fedprox", 1.0)):  # lr·μ < 2, or SGD on the term diverges
        config = CONFIG.model_copy(update={"proximal_mu": mu, "local_epochs": 3})
        context = _context(config)
        start, _ = _start(config, context)
        (reply,), _ = _rounds(name, 1, config, context)
        end = reply.content["arrays"]
        moved[name] = np.sqrt(sum(((end[k].numpy() - start[k].numpy()) ** 2).sum() for k in start))
    assert moved["fedprox"] < 0.7 * moved["fedavg"]


def test_fedbn_is_a_no_op_for_ckd() -> None:
    (plain,), _ = _rounds("fedavg", 1)
    (fedbn,), context = _rounds("fedbn", 1)
    assert NORM_STATE not in context.state  # the CKD models have no normalisation layers
    for key, array in plain.content["arrays"].items():
        assert np.array_equal(array.numpy(), fedbn.content["arrays"][key].numpy())


class _Normed(nn.Module):
    """A small model with GroupNorm and LayerNorm, as FedBN is meant for."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.Tanh(), nn.Linear(8, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


def test_fedbn_sites_keep_their_own_normalisation_layers_across_rounds() -> None:
    torch.manual_seed(0)
    keys = norm_layer_keys(_Normed())
    assert keys == ["body.1.weight", "body.1.bias", "norm.weight", "norm.bias"]
    shared = ConfigRecord({LOCAL_NORM_LAYERS: True})
    states = [RecordDict(), RecordDict()]
    global_state = _Normed().state_dict()
    kept: list[dict[str, torch.Tensor]] = []
    for rnd in range(1, 3):
        trained = []
        for i, state in enumerate(states):
            model = _Normed()
            model.load_state_dict(site_model_state(global_state, shared, state))
            if rnd == 2:  # the site starts from its own layers, everything else is global
                assert all(torch.equal(model.state_dict()[k], kept[i][k]) for k in keys)
                others = [k for k in global_state if k not in keys]
                assert all(torch.equal(model.state_dict()[k], global_state[k]) for k in others)
            g = torch.Generator().manual_seed(i)
            x = torch.randn(32, 4, generator=g) * (1 + 3 * i)  # different feature scales per site
            data = TensorDataset(x, (x[:, 0] > 0).long())
            train_model(model, data, nn.functional.cross_entropy, LocalTraining(lr=0.5, seed=rnd), None)
            keep_norm_layers(model, shared, state)
            trained.append(model.state_dict())
        kept = [state[NORM_STATE].to_torch_state_dict() for state in states]
        assert not torch.equal(kept[0]["norm.weight"], kept[1]["norm.weight"])
        global_state = {k: (trained[0][k] + trained[1][k]) / 2 for k in global_state}  # FedAvg
    # without FedBN's flag the global layers are used
    assert site_model_state(global_state, ConfigRecord({}), states[0]) is global_state


def test_hostile_updates_and_labels() -> None:
    g = {"w": torch.zeros(3), "n": torch.tensor(4)}
    local = {"w": torch.tensor([1.0, 2.0, 2.0]), "n": torch.tensor(5)}
    assert torch.equal(corrupt_update(g, local, "sign-flip", 10)["w"], torch.tensor([-10.0, -20.0, -20.0]))
    assert torch.equal(corrupt_update(g, local, "scale", 2)["w"], torch.tensor([2.0, 4.0, 4.0]))
    random = corrupt_update(g, local, "random", 3, seed=1)["w"]
    assert float(random.norm()) == pytest.approx(9.0, rel=1e-5)  # 3 x the honest norm of 3
    assert corrupt_update(g, local, "sign-flip", 10)["n"] == 5  # integer buffers untouched
    flipped = LabelFlipped(TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 1])), 2)
    assert [int(flipped[i][1]) for i in range(3)] == [1, 0, 0]


def test_hostile_only_in_simulation() -> None:
    config = CONFIG.model_copy(update={"hostile_sites": "1"})
    assert hostile_mode(_context(config, partition=1), config, 1) == "sign-flip"
    assert hostile_mode(_context(config, partition=0), config, 0) is None
    real = _context(config, partition=1)
    real.node_config["data-dir"] = "/secure/ckd"
    assert hostile_mode(real, config, 1) is None


def test_hostile_site_sends_a_sign_flipped_update() -> None:
    honest_config = CONFIG
    hostile_config = CONFIG.model_copy(update={"hostile_sites": "0", "hostile_scale": 10.0})
    deltas = {}
    for label, config in (("honest", honest_config), ("hostile", hostile_config)):
        context = _context(config)
        start, _ = _start(config, context)
        (reply,), _ = _rounds("fedavg", 1, config, context)
        deltas[label] = {k: reply.content["arrays"][k].numpy() - start[k].numpy() for k in start}
    for key, honest in deltas["honest"].items():
        assert np.allclose(deltas["hostile"][key], -10 * honest, atol=1e-5)
