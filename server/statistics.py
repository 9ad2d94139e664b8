"""The federated statistics step: every site's (noisy) per-patient sums, pooled before training."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedward.common.errors import FedwardError


@dataclass
class SiteInfo:
    """What the server knows about a site: its name, statistics release and data report (counts only)."""

    node_id: int
    site_id: str
    statistics: dict
    report: dict
    fingerprint: str | None = None  # keyed hash of the site's patients (for provenance), when it sends one

    @property
    def sums(self) -> np.ndarray:
        """The site's (noisy) per-patient sums."""
        return np.asarray(self.statistics["sums"], dtype=np.float64)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on each of the site's sums (0: exact)."""
        return float(self.statistics.get("noise-multiplier", 0.0)) * float(self.statistics.get("bound", 0.0))


def pooled_noise_std(sites: list[SiteInfo]) -> float:
    """Standard deviation of the noise on each pooled sum."""
    return math.sqrt(sum(s.noise_std**2 for s in sites))


def wait_for_sites(grid: Grid, min_sites: int, timeout: float = 300.0) -> list[int]:
    """Node ids of the connected sites once at least `min_sites` are there."""
    deadline = time.monotonic() + timeout
    pause = 0.05  # sites usually join within moments of the run's start: ask often, then less
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_sites:
            return nodes
        if time.monotonic() > deadline:
            raise FedwardError(
                f"only {len(nodes)} site(s) connected after {timeout:.0f} s; the run needs "
                f"min-sites = {min_sites}"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)


def collect_statistics(
    grid: Grid, node_ids: list[int], run_uid: str, min_sites: int, timeout: float = 600.0
) -> tuple[list[SiteInfo], dict[int, str]]:
    """Query each site's statistics release (charged to the run `run_uid`): the sites that replied, and
    node -> reason for those that refused or failed (their reasons name them). The run goes on without
    the failed ones while at least `min_sites` replied; below that, FedwardError with every reason."""
    query = ConfigRecord({"run-uid": run_uid})
    messages = [
        Message(RecordDict({"config": query}), dst_node_id=nid, message_type="query.statistics")
        for nid in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    infos: list[SiteInfo] = []
    failures: dict[int, str] = {}
    for reply in replies:
        nid = reply.metadata.src_node_id
        if reply.has_error():
            failures[nid] = reply.error.reason
            continue
        content = reply.content
        infos.append(
            SiteInfo(
                node_id=nid,
                site_id=str(content["site"]["site-id"]),
                statistics=dict(content["statistics"]),
                report=dict(content["report"]),
                fingerprint=str(content["site"].get("fingerprint") or "") or None,
            )
        )
    for nid in set(node_ids) - {i.node_id for i in infos} - set(failures):
        failures[nid] = f"no reply within {timeout:.0f} s"
    if len(infos) < min_sites:
        detail = "; ".join(f"node {nid}: {why}" for nid, why in sorted(failures.items()))
        raise FedwardError(
            f"federated statistics: {len(infos)} site(s) replied, the run needs min-sites = "
            f"{min_sites}; {detail}"
        )
    return sorted(infos, key=lambda i: i.site_id), failures
