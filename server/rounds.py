"""Per-round bookkeeping: per-site and overall metrics, ε per site, progress lines."""

from __future__ import annotations

import math
import time
from typing import Any

from flwr.app import Message, MetricRecord

from common.tasks import Task
from server.rundir import RunDirectory
from server.statistics import SiteInfo


class RoundRecorder:
    """Collects each round's replies by site and appends them to metrics.jsonl."""

    def __init__(self, run: RunDirectory, task: Task, sites: list[SiteInfo], num_rounds: int) -> None:
        self.run = run
        self.task = task
        self.num_rounds = num_rounds
        self.site_of = {s.node_id: s.site_id for s in sites}
        self.train: dict[str, dict[str, float]] = {}
        self.train_failed: list[str] = []
        self.epsilon: dict[str, float] = {}
        self.last: dict[str, Any] = {}
        self.started = time.monotonic()
        self.round_started = self.started

    def _by_site(self, replies: list[Message]) -> tuple[dict[str, dict[str, float]], list[str]]:
        ok, failed = {}, []
        for reply in replies:
            site = self.site_of.get(reply.metadata.src_node_id, f"node-{reply.metadata.src_node_id}")
            if reply.has_error():
                failed.append(f"{site}: {reply.error.reason}")
            else:
                ok[site] = dict(reply.content["metrics"])
        return ok, failed

    def on_train(self, server_round: int, replies: list[Message], _agg: MetricRecord | None) -> None:
        """Keep the round's training metrics and each site's ε so far."""
        self.train, self.train_failed = self._by_site(replies)
        for site, metrics in self.train.items():
            self.epsilon[site] = float(metrics["epsilon"])

    def on_evaluate(self, server_round: int, replies: list[Message], _agg: MetricRecord | None) -> None:
        """Write the round record and print one progress line."""
        per_site, failed = self._by_site(replies)
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
            "failures": self.train_failed + failed,
            "round-seconds": now - self.round_started,
            "elapsed-seconds": now - self.started,
        }
        self.round_started = now
        self.last = record
        self.run.append_round(record)
        print(progress_line(server_round, self.num_rounds, overall, self.epsilon), flush=True)


def progress_line(server_round: int, num_rounds: int, overall: dict, epsilon: dict[str, float]) -> str:
    """`round  3/10  accuracy 0.975  roc-auc 0.996  ε max 1.21`."""
    parts = [f"round {server_round:>2}/{num_rounds}"]
    for key in ("accuracy", "roc-auc", "loss"):
        if key in overall and not math.isnan(overall[key]):
            parts.append(f"{key} {overall[key]:.3f}")
    finite = [e for e in epsilon.values() if math.isfinite(e)]
    parts.append(f"ε max {max(finite):.2f}" if finite else "no DP")
    return "  ".join(parts)
