"""DP-SGD settings and exact ε accounting over the steps a site actually took.

A thin layer over Opacus accountants: the site keeps the history of (noise multiplier, sampling
rate, steps) of every private step, and ε(δ) is always composed over the whole history. Composition
ignores the order of the steps, so a history is first grouped (equal (σ, q) merged, steps summed,
sorted) and each grouped history is composed once per process and δ: the budget check before a round,
the run and lifetime ε after it and σ's calibration share one PRV composition. (PRV's discretisation
depends on the total number of steps, so adding a round to an earlier result would not be exact.) PRV
runs on a domain rounds share (common/prv_composition.py): a round re-composes, it does not re-discretise.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from fedward.common.errors import PrivacyError

ACCOUNTANTS = ("prv", "rdp")


@dataclass(frozen=True)
class DPConfig:
    """How a site trains privately. `noise_multiplier > 0` wins over `target_epsilon`."""

    enabled: bool = True
    target_epsilon: float = 3.0
    noise_multiplier: float = 0.0
    delta: float = 0.0  # 0 -> 1 / (10 n)
    max_grad_norm: float = 1.0
    accountant: str = "prv"

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyError(f"dp-accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.enabled and self.noise_multiplier <= 0 and self.target_epsilon <= 0:
            raise PrivacyError("set dp-target-epsilon > 0 or dp-noise-multiplier > 0 (or dp = false)")
        if self.max_grad_norm <= 0:
            raise PrivacyError(f"dp-max-grad-norm must be > 0, got {self.max_grad_norm}")


def resolve_delta(requested: float, num_examples: int) -> float:
    """δ for a site with `num_examples` training patients: by default the largest power of ten at most
    1/(10 n); a requested δ must be below 1/n."""
    if num_examples < 1:
        raise PrivacyError("a site needs at least one training example to train privately")
    limit = 1.0 / num_examples
    if requested <= 0:  # a power of ten, so that δ (which leaves the site) does not give n away
        return 10.0 ** math.floor(math.log10(limit / 10) + 1e-9)
    if requested >= limit:
        raise PrivacyError(
            f"dp-delta {requested:g} is not below 1/n = {limit:.3g} for a site with n = {num_examples} "
            "training patients; choose dp-delta < 1/n (1/(10 n) or smaller is usual)"
        )
    return requested


Entry = tuple[float, float, int]  # (noise multiplier, sampling rate, steps), as in Opacus' history


def resolve_noise_multiplier(
    config: DPConfig,
    *,
    delta: float,
    sample_rate: float,
    planned_steps: int,
    spent: tuple[Entry, ...] = (),
) -> float:
    """σ given directly, or the smallest σ that keeps ε(δ) <= target over `planned_steps` composed
    after the run's earlier releases `spent` (the federated statistics)."""
    if config.noise_multiplier > 0:
        return config.noise_multiplier
    steps = max(1, planned_steps)
    if not spent:
        return _calibrate(config.target_epsilon, delta, sample_rate, steps, config.accountant)
    return _calibrate_after(config.target_epsilon, delta, sample_rate, steps, config.accountant, tuple(spent))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimiser steps in one epoch; private training takes exactly this many at rate 1 / steps."""
    return max(1, math.ceil(num_examples / batch_size))


@dataclass(frozen=True)
class Mechanism:
    """The DP-SGD mechanism a round runs, decided once (`plan_mechanism`) and passed down as is:
    σ, Poisson rate q, steps, δ."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float

    @property
    def entries(self) -> list[Entry]:
        """As accountant history entries."""
        return [(self.noise_multiplier, self.sample_rate, self.steps)]


