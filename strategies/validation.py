"""Check every site's reply before any aggregation; drop the bad ones, aggregate the rest.

A train reply is rejected when its model record is missing, has other keys, shapes or dtypes than the
global model, holds a NaN or infinity (in any of its ArrayRecords), its metrics fail `metrics.py`'s
checks (record present, `num-examples` a positive integer within the site's limit, values finite), or
its update w - w_global has an L2 norm above the absolute bound (`max_update_norm`, the site's own
bound in its `SiteLimits`, or `norm_factor` × the median norm of the first round) or, with three or more
updates, above `norm_factor` × the round's median. The kept updates' weights are capped so that no site
has more than `max_site_share` of the average. Evaluation replies are checked likewise. Built like
`observed.py`: a wrapper that delegates every step, so it fits any strategy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedward.common.transfer import decode_reply
from fedward.strategies.reply_checks import (
    SiteLimits,
    cap_shares,
    evaluate_metrics_problem,
    majority_keys,
    train_metrics_problem,
)

log = logging.getLogger("fedward.server")


@dataclass(frozen=True)
class Rejection:
    """One excluded update: the node that sent it and why."""

    node_id: int
    reason: str


RejectionObserver = Callable[[int, list[Rejection]], None]
LimitsOf = Callable[[int], SiteLimits | None]  # node id -> the site's limits (None: not a site of the run)


@dataclass(frozen=True)
class Reference:
    """The global model an update is checked against: values of this round, keys/shapes/dtypes of the
    model (first round; aggregation may widen integer buffers to floats later)."""

    values: Mapping[str, np.ndarray]
    dtypes: Mapping[str, np.dtype]

    def structure_error(self, arrays: Mapping[str, np.ndarray]) -> str | None:
        """Why `arrays` do not match the model, or None."""
        missing = sorted(set(self.values) - set(arrays))
        extra = sorted(set(arrays) - set(self.values))
        problems = [
            f"{what} keys {_few(keys)}"
            for what, keys in (("missing", missing), ("unexpected", extra))
            if keys
        ]
        if problems:
            return "; ".join(problems)
        for key, value in self.values.items():
            got = arrays[key]
            if got.shape != value.shape:
                return f"shape of {key!r} is {tuple(got.shape)}, expected {tuple(value.shape)}"
            if got.dtype != self.dtypes[key]:
                return f"dtype of {key!r} is {got.dtype}, expected {self.dtypes[key]}"
        return None

    def update_norm(self, arrays: Mapping[str, np.ndarray]) -> float:
        """L2 norm of arrays - global over the floating-point entries."""
        total = 0.0
        for key, value in self.values.items():
            if np.issubdtype(self.dtypes[key], np.floating):
                diff = arrays[key].astype(np.float64) - value.astype(np.float64)
                total += float(np.dot(diff.ravel(), diff.ravel()))
        return float(np.sqrt(total))


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)})"


def _non_finite(arrays: Mapping[str, np.ndarray]) -> str | None:
    for key, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return key
    return None


def non_finite_entry(arrays: ArrayRecord) -> str | None:
    """The first floating-point entry of `arrays` holding a NaN or infinity, or None."""
    return _non_finite({k: a.numpy() for k, a in arrays.items()})


def _check(reply: Message, reference: Reference, key: str) -> tuple[str | None, dict[str, np.ndarray]]:
    """(why the reply is unusable or None, its model arrays)."""
    record = reply.content.get(key)
    if not isinstance(record, ArrayRecord):
        return f"no {key!r} ArrayRecord in the reply", {}
    arrays = {k: a.numpy() for k, a in record.items()}
    reason = reference.structure_error(arrays)
    if reason is not None:
        return reason, arrays
    for name, other in reply.content.array_records.items():
        values = arrays if name == key else {k: a.numpy() for k, a in other.items()}
        bad = _non_finite(values)
        if bad is not None:
            return f"non-finite values in {bad!r}{'' if name == key else f' of {name!r}'}", arrays
    return None, arrays


@dataclass
class Screening:
    """One round's train replies split: those to aggregate (errors pass through), the rejections, and the
    update norms of the kept ones."""

    kept: list[Message]
    rejections: list[Rejection]
    norms: list[float]


def screen_updates(
    replies: list[Message],
    reference: Reference,
    *,
    arrayrecord_key: str = "arrays",
    max_update_norm: float = 0.0,
    norm_factor: float = 0.0,
    limits: LimitsOf | None = None,
    weight_key: str = "num-examples",
    required_metrics: tuple[str, ...] = (),
) -> Screening:
    """Check each train reply's arrays, metrics and update norm (see the module docstring)."""
    rejections: list[Rejection] = []
    norms: dict[int, float] = {}  # index in replies -> update norm, for the updates still in
    for i, reply in enumerate(replies):
        if reply.has_error():
            continue
        node = reply.metadata.src_node_id
        site = limits(node) if limits is not None else SiteLimits()
        reason, arrays = _check(reply, reference, arrayrecord_key)
        if site is None:
            reason = "the node took no part in this run's statistics step"
        reason = reason or train_metrics_problem(reply, site or SiteLimits(), weight_key, required_metrics)
        if reason is None:
            norm = reference.update_norm(arrays)
            bound, what = _absolute_bound(max_update_norm, site)
            if bound > 0 and norm > bound:
                reason = f"update norm {norm:.4g} > {what} {bound:.4g}"
            else:
                norms[i] = norm
        if reason is not None:
            rejections.append(Rejection(node, reason))
    if norm_factor > 0 and len(norms) >= 3:  # the median of two norms is their mean: never rejects
        median = float(np.median(list(norms.values())))
        for i, norm in list(norms.items()):
            if median > 0 and norm > norm_factor * median:
                reason = f"update norm {norm:.4g} > {norm_factor:g} x round median {median:.4g}"
                rejections.append(Rejection(replies[i].metadata.src_node_id, reason))
                del norms[i]
    _reject_odd_metric_keys(replies, norms, rejections)
    kept = [r for i, r in enumerate(replies) if r.has_error() or i in norms]
    return Screening(kept, rejections, list(norms.values()))


