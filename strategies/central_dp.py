"""Central (site-level) DP: Flower's accounted server-side clipping, secret noise, adaptive clipping.

Each site's whole update is clipped to a norm C and Gaussian noise is added to the uniform mean, so the
released model is (ε, δ)-DP with respect to adding or removing one *site*. One class does both clipping
modes on top of Flower's `DifferentialPrivacyServerSideFixedClipping`, which already accounts every
release with Flower's `RdpAccountant` and refuses a round whose release would pass `max_epsilon`:

- **fixed**: C = `clipping_norm` throughout; update noise z·C/N.
- **adaptive** (Andrew et al. 2021, arXiv:1905.03871): C follows the `TARGET_QUANTILE` of the update
  norms by a geometric step on a noised count of unclipped updates. Flower's
  `compute_adaptive_noise_params` splits the user's z into the update noise z_Δ and the count noise σ_b
  so that z⁻² = z_Δ⁻² + (2σ_b)⁻²: by the paper's Theorem 1 a round is then one Gaussian release at z,
  which is what the accountant composes. Flower's own adaptive wrapper is not used: it has no
  accountant, moves C the wrong way (it feeds the *clipped* fraction into the paper's update, so an
  all-clipped round shrinks C), noises the mean with the already-updated C, and refuses z ≥ N/10.

All noise comes from a generator seeded from `secrets` per release, never from numpy's global generator
(Flower's `add_gaussian_noise_inplace` uses it, and a run seed or checkpoint would replay it); nothing
of it is kept on the strategy, so nothing of it reaches checkpoint.pt.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy
from flwr.supercore.differential_privacy import compute_adaptive_noise_params, compute_stdv, get_norm
from flwr.supercore.privacy_accounting import PrivacyAccountant

from fedward.common.errors import ConfigError

Clipping = Literal["adaptive", "fixed"]
TARGET_QUANTILE = 0.5  # adaptive C tracks the median update norm (Andrew et al.'s γ)
CLIP_NORM_LR = 0.2  # geometric step of C per round (Andrew et al.'s η_C)


def secret_generator() -> np.random.Generator:
    """A fresh generator seeded with 128 bits of OS entropy: nothing about it is in a seed or file."""
    return np.random.default_rng(secrets.randbits(128))


def count_noise_stddev(noise_multiplier: float, num_sites: int) -> float:
    """σ_b of the clipped count: Andrew et al.'s N/20, raised to z for few sites so that z_Δ ≤ 1.16·z."""
    return max(num_sites / 20, noise_multiplier)