def calibration_key(
    config: DPConfig, delta: float, sample_rate: float, planned_steps: int, spent: tuple[Entry, ...]
) -> str:
    """Hash of everything a calibrated σ depends on: target ε, δ, q, planned steps, accountant and
    the run's earlier releases."""
    inputs = {
        "target-epsilon": float(config.target_epsilon),
        "delta": float(delta),
        "sample-rate": float(sample_rate),
        "planned-steps": int(planned_steps),
        "accountant": config.accountant,
        "spent": [[float(s), float(q), int(n)] for s, q, n in spent],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def plan_mechanism(
    config: DPConfig,
    *,
    num_examples: int,
    batch_size: int,
    epochs: int,
    delta: float,
    planned_rounds: int = 1,
    spent: tuple[Entry, ...] = (),
    calibrated: MutableMapping[str, float] | None = None,
) -> Mechanism:
    """The one place σ and q are decided: Poisson rate 1 / (steps per epoch), `epochs` epochs of steps,
    σ given or calibrated (`resolve_noise_multiplier`) over `planned_rounds` such rounds after `spent`.

    `calibrated` ({`calibration_key`: σ}) reuses a σ calibrated earlier from the same inputs and is left
    holding the current inputs' σ only (unused when σ is given)."""
    per_epoch = steps_per_epoch(num_examples, batch_size)
    q = 1.0 / per_epoch
    planned = planned_rounds * epochs * per_epoch
    key = calibration_key(config, delta, q, planned, spent)
    known = calibrated.get(key) if calibrated is not None and config.noise_multiplier <= 0 else None
    if known is not None:
        sigma = float(known)
    else:
        sigma = resolve_noise_multiplier(
            config, delta=delta, sample_rate=q, planned_steps=planned, spent=spent
        )
        if calibrated is not None and config.noise_multiplier <= 0:
            calibrated.clear()
            calibrated[key] = sigma
    return Mechanism(sigma, q, epochs * per_epoch, delta)


@lru_cache(maxsize=64)
def _calibrate_after(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, spent: tuple[Entry, ...]
) -> float:
    """Bisection on σ with the accountant composing `spent` and the planned steps (as Opacus' own
    get_noise_multiplier does for a single mechanism, to within 0.01 in ε)."""
    before = compose_epsilon(list(spent), delta, accountant)
    if before >= epsilon:
        raise PrivacyError(
            f"the run's earlier releases already spend epsilon {before:.3g} of its target {epsilon:g}; "
            "raise dp-target-epsilon or dp-statistics-noise-multiplier"
        )

    def eps(sigma: float) -> float:
        return compose_epsilon([*spent, (sigma, sample_rate, steps)], delta, accountant)

    low, high = 0.0, 10.0
    while eps(high) > epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise PrivacyError(f"no noise multiplier reaches epsilon {epsilon:g} after the earlier releases")
    while eps(high) < epsilon - 0.01 and high - low > 1e-3:
        middle = (low + high) / 2
        if eps(middle) > epsilon:
            low = middle
        else:
            high = middle
    return high


@lru_cache(maxsize=256)
def _calibrate(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Binary search of Opacus (seconds with PRV), so cached: a site asks the same every round."""
    from opacus.accountants.utils import get_noise_multiplier  # Opacus loads in ~2.5 s: only when needed

    _memoise_step_rdp()
    with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha" advice
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )


@dataclass
class PrivacyHistory:
    """Every private step batch a site took: (noise multiplier, sampling rate, steps)."""

    entries: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Total number of private steps taken."""
        return sum(s for _, _, s in self.entries)

    def extend(self, entries: list[tuple[float, float, int]]) -> None:
        """Append an Opacus accountant's history (merges consecutive equal mechanisms)."""
        for sigma, q, steps in entries:
            if self.entries and self.entries[-1][:2] == (sigma, q):
                last = self.entries.pop()
                self.entries.append((sigma, q, last[2] + steps))
            else:
                self.entries.append((float(sigma), float(q), int(steps)))

    def epsilon(self, delta: float, accountant: str = "prv") -> float:
        """ε(δ) composed over the whole history with an Opacus accountant (0 when empty)."""
        return compose_epsilon(self.entries, delta, accountant)

    def to_config(self) -> dict[str, list[float] | list[int]]:
        """Lists for a Flower ConfigRecord kept in `context.state`."""
        return {
            "noise-multiplier": [e[0] for e in self.entries],
            "sample-rate": [e[1] for e in self.entries],
            "steps": [e[2] for e in self.entries],
        }

    @classmethod
    def from_config(cls, record) -> PrivacyHistory:
        """Inverse of `to_config`."""
        if record is None or "steps" not in record:
            return cls()
        return cls(
            [
                (float(s), float(q), int(n))
                for s, q, n in zip(
                    record["noise-multiplier"], record["sample-rate"], record["steps"], strict=True
                )
            ]
        )


def group_entries(entries: Iterable[tuple[float, float, int]]) -> tuple[Entry, ...]:
    """`entries` with equal (σ, q) merged (steps summed), in sorted order, without zero-step entries:
    the same composition for either accountant (tests/test_privacy.py), and a canonical cache key."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, n in entries:
        key = (float(sigma), float(q))
        steps[key] = steps.get(key, 0) + int(n)
    return tuple(sorted((sigma, q, n) for (sigma, q), n in steps.items() if n > 0))


def compose_epsilon(
    entries: Iterable[tuple[float, float, int]], delta: float, accountant: str = "prv"
) -> float:
    """ε(δ) of the composition of `entries` under an Opacus accountant (grouped, then cached)."""
    grouped = group_entries(entries)
    if not grouped:
        return 0.0
    return _compose(grouped, float(delta), accountant)


def composition_cache_info() -> tuple[int, int, int | None, int]:
    """(hits, misses, maxsize, size) of the composition cache; a miss is one accountant run."""
    return _compose.cache_info()


@lru_cache(maxsize=1024)
def _compose(entries: tuple[Entry, ...], delta: float, accountant: str) -> float:
    """One accountant run over grouped entries."""
    from opacus.accountants import create_accountant  # Opacus loads in ~2.5 s: only when needed

    _memoise_step_rdp()
    if accountant == "prv":  # Opacus' PRV on a domain later rounds share (common/prv_composition.py)
        from fedward.common.prv_composition import SharedDomainPRVAccountant

        acc = SharedDomainPRVAccountant()
    else:
        acc = create_accountant(mechanism=accountant)
    acc.history = list(entries)
    with warnings.catch_warnings():  # RDP's order advice; PRV's log(1 - q) = -inf at q = 1 (harmless)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta=delta))


def _memoise_step_rdp() -> None:
    """Make Opacus compute the RDP of a (q, σ) step once per process.

    Opacus' `compute_rdp(q, σ, steps, orders)` is the per-step RDP at every order (a Python loop over
    ~150 orders, 3/4 of a PRV composition: PRV sizes its domain with it) times `steps`. The per-step
    vector does not depend on the steps, so it is kept per (q, σ, orders) and multiplied by `steps`
    as Opacus does: bit for bit the same values (tests/test_privacy.py), and a later round's
    composition no longer recomputes them.
    """
    from opacus.accountants.analysis import rdp

    if getattr(rdp.compute_rdp, "memoised", False):
        return
    original = rdp.compute_rdp

    @lru_cache(maxsize=256)
    def per_step(q: float, noise_multiplier: float, orders: tuple[float, ...]) -> np.ndarray:
        return np.asarray(original(q=q, noise_multiplier=noise_multiplier, steps=1, orders=list(orders)))

    def compute_rdp(*, q: float, noise_multiplier: float, steps: int, orders):
        if isinstance(orders, float):
            return original(q=q, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
        return per_step(float(q), float(noise_multiplier), tuple(map(float, orders))) * steps

    compute_rdp.memoised = True  # type: ignore[attr-defined]
    compute_rdp.original = original  # type: ignore[attr-defined]  (benchmarks/round_costs.py's baseline)
    rdp.compute_rdp = compute_rdp
