"""Federated feature statistics: bounded per-patient contributions, summed at the site (with DP noise when
the run is private), pooled by the server into the imputation and scaling every site applies.

Each patient contributes one vector: [1, o_j, o_j·z_j, o_j·z_j²] over the features j, where o_j says the
value was observed and z_j = clip((x_j − c_j) / s_j, −W, W) / W ∈ [−1, 1] is the value against a public
clinical reference (centre c_j, scale s_j; never fitted to a site). Every coordinate lies in [−1, 1], so a
patient's vector has L2 norm at most √(1 + 3d): the sensitivity of the sums, whatever the data. The
server turns the pooled (noisy) sums into means and deviations, each shrunk towards the reference by as
much as the noise leaves uncertain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WINSOR = 3.0  # W: values further than W reference scales from the centre count as W
SCALE_RANGE = (0.5, 2.0)  # a pooled deviation stays within these multiples of the reference scale
PRIOR_SPREAD = 0.25  # τ: expected |federation mean − reference| in contribution units (0.75 reference scales)


@dataclass(frozen=True)
class Reference:
    """Public per-feature centre and scale the contributions are measured against."""

    center: np.ndarray
    scale: np.ndarray

    @property
    def bound(self) -> float:
        """L2 norm bound of one patient's contribution vector."""
        return float(np.sqrt(1 + 3 * len(self.center)))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-patient vectors (n, 1 + 3d) of a (n, d) array with NaN for missing values."""
        x = np.asarray(x, dtype=np.float64)
        observed = ~np.isnan(x)
        z = np.clip((np.where(observed, x, self.center) - self.center) / self.scale, -WINSOR, WINSOR) / WINSOR
        z = np.where(observed, z, 0.0)
        ones = np.ones((len(x), 1))
        return np.hstack([ones, observed.astype(np.float64), z, z**2])


@dataclass(frozen=True)
class Standardiser:
    """Imputation and scaling shared by all sites: missing -> mean, then (x - mean) / std."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def combine(
        cls, site_sums: Iterable[np.ndarray], reference: Reference, noise_std: float = 0.0
    ) -> Standardiser:
        """Pool the sites' summed contributions into a mean and deviation per feature.

        `noise_std` is the standard deviation of the noise on each pooled sum (0 for exact sums). Each
        estimate is shrunk towards the public reference by how much the noise leaves of it: with weight
        w = τ² / (τ² + se²), where se is the noise's standard error on the feature's mean and τ = PRIOR_SPREAD
        the spread expected between a federation's mean and the reference. Exact sums give w = 1.
        """
        sums = [np.asarray(s, dtype=np.float64) for s in site_sums]
        if not sums:
            raise ValueError("no site statistics to combine")
        pooled = np.sum(sums, axis=0)
        d = len(reference.center)
        count, total, total_sq = pooled[1 : 1 + d], pooled[1 + d : 1 + 2 * d], pooled[1 + 2 * d :]
        count = np.maximum(count, 1.0)
        mean_z = np.clip(total / count, -1.0, 1.0)
        var_z = np.maximum(total_sq / count - mean_z**2, 0.0)
        low, high = SCALE_RANGE
        ratio = np.clip(WINSOR * np.sqrt(var_z), low, high)  # deviation in reference scales
        standard_error = noise_std / count
        weight = PRIOR_SPREAD**2 / (PRIOR_SPREAD**2 + standard_error**2)
        mean = reference.center + WINSOR * reference.scale * weight * mean_z
        std = reference.scale * (1.0 + weight * (ratio - 1.0))
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
