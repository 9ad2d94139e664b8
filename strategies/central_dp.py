"""Central (site-level) DP: Flower's server-side fixed clipping with its RDP accountant.

Each site's whole update is clipped to `clipping_norm` and Gaussian noise of std
`noise_multiplier * clipping_norm / num_sites` is added to the average, so the released model is
(ε, δ)-DP with respect to adding or removing one *site*. Meaningful with many sites; with a handful of
hospitals the noise is as large as one site's update (see docs/privacy.md).
"""

from __future__ import annotations

from flwr.serverapp import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from common.errors import ConfigError


def with_central_dp(
    strategy: Strategy,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_sites: int,
    delta: float,
    max_epsilon: float | None = None,
) -> DifferentialPrivacyServerSideFixedClipping:
    """Wrap `strategy` (uniform site weights required) with accounted server-side fixed clipping."""
    try:
        from flwr.serverapp import RdpAccountant  # needs flwr[dp] (dp-accounting)
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigError("central-dp needs `pip install 'flwr[dp]'` (dp-accounting)") from exc
    if noise_multiplier <= 0:
        raise ConfigError(f"central-dp-noise-multiplier must be > 0, got {noise_multiplier}")
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=num_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=max_epsilon,
        )
    )
    try:
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier, clipping_norm, num_sites, accountant=accountant
        )
    except ValueError as exc:  # the accountant needs FedAvg's own (uniform mean) aggregation
        raise ConfigError(
            f"central-dp needs a strategy that aggregates by FedAvg's mean (fedavg, fedprox, fedbn), "
            f"not {type(strategy).__name__}: {exc}"
        ) from exc
