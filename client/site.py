"""Which data a site trains on, resolved from node and run config."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import Context

from client.budget import SitePrivacy
from common.config import RunConfig
from common.errors import ConfigError
from common.tasks import SiteData, SiteSource, get_task


def site_source(context: Context, config: RunConfig) -> SiteSource:
    """The site's data: node config `data-dir` (real sites) wins; in simulation the run config's
    `data-root`/site-<i>, or partition i of the shipped data set."""
    node = context.node_config
    index = int(node.get("partition-id", 0))
    count = int(node.get("num-partitions", 1))
    site_id = str(node.get("site-id", f"site-{index}"))
    if "data-dir" in node:
        data_dir = Path(str(node["data-dir"])).expanduser()
    elif config.data_root:
        data_dir = Path(config.data_root).expanduser() / f"site-{index}"
    else:
        return SiteSource(site_id, None, index, count)
    if not data_dir.is_dir():
        raise ConfigError(f"site {site_id}: data folder {data_dir} does not exist")
    return SiteSource(site_id, data_dir, index, count)


@lru_cache(maxsize=4)
def load_site(source: SiteSource, config: RunConfig) -> SiteData:
    """Load (once per process) and validate the site's data for the run's task."""
    return get_task(config.task).load_site(source, config)


def site_privacy(context: Context, config: RunConfig) -> SitePrivacy:
    """The site's state dir (ledger) and policy file: node config `state-dir` / `policy-file`, or in a
    simulation `<data-root>/site-<i>/state` and `policy.toml` when that file exists."""
    node = context.node_config
    if "state-dir" in node or "policy-file" in node:
        state = Path(str(node["state-dir"])).expanduser() if node.get("state-dir") else None
        policy = Path(str(node["policy-file"])).expanduser() if node.get("policy-file") else None
        if policy is not None and not policy.is_file():
            raise ConfigError(f"policy file {policy} (node config policy-file) does not exist")
        return SitePrivacy(state, policy)
    if config.data_root:
        folder = Path(config.data_root).expanduser() / f"site-{int(node.get('partition-id', 0))}"
        policy = folder / "policy.toml"
        return SitePrivacy(folder / "state", policy if policy.is_file() else None)
    return SitePrivacy()
