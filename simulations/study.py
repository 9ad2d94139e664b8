"""One scenario end to end: sites on disk, the federated run, then the pooled and local-only baselines.

The run directory gets Flower's usual outputs (config.json, metrics.jsonl, summary.json, model.pt), the
effective scenario (`scenario.json`), the sites (`sites/`, with `partition.json`) and, with baselines,
`baselines.json`: federated, pooled and local results side by side, per site and overall.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedward.common.config import RunConfig
from fedward.common.errors import FedwardError
from fedward.common.training import steps_per_epoch
from fedward.server.rundir import SUMMARY_FILE, RunDirectory
from fedward.simulations.baselines import run_baselines, site_mean
from fedward.simulations.runner import run_simulation
from fedward.simulations.scenario import Scenario
from fedward.simulations.scenario_sites import prepare_scenario_sites

RESULTS_FILE = "baselines.json"
SCENARIO_FILE = "scenario.json"  # the scenario the run was made from
AUDIT_FOLDER = "audit"  # an audited run's canaries, coins and the updates the coordinator received


Launcher = Callable[[dict[str, Any], int, Path, bool], None]


def _default_launch(values: dict[str, Any], sites: int, run_dir: Path, verbose: bool) -> None:
    run_simulation(values, sites, log_file=run_dir / "flower.log", verbose=verbose)


def run_study(
    scenario: Scenario,
    run_dir: Path,
    *,
    baselines: bool = True,
    verbose: bool = False,
    launch: Launcher = _default_launch,
    audit: int = 0,
) -> dict[str, Any]:
    """Run `scenario` into `run_dir` (which must not hold a finished run); return the comparison.
    `launch(run_config, sites, run_dir, verbose)` runs the federation (default: a local simulation).
    `audit` > 0: site 0 trains with that many gradient canaries and the run is audited
    (simulations/audit.py); the result is the payload's "empirical-privacy"."""
    run = RunDirectory(run_dir.resolve())
    run_dir = run.path
    if run.has(SUMMARY_FILE):
        raise FedwardError(f"{run_dir} already holds a run; choose another --name or remove it")
    data_root = run_dir / "sites"
    sites = prepare_scenario_sites(scenario, data_root)
    values = scenario.run_config_values(
        num_sites=len(sites), data_root=str(data_root), runs_dir=str(run_dir.parent), run_name=run_dir.name
    )
    run.write_json(SCENARIO_FILE, scenario.model_dump(mode="json", by_alias=True))
    if audit:
        from fedward.simulations.audit import prepare_canaries

        values["audit-dir"] = str(run_dir / AUDIT_FOLDER)
        prepare_canaries(RunConfig.from_flower(values), run_dir / AUDIT_FOLDER, audit)
    launch(values, len(sites), run_dir, verbose)
    summary = run.read_optional_json(SUMMARY_FILE)
    if summary is None:
        raise FedwardError(f"the run ended without {run_dir / SUMMARY_FILE}; see {run_dir / 'flower.log'}")
    config = RunConfig.from_flower(values)
    payload: dict[str, Any] = {
        "scenario": scenario.name,
        "task": config.task,
        "metric": scenario.metric,
        "budget": {
            "rounds": config.num_server_rounds,
            "local-epochs": config.local_epochs,
            "batch-size": config.batch_size,
        },
        "federated": federated_results(summary, config),
    }
    if audit:
        from fedward.simulations.audit import analyse

        payload["empirical-privacy"] = analyse(run_dir, run_dir / AUDIT_FOLDER, config, len(sites))
    if baselines:
        payload |= run_baselines(config, data_root, len(sites), [s.policy for s in sites])
        payload["budget"]["steps"] = {
            "federated": sum(payload["federated"]["planned-steps"].values()),
            "pooled": payload["pooled"]["steps"],
            "local": {site: m["steps"] for site, m in payload["local"]["sites"].items()},
        }
        write_results(run_dir, payload)
    return payload


def federated_results(summary: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """The federated run's final metrics from its summary.json, in the baselines' layout."""
    per_site: dict[str, dict[str, Any]] = {}
    planned: dict[str, int] = {}
    for site, info in summary["sites"].items():
        epsilon = info.get("epsilon")
        per_site[site] = {
            **(info.get("evaluate") or {}),
            "epsilon": (math.inf if epsilon is None else epsilon) if summary.get("dp") else math.inf,
            "refused": info.get("refused"),
        }
        n = int((info.get("data") or {}).get("num-train", 0))
        planned[site] = config.num_server_rounds * config.local_epochs * steps_per_epoch(n, config.batch_size)
    return {
        "overall": summary.get("overall", {}),
        "mean-over-sites": site_mean({s: m for s, m in per_site.items() if "num-examples" in m}),
        "sites": per_site,
        "planned-steps": planned,
        "rounds-completed": summary.get("rounds-completed"),
        "stopped": summary.get("stopped"),
        "strategy": summary.get("strategy"),
        "seconds": summary.get("wall-seconds"),
    }


def write_results(run_dir: Path, payload: dict[str, Any]) -> Path:
    """`run_dir/baselines.json` (NaN and inf written as null)."""
    return RunDirectory(run_dir).write_json(RESULTS_FILE, payload)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """A finished study's results (None when `run_dir` has none)."""
    return RunDirectory(run_dir, create=False).read_optional_json(RESULTS_FILE)
