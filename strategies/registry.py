"""Build the aggregation strategy a run asks for."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy

from common.errors import ConfigError

MetricsAggregation = Callable[[list[RecordDict], str], MetricRecord]

STRATEGIES = ("fedavg",)


def build_strategy(
    name: str,
    *,
    num_sites: int,
    train_metrics: MetricsAggregation,
    evaluate_metrics: MetricsAggregation,
    weighted_by_key: str = "num-examples",
) -> Strategy:
    """Strategy `name` that trains and evaluates on all `num_sites` sites every round.

    Minimum node counts equal the number of sites, so no round starts on a partial federation.
    Updates are weighted by `weighted_by_key` (training samples; `site-weight` = 1 for equal weights).
    """
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": num_sites,
        "min_evaluate_nodes": num_sites,
        "min_available_nodes": num_sites,
        "weighted_by_key": weighted_by_key,
        "train_metrics_aggr_fn": train_metrics,
        "evaluate_metrics_aggr_fn": evaluate_metrics,
    }
    if name == "fedavg":
        return FedAvg(**common)
    raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