def _absolute_bound(configured: float, site: SiteLimits | None) -> tuple[float, str]:
    """The tighter of the configured bound and the site's own (0 = none), and its name."""
    bounds = [(configured, "max-update-norm")] if configured > 0 else []
    if site is not None and site.max_update_norm > 0:
        bounds.append((site.max_update_norm, site.norm_source))
    return min(bounds) if bounds else (0.0, "")


def _reject_odd_metric_keys(
    replies: list[Message], kept: dict[int, float] | set[int], out: list[Rejection]
) -> None:
    """Flower aggregates only replies whose metrics have the same keys: reject those unlike the most."""
    keys = {i: frozenset(replies[i].content["metrics"].keys()) for i in kept}
    common = majority_keys(keys)
    for i, own in keys.items():
        if own != common:
            odd = sorted(own ^ common) if common is not None else []
            out.append(
                Rejection(
                    replies[i].metadata.src_node_id,
                    f"metric keys differ from the other sites' in {_few(odd)}",
                )
            )
            if isinstance(kept, dict):
                del kept[i]
            else:
                kept.discard(i)


def screen_evaluations(
    replies: list[Message], limits: LimitsOf | None = None
) -> tuple[list[Message], list[Rejection]]:
    """Split evaluation replies into those to pool (errors pass through) and rejections. A site whose
    held-out split is empty (`num-examples` 0, usually its only metric) is set aside quietly: it is no
    rejection, and the pool would skip it anyway."""
    rejections: list[Rejection] = []
    good: set[int] = set()
    for i, reply in enumerate(replies):
        if reply.has_error():
            continue
        node = reply.metadata.src_node_id
        site = limits(node) if limits is not None else SiteLimits()
        reason = "the node took no part in this run's statistics step" if site is None else None
        reason = reason or evaluate_metrics_problem(reply, site or SiteLimits())
        if reason is not None:
            rejections.append(Rejection(node, reason))
        elif reply.content["metrics"]["num-examples"] != 0:  # checked above: a count, or NaN (withheld)
            good.add(i)
    _reject_odd_metric_keys(replies, good, rejections)
    return [r for i, r in enumerate(replies) if r.has_error() or i in good], rejections


def cap_weights(replies: list[Message], weight_key: str, max_share: float) -> None:
    """Lower the weights of the replies to be aggregated so that no site exceeds `max_share` of the
    average (in place: the one place the weights the aggregation sees are set)."""
    ok = [r for r in replies if not r.has_error()]
    weights = [float(r.content["metrics"][weight_key]) for r in ok]
    for reply, before, after in zip(ok, weights, cap_shares(weights, max_share), strict=True):
        if after != before:
            reply.content["metrics"][weight_key] = after


