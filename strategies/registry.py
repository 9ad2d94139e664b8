"""Build the aggregation strategy a run asks for.

Flower's own classes where Flower has them (`flwr.serverapp.strategy`); SCAFFOLD and FedBN from this
package. Every strategy trains and evaluates on all sites each round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from common.config import RunConfig
from common.errors import ConfigError
from strategies.fedbn import FedBN
from strategies.scaffold import Scaffold

MetricsAggregation = Callable[[list[RecordDict], str], MetricRecord]


@dataclass(frozen=True)
class StrategySettings:
    """The strategy parameters of a run (run-config keys of the same name, kebab-case)."""

    proximal_mu: float
    server_lr: float  # 0 = the strategy's default
    server_momentum: float
    server_beta_1: float
    server_beta_2: float
    server_tau: float
    trim_beta: float
    num_malicious_sites: int
    multikrum_select: int  # 0 = sites - num_malicious_sites

    @classmethod
    def from_config(cls, config: RunConfig) -> StrategySettings:
        """The settings in `config`."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def _byzantine(name: str, num_sites: int, s: StrategySettings, need: int) -> None:
    """Byzantine-robust rules need enough honest sites for the assumed number of malicious ones."""
    f = s.num_malicious_sites
    if num_sites < need:
        raise ConfigError(
            f"{name} with num-malicious-sites = {f} needs at least {need} sites, got {num_sites}"
        )


def _krum(c: dict[str, Any], s: StrategySettings, n: int) -> Strategy:
    _byzantine("krum", n, s, 2 * s.num_malicious_sites + 3)
    return Krum(**c, num_malicious_nodes=s.num_malicious_sites)


def _multikrum(c: dict[str, Any], s: StrategySettings, n: int) -> Strategy:
    _byzantine("multikrum", n, s, 2 * s.num_malicious_sites + 3)
    select = s.multikrum_select or n - s.num_malicious_sites
    if not 1 <= select <= n:
        raise ConfigError(f"multikrum-select must be between 1 and the {n} sites, got {select}")
    return MultiKrum(**c, num_malicious_nodes=s.num_malicious_sites, num_nodes_to_select=select)


def _bulyan(c: dict[str, Any], s: StrategySettings, n: int) -> Strategy:
    _byzantine("bulyan", n, s, 4 * s.num_malicious_sites + 3)
    return Bulyan(**c, num_malicious_nodes=s.num_malicious_sites)


_BUILDERS: dict[str, Callable[[dict[str, Any], StrategySettings, int], Strategy]] = {
    "fedavg": lambda c, s, n: FedAvg(**c),
    "fedprox": lambda c, s, n: FedProx(**c, proximal_mu=s.proximal_mu),
    "fedadam": lambda c, s, n: FedAdam(
        **c, eta=s.server_lr or 0.1, beta_1=s.server_beta_1, beta_2=s.server_beta_2, tau=s.server_tau
    ),
    "fedyogi": lambda c, s, n: FedYogi(
        **c, eta=s.server_lr or 0.01, beta_1=s.server_beta_1, beta_2=s.server_beta_2, tau=s.server_tau
    ),
    "fedadagrad": lambda c, s, n: FedAdagrad(**c, eta=s.server_lr or 0.1, tau=s.server_tau),
    "fedavgm": lambda c, s, n: FedAvgM(
        **c, server_learning_rate=s.server_lr or 1.0, server_momentum=s.server_momentum
    ),
    "fedmedian": lambda c, s, n: FedMedian(**c),
    "fedtrimmedavg": lambda c, s, n: FedTrimmedAvg(**c, beta=s.trim_beta),
    "krum": _krum,
    "multikrum": _multikrum,
    "bulyan": _bulyan,
    "scaffold": lambda c, s, n: Scaffold(**c, num_sites=n, server_lr=s.server_lr or 1.0),
    "fedbn": lambda c, s, n: FedBN(**c),
}

STRATEGIES = tuple(_BUILDERS)
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


def build_strategy(
    name: str,
    *,
    num_sites: int,
    train_metrics: MetricsAggregation,
    evaluate_metrics: MetricsAggregation,
    weighted_by_key: str = "num-examples",
    settings: StrategySettings | None = None,
) -> Strategy:
    """Strategy `name` that trains and evaluates on all `num_sites` sites every round.

    Minimum node counts equal the number of sites, so no round starts on a partial federation.
    Updates are weighted by `weighted_by_key` (training samples; `site-weight` = 1 for equal weights)
    where the strategy weights at all (the median, trimmed-mean, Krum and Bulyan rules do not).
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
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
    return builder(common, settings or StrategySettings.from_config(RunConfig()), num_sites)
