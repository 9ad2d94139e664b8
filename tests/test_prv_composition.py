"""PRV composition on a domain rounds share: Opacus' bound, never a coarser or narrower domain than Opacus
would choose, and a round re-composes without re-discretising."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV
from scipy.fft import next_fast_len

from fedward.common.privacy import compose_epsilon
from fedward.common.prv_composition import (
    SharedDomainPRVAccountant,
    discretisation_cache_info,
    shared_steps,
)

RELEASE = (6.0, 1.0, 1)  # the statistics release every private run starts with
HISTORIES = [[RELEASE, (2.5, 0.25, 4 * rounds)] for rounds in (1, 3, 10, 17)] + [
    [(0.8, 0.1, 130)],
    [(2.0, 0.02, 1000)],
    [RELEASE, (1.1, 0.25, 16), (2.0, 0.25, 4)],
]

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # Opacus' PRV at q = 1


def _domains(history):
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    steps = [n for *_, n in history]
    ours = SharedDomainPRVAccountant()._get_domain(prvs, steps, 0.01, 1e-8)
    opacus = PRVAccountant()._get_domain(prvs, steps, 0.01, 1e-8)
    return ours, opacus


@pytest.mark.parametrize("history", HISTORIES, ids=str)
def test_the_domain_is_at_least_as_wide_and_fine_as_opacus_and_fft_friendly(history) -> None:
    ours, opacus = _domains(history)
    assert ours.t_min <= opacus.t_min and ours.t_max >= opacus.t_max
    assert ours.dt <= opacus.dt * (1 + 1e-9)
    assert ours.t_min == pytest.approx(-ours.t_max, abs=2 * ours.dt)  # 0 centred: Opacus' FFT roll needs it
    assert ours.size % 2 == 0 and next_fast_len(ours.size, real=True) == ours.size


@pytest.mark.parametrize("delta", [1e-3, 1e-5])
def test_epsilon_is_opacus_bound_far_inside_its_error(delta: float) -> None:
    for history in HISTORIES:
        reference = PRVAccountant()
        reference.history = list(history)
        assert compose_epsilon(history, delta, "prv") == pytest.approx(reference.get_epsilon(delta), abs=1e-4)


def test_rounds_within_a_power_of_two_and_a_runs_first_rounds_recompose_without_rediscretising() -> None:
    steps = (1, 2, 4, 64, 65, 128, 129, 1000)
    assert [shared_steps(n) for n in steps] == [1, 64, 64, 64, 128, 128, 256, 1024]
    sigma = 2.345678  # a mechanism no other test composes
    compose_epsilon([RELEASE, (sigma, 0.25, 4)], 1e-3, "prv")  # round 1 of 4 steps: sized for 64
    before = discretisation_cache_info()
    epsilons = [compose_epsilon([RELEASE, (sigma, 0.25, n)], 1e-3, "prv") for n in (8, 12, 36, 64)]
    after = discretisation_cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2 * 4  # two mechanisms, 4 rounds
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 4  # each round composed anew
    compose_epsilon([RELEASE, (sigma, 0.25, 68)], 1e-3, "prv")  # 68 > 64: a new domain
    assert discretisation_cache_info().misses == after.misses + 2


def test_a_one_off_release_does_not_widen_the_domain_of_the_rounds() -> None:
    """A statistics release (one step at q = 1) is sized as one step: the domain of a run's first rounds
    is the one their DP-SGD steps alone would get, not one sized for 64 releases."""
    prvs = [PoissonSubsampledGaussianPRV(q, s) for s, q, _ in (RELEASE, (2.5, 0.25, 4))]
    sized = SharedDomainPRVAccountant()._get_domain(prvs, [1, 4], 0.01, 1e-6)
    as_64_releases = PRVAccountant()._get_domain(prvs, [64, 64], 0.01, 1e-6)
    assert sized.size < 0.75 * as_64_releases.size
