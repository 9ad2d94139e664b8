"""The site's federated statistics release: bounded per-patient sums under the Gaussian mechanism.

Drawn once per data set (kept beside the ledger and re-sent at no new cost), charged to the site's
lifetime ledger and to the run's privacy history when drawn, exact only in a run without DP (which a site
with a policy refuses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedward.client.budget import SiteBudget
from fedward.client.releases import KeptReleases
from fedward.common.config import RunConfig
from fedward.common.dp_release import release_entry, release_sum
from fedward.common.privacy import compose_epsilon, resolve_delta
from fedward.common.tasks import SiteData, Task

RELEASE = "statistics"


@dataclass(frozen=True)
class StatisticsRelease:
    """What the site sends: the (noisy) sums, their mechanism, and whether this run paid for them."""

    sums: np.ndarray
    noise_multiplier: float
    bound: float
    drawn_now: bool

    @property
    def num_patients(self) -> int:
        """The (noisy) patient count of the first column, rounded, at least 1."""
        return max(1, round(float(self.sums[0])))

    def epsilon(self, delta: float, accountant: str) -> float:
        """ε of this release alone (0 for exact sums of a non-private run: nothing is claimed)."""
        if self.noise_multiplier <= 0:
            return float("inf")
        return compose_epsilon([release_entry(self.noise_multiplier)], delta, accountant)

    def record(self, delta: float, accountant: str) -> dict[str, float | list[float]]:
        """The reply's `statistics` record (every field listed in docs/privacy.md)."""
        return {
            "sums": self.sums.tolist(),
            "bound": self.bound,
            "noise-multiplier": self.noise_multiplier,
            "num-examples": self.num_patients,
            "epsilon": self.epsilon(delta, accountant),
            "drawn-now": int(self.drawn_now),
        }


def kept_count(budget: SiteBudget) -> int | None:
    """The noisy patient count of the statistics release kept for this data set, if one is kept."""
    found = KeptReleases(budget.releases_dir).get(budget.fingerprint, RELEASE)
    return None if found is None else max(1, round(float(found[0][0])))


def site_delta(config: RunConfig, budget: SiteBudget, num_train: int) -> float:
    """The δ the site composes under: its policy's, else the run's (or the default) for its size."""
    return budget.policy.delta if budget.policy else resolve_delta(config.dp_delta, num_train)


def release_statistics(
    config: RunConfig, task: Task, site: SiteData, budget: SiteBudget, run_id: str
) -> StatisticsRelease | str:
    """The site's statistics release, or the reason it refuses to make one."""
    contributions, bound = task.statistics(site)
    if not config.dp:
        if budget.policy is not None:
            return "the site policy requires differential privacy; the run asks for dp = false"
        return StatisticsRelease(release_sum(contributions, bound, 0.0), 0.0, bound, drawn_now=False)
    kept = KeptReleases(budget.releases_dir)
    found = kept.get(budget.fingerprint, RELEASE)
    if found is not None:
        sums, sigma, kept_bound = found
        if len(sums) == contributions.shape[1]:
            return StatisticsRelease(sums, sigma, kept_bound, drawn_now=False)
    sigma = task.statistics_sigma(config)
    delta = site_delta(config, budget, site.num_train)
    reason = budget.spend(config, [release_entry(sigma)], delta, run_id, RELEASE)
    if reason is not None:
        return reason
    seed = config.seed if config.dp_seeded_noise else None
    sums = release_sum(contributions, bound, sigma, seed=seed)
    kept.put(budget.fingerprint, RELEASE, sums, sigma, bound)
    return StatisticsRelease(sums, sigma, bound, drawn_now=True)
