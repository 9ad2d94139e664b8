"""Check every site's update before any aggregation; drop the bad ones, aggregate the rest.

A train reply is rejected when its model record is missing, has other keys, shapes or dtypes than the
global model, holds a NaN or infinity (in any of its ArrayRecords), or its update w - w_global has an
L2 norm above `max_update_norm` or above `norm_factor` × the median update norm of the round. Built
like `observed.py`: a wrapper that delegates every step, so it fits any strategy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

log = logging.getLogger("fedward.server")


@dataclass(frozen=True)
class Rejection:
    """One excluded update: the node that sent it and why."""

    node_id: int
    reason: str


RejectionObserver = Callable[[int, list[Rejection]], None]


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


def screen_updates(
    replies: list[Message],
    reference: Reference,
    *,
    arrayrecord_key: str = "arrays",
    max_update_norm: float = 0.0,
    norm_factor: float = 0.0,
) -> tuple[list[Message], list[Rejection]]:
    """Split train replies into those to aggregate (errors pass through untouched) and rejections."""
    rejections: list[Rejection] = []
    norms: dict[int, float] = {}  # index in replies -> update norm, for the updates still in
    for i, reply in enumerate(replies):
        if reply.has_error():
            continue
        reason, arrays = _check(reply, reference, arrayrecord_key)
        if reason is None:
            norm = reference.update_norm(arrays)
            if max_update_norm > 0 and norm > max_update_norm:
                reason = f"update norm {norm:.4g} > max-update-norm {max_update_norm:g}"
            else:
                norms[i] = norm
        if reason is not None:
            rejections.append(Rejection(reply.metadata.src_node_id, reason))
    if norm_factor > 0 and norms:
        median = float(np.median(list(norms.values())))
        for i, norm in list(norms.items()):
            if median > 0 and norm > norm_factor * median:
                reason = f"update norm {norm:.4g} > {norm_factor:g} x round median {median:.4g}"
                rejections.append(Rejection(replies[i].metadata.src_node_id, reason))
                del norms[i]
    kept = [r for i, r in enumerate(replies) if r.has_error() or i in norms]
    return kept, rejections


class ValidatedStrategy(Strategy):
    """Delegates to `inner`; screens each round's train replies first and reports the rejections."""

    def __init__(
        self,
        inner: Strategy,
        *,
        max_update_norm: float = 0.0,
        norm_factor: float = 0.0,
        arrayrecord_key: str = "arrays",
        on_reject: RejectionObserver | None = None,
    ) -> None:
        self.inner = inner
        self.max_update_norm = max_update_norm
        self.norm_factor = norm_factor
        self.arrayrecord_key = arrayrecord_key
        self.on_reject = on_reject
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
        """Aggregate the replies that pass the checks with the wrapped strategy."""
        replies = list(replies)
        if self.reference is None:
            raise RuntimeError("aggregate_train before configure_train: no global model to check against")
        kept, rejected = screen_updates(
            replies,
            self.reference,
            arrayrecord_key=self.arrayrecord_key,
            max_update_norm=self.max_update_norm,
            norm_factor=self.norm_factor,
        )
        for rejection in rejected:
            log.warning(
                "round %d: update of node %d rejected: %s", server_round, rejection.node_id, rejection.reason
            )
        self.rejections[server_round] = rejected
        if self.on_reject is not None:
            self.on_reject(server_round, rejected)
        return self.inner.aggregate_train(server_round, kept)  # none left: the model stays as it is

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As the wrapped strategy."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """As the wrapped strategy."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """As the wrapped strategy."""
        self.inner.summary()
