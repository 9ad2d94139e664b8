"""Cross-site evaluation at the end of a run: how each model does on every site's held-out split.

Row "global": the final global model at every site (the last round's evaluation, with the sites'
confidence intervals). Rows "local" (run config `cross-site-local`): each site trains a local-only model
from the same initial weights with the local compute of the whole run (and its own privacy accounting),
and every site evaluates every local model. Models travel to the sites; only metrics come back.
Written to `cross-site.json` in the run directory.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedward.common.config import RunConfig
from fedward.common.tasks import task_spec
from fedward.server.rundir import CROSS_SITE_FILE
from fedward.server.statistics import SiteInfo

CROSS_SITE = CROSS_SITE_FILE

PRIVACY_KEYS = ("epsilon", "epsilon-lifetime", "epsilon-cap", "delta", "privacy-steps")


def headline_metric(task: str) -> str:
    """The metric the matrix shows first: the task's primary metric (Dice for segmentation)."""
    return task_spec(task).primary_metric


def _send(
    grid: Grid, sites: list[SiteInfo], arrays: ArrayRecord, config: ConfigRecord, kind: str, timeout: float
) -> dict[str, Message]:
    """The same (arrays, config) to every site; replies by site id."""
    messages = [
        Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=s.node_id, message_type=kind)
        for s in sites
    ]
    site_of = {s.node_id: s.site_id for s in sites}
    return {site_of[r.metadata.src_node_id]: r for r in grid.send_and_receive(messages, timeout=timeout)}


def _metrics(reply: Message | None) -> dict[str, float] | None:
    if reply is None or reply.has_error():
        return None
    return dict(reply.content["metrics"])


def cross_site_matrix(
    grid: Grid,
    sites: list[SiteInfo],
    config: RunConfig,
    shared: dict[str, Any],
    global_rows: dict[str, dict[str, float] | None],
    initial: ArrayRecord,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """The cross-site record: the global row, and with `cross-site-local` the local-only rows."""
    result: dict[str, Any] = {
        "sites": [s.site_id for s in sites],
        "metric": headline_metric(config.task),
        "global": global_rows,
    }
    if not config.cross_site_local:
        return result
    # evaluate with the final round's number: sites then add their confidence intervals
    evaluate_config = ConfigRecord({**shared, "server-round": config.num_server_rounds})
    trained = _send(grid, sites, initial, ConfigRecord(shared), "train.local", timeout)
    local: dict[str, dict[str, dict[str, float] | None]] = {}
    refused: dict[str, str] = {}
    epsilon: dict[str, float] = {}
    privacy: dict[str, dict[str, float]] = {}  # the site's whole spend after local-only training too
    for site in sites:
        reply = trained.get(site.site_id)
        if reply is None or reply.has_error():
            refused[site.site_id] = reply.error.reason if reply is not None else "no reply"
            continue
        metrics = reply.content["metrics"]
        epsilon[site.site_id] = float(metrics["epsilon"])
        privacy[site.site_id] = {k: float(metrics[k]) for k in PRIVACY_KEYS if k in metrics}
        evaluated = _send(grid, sites, reply.content["arrays"], evaluate_config, "evaluate", timeout)
        local[site.site_id] = {s.site_id: _metrics(evaluated.get(s.site_id)) for s in sites}
    result.update(
        {"local": local, "local-refused": refused, "local-epsilon": epsilon, "local-privacy": privacy}
    )
    return result
