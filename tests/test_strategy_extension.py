"""How to add a strategy (docs/architecture.md), followed: a toy stateful strategy whose two halves are
registered from this test and run through a real 2-site in-process federation.

The toy: each site keeps the total of the optimiser steps it has taken (its own scalar, in
`context.state`) and sends it beside its model; the server averages the sites' scalars and sends the
mean back with the next round's train messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from inprocess_grid import InProcessGrid, ckd_run_config, run_server

from fedward.common.algorithms.base import SiteHook, TrainedRound
from fedward.common.algorithms.registry import register_site_hook, unregister_site_hook
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.strategies.registry import register_strategy, unregister_strategy

TOY = "toy-mean"
TOY_GLOBAL = "toy-mean-global"  # ConfigRecord, server → site: the mean of the sites' scalars
TOY_SITE = "toy-mean-site"  # ArrayRecord, site → server: this site's scalar
TOY_STATE = "toy-mean-state"  # context.state: the site's scalar and the mean it last saw


class ToySite(SiteHook):
    """The site half: add this round's steps to the kept total; send it."""

    def finish(self, trained: TrainedRound) -> dict[str, ArrayRecord]:
        kept = trained.state[TOY_STATE] if TOY_STATE in trained.state else ConfigRecord({"total": 0.0})
        total = float(kept["total"]) + trained.steps
        seen = float(trained.content[TOY_GLOBAL]["value"])
        trained.state[TOY_STATE] = ConfigRecord({"total": total, "seen": seen})
        return {TOY_SITE: ArrayRecord({"value": Array(np.array([total], dtype=np.float32))})}


class ToyMean(FedAvg):
    """The server half: FedAvg for the model, plus the mean of the sites' scalars."""

    def __init__(self, **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self.value = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[TOY_GLOBAL] = ConfigRecord({"value": self.value})
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        trained = [r for r in replies if not r.has_error() and TOY_SITE in r.content]
        if trained:
            self.value = float(np.mean([r.content[TOY_SITE]["value"].numpy()[0] for r in trained]))
        for reply in trained:  # FedAvg accepts one ArrayRecord per reply
            del reply.content[TOY_SITE]
        return super().aggregate_train(server_round, replies)


@pytest.fixture()
def toy_strategy() -> Iterator[list[ToyMean]]:
    """Both halves registered for one test; the server halves it builds."""
    built: list[ToyMean] = []

    def build(common: dict[str, Any], settings: object, num_sites: int) -> ToyMean:
        built.append(ToyMean(**common))
        return built[-1]

    register_strategy(TOY, build)
    register_site_hook(TOY, ToySite())
    yield built
    unregister_strategy(TOY)
    unregister_site_hook(TOY)


@pytest.mark.usefixtures("flower_identity")
def test_a_registered_stateful_strategy_runs_both_halves(tmp_path: Path, toy_strategy: list[ToyMean]) -> None:
    prepare_ckd_sites(tmp_path / "sites", 2, "iid")
    config = ckd_run_config(
        tmp_path / "sites",
        tmp_path / "runs",
        **{"strategy": TOY, "num-server-rounds": 2, "dp": False, "run-name": "toy"},
    )
    grid = InProcessGrid(config, 2)

    run_server(grid, config)

    (strategy,) = toy_strategy
    trained = [r for r in grid.replies if r.metadata.message_type == "train" and not r.has_error()]
    assert len(trained) == 4
    steps: dict[int, list[int]] = {}
    for reply in trained:
        steps.setdefault(reply.metadata.src_node_id, []).append(int(reply.content["metrics"]["steps"]))
    totals = {node: float(sum(s)) for node, s in steps.items()}
    assert all(s > 0 for s in totals.values())
    first_mean = float(np.mean([s[0] for s in steps.values()]))
    for node, context in grid.contexts.items():  # each site kept its own scalar
        assert context.state[TOY_STATE]["total"] == totals[node]
        assert context.state[TOY_STATE]["seen"] == first_mean  # round 2 carried round 1's mean
    sent = [m.content[TOY_GLOBAL]["value"] for m in grid.sent if m.metadata.message_type == "train"]
    assert sent == [0.0, 0.0, first_mean, first_mean]
    assert strategy.value == pytest.approx(np.mean(list(totals.values())))
