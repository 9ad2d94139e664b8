"""Opacus' PRV accountant on a domain that later rounds can share.

Opacus' `PRVAccountant` sizes its discretisation domain for the history it is given: the truncation bound
L from the RDP of the steps (Gopi et al. 2021, remark 5.6), the mesh from the total number of steps. Both
change with every round, so each round re-discretises every mechanism (an adaptive integral of the
truncated PRV's mean per mechanism: most of a composition), and the domain's length is whatever the bound
gives (often with a large prime factor: the FFT that composes the steps then takes several times longer
than at a nearby length).

`SharedDomainPRVAccountant` sizes the domain for each mechanism's steps rounded up to a power of two (64 at
least; a one-step release as it is), and lengthens it to the next length the FFT handles well. The
domain is then at least as wide (L from more steps) and at least as fine (the mesh of more steps) as the
one Opacus would choose, so Opacus' error bounds hold as they are (`eps_error` and `delta_error` for the
history actually composed) and the upper bound it returns stays an upper bound; it agrees with
`PRVAccountant` to well within `eps_error` (tests/test_prv_composition.py). Rounds whose step counts fall
in the same powers of two share one domain, so a mechanism is discretised once per doubling of its steps
(`_discretised`, cached) and a round costs only the FFT composition. The composition itself is Opacus'
(`compose_heterogeneous`, `DiscretePRV.compute_epsilon`); nothing here computes privacy loss.
"""

from __future__ import annotations

from functools import lru_cache

from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.prv import (
    DiscretePRV,
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)
from scipy.fft import next_fast_len

SMALLEST_SHARED_STEPS = 64
"""A run's first rounds share one domain: below 64 steps a doubling came every round or two (a CKD site
takes a few steps a round), and a domain for 64 steps still composes in milliseconds."""


def shared_steps(steps: int) -> int:
    """The step count a mechanism's domain is sized for: `steps` rounded up to a power of two, at least
    `SMALLEST_SHARED_STEPS` — except a one-off release (one step), sized as it is: it does not grow round
    by round, and sizing a statistics release (q = 1) for 64 compositions of itself widened a CKD run's
    domain from 46,784 to 90,000 points (twice the FFT work every round for nothing)."""
    if int(steps) == 1:
        return 1
    return max(SMALLEST_SHARED_STEPS, 1 << max(0, int(steps) - 1).bit_length())


class SharedDomainPRVAccountant(PRVAccountant):
    """`PRVAccountant` whose domain is sized for `shared_steps` of each mechanism and has an FFT-friendly
    length; discretised mechanisms are reused across compositions on the same domain."""

    def _get_domain(self, prvs, num_self_compositions, eps_error, delta_error) -> Domain:
        opacus_domain = super()._get_domain(
            prvs=prvs,
            num_self_compositions=[shared_steps(n) for n in num_self_compositions],
            eps_error=eps_error,
            delta_error=delta_error,
        )
        size = next_fast_len(opacus_domain.size, real=True)
        while size % 2:  # Opacus composes evenly sized PRVs only
            size = next_fast_len(size + 1, real=True)
        widen = (size - opacus_domain.size) // 2 * opacus_domain.dt  # both ends: its FFT composition
        return Domain(opacus_domain.t_min - widen, opacus_domain.t_max + widen, size)  # keeps 0 centred

    def _get_dprv(self, eps_error, delta_error) -> DiscretePRV:
        """As Opacus' own, with each mechanism's discretisation cached per domain."""
        counts = [steps for _, _, steps in self.history]
        domain = self._get_domain(
            prvs=[PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in self.history],
            num_self_compositions=counts,
            eps_error=eps_error,
            delta_error=delta_error,
        )
        dprvs = [
            _discretised(float(q), float(sigma), domain.t_min, domain.t_max, domain.size)
            for sigma, q, _ in self.history
        ]
        return compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)

    @classmethod
    def mechanism(cls) -> str:
        return "prv"


def discretisation_cache_info() -> tuple[int, int, int | None, int]:
    """(hits, misses, maxsize, size) of the per-domain discretisations; a miss is one discretisation."""
    return _discretised.cache_info()


@lru_cache(maxsize=32)  # a site's few mechanisms on the current domain (each ≤ ~2 MB)
def _discretised(sample_rate: float, sigma: float, t_min: float, t_max: float, size: int) -> DiscretePRV:
    """A Poisson-subsampled Gaussian mechanism truncated to and discretised on the domain (Opacus')."""
    truncated = TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(sample_rate, sigma), t_min, t_max)
    return discretize(truncated, Domain(t_min, t_max, size))