class CentralDP(DifferentialPrivacyServerSideFixedClipping):
    """Server-side clipping (fixed or adaptive) with accounted, secret Gaussian noise on the mean."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        num_sites: int,
        accountant: PrivacyAccountant,
        clipping: Clipping = "adaptive",
    ) -> None:
        # `noise_multiplier` (z) is what the accountant composes per release, in both modes
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sites, accountant=accountant)
        self.adaptive = clipping == "adaptive"
        self.count_stddev = 0.0
        self.update_noise_multiplier = noise_multiplier
        if self.adaptive:
            self.count_stddev, self.update_noise_multiplier = compute_adaptive_noise_params(
                noise_multiplier, num_sites, count_noise_stddev(noise_multiplier, num_sites)
            )

    def __repr__(self) -> str:
        """Name the mode in Flower's logs."""
        return f"Central DP (server-side {'adaptive' if self.adaptive else 'fixed'} clipping, secret noise)"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's configure step; a release that would pass the ε cap stops the run before training."""
        try:
            return super().configure_train(server_round, arrays, config, grid)
        except PrivacyBudgetExhausted as exc:
            spent = self.accountant.get_privacy_spent()
            cap = self.accountant.config.max_epsilon
            raise PrivacyBudgetExhausted(
                f"central-dp-max-epsilon = {cap:g}: releasing round {server_round} would pass it (site-level "
                f"ε {spent.epsilon:.3f} at δ {spent.delta:g} after {spent.num_releases} releases); the last "
                f"model released within the cap is kept"
            ) from exc

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, average, add noise (Flower); then, adaptive, move C by the noised unclipped count."""
        replies = list(replies)
        unclipped = self._count_unclipped(replies) if self.adaptive else 0
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.adaptive and arrays is not None:  # only a release (accounted) may move C
            self._update_clipping_norm(unclipped)
        return arrays, metrics

    def _count_unclipped(self, replies: list[Message]) -> int:
        """Replies whose update norm is within the current C (read before Flower clips them in place)."""
        current = self.current_arrays.to_numpy_ndarrays()
        count = 0
        for reply in replies:
            if reply.has_error():
                continue
            for record in reply.content.array_records.values():
                update = [np.subtract(x, y) for x, y in zip(record.to_numpy_ndarrays(), current, strict=True)]
                count += int(get_norm(update) <= self.clipping_norm)
        return count

    def _update_clipping_norm(self, unclipped: int) -> None:
        """Andrew et al.'s step: b̃ = (Σ(b_i − ½) + N(0, σ_b²))/N + ½, C ← C·exp(−η(b̃ − γ)).

        Centring the count at ½ makes its sensitivity ½, which the z split above assumes; N is public."""
        n = self.num_sampled_clients
        noisy = (unclipped - n / 2 + secret_generator().normal(0.0, self.count_stddev)) / n + 0.5
        self.clipping_norm *= math.exp(-CLIP_NORM_LR * (noisy - TARGET_QUANTILE))

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Gaussian noise of std z_Δ·C/N on the mean, from a secret generator (not numpy's global one)."""
        std = compute_stdv(self.update_noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        rng = secret_generator()
        return ArrayRecord(
            {
                key: Array(np.asarray(a + rng.normal(0.0, std, a.shape).astype(a.dtype)))
                for key, a in zip(
                    aggregated_arrays.keys(), aggregated_arrays.to_numpy_ndarrays(), strict=True
                )
            }
        )


def with_central_dp(
    strategy: Strategy,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_sites: int,
    delta: float,
    max_epsilon: float | None = None,
    clipping: Clipping = "adaptive",
) -> CentralDP:
    """Wrap `strategy` (uniform site weights required) with accounted central DP.

    `clipping_norm` is the fixed norm, or the initial one when adaptive; `max_epsilon` None (or 0)
    means no cap; `delta` must be below 1/`num_sites`."""
    try:
        from flwr.serverapp import RdpAccountant  # needs flwr[dp] (dp-accounting)
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigError("central-dp needs `pip install 'flwr[dp]'` (dp-accounting)") from exc
    if noise_multiplier <= 0:
        raise ConfigError(f"central-dp-noise-multiplier must be > 0, got {noise_multiplier}")
    if not 0 < delta < 1 / num_sites:
        raise ConfigError(
            f"central-dp-delta must be in (0, 1/number of sites) = (0, {1 / num_sites:.3g}) with "
            f"{num_sites} sites, got {delta:g}: δ ≥ 1/N allows leaking a whole site"
        )
    if clipping not in ("adaptive", "fixed"):
        raise ConfigError(f'central-dp-clipping must be "adaptive" or "fixed", got {clipping!r}')
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=num_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=max_epsilon or None,
        )
    )
    try:
        return CentralDP(
            strategy,
            noise_multiplier=noise_multiplier,
            clipping_norm=clipping_norm,
            num_sites=num_sites,
            accountant=accountant,
            clipping=clipping,
        )
    except ValueError as exc:  # the accountant needs FedAvg's own (uniform mean) aggregation
        raise ConfigError(
            f"central-dp needs a strategy that aggregates by FedAvg's mean (fedavg, fedprox, fedbn), "
            f"not {type(strategy).__name__}: {exc}"
        ) from exc