def _in_model_dtypes(arrays: ArrayRecord, dtypes: Mapping[str, np.dtype]) -> ArrayRecord:
    """The aggregate with every floating-point entry in the model's own dtype: server optimisers
    (FedAdam, FedYogi, FedAdagrad) compute in float64, but the global model — what sites load, what a
    secure-aggregation round adds the masked sum to, what is exported — stays in the model's dtypes."""
    values = {key: array.numpy() for key, array in arrays.items()}
    changed = {
        key: value.astype(dtypes[key])
        for key, value in values.items()
        if key in dtypes
        and np.issubdtype(dtypes[key], np.floating)
        and np.issubdtype(value.dtype, np.floating)
        and value.dtype != dtypes[key]
    }
    if not changed:
        return arrays
    return ArrayRecord({key: Array(changed.get(key, value)) for key, value in values.items()})


class ValidatedStrategy(Strategy):
    """Delegates to `inner`; screens each round's train and evaluation replies first and reports the
    rejections.

    `limits(node_id)` gives a site's `SiteLimits` (None: not a site of this run, rejected); without it
    no per-site limits apply. `max_site_share` caps each site's share of the weighted average.
    Without a configured or per-site absolute bound, the first round's median update norm ×
    `norm_factor` becomes one (`learned_norm_bound`, kept in checkpoints). Arrays sent in
    `transfer_dtype` (run config `transfer-dtype`) are cast back to float32 first.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        max_update_norm: float = 0.0,
        norm_factor: float = 0.0,
        arrayrecord_key: str = "arrays",
        on_reject: RejectionObserver | None = None,
        on_reject_evaluate: RejectionObserver | None = None,
        limits: LimitsOf | None = None,
        weight_key: str = "num-examples",
        max_site_share: float = 1.0,
        required_metrics: tuple[str, ...] = (),
        transfer_dtype: str = "float32",
    ) -> None:
        self.inner = inner
        self.transfer_dtype = transfer_dtype
        self.max_update_norm = max_update_norm
        self.norm_factor = norm_factor
        self.arrayrecord_key = arrayrecord_key
        self.on_reject = on_reject
        self.on_reject_evaluate = on_reject_evaluate
        self.limits = limits
        self.weight_key = weight_key
        self.max_site_share = max_site_share
        self.required_metrics = required_metrics
        self.learned_norm_bound = 0.0
        self.reference: Reference | None = None
        self.rejections: dict[int, list[Rejection]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model of the round, then as the wrapped strategy."""
        values = {k: a.numpy() for k, a in arrays.items()}
        dtypes = self.reference.dtypes if self.reference else {k: v.dtype for k, v in values.items()}
        self.reference = Reference(values, dtypes)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies that pass the checks with the wrapped strategy, weights capped."""
        replies = list(replies)
        if self.reference is None:
            raise RuntimeError("aggregate_train before configure_train: no global model to check against")
        for reply in replies:  # half-precision transfer: back to float32 before any check (in place)
            if not reply.has_error():
                decode_reply(reply.content, self.transfer_dtype)
        configured = self.max_update_norm or self.learned_norm_bound
        screening = screen_updates(
            replies,
            self.reference,
            arrayrecord_key=self.arrayrecord_key,
            max_update_norm=configured,
            norm_factor=self.norm_factor,
            limits=self.limits,
            weight_key=self.weight_key,
            required_metrics=self.required_metrics,
        )
        if not configured and self.norm_factor > 0 and screening.norms and not self._own_bounds(screening):
            self.learned_norm_bound = self.norm_factor * float(np.median(screening.norms))
        self._report(server_round, "update", screening.rejections, self.on_reject)
        self.rejections[server_round] = screening.rejections
        cap_weights(screening.kept, self.weight_key, self.max_site_share)
        arrays, metrics = self.inner.aggregate_train(server_round, screening.kept)  # none left: model stays
        return (None if arrays is None else _in_model_dtypes(arrays, self.reference.dtypes)), metrics

    def _own_bounds(self, screening: Screening) -> bool:
        """Whether a kept update was checked against a per-site bound (then none is learned)."""
        limits = [self.limits(r.metadata.src_node_id) for r in screening.kept] if self.limits else []
        return any(site is not None and site.max_update_norm > 0 for site in limits)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As the wrapped strategy."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Pool the evaluation replies that pass the checks with the wrapped strategy."""
        kept, rejected = screen_evaluations(list(replies), self.limits)
        self._report(server_round, "evaluation", rejected, self.on_reject_evaluate)
        return self.inner.aggregate_evaluate(server_round, kept)

    @staticmethod
    def _report(
        server_round: int, what: str, rejected: list[Rejection], observer: RejectionObserver | None
    ) -> None:
        for rejection in rejected:
            log.warning(
                "round %d: %s of node %d rejected: %s",
                server_round,
                what,
                rejection.node_id,
                rejection.reason,
            )
        if observer is not None:
            observer(server_round, rejected)

    def summary(self) -> None:
        """As the wrapped strategy."""
        self.inner.summary()
