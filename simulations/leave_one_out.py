"""Leave-one-site-out generalisation, in simulation: federate without site k, evaluate on site k.

For a finished simulated run, each of its K sites in turn is left out: a federation of the other K − 1
sites (same run config, their own site folders, so their privacy ledgers count these runs too) trains a
model, which is then evaluated on the left-out site's held-out split with the preprocessing that
federation computed (site k contributed nothing to it). The researcher holds every simulated site's
data, so the evaluation runs here; a real federation has no such step. Results go into
`cross-site.json` under `leave-one-out`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedward.common.config import RunConfig
from fedward.common.device import pick_device
from fedward.common.errors import ConfigError
from fedward.common.tasks import SiteSource, get_task
from fedward.server.cross_site import CROSS_SITE, headline_metric
from fedward.server.rundir import SUMMARY_FILE, RunDirectory

FOLDER = "leave-one-out"
Launcher = Callable[[dict[str, Any], int, Path, bool], None]


def _site_folders(config: RunConfig, count: int) -> list[Path]:
    if not config.data_root:
        raise ConfigError("leave-one-out needs a run whose sites live in folders (run config data-root)")
    folders = [Path(config.data_root) / f"site-{i}" for i in range(count)]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ConfigError(f"site folder(s) missing: {', '.join(missing)}")
    return folders


def _federation_without(folders: list[Path], k: int, root: Path) -> Path:
    """`root/sites/site-<j>` links to every site folder but k, renumbered from 0."""
    sites = root / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    for j, folder in enumerate(f for i, f in enumerate(folders) if i != k):
        link = sites / f"site-{j}"
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
    return sites


def evaluate_on_site(run_dir: Path, site_folder: Path, site_id: str) -> dict[str, float]:
    """A finished run's final model on one site's held-out split, with that run's preprocessing."""
    saved = RunDirectory.existing(run_dir).config()
    config = RunConfig.from_flower(saved["run-config"])
    task = get_task(config.task)
    site = task.load_site(SiteSource(site_id, site_folder), config)
    _, test = task.datasets(site, saved.get("preprocessing", {}))
    model = task.build_model(config)
    model.load_state_dict(torch.load(run_dir / "model.pt"))
    with torch.no_grad():
        return task.evaluate(model, test, pick_device(config.device), intervals=True)


def leave_one_out(run_dir: Path, launch: Launcher, verbose: bool = False) -> dict[str, dict[str, float]]:
    """Run the K leave-one-out federations of a finished simulated run; update its cross-site.json."""
    run = RunDirectory.existing(run_dir)
    run_dir, saved = run.path, run.config()
    config = RunConfig.from_flower(saved["run-config"])
    count = len(saved["sites"])
    if count < 3:
        raise ConfigError(f"leave-one-out needs at least 3 sites (the run has {count})")
    folders = _site_folders(config, count)
    results: dict[str, dict[str, float]] = {}
    for k, folder in enumerate(folders):
        name = f"without-site-{k}"
        root = run_dir / FOLDER / name
        values = {
            **saved["run-config"],
            "data-root": str(_federation_without(folders, k, root)),
            "runs-dir": str(root.parent),
            "run-name": name,
            "min-sites": len(folders) - 1,
            "resume": False,
            "cross-site-local": False,
        }
        if not RunDirectory(root, create=False).has(SUMMARY_FILE):  # an interrupted study goes on
            launch(values, len(folders) - 1, root, verbose)
        results[f"site-{k}"] = evaluate_on_site(root, folder, f"site-{k}")
    cross = run.read_optional_json(CROSS_SITE) or {}
    cross.setdefault("sites", [f"site-{i}" for i in range(len(folders))])
    cross.setdefault("metric", headline_metric(config.task))
    cross["leave-one-out"] = results
    run.write_json(CROSS_SITE, cross)
    return results
