"""The federated statistics step: ask every site for aggregate feature moments before training."""

from __future__ import annotations

import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.errors import FedwardError


@dataclass
class SiteInfo:
    """What the server knows about a site: its name, statistics and data report (counts only)."""

    node_id: int
    site_id: str
    statistics: dict
    report: dict
    fingerprint: str | None = None  # hash of the site's data manifest (names and sizes), when it sends one


def wait_for_sites(grid: Grid, min_sites: int, timeout: float = 300.0) -> list[int]:
    """Node ids of the connected sites once at least `min_sites` are there."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_sites:
            return nodes
        if time.monotonic() > deadline:
            raise FedwardError(
                f"only {len(nodes)} site(s) connected after {timeout:.0f} s; the run needs "
                f"min-sites = {min_sites}"
            )
        time.sleep(1.0)


def collect_statistics(grid: Grid, node_ids: list[int], timeout: float = 600.0) -> list[SiteInfo]:
    """Query each site's statistics; a site that fails is named in the error."""
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=nid, message_type="query.statistics")
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
    if failures:
        detail = "; ".join(f"node {nid}: {why}" for nid, why in sorted(failures.items()))
        raise FedwardError(f"federated statistics failed at {detail}")
    return sorted(infos, key=lambda i: i.site_id)
