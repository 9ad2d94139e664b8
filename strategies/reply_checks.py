"""What a site's reply may claim: its metrics, its weight in the average, its update norm.

Everything here is computed from what the server already knows (the site's statistics release, the run
config, the global model), never from the reply it checks. `validation.py` applies it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Message, MetricRecord

from fedward.common.algorithms.registry import site_hook
from fedward.common.config import RunConfig
from fedward.common.dp_release import release_entry
from fedward.common.errors import PrivacyError
from fedward.common.privacy import resolve_delta, resolve_noise_multiplier

INFINITE_OK = frozenset({"epsilon", "epsilon-lifetime", "epsilon-cap"})  # ε = ∞ without DP
NAN_OK = frozenset({"train-loss"})  # no loss when no batch was drawn
HIGH_PROBABILITY = 1e-6  # the DP bound may fail for an honest site with at most this probability
COUNT_SIGMAS = 4.0  # a noisy patient count is within this many noise σ of the true one


@dataclass(frozen=True)
class SiteLimits:
    """What the server accepts from one site: at most `max_examples` training and `max_test_examples`
    evaluation examples (0 = no cap), and an update of L2 norm at most `max_update_norm` (0 = none)."""

    max_examples: int = 0
    max_test_examples: int = 0
    max_update_norm: float = 0.0
    norm_source: str = "the DP-SGD bound of the site"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count_problem(key: str, value: object, cap: int, *, zero_ok: bool) -> str | None:
    """Why `value` is not a usable example count (a positive integer, at most `cap` when > 0)."""
    number = _number(value)
    if number is None:
        return f"{key!r} is {value!r}, expected a number"
    if not math.isfinite(number):
        return f"{key!r} is {number}, expected a finite count"
    if number < 0 or (number == 0 and not zero_ok):
        return f"{key!r} is {number:g}, expected a count > 0"
    if not number.is_integer():
        return f"{key!r} is {number:g}, expected an integer"
    if cap > 0 and number > cap:
        return f"{key!r} is {number:g}, more than the {cap} this site's statistics allow"
    return None


def _value_problem(key: str, value: object, *, nan_ok: bool) -> str | None:
    values = value if isinstance(value, list) else [value]
    for item in values:
        number = _number(item)
        if number is None:
            return f"{key!r} is {item!r}, expected a number"
        if math.isnan(number) and not nan_ok:
            return f"{key!r} is NaN"
        if math.isinf(number) and not (key in INFINITE_OK and number > 0):
            return f"{key!r} is {number}"
    return None


def _metrics(reply: Message) -> MetricRecord | str:
    records = reply.content.metric_records
    if set(records) != {"metrics"}:
        return f"MetricRecords {sorted(records)} in the reply, expected exactly ['metrics']"
    return records["metrics"]


def train_metrics_problem(
    reply: Message, limits: SiteLimits, weight_key: str, required: tuple[str, ...] = ()
) -> str | None:
    """Why a train reply's metrics are unusable, or None."""
    metrics = _metrics(reply)
    if isinstance(metrics, str):
        return metrics
    for key in dict.fromkeys(("num-examples", weight_key, *required)):
        if key not in metrics:
            return f"no {key!r} metric"
    reason = _count_problem("num-examples", metrics["num-examples"], limits.max_examples, zero_ok=False)
    if reason is None and weight_key != "num-examples":
        reason = _count_problem(weight_key, metrics[weight_key], 0, zero_ok=False)
    for key, value in metrics.items():
        reason = reason or _value_problem(key, value, nan_ok=key in NAN_OK)
    return reason


def evaluate_metrics_problem(reply: Message, limits: SiteLimits) -> str | None:
    """Why an evaluation reply's metrics are unusable, or None. NaN is a withheld or undefined value."""
    metrics = _metrics(reply)
    if isinstance(metrics, str):
        return metrics
    examples = metrics.get("num-examples")
    if examples is None:
        return "no 'num-examples' metric"
    withheld = isinstance(examples, float) and math.isnan(examples)
    reason = (
        None if withheld else _count_problem("num-examples", examples, limits.max_test_examples, zero_ok=True)
    )
    for key, value in metrics.items():
        reason = reason or _value_problem(key, value, nan_ok=True)
    return reason


def cap_shares(weights: list[float], max_share: float) -> list[float]:
    """The weights with the largest lowered so that none is more than `max_share` of their sum (the
    smallest such change: the k largest are set to one value c with c = share × sum). When no k works
    (share below 1/n) all weights become equal."""
    n = len(weights)
    if n == 0 or max_share >= 1.0:
        return list(weights)
    order = sorted(range(n), key=lambda i: weights[i], reverse=True)
    if weights[order[0]] <= max_share * sum(weights):
        return list(weights)
    for k in range(1, n):
        if max_share * k >= 1.0:
            break
        rest = sum(weights[i] for i in order[k:])
        cap = max_share * rest / (1.0 - max_share * k)
        if weights[order[k]] <= cap:
            return [cap if i in order[:k] else w for i, w in enumerate(weights)]
    return [float(min(weights))] * n


