"""Which data a site trains on, resolved from node and run config."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from flwr.app import Context

from fedward.client.budget import SitePrivacy
from fedward.client.dicom.gate import gate_site
from fedward.client.mods import safe_reason
from fedward.client.readiness import readiness
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError, SiteDataError
from fedward.common.tasks import SiteData, SiteSource, get_task, task_spec

log = logging.getLogger("fedward.client")


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


@lru_cache(maxsize=64)
def load_site(source: SiteSource, config: RunConfig, phi_gate: str = "block") -> SiteData:
    """Load (once per process and run: a simulation's worker serves many sites, hence room for 64) and
    validate the site's data for the run's task; warn (site log) when it is too small or too skewed to
    train or evaluate well.

    For an imaging task (spec `imaging`) the DICOM PHI gate runs first (headers only): with
    `phi_gate` "block" a folder whose files carry PHI raises PhiGateError, with "warn" it is logged;
    the gate's counts join the site's data report. The folder is listed and each file parsed once for
    both (pixel data stays on disk until the loader decodes it: `common/data/mri/folder.py`).
    """
    if task_spec(config.task).imaging and source.data_dir is not None:
        from fedward.common.data.mri.folder import kept_site_folder

        with kept_site_folder(source.data_dir):  # listed and parsed once: the gate, then the loader
            gate = gate_site(source.data_dir, phi_gate, source.site_id)
            site = get_task(config.task).load_site(source, config)
        site.report.update(gate.metrics())
    else:
        site = get_task(config.task).load_site(source, config)
    found = readiness(site, config.task, config)
    for line in found.blocking + found.warnings:
        log.warning("site %s: %s", source.site_id, line)
    return site


_FAILED: dict[tuple[SiteSource, RunConfig, str], str] = {}  # why a site's data did not load (safe text)


def load_site_for_run(source: SiteSource, config: RunConfig, phi_gate: str = "block") -> SiteData:
    """`load_site`, or SiteDataError: the site refuses the run, with a reason safe to send.

    Whatever stops the data from loading (a data or PHI error, a setting, an unexpected failure in a
    loader) becomes SiteDataError (no path, no value; the detail goes to the site's log once). The
    failure is remembered, so every later message of the run gets the same refusal without reading
    the folder again.
    """
    key = (source, config, phi_gate)
    if key not in _FAILED:
        try:
            return load_site(source, config, phi_gate)
        except Exception as exc:
            log.exception("site %s: its %s data did not load", source.site_id, config.task)
            if len(_FAILED) >= 8:
                _FAILED.clear()
            _FAILED[key] = safe_reason(exc)[1]
    raise SiteDataError(source.site_id, config.task, _FAILED[key])


def phi_gate_mode(privacy: SitePrivacy) -> str:
    """The site policy's `phi-gate` ("block" without a policy file)."""
    return privacy.policy.phi_gate if privacy.policy is not None else "block"


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


def seeded_noise_refusal(context: Context, config: RunConfig, privacy: SitePrivacy) -> str | None:
    """Why the site refuses the seeded research switch (replayable DP noise), or None.

    Only a simulated site on data it was handed (no node config `data-dir`, no site policy) accepts it:
    whoever knows the run's seed could subtract the noise from its updates.
    """
    if not config.dp_seeded_noise:
        return None
    if "data-dir" in context.node_config or privacy.policy_file is not None:
        return (
            "dp-seeded-noise makes the DP noise replayable by anyone who knows the run config; it is a "
            "simulation-only research switch and this site has its own data or policy"
        )
    return None
