"""Every strategy name builds and aggregates hand-made replies; robust rules resist an outlier;
SCAFFOLD's server keeps its control variate across rounds; registry and central-DP checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flower_fakes import FakeGrid, arrays, flower_identity  # noqa: F401 (fixture)
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedward.common.algorithms.fedbn import LOCAL_NORM_LAYERS
from fedward.common.algorithms.scaffold import SCAFFOLD_CONTROL, SCAFFOLD_CONTROL_DELTA
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.strategies.central_dp import with_central_dp
from fedward.strategies.registry import ROBUST_STRATEGIES, STRATEGIES, StrategySettings, build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")

SHAPES = {"w": (3, 2), "b": (2,)}
ADAPTIVE = ("fedadam", "fedyogi", "fedadagrad")


def _model(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(shape, value, dtype=np.float32) for k, shape in SHAPES.items()}


def _build(name: str, num_sites: int, **settings: float) -> FedAvg:
    base = StrategySettings.from_config(RunConfig())
    return build_strategy(
        name,
        num_sites=num_sites,
        train_metrics=aggregate_metricrecords,
        evaluate_metrics=aggregate_metricrecords,
        settings=dataclasses.replace(base, **settings),
    )


def _round(strategy, values: list[float], server_round: int = 1, start: float = 0.0):
    """Configure a round on len(values) nodes; node i replies with a model of all `values[i]`."""
    nodes = list(range(11, 11 + len(values)))
    messages = list(
        strategy.configure_train(server_round, arrays(_model(start)), ConfigRecord({}), FakeGrid(nodes))
    )
    assert sorted(m.metadata.dst_node_id for m in messages) == nodes
    replies = []
    for message in messages:
        value = values[message.metadata.dst_node_id - 11]
        content = RecordDict(
            {
                "arrays": arrays(_model(value)),
                "metrics": MetricRecord({"num-examples": 10, "train-loss": value}),
            }
        )
        if SCAFFOLD_CONTROL in message.content:
            content[SCAFFOLD_CONTROL_DELTA] = arrays(_model(1.0))
        replies.append(Message(content, reply_to=message))
    return messages, strategy.aggregate_train(server_round, replies)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_builds_and_aggregates(name: str) -> None:
    strategy = _build(name, num_sites=5)
    assert strategy.min_train_nodes == strategy.min_evaluate_nodes == strategy.min_available_nodes == 5
    _, (new, metrics) = _round(strategy, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert new is not None and metrics is not None
    out = new.to_numpy_ndarrays()
    assert [a.shape for a in out] == list(SHAPES.values())
    if name in ADAPTIVE:  # a server-optimiser step in the direction of the mean update
        assert all(((a > 0) & (a < 0.3)).all() for a in out)
    elif name == "krum":  # one central site's model (0.2, 0.3 and 0.4 tie)
        assert round(float(out[0].flat[0]), 6) in (0.2, 0.3, 0.4)
    else:  # every rule agrees on symmetric, outlier-free updates
        assert all(np.allclose(a, 0.3, atol=1e-6) for a in out)


@pytest.mark.parametrize("name", ROBUST_STRATEGIES)
def test_robust_strategies_resist_one_sign_flipped_site(name: str) -> None:
    honest = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    hostile = -10 * float(np.mean(honest))
    _, (plain, _) = _round(_build("fedavg", 7), [*honest, hostile])
    _, (robust, _) = _round(_build(name, 7, num_malicious_sites=1), [*honest, hostile])
    assert plain["w"].numpy().mean() < 0  # the mean is dragged past the start
    assert 0.1 <= robust["w"].numpy().mean() <= 0.6


def test_strategy_settings_reach_the_flower_classes() -> None:
    assert _build("fedprox", 3, proximal_mu=0.5).proximal_mu == 0.5
    assert _build("fedadam", 3).eta == pytest.approx(0.1)
    assert _build("fedyogi", 3).eta == pytest.approx(0.01)
    assert _build("fedadam", 3, server_lr=0.3, server_beta_1=0.5).eta == pytest.approx(0.3)
    avgm = _build("fedavgm", 3, server_momentum=0.7)
    assert (avgm.server_learning_rate, avgm.server_momentum) == (1.0, 0.7)
    assert _build("fedtrimmedavg", 5, trim_beta=0.4).beta == 0.4
    assert _build("multikrum", 5, num_malicious_sites=1).num_nodes_to_select == 4
    assert _build("multikrum", 5, multikrum_select=2).num_nodes_to_select == 2
    assert _build("scaffold", 4).server_lr == 1.0


def test_fedprox_and_fedbn_send_their_flags() -> None:
    grid = FakeGrid([11, 12])
    prox = list(
        _build("fedprox", 2, proximal_mu=0.25).configure_train(1, arrays(_model(0)), ConfigRecord({}), grid)
    )
    assert prox[0].content["config"]["proximal-mu"] == 0.25
    fedbn = _build("fedbn", 2)
    for configure in (fedbn.configure_train, fedbn.configure_evaluate):
        message = next(iter(configure(1, arrays(_model(0)), ConfigRecord({}), grid)))
        assert message.content["config"][LOCAL_NORM_LAYERS] is True


def test_registry_rejects_unknown_names_and_too_few_sites() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'"):
        _build("fedsgd", 3)
    with pytest.raises(ConfigError, match=r"bulyan .* needs at least 7 sites"):
        _build("bulyan", 5, num_malicious_sites=1)
    with pytest.raises(ConfigError, match=r"krum .* needs at least 5 sites"):
        _build("krum", 4, num_malicious_sites=1)
    with pytest.raises(ConfigError, match="multikrum-select"):
        _build("multikrum", 5, multikrum_select=6)


def test_central_dp_only_wraps_mean_aggregation() -> None:
    for name in ("fedavg", "fedprox", "fedbn"):
        with_central_dp(_build(name, 3), noise_multiplier=1.0, clipping_norm=1.0, num_sites=3, delta=0.01)
    with pytest.raises(ConfigError, match="central-dp needs a strategy"):
        with_central_dp(
            _build("fedmedian", 3), noise_multiplier=1.0, clipping_norm=1.0, num_sites=3, delta=0.01
        )


def test_scaffold_server_control_variate_carries_across_rounds() -> None:
    strategy = _build("scaffold", 4)
    messages, (new, _) = _round(strategy, [0.1, 0.2, 0.3, 0.4])
    first = messages[0].content[SCAFFOLD_CONTROL]
    assert all(np.all(a == 0) for a in first.to_numpy_ndarrays())  # c starts at zero
    assert np.allclose(new["w"].numpy(), 0.25)
    messages, _ = _round(strategy, [0.3] * 4, server_round=2, start=0.25)
    # every site sent Δc = 1 and all 4 of 4 trained: c = 0 + 4/4 · 1
    assert all(np.allclose(a, 1.0) for a in messages[0].content[SCAFFOLD_CONTROL].to_numpy_ndarrays())


def test_scaffold_scales_the_control_step_by_the_share_of_sites_that_trained() -> None:
    strategy = _build("scaffold", 4, server_lr=0.5)
    grid = FakeGrid([11, 12, 13, 14])
    messages = list(strategy.configure_train(1, arrays(_model(0)), ConfigRecord({}), grid))
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": arrays(_model(0.4)),
                    "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0}),
                    SCAFFOLD_CONTROL_DELTA: arrays(_model(2.0)),
                }
            ),
            reply_to=m,
        )
        if i < 2
        else Message(Error(code=4030, reason="refused"), reply_to=m)
        for i, m in enumerate(messages)
    ]
    new, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(new["w"].numpy(), 0.2)  # x + 0.5 · (0.4 - x)
    assert np.allclose(strategy.control["w"], 1.0)  # 2/4 of the sites · mean Δc of 2
    assert isinstance(messages[0].content[SCAFFOLD_CONTROL], ArrayRecord)
