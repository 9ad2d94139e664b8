"""Hostile sites and simulated faults are ClientApp mods only simulations attach: the deployed app
(`client.app:app`) trains honestly whatever the run config says; the simulation's app does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_fakes import FakeGrid, flower_identity  # noqa: F401 (fixture)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedward.client.app import app, site_app
from fedward.client.hostile import hostile_mod
from fedward.client.simulated_faults import DROPPED, fault_mod
from fedward.client.site import load_site, site_source
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.tasks import get_task

pytestmark = pytest.mark.usefixtures("flower_identity")

NODE = 11


def _context(config: RunConfig) -> Context:
    node = {"partition-id": 0, "num-partitions": 3}
    return Context(
        run_id=1, node_id=NODE, node_config=node, state=RecordDict(), run_config=config.to_flower()
    )


def _train_message(config: RunConfig) -> tuple[Message, ArrayRecord]:
    """Round 1's train message for partition 0 of the shipped CKD data, and the global model it carries."""
    task = get_task("ckd")
    site = load_site(site_source(_context(config), config), config)
    torch.manual_seed(config.seed)
    arrays = ArrayRecord(task.build_model(config).state_dict())
    shared = ConfigRecord(task.combine_statistics([task.statistics(site)[0].sum(axis=0)]))
    (message,) = FedAvg(min_train_nodes=1, min_available_nodes=1).configure_train(
        1, arrays, shared, FakeGrid([NODE])
    )
    return message, arrays


def _delta(reply: Message, start: ArrayRecord) -> dict[str, np.ndarray]:
    assert not reply.has_error(), reply.error.reason
    return {k: reply.content["arrays"][k].numpy() - start[k].numpy() for k in start}


def test_only_the_simulations_app_acts_out_hostile_sites() -> None:
    honest = RunConfig(dp=False, local_epochs=1)
    hostile = honest.model_copy(update={"hostile_sites": "0", "hostile_scale": 10.0})
    message, start = _train_message(honest)
    simulation = site_app(hostile_mod)

    reference = _delta(simulation(message, _context(honest)), start)
    deployed = _delta(app(message, _context(hostile)), start)
    attacked = _delta(simulation(message, _context(hostile)), start)

    for key, value in reference.items():
        assert np.array_equal(deployed[key], value)  # the deployed app has no hostile code path
        assert np.allclose(attacked[key], -10 * value, atol=1e-5)


def test_a_dropped_site_never_reaches_the_handler() -> None:
    config = RunConfig(dp=False, sim_dropout=0.999)
    message, _ = _train_message(RunConfig(dp=False))
    called = []

    def handler(msg: Message, context: Context) -> Message:
        called.append(msg)
        return Message(RecordDict({"metrics": MetricRecord({"site-seconds": 1.0})}), reply_to=msg)

    reply = fault_mod(message, _context(config), handler)
    assert reply.has_error() and reply.error.code == DROPPED and not called
    straggler = config.model_copy(
        update={"sim_dropout": 0.0, "sim_stragglers": "0", "sim_straggler_seconds": 0.01}
    )
    reply = fault_mod(message, _context(straggler), handler)
    assert reply.content["metrics"]["site-seconds"] == pytest.approx(1.01)  # the delay counts as the site's
    deployed = site_app()
    assert not deployed(message, _context(config)).has_error()  # the deployed app never drops out


def test_a_ray_cluster_run_refuses_hostile_sites_and_faults() -> None:
    """The cluster path runs the deployed app (no simulation mods): asking it for hostile sites is an error,
    not a silently honest run."""
    from fedward.simulations.runner import SimulationResources, run_simulation

    cluster = SimulationResources(ray_address="127.0.0.1:1")
    for key, value in (("hostile-sites", "1"), ("sim-dropout", 0.5), ("sim-stragglers", "0")):
        with pytest.raises(ConfigError, match="client mods of the local simulation only"):
            run_simulation({key: value}, 3, resources=cluster)
