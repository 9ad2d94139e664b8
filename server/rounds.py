"""Per-round bookkeeping: per-site and overall metrics, ε per site, progress lines."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord

from fedward.common.tasks import Task
from fedward.server.report.tensorboard_log import TensorBoardLog
from fedward.server.rundir import RunDirectory, json_safe
from fedward.server.statistics import SiteInfo
from fedward.strategies.validation import Rejection, non_finite_entry


class RunStopped(Exception):
    """Too few sites trained in a round: the run ends cleanly after it."""


class RoundRecorder:
    """Collects each round's replies by site and appends them to metrics.jsonl."""

    def __init__(
        self, run: RunDirectory, task: Task, sites: list[SiteInfo], num_rounds: int, min_sites: int
    ) -> None:
        self.run = run
        self.min_sites = min_sites
        self.arrays: ArrayRecord | None = None
        self.budget: dict[str, dict[str, float]] = {}
        self.refusals: dict[str, str] = {}
        self.task = task
        self.num_rounds = num_rounds
        self.site_of = {s.node_id: s.site_id for s in sites}
        self.train: dict[str, dict[str, float]] = {}  # this round's (sampled) sites
        self.trained_last: dict[str, dict[str, float]] = {}  # each site's latest train metrics, any round
        self.train_failed: list[str] = []
        self.rejected: dict[str, str] = {}  # this round's excluded updates: site -> reason
        self.evaluation_rejected: dict[str, str] = {}  # this round's excluded evaluations
        self.node_of: Callable[[Message], int] = lambda reply: reply.metadata.src_node_id
        self.rejection_counts: dict[str, int] = {}  # over the run
        self.stop_reason: str | None = None
        self.epsilon: dict[str, float] = {}
        self.last: dict[str, Any] = {}
        self.started = time.monotonic()
        self.round_started = self.started
        self.after_round: Callable[[int], None] | None = None  # e.g. save a checkpoint
        self.tensorboard = TensorBoardLog(run.path / "tensorboard")

    _KEPT = (
        "budget",
        "refusals",
        "train",
        "trained_last",
        "rejection_counts",
        "stop_reason",
        "epsilon",
        "last",
    )

    def snapshot(self) -> dict[str, Any]:
        """What a resumed run needs to carry on the bookkeeping (and the arrays of the last round)."""
        kept = {k: getattr(self, k) for k in self._KEPT}
        kept["elapsed"] = time.monotonic() - self.started
        return kept

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a snapshot: elapsed time keeps counting from where the run stopped."""
        for key in self._KEPT:
            setattr(self, key, saved.get(key, getattr(self, key)))  # keys added later: start empty
        self.stop_reason = None  # a run that stopped early may go on when resumed
        self.started = time.monotonic() - float(saved["elapsed"])
        self.round_started = time.monotonic()

    def _by_site(
        self, replies: list[Message], rejected: dict[str, str] | None = None
    ) -> tuple[dict[str, dict[str, float]], list[str]]:
        """Metrics of the usable replies by site, and the failures (error replies; `rejected` replies
        are left out, and named as failures only when they carry no metrics)."""
        ok, failed = {}, []
        for reply in replies:
            site = self.site(self.node_of(reply))
            metrics = None if reply.has_error() else reply.content.metric_records.get("metrics")
            if reply.has_error():
                failed.append(f"{site}: {reply.error.reason}")
            elif rejected is not None and site in rejected:
                failed.append(f"{site}: rejected: {rejected[site]}")
            elif metrics is not None:
                ok[site] = dict(metrics)
        return ok, failed

    @staticmethod
    def _slowest(replies: dict[str, dict[str, float]]) -> float:
        seconds = [m.get("site-seconds", 0.0) for m in replies.values()]
        return max((float(s) for s in seconds if _is_number(s) and math.isfinite(s)), default=0.0)

    def site(self, node_id: int) -> str:
        """The site id of a node (a node that is no site of this run: `node <id>`)."""
        return self.site_of.get(node_id, f"node {node_id} (no site of this run)")

    def on_rejections(self, server_round: int, rejections: list[Rejection]) -> None:
        """Keep and print the updates the server excluded from this round's aggregation."""
        self.rejected = {self.site(r.node_id): r.reason for r in rejections}
        for site, reason in self.rejected.items():
            self.rejection_counts[site] = self.rejection_counts.get(site, 0) + 1
            print(f"fedward: update of {site} rejected in round {server_round}: {reason}", flush=True)

    def on_evaluation_rejections(self, server_round: int, rejections: list[Rejection]) -> None:
        """Keep and print the evaluation replies the server left out of this round's pooled metrics."""
        self.evaluation_rejected = {self.site(r.node_id): r.reason for r in rejections}
        for site, reason in self.evaluation_rejected.items():
            print(f"fedward: evaluation of {site} rejected in round {server_round}: {reason}", flush=True)

    def on_train(
        self, server_round: int, replies: list[Message], arrays: ArrayRecord | None, _agg: MetricRecord | None
    ) -> None:
        """Keep the round's training metrics, each site's ε (run, lifetime, cap, left) and refusals."""
        self.train, self.train_failed = self._by_site(replies)
        self.trained_last.update(self.train)
        trained = sum(not r.has_error() for r in replies)  # rejected updates count, as sites that trained
        if arrays is not None and (bad := non_finite_entry(arrays)) is not None:
            self.stop_reason = (
                f"round {server_round}: the aggregated model has non-finite values in {bad!r}; "
                "the last finite model is kept"
            )
            self.on_evaluate(server_round, [], None)
            raise RunStopped(self.stop_reason)
        if arrays is not None:
            self.arrays = arrays
        for site, metrics in self.train.items():
            if not all(_is_number(metrics.get(k)) for k in ("epsilon", "epsilon-lifetime", "epsilon-cap")):
                continue  # a rejected reply without its privacy metrics
            self.epsilon[site] = float(metrics["epsilon"])
            lifetime, cap = float(metrics["epsilon-lifetime"]), float(metrics["epsilon-cap"])
            self.budget[site] = {
                "epsilon-lifetime": lifetime,
                "epsilon-cap": cap,
                "epsilon-left": cap - lifetime,
            }
        for failure in self.train_failed:
            site, _, reason = failure.partition(": ")
            self.refusals.setdefault(site, f"round {server_round}: {reason}")
            print(f"fedward: {site} did not train in round {server_round}: {reason}", flush=True)
        if trained < self.min_sites:
            self.stop_reason = (
                f"round {server_round}: only {trained} site(s) trained, fewer than "
                f"min-sites = {self.min_sites}"
            )
            self.on_evaluate(server_round, [], None)
            raise RunStopped(self.stop_reason)

    def on_evaluate(self, server_round: int, replies: list[Message], _agg: MetricRecord | None) -> None:
        """Write the round record and print one progress line."""
        per_site, failed = self._by_site(replies, self.evaluation_rejected)
        self.evaluation_rejected = {}
        overall = self.task.pool(list(per_site.values())) if per_site else {}
        now = time.monotonic()
        record = {
            "round": server_round,
            "overall": overall,
            "sites": {
                site: {"evaluate": per_site.get(site), "train": self.train.get(site)}
                for site in sorted(set(per_site) | set(self.train))
            },
            "epsilon": dict(sorted(self.epsilon.items())),
            "budget": dict(sorted(self.budget.items())),
            "failures": self.train_failed + failed,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected-updates": len(self.rejected),
            "round-seconds": now - self.round_started,
            # the slowest site's own compute (train + evaluate); the rest is framework and network
            "site-seconds": self._slowest(self.train) + self._slowest(per_site),
            "overhead-seconds": now
            - self.round_started
            - self._slowest(self.train)
            - self._slowest(per_site),
            "elapsed-seconds": now - self.started,
        }
        self.round_started = now
        self.rejected = {}
        self.last = record
        self.run.append_round(record)
        self.tensorboard.add_round(json_safe(record), flush=False)
        print(progress_line(server_round, self.num_rounds, overall, self.epsilon), flush=True)
        if self.after_round is not None:
            self.after_round(server_round)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def progress_line(server_round: int, num_rounds: int, overall: dict, epsilon: dict[str, float]) -> str:
    """`round  3/10  accuracy 0.975  roc-auc 0.996  ε max 1.21`."""
    parts = [f"round {server_round:>2}/{num_rounds}"]
    for key in ("accuracy", "roc-auc", "loss"):
        if key in overall and not math.isnan(overall[key]):
            parts.append(f"{key} {overall[key]:.3f}")
    finite = [e for e in epsilon.values() if math.isfinite(e)]
    parts.append(f"ε max {max(finite):.2f}" if finite else "no DP")
    return "  ".join(parts)
