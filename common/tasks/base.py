"""The task interface: all that differs between the CKD and tumour models sits behind it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedward.common.config import RunConfig

if TYPE_CHECKING:
    from flwr.app import ArrayRecord


@dataclass(frozen=True)
class InputRun:
    """A finished earlier run a task builds on (its `input_runs`), as the coordinator read it from the
    run folder: where it is, its run config and its final model's weights."""

    folder: Path
    run_config: Mapping[str, Any]
    weights: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class RunInputs:
    """What the coordinator adds to every train and evaluate message of a run (e.g. a frozen model the
    sites apply to their inputs): `records` by name, and the finished run folders they come from (by
    run-config key), whose signed provenance the coordinator verifies first. Sites never send them back."""

    records: Mapping[str, ArrayRecord] = field(default_factory=dict)
    runs: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteSource:
    """Where a site's data lives: a folder of its own, or a partition of shipped data (simulation)."""

    site_id: str
    data_dir: Path | None = None
    partition_index: int = 0
    num_partitions: int = 1


@dataclass
class SiteData:
    """A site's validated data, split by patient into train and held-out test parts.

    `train` and `test` are task-specific raw containers; `report` lists what was read and what was
    skipped or blanked, with counts only (it may leave the site).
    """

    site_id: str
    train: Any
    test: Any
    num_train: int
    num_test: int
    report: dict[str, float] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)  # per-file/per-cell reasons; stay at the site
    files: list[Path] = field(default_factory=list)  # the data files read (for the data-set fingerprint)
    # one hex SHA-256 per patient (train and test), from content as loaded (common/data/patient_keys.py);
    # the privacy ledger is keyed on these
    patient_keys: list[str] = field(default_factory=list)


class Task(ABC):
    """One learning problem: data, model, loss, metrics. Client and server only see this."""

    name: str
    # Opacus' per-sample gradient mode for this task's models under DP-SGD: "hooks" (Opacus' per-layer
    # grad samplers), "functorch" (vmap over each layer; faster for 3D convolutions, BENCHMARKS.md) or "ew"
    # (PyTorch's expanded weights; faster for small linear models)
    grad_sample_mode: str = "hooks"
    # σ of the statistics release when the run does not set `dp-statistics-noise-multiplier`. The default
    # release is the patient count alone, the site's FedAvg weight: σ 15 costs ε 0.13 where 6 costs 0.38
    # (δ 10⁻³) and lifts MRI models at ε = 1 (BENCHMARKS.md "The statistics release of MRI sites"). A task
    # whose sums preprocess the inputs (CKD) sets its own.
    statistics_noise_multiplier: float = 15.0
    statistics_bound: float = 1.0  # L2 bound of one patient's `statistics` vector (the count alone: 1)

    @abstractmethod
    def load_site(self, source: SiteSource, config: RunConfig) -> SiteData:
        """Load, validate and split a site's data."""

    def statistics(self, site: SiteData) -> tuple[np.ndarray, float]:
        """Per-patient contribution vectors (one row per training patient) whose sums the server needs
        before training, and their L2 bound (the sensitivity of the sums). The first column counts
        patients; by default it is the only one."""
        return np.ones((site.num_train, 1)), self.statistics_bound

    def statistics_sigma(self, config: RunConfig) -> float:
        """σ of this run's statistics release: the run's `dp-statistics-noise-multiplier`, else the task's."""
        return config.dp_statistics_noise_multiplier or self.statistics_noise_multiplier

    def statistics_noise_std(self, config: RunConfig) -> float:
        """Standard deviation of the noise on each sum of this run's statistics release."""
        return self.statistics_sigma(config) * self.statistics_bound

    def combine_statistics(
        self, per_site: list[np.ndarray], noise_std: float = 0.0
    ) -> dict[str, list[float]]:
        """Server side: turn the sites' (noisy) sums into the preprocessing every site applies."""
        return {}

    input_runs: Mapping[str, str] = {}

    def run_inputs(self, config: RunConfig, runs: Mapping[str, InputRun]) -> RunInputs:
        """Coordinator side, once per run, given the `input_runs` as read (server/run_inputs.py): the
        records sent with every train and evaluate message (none by default); ConfigError naming the
        run-config key when they cannot be prepared."""
        return RunInputs()

    def receive(self, content: Mapping[str, Any]) -> None:
        """Site side, before `datasets`: a train or evaluate message's records (`run_inputs`' names)."""
        return None  # a task without run inputs needs nothing from the message

    @abstractmethod
    def datasets(self, site: SiteData, shared: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
        """Model-ready train and test datasets, given the server's shared preprocessing."""

    @abstractmethod
    def build_model(self, config: RunConfig) -> nn.Module:
        """A freshly initialised model."""

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss (mean over the batch)."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, test: Dataset, device: torch.device, *, intervals: bool = False
    ) -> dict[str, float]:
        """Metrics of `model` on a site's held-out data; must include `num-examples`. `intervals` adds
        95 % confidence intervals (`<metric>-ci-low` / `-ci-high`), computed at the site."""

    @abstractmethod
    def pool(self, per_site: list[dict[str, float]]) -> dict[str, float]:
        """Overall metrics from per-site evaluations."""
