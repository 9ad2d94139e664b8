"""Build the aggregation strategy a run asks for.

Flower's own classes where Flower has them (`flwr.serverapp.strategy`); SCAFFOLD and FedBN from this
package. Every strategy trains and evaluates on all sites each round, or on a sample of them drawn by
the coordinator (`fraction-train`, `fraction-evaluate`: `sample_size`).
"""

from __future__ import annotations

import math
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

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.strategies.fedbn import FedBN
from fedward.strategies.scaffold import Scaffold

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


# builder(Flower's common arguments, settings, sites that train each round)
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
    # c ← c + |S| / N · mean(Δc_i): N counts every site, sampled this round or not
    "scaffold": lambda c, s, n: Scaffold(
        **c, num_sites=c["min_available_nodes"], server_lr=s.server_lr or 1.0
    ),
    "fedbn": lambda c, s, n: FedBN(**c),
}

STRATEGIES = tuple(_BUILDERS)  # fedward's own; `register_strategy` may add more
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
StrategyBuilder = Callable[[dict[str, Any], StrategySettings, int], Strategy]


def register_strategy(name: str, builder: StrategyBuilder, *, replace: bool = False) -> None:
    """Add strategy `name`, built by `builder(Flower's common arguments, settings, sites per round)`;
    a name already taken is a ConfigError unless `replace`. A strategy that keeps site state registers
    its site half too (`common.algorithms.registry.register_site_hook`)."""
    if name in _BUILDERS and not replace:
        raise ConfigError(f"strategy {name!r} is already registered")
    _BUILDERS[name] = builder


def unregister_strategy(name: str) -> None:
    """Remove a strategy `register_strategy` added (fedward's own stay)."""
    if name not in STRATEGIES:
        _BUILDERS.pop(name, None)


def sample_size(fraction: float, num_sites: int) -> int:
    """Sites drawn per round for a sampling `fraction`: max(1, ceil(fraction × num_sites)).

    Rounded up, not down as Flower's `int(fraction × n)`: a fraction never asks for fewer sites than it
    names, and never for none. fraction 1 gives every site.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"a sampling fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * num_sites - 1e-9))


def build_strategy(
    name: str,
    *,
    num_sites: int,
    train_metrics: MetricsAggregation,
    evaluate_metrics: MetricsAggregation,
    weighted_by_key: str = "num-examples",
    settings: StrategySettings | None = None,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 1.0,
) -> Strategy:
    """Strategy `name` over `num_sites` sites: each round Flower draws `sample_size(fraction_train)`
    of them to train and `sample_size(fraction_evaluate)` to evaluate (all of them at fraction 1).

    The minimum node counts equal those sample sizes and every site must be connected, so no round
    starts on a partial federation. Updates are weighted by `weighted_by_key` (training samples;
    `site-weight` = 1 for equal weights) where the strategy weights at all (the median, trimmed-mean,
    Krum and Bulyan rules do not); the Byzantine rules' site counts are checked against the sample.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(_BUILDERS)}")
    train_nodes = sample_size(fraction_train, num_sites)
    common = {
        "fraction_train": fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": train_nodes,  # Flower samples max(int(f × n), this) = this
        "min_evaluate_nodes": sample_size(fraction_evaluate, num_sites),
        "min_available_nodes": num_sites,
        "weighted_by_key": weighted_by_key,
        "train_metrics_aggr_fn": train_metrics,
        "evaluate_metrics_aggr_fn": evaluate_metrics,
    }
    return builder(common, settings or StrategySettings.from_config(RunConfig()), train_nodes)