def dp_update_bound(
    *, lr: float, steps: int, clip: float, sigma: float, dim: int, expected_batch: float
) -> float:
    """A bound, holding with probability >= 1 - HIGH_PROBABILITY, on the L2 norm of `steps` DP-SGD steps.

    One Opacus step moves the weights by lr · (Σ_batch clipped gradients + N(0, σ²C² I_d)) / B, B the
    expected batch. The clipped sum has norm <= |batch| · C, and a Poisson batch has |batch| <= B +
    4√B + 4 (Chernoff, far beyond 1e-6 for any B); the noise has norm <= σC(√d + t) except with
    probability e^{-t²/2} (Gaussian concentration of the norm, a 1-Lipschitz function), t chosen so that
    all `steps` steps hold together. The update is at most the sum of its steps (triangle inequality).
    """
    b = max(expected_batch, 1.0)
    t = math.sqrt(2.0 * math.log(max(steps, 1) / HIGH_PROBABILITY))
    per_step = lr * clip * ((1.0 + 4.0 / math.sqrt(b) + 4.0 / b) + sigma * (math.sqrt(dim) + t) / b)
    return max(steps, 1) * per_step


def example_cap(count: float, tolerance: float) -> int:
    """Most examples a site may claim whose statistics release counted `count` patients."""
    return max(1, math.floor((1.0 + tolerance) * max(count, 1.0) + 1e-9))


def site_limits(
    config: RunConfig,
    *,
    count: float,
    count_noise_std: float,
    num_test: float,
    dim: int,
    release_sigma: float,
    sigma_margin: float = 2.0,
) -> SiteLimits:
    """A site's limits from its statistics release (noisy patient `count`, with noise σ
    `count_noise_std`, drawn at noise multiplier `release_sigma`), its data report (`num_test`) and the
    run config. The DP bound takes the largest
    noise multiplier the site can use: the run's σ, or `sigma_margin` × the σ a site of the smallest
    plausible size calibrates for the run's target ε (the margin covers a site policy's smaller δ,
    which raises σ only slowly). It applies to plain DP-SGD updates only (optimizer sgd,
    no SCAFFOLD correction, no FedBN local layers); other runs get 0 (no per-site bound)."""
    tolerance = config.examples_tolerance
    norm = 0.0
    if config.dp and config.optimizer == "sgd" and site_hook(config.strategy).plain_update:
        slack = COUNT_SIGMAS * count_noise_std
        most = max(count + slack, 1.0)  # the site's true patient count is at most this...
        least = max(count - slack, 1.0)  # ...and at least this
        steps = config.local_epochs * math.ceil(most / config.batch_size)
        sigma = largest_sigma(config, least, most, release_sigma, sigma_margin)
        expected = min(config.batch_size / 2.0, least)  # N / ceil(N / B) >= B / 2 when N >= B, else N
        norm = (
            0.0
            if sigma is None
            else dp_update_bound(
                lr=config.lr,
                steps=steps,
                clip=config.dp_max_grad_norm,
                sigma=sigma,
                dim=dim,
                expected_batch=expected,
            )
        )
    test_cap = example_cap(num_test, tolerance) if math.isfinite(num_test) and num_test > 0 else 0
    return SiteLimits(example_cap(count, tolerance), test_cap, norm)


def largest_sigma(
    config: RunConfig, least: float, most: float, release_sigma: float, margin: float
) -> float | None:
    """The largest DP-SGD noise multiplier a site with between `least` and `most` patients uses in this
    run (as `client/budget.py` plans it, after paying for its statistics release at noise multiplier
    `release_sigma`; 0: none), or None when the run's target cannot be met (sites refuse to train)."""
    if config.dp_noise_multiplier > 0:
        return config.dp_noise_multiplier
    per_epoch = math.ceil(least / config.batch_size)  # a smaller site samples more: it needs more noise
    try:
        sigma = resolve_noise_multiplier(
            config.privacy,
            delta=resolve_delta(config.dp_delta, math.ceil(most)),
            sample_rate=1.0 / per_epoch,
            planned_steps=config.num_server_rounds * config.local_epochs * per_epoch,
            spent=(release_entry(release_sigma),) if release_sigma > 0 else (),
        )
    except PrivacyError:
        return None
    return margin * sigma


def majority_keys(metrics: Mapping[int, frozenset[str]]) -> frozenset[str] | None:
    """The metric key set most replies share (ties: the smallest set), or None when there are none."""
    counts: dict[frozenset[str], int] = {}
    for keys in metrics.values():
        counts[keys] = counts.get(keys, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda keys: (counts[keys], -len(keys), sorted(keys)))
