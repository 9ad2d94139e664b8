"""Federated feature statistics: each site sends counts, sums and sums of squares, never rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureMoments:
    """Per-feature count of observed values, their sum and sum of squares (missing values skipped)."""

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> FeatureMoments:
        """Moments of a (n, d) array with NaN for missing values."""
        x = np.asarray(x, dtype=np.float64)
        observed = ~np.isnan(x)
        filled = np.where(observed, x, 0.0)
        return cls(observed.sum(axis=0).astype(np.float64), filled.sum(axis=0), (filled**2).sum(axis=0))

    def __add__(self, other: FeatureMoments) -> FeatureMoments:
        return FeatureMoments(
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq
        )

    def to_lists(self) -> dict[str, list[float]]:
        """Plain lists, for a Flower MetricRecord."""
        return {"count": self.count.tolist(), "sum": self.total.tolist(), "sum-sq": self.total_sq.tolist()}

    @classmethod
    def from_lists(cls, record: dict) -> FeatureMoments:
        """Inverse of `to_lists`."""
        return cls(*(np.asarray(record[k], dtype=np.float64) for k in ("count", "sum", "sum-sq")))


@dataclass(frozen=True)
class Standardiser:
    """Imputation and scaling shared by all sites: missing -> mean, then (x - mean) / std."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def combine(cls, site_moments: Iterable[FeatureMoments]) -> Standardiser:
        """Pool the sites' moments into population mean and standard deviation per feature."""
        moments = list(site_moments)
        if not moments:
            raise ValueError("no site statistics to combine")
        pooled = moments[0]
        for m in moments[1:]:
            pooled = pooled + m
        count = np.maximum(pooled.count, 1.0)
        mean = pooled.total / count
        var = np.maximum(pooled.total_sq / count - mean**2, 0.0)
        std = np.sqrt(var)
        std = np.where(std > 1e-8, std, 1.0)
        mean = np.where(pooled.count > 0, mean, 0.0)
        return cls(mean, std)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Impute and scale a (n, d) array; returns float32."""
        filled = np.where(np.isnan(x), self.mean, x)
        return ((filled - self.mean) / self.std).astype(np.float32)

    def to_config(self) -> dict[str, list[float]]:
        """Plain lists, for a Flower ConfigRecord."""
        return {"feature-mean": self.mean.tolist(), "feature-std": self.std.tolist()}

    @classmethod
    def from_config(cls, config) -> Standardiser:
        """Inverse of `to_config`."""
        return cls(
            np.asarray(config["feature-mean"], dtype=np.float64),
            np.asarray(config["feature-std"], dtype=np.float64),
        )
